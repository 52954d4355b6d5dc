"""Embed stage: CLIP image and text embeddings with open_clip through Beam's `RunInference`, the
CLIP score, and the decision on it.

In: `Sample`s after the crawl. Those with status `success` and an image are embedded; the others
pass through untouched. Out: the same samples with `clip_score` (cosine of the L2-normalised
image and text embeddings), `clip_model` (the identity of the model, so a score always says what
made it) and the float16 embeddings, which the writer stores as `img_emb/` and `text_emb/` `.npy`
files aligned with `metadata/` Parquet files carrying the uid (clip-retrieval's layout).

Steps, each small:

1. `Preprocess` (CPU): decode the stored image, resize and normalise with the model's own open_clip
   transform, tokenize the caption — outside the model call, so an accelerator only runs the model.
2. `RunInference` with `OpenClipModelHandler`: batches of (image, tokens) through both towers, on
   `cuda` when asked for or (`auto`) when present, in half precision there; one model per process,
   or one per machine with `large_model` / `model_copies`.
3. `Score`: the cosine, the model identity, the embeddings onto the sample.
4. `Decide` (only with a threshold): `clip_score` below `min_clip_score`, or outside the top
   `keep_fraction` of the whole run (a threshold from Beam's approximate quantiles, handed in as a
   side input: no second pass), is rejected with reason `low_clip_score` and the threshold used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from schemas.sample import Sample, Status
from transforms.common.failures import FailedRows, Guarded, batch_samples
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus, downloaded
from transforms.embed.clip import ClipEmbedding, OpenClipModelHandler, PreprocessFn, model_identity
from transforms.embed.config import EmbedConfig

LOG = logging.getLogger(__name__)


STAGE = "embed"


#: Quantiles computed for `keep_fraction` (a threshold within 0.1 % of the rank asked for).
QUANTILES = 1001


class _ScoreFn(beam.DoFn):
    """Puts the cosine, the model identity and (if kept) the embeddings onto the sample."""

    def __init__(self, identity: str, keep_embeddings: bool, progress_dir: str | None, decides: bool):
        self._identity = identity
        self._keep = keep_embeddings
        self._progress_dir = progress_dir
        self._decides = decides

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[Sample, PredictionResult | ClipEmbedding]) -> Iterator[Sample]:
        sample, result = element
        embedding: ClipEmbedding = result.inference if isinstance(result, PredictionResult) else result  # type: ignore[assignment]
        score = float(np.dot(embedding.image.astype(np.float32), embedding.text.astype(np.float32)))
        if not self._decides:
            self._counter.add(kept=True)
        yield sample.evolve(
            clip_score=score,
            clip_model=self._identity,
            image_embedding=embedding.image if self._keep else None,
            text_embedding=embedding.text if self._keep else None,
        )

    def finish_bundle(self) -> None:
        self._counter.flush()


def threshold_from_quantiles(quantiles: list[float], keep_fraction: float) -> float:
    """The score at rank (1 - keep_fraction) of the run, from evenly spaced quantiles."""
    if not quantiles:
        return float("-inf")
    index = round((1.0 - keep_fraction) * (len(quantiles) - 1))
    return float(quantiles[min(max(index, 0), len(quantiles) - 1)])


class _DecideFn(beam.DoFn):
    """Rejects scored samples below the threshold (`low_clip_score`, the threshold in `error`)."""

    def __init__(self, min_score: float | None, progress_dir: str | None):
        self._min_score = min_score
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, sample: Sample, quantile_threshold: float | None = None) -> Iterator[Sample]:
        thresholds = [t for t in (self._min_score, quantile_threshold) if t is not None]
        threshold = max(thresholds) if thresholds else None
        if threshold is not None and sample.clip_score is not None and sample.clip_score < threshold:
            detail = f"clip_score {sample.clip_score:.4f} < threshold {threshold:.4f} ({sample.clip_model})"
            self._counter.add(kept=False, reason="low_clip_score")
            yield sample.decided(Status.REJECTED, "low_clip_score", STAGE, detail)
            return
        self._counter.add(kept=True)
        yield sample

    def finish_bundle(self) -> None:
        self._counter.flush()


class DecideClipScore(beam.PTransform):
    """Rejects scored samples below `min_clip_score` or outside the top `keep_fraction` of the
    whole collection (approximate quantiles, applied as a side input)."""

    def __init__(self, config: EmbedConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, scored: beam.PCollection) -> beam.PCollection:
        threshold = None
        if self._config.keep_fraction is not None:
            threshold = beam.pvalue.AsSingleton(
                scored
                | "Scores" >> beam.Map(lambda s: s.clip_score)
                | "Quantiles" >> beam.ApproximateQuantiles.Globally(QUANTILES)
                | "Threshold" >> beam.Map(threshold_from_quantiles, self._config.keep_fraction)
            )
        return scored | "Decide" >> beam.ParDo(
            _DecideFn(self._config.min_clip_score, self._progress_dir), quantile_threshold=threshold
        )


class EmbedImages(beam.PTransform):
    """Embeds every downloaded pair with CLIP, scores it and applies the configured threshold."""

    def __init__(self, config: EmbedConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        config = self._config
        decides = config.min_clip_score is not None or config.keep_fraction is not None
        todo, passing = samples | "Split" >> SplitByStatus(downloaded)
        identity = model_identity(config)
        prepared, unreadable = todo | "Preprocess" >> Guarded(
            PreprocessFn(config), STAGE, "preprocess", self._progress_dir
        )
        inference = RunInference(KeyedModelHandler(OpenClipModelHandler(config))).with_exception_handling()
        embedded, dead = prepared | "RunInference" >> inference
        # A failed model call fails its whole batch: each of its samples keeps its row.
        model_failed = dead.failed_inferences | "ModelFailed" >> FailedRows(
            STAGE, "model", batch_samples, self._progress_dir
        )
        scored = embedded | "Score" >> beam.ParDo(
            _ScoreFn(identity, config.write_embeddings, self._progress_dir, decides)
        )
        if decides:
            scored = scored | "DecideClipScore" >> DecideClipScore(config, self._progress_dir)
        return (scored, unreadable, model_failed, passing) | "Merge" >> beam.Flatten()
