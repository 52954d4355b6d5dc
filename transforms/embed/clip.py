"""The CLIP model of the embed stage: identity, loading, preprocessing and the `RunInference` handler.

- `model_identity`: the name written next to every score (`clip_model`), so a score always says
  what made it.
- `load_clip`: an open_clip model (a built-in name with a pretrained tag or checkpoint, the shipped
  `winnow-tiny-clip`, or a folder on any Beam filesystem) on the device asked for.
- `preprocessing` / `PreprocessFn` (CPU): decode the stored image, resize and normalise with the
  model's own open_clip transform, tokenize the caption — outside the model call, so an
  accelerator only runs the model.
- `OpenClipModelHandler`: batches of (image, tokens) through both towers, on `cuda` when asked for
  or (`auto`) when present, in half precision there; one model per process, or one per machine
  with `large_model` / `model_copies`.

The dedup stage (decontamination) and the noise stage (concept vocabulary, generated captions)
use the run's model through this module too.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler
from PIL import Image

from schemas.sample import Sample
from transforms.embed.config import SHIPPED_MODEL, EmbedConfig, EmbedError

LOG = logging.getLogger(__name__)
#: Shipped models are package data of `transforms.embed`, so a non-editable install finds them too.
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
_CONFIG_FILE = "open_clip_config.json"


# ---------------------------------------------------------------- model identity and loading


def _is_folder(model: str) -> bool:
    return model == SHIPPED_MODEL or "/" in model or "://" in model or model.startswith(".")


def _model_folder(model: str) -> str:
    return str(SHIPPED_MODELS_DIR / SHIPPED_MODEL) if model == SHIPPED_MODEL else model


def model_identity(config: EmbedConfig) -> str:
    """What is written next to every score: `name/tag` for open_clip's registry, or the folder or
    checkpoint with a digest of its weights (the shipped model) so retrained weights differ."""
    if config.model == SHIPPED_MODEL:
        weights = _weights_file(_model_folder(SHIPPED_MODEL))
        digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]
        return f"{SHIPPED_MODEL}@sha256:{digest}"
    if _is_folder(config.model):
        return config.model
    return f"{config.model}/{config.pretrained or 'random-init'}"


def _weights_file(folder: str) -> str:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise EmbedError(f"{folder}: no open_clip weights file (open_clip_model.safetensors)")


#: Remote model files and folders copied to this process's disk: remote path → local path.
_LOCAL_COPIES: dict[str, str] = {}
_LOCAL_LOCK = threading.Lock()


def _copy_file(path: str, target: str) -> None:
    with FileSystems.open(path) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _local_copy(path: str, folder: bool) -> str:
    """The local copy of a remote (s3://, gs://) file or folder, made once per process.

    A ViT-L folder is ~1.7 GB: the model, its preprocessing and its tokenizer all read the one copy,
    and the copy is removed when the process exits."""
    with _LOCAL_LOCK:
        if path not in _LOCAL_COPIES:
            workdir = tempfile.mkdtemp(prefix="winnow-model-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
            if folder:
                for result in FileSystems.match([path.rstrip("/") + "/*"]):
                    for meta in result.metadata_list:
                        _copy_file(meta.path, os.path.join(workdir, meta.path.rstrip("/").rsplit("/", 1)[-1]))
                _LOCAL_COPIES[path] = workdir
            else:
                target = os.path.join(workdir, path.rstrip("/").rsplit("/", 1)[-1])
                _copy_file(path, target)
                _LOCAL_COPIES[path] = target
        return _LOCAL_COPIES[path]


def _local(path: str) -> str:
    """`path` on the local disk: itself, or its copy from a remote filesystem (s3://, gs://)."""
    if FileSystems.get_scheme(path) in (None, "file"):
        return path
    return _local_copy(path, folder=False)


def _local_folder(folder: str) -> str:
    if FileSystems.get_scheme(folder) in (None, "file"):
        if not os.path.exists(os.path.join(folder, _CONFIG_FILE)):
            raise EmbedError(f"{folder}: not an open_clip model folder (no {_CONFIG_FILE})")
        return folder
    return _local_copy(folder, folder=True)


def batching(config: EmbedConfig) -> dict[str, Any]:
    """The `ModelHandler` arguments the `embed` section sets: fixed batches of `batch_size`, and
    how many model copies a machine holds."""
    return {
        "min_batch_size": config.batch_size,
        "max_batch_size": config.batch_size,
        "large_model": config.large_model,
        "model_copies": config.model_copies or None,
    }


def model_dtype(config: EmbedConfig, device: str) -> Any:
    """The torch dtype a model runs in: half precision for `fp16`, or for `auto` on `cuda`."""
    import torch

    half = config.precision == "fp16" or (config.precision == "auto" and device == "cuda")
    return torch.float16 if half else torch.float32


def resolve_device(device: str) -> str:
    """The torch device for `embed.device`; `cuda` without a usable GPU is an error, not a CPU run."""
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise EmbedError(
            "embed.device is 'cuda' but CUDA is not usable here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "set embed.device to auto or cpu to run on the CPU"
        )
    return "cpu"


@dataclasses.dataclass
class LoadedClip:
    """A model ready for `run_inference`: the open_clip module, its device and dtype, and the
    normalisation constants on that device (a plain class: Beam's shared-model cache keeps a weak
    reference to it)."""

    model: Any
    device: str
    dtype: Any
    mean: Any
    std: Any


def load_clip(config: EmbedConfig, device: str | None = None) -> tuple[Any, Any, Any]:
    """(model in eval mode on CPU, image transform, tokenizer) as open_clip builds them."""
    import open_clip

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: weights are given
    if _is_folder(config.model):
        name = "local-dir:" + _local_folder(_model_folder(config.model))
        model, _, transform = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        pretrained = config.pretrained or None
        if pretrained and ("/" in pretrained or "://" in pretrained):
            pretrained = _local(pretrained)
        try:
            model, _, transform = open_clip.create_model_and_transforms(config.model, pretrained=pretrained)
        except RuntimeError as err:
            raise EmbedError(
                f"embed.model {config.model!r} / pretrained {config.pretrained!r}: {err}"
            ) from err
        tokenizer = open_clip.get_tokenizer(config.model)
    return model.eval(), transform, tokenizer


# ---------------------------------------------------------------- the model handler


class ClipExample(NamedTuple):
    """One preprocessed pair: the resized, cropped image as uint8 (H, W, 3) — a quarter of the
    float tensor's bytes; scaling and normalising happen on the model's device — and the
    caption's token ids."""

    image: np.ndarray
    tokens: np.ndarray


class Preprocessing(NamedTuple):
    """How the configured model wants its inputs: geometry (resize, crop), normalisation, tokens."""

    geometry: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tokenizer: Any


class ClipEmbedding(NamedTuple):
    """L2-normalised float16 embeddings of one pair."""

    image: np.ndarray
    text: np.ndarray


class OpenClipModelHandler(ModelHandler[ClipExample, ClipEmbedding, LoadedClip]):
    """Runs both towers of an open_clip model over batches of preprocessed pairs."""

    def __init__(self, config: EmbedConfig):
        super().__init__(**batching(config))
        self._config = config

    def load_model(self) -> LoadedClip:
        import torch

        device = resolve_device(self._config.device)
        model, _, _ = load_clip(self._config)
        dtype = model_dtype(self._config, device)
        prep = preprocessing(self._config)
        mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return LoadedClip(model.to(device=device, dtype=dtype), device, dtype, mean, std)

    def run_inference(
        self, batch: Sequence[ClipExample], model: LoadedClip, inference_args: dict[str, Any] | None = None
    ) -> Iterable[ClipEmbedding]:
        import torch

        # Every call gets exactly `batch_size` rows (a short batch is padded): a row's result then
        # depends on that row only, not on how the runner happened to batch — byte-identical
        # embeddings run after run (matrix kernels pick their blocking by the batch's shape).
        n, size = len(batch), max(self._config.batch_size, len(batch))
        images = np.zeros((size, *batch[0].image.shape), dtype=np.uint8)
        tokens = np.zeros((size, *batch[0].tokens.shape), dtype=batch[0].tokens.dtype)
        images[:n] = [example.image for example in batch]
        tokens[:n] = [example.tokens for example in batch]
        with torch.inference_mode():
            # torchvision's ToTensor + Normalize, batched, on the model's device.
            pixels = torch.from_numpy(images).to(model.device).permute(0, 3, 1, 2).to(torch.float32).div(255)
            image_in = pixels.sub(model.mean).div(model.std).to(model.dtype)
            image = model.model.encode_image(image_in, normalize=True)
            text = model.model.encode_text(torch.from_numpy(tokens).to(model.device), normalize=True)
        image_np = image[:n].float().cpu().numpy().astype(np.float16)
        text_np = text[:n].float().cpu().numpy().astype(np.float16)
        return [ClipEmbedding(i, t) for i, t in zip(image_np, text_np, strict=True)]

    def get_num_bytes(self, batch: Sequence[ClipExample]) -> int:
        return sum(example.image.nbytes + example.tokens.nbytes for example in batch)

    def get_metrics_namespace(self) -> str:
        return "winnow:embed"


class LoadedTextTower:
    """The text tower ready for `run_inference`: a plain class (Beam's shared-model cache keeps a
    weak reference to it)."""

    def __init__(self, model: Any, tokenizer: Any, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device


class ClipTextHandler(ModelHandler[Sequence[str], np.ndarray, LoadedTextTower]):
    """Texts through the text tower alone: each element is a list of texts, encoded in one call
    into an (n, d) normalised float32 array (the noise stage's concept vocabulary)."""

    def __init__(self, config: EmbedConfig):
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=config.large_model)
        self._config = config

    def load_model(self) -> LoadedTextTower:
        device = resolve_device(self._config.device)
        model, _, tokenizer = load_clip(self._config)
        return LoadedTextTower(model.to(device), tokenizer, device)

    def run_inference(
        self,
        batch: Sequence[Sequence[str]],
        model: LoadedTextTower,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[np.ndarray]:
        import torch

        out = []
        for texts in batch:
            with torch.inference_mode():
                encoded = model.model.encode_text(
                    model.tokenizer(list(texts)).to(model.device), normalize=True
                )
            out.append(np.asarray(encoded.float().cpu().numpy(), dtype=np.float32))
        return out

    def get_metrics_namespace(self) -> str:
        return "winnow:noise"


def on_accelerator(transform: Any, config: EmbedConfig) -> Any:
    """`transform` with the embed stage's accelerator hint, so that on Dataflow every model step
    (embedding, vocabulary, classifier, caption decoder) runs on the GPU workers."""
    return transform.with_resource_hints(accelerator=config.accelerator) if config.accelerator else transform


# ---------------------------------------------------------------- the DoFns


def model_pixels(stored: bytes, geometry: Any) -> np.ndarray:
    """The model's input for a stored image as uint8 HWC: decoded, RGB, the model's resize and crop."""
    with Image.open(io.BytesIO(stored)) as image:
        return np.asarray(geometry(image.convert("RGB")), dtype=np.uint8)


class PreprocessFn(beam.DoFn):
    """Decodes, resizes and normalises the image and tokenizes the caption (CPU)."""

    def __init__(self, config: EmbedConfig):
        self._config = config

    def setup(self) -> None:
        self._prep = preprocessing(self._config)

    def process(self, sample: Sample) -> Iterator[tuple[Sample, ClipExample]]:
        pixels = model_pixels(sample.image or b"", self._prep.geometry)
        caption = sample.caption_clean if sample.caption_clean is not None else sample.caption or ""
        tokens = self._prep.tokenizer([caption])[0].numpy()
        yield sample, ClipExample(pixels, tokens)


def model_config(config: EmbedConfig) -> dict[str, Any]:
    """The configured model's open_clip `model_cfg` (from the folder's config file or open_clip's
    registry), without loading weights."""
    import open_clip

    if _is_folder(config.model):
        folder = _local_folder(_model_folder(config.model))
        with open(os.path.join(folder, _CONFIG_FILE), encoding="utf-8") as handle:
            return dict(json.load(handle)["model_cfg"])
    found = open_clip.get_model_config(config.model)
    if found is None:
        raise EmbedError(f"embed.model {config.model!r} is not an open_clip model nor a folder")
    return dict(found)


def preprocessing(config: EmbedConfig) -> Preprocessing:
    """The configured model's preprocessing as open_clip defines it, without loading weights."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    fields = {f.name for f in dataclasses.fields(PreprocessCfg)}
    if _is_folder(config.model):
        folder = _local_folder(_model_folder(config.model))
        with open(os.path.join(folder, _CONFIG_FILE), encoding="utf-8") as handle:
            spec = json.load(handle)
        overrides = spec.get("preprocess_cfg", {})
        size = spec["model_cfg"]["vision_cfg"]["image_size"]
        tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
    else:
        model_cfg = open_clip.get_model_config(config.model)
        if model_cfg is None:
            known = ", ".join(open_clip.list_models())
            raise EmbedError(
                f"embed.model {config.model!r} is not an open_clip model nor a folder; known: {known}"
            )
        overrides = (
            open_clip.get_pretrained_cfg(config.model, config.pretrained) if config.pretrained else {}
        ) or {}
        size = model_cfg["vision_cfg"]["image_size"]
        tokenizer = open_clip.get_tokenizer(config.model)
    cfg = dataclasses.replace(PreprocessCfg(size=size), **{k: v for k, v in overrides.items() if k in fields})
    transform = image_transform_v2(cfg, is_train=False)
    tail = [type(step).__name__ for step in transform.transforms[-2:]]
    if tail != ["MaybeToTensor", "Normalize"] and tail != ["ToTensor", "Normalize"]:
        raise EmbedError(f"unexpected open_clip preprocessing {transform}; expected ToTensor, Normalize last")
    geometry = type(transform)(transform.transforms[:-2])  # resize, crop, RGB; the rest on the device
    return Preprocessing(geometry, tuple(cfg.mean), tuple(cfg.std), tokenizer)
