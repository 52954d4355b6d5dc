"""Generated pseudo-captions: the run's own caption decoder (an open_clip CoCa) writes a caption for
each sample the repair policy marked `generated`, through Beam's `RunInference`.

1. `Pixels` (CPU): the stored image decoded and cut to the model's input, as the embed stage does.
2. `RunInference` with `CocaCaptionHandler`: beam search (open_clip's default for CoCa;
   deterministic on a given device), with the embed stage's accelerator hint, so on Dataflow the
   decoder runs on the GPU workers.
3. `Apply`: the caption onto the sample as `caption_pseudo`; a decoder that wrote nothing leaves
   the BoW caption (or the original) to stand in.

A sample whose image cannot be decoded, or whose batch the decoder fails on, keeps its row as
`failed` (`internal_error`), like any other surprise (`transforms/common/failures.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from schemas.sample import Sample, Status
from transforms.common.failures import FailedRows, Guarded, batch_samples
from transforms.common.routing import SplitByStatus
from transforms.embed.clip import (
    batching,
    load_clip,
    model_config,
    model_identity,
    model_pixels,
    on_accelerator,
    preprocessing,
    resolve_device,
)
from transforms.embed.config import EmbedConfig
from transforms.noise.config import STAGE

#: Caption sources, in `caption_source`.
ORIGINAL, COMPLETED, GENERATED, NEIGHBOUR, BOW = "original", "completed", "generated", "neighbour", "bow"
#: Tokens a generated caption may have.
SEQ_LEN = 30


def model_generates(embed: EmbedConfig) -> bool:
    """Whether the run's model writes captions: an open_clip CoCa (it has a `multimodal_cfg` decoder)."""
    return "multimodal_cfg" in model_config(embed)


def _decode(tokens: Any) -> str:
    import open_clip

    text = open_clip.decode(tokens).split("<end_of_text>")[0].replace("<start_of_text>", "")
    return " ".join(text.split())


class LoadedCoca:
    """A CoCa ready for `run_inference` (a plain class: Beam's shared-model cache keeps a weak
    reference to it)."""

    def __init__(self, model: Any, device: str, mean: Any, std: Any):
        self.model = model
        self.device = device
        self.mean = mean
        self.std = std


class CocaCaptionHandler(ModelHandler[np.ndarray, str, LoadedCoca]):
    """Batches of the model's input pixels (uint8 HWC) → one caption each."""

    def __init__(self, config: EmbedConfig):
        super().__init__(**batching(config))
        self._config = config

    def load_model(self) -> LoadedCoca:
        import torch

        device = resolve_device(self._config.device)
        model, _, _ = load_clip(self._config)
        prep = preprocessing(self._config)
        mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
        std = torch.tensor(prep.std).view(1, -1, 1, 1)
        return LoadedCoca(model.to(device).eval(), device, mean, std)

    def run_inference(
        self, batch: Sequence[np.ndarray], model: LoadedCoca, inference_args: dict[str, Any] | None = None
    ) -> Iterable[str]:
        import torch

        pixels = torch.from_numpy(np.stack(list(batch))).permute(0, 3, 1, 2).float().div(255)
        images = pixels.sub(model.mean).div(model.std)
        with torch.inference_mode():
            tokens = model.model.generate(images.to(model.device), seq_len=SEQ_LEN)
        return [_decode(t) for t in tokens]

    def get_metrics_namespace(self) -> str:
        return "winnow:noise"


class _PixelsFn(beam.DoFn):
    def __init__(self, embed: EmbedConfig):
        self._embed = embed

    def setup(self) -> None:
        self._geometry = preprocessing(self._embed).geometry

    def process(self, sample: Sample) -> Iterator[tuple[Sample, np.ndarray]]:
        yield sample, model_pixels(sample.image or b"", self._geometry)


def _marked(sample: Sample) -> bool:
    return sample.caption_source == GENERATED


def _writable(sample: Sample) -> bool:
    return sample.status == Status.SUCCESS and bool(sample.image)


def _fallback(sample: Sample) -> Sample:
    """No caption was written: the BoW caption stands in, or the original."""
    return sample.evolve(caption_source=BOW if sample.caption_bow else ORIGINAL)


def _apply(element: tuple[Sample, str], identity: str) -> Sample:
    sample, text = element
    if not text:
        return _fallback(sample)
    return sample.evolve(caption_pseudo=text, pseudo_source=identity)


class GenerateCaptions(beam.PTransform):
    """Generated pseudo-captions for the samples the policy marked `generated`; others pass."""

    def __init__(self, embed: EmbedConfig, progress_dir: str | None = None):
        super().__init__()
        self._embed = embed
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        embed = self._embed
        marked, others = samples | "Marked" >> SplitByStatus(_marked)
        writable, unwritable = marked | "Writable" >> SplitByStatus(_writable)
        pixels, undecodable = writable | "Pixels" >> Guarded(
            _PixelsFn(embed), STAGE, "decode", self._progress_dir
        )
        decoder = RunInference(KeyedModelHandler(CocaCaptionHandler(embed))).with_exception_handling()
        written, dead = pixels | "Generate" >> on_accelerator(decoder, embed)
        # A failed decoder call fails its batch: each of its samples keeps its row.
        failed = dead.failed_inferences | "Failed" >> FailedRows(
            STAGE, "generate", batch_samples, self._progress_dir
        )
        applied = written | "Apply" >> beam.Map(_apply, identity=f"model:{model_identity(embed)}")
        fallback = unwritable | "Fallback" >> beam.Map(_fallback)
        return (applied, fallback, undecodable, failed, others) | "Merge" >> beam.Flatten()
