"""NSFW scores from the CLIP image embedding: a small MLP head over the vectors the embed stage made.

LAION scored its pairs this way (its CLIP-based NSFW detector: a few dense layers over the
ViT-L/14 image embedding): no second pass over the pixels. Winnow reads a head from an `.npz`
file (local, s3://, gs://):

- `weight_0`, `bias_0`, …, `weight_k`, `bias_k`: float arrays, `weight_i` of shape (in, out);
  ReLU between layers, a sigmoid on the last one, whose output size is 1: the probability that
  the image is not safe for work;
- `clip_model`: a string, the identity of the CLIP model whose image embeddings the head reads
  (as the run's `clip_model` column spells it). A run whose model differs is refused: a head fitted
  to one model's space scores another's as noise.

The embeddings are L2-normalised, as the embed stage writes them.
"""

from __future__ import annotations

import io

import numpy as np
from apache_beam.io.filesystems import FileSystems


class HeadError(ValueError):
    """A head file that cannot be used (the message names the file and why)."""


class ClipHead:
    """The layers of a head, applied with numpy."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], clip_model: str, source: str):
        self.layers = layers
        self.clip_model = clip_model
        self.source = source

    @property
    def dim(self) -> int:
        return int(self.layers[0][0].shape[0])

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n,) float64 probabilities for (n, dim) image embeddings."""
        x = np.asarray(embeddings, np.float64)
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return 1.0 / (1.0 + np.exp(-x[:, 0]))


def load_head(path: str) -> ClipHead:
    """The head in `path`; `HeadError` when it is missing, malformed or its shapes do not chain."""
    try:
        with FileSystems.open(path) as handle:
            arrays = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise HeadError(f"safety.nsfw_model: cannot read the CLIP head {path}: {err}") from None
    with arrays:
        names = set(arrays.files)
        if "clip_model" not in names or "weight_0" not in names:
            raise HeadError(f"safety.nsfw_model: {path} holds no `clip_model` and `weight_0` arrays")
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        while f"weight_{len(layers)}" in names:
            i = len(layers)
            weight = np.asarray(arrays[f"weight_{i}"], np.float64)
            bias = np.asarray(arrays[f"bias_{i}"], np.float64) if f"bias_{i}" in names else None
            if weight.ndim != 2 or bias is None or bias.shape != (weight.shape[1],):
                raise HeadError(
                    f"safety.nsfw_model: {path}: layer {i} needs weight (in, out) and bias (out,)"
                )
            if layers and layers[-1][0].shape[1] != weight.shape[0]:
                raise HeadError(f"safety.nsfw_model: {path}: layer {i} takes {weight.shape[0]} inputs, "
                                f"layer {i - 1} gives {layers[-1][0].shape[1]}")  # fmt: skip
            layers.append((weight, bias))
        if layers[-1][0].shape[1] != 1:
            raise HeadError(f"safety.nsfw_model: {path}: the last layer must have one output")
        return ClipHead(layers, str(arrays["clip_model"]), path)
