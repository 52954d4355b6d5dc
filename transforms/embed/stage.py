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
   `keep_fraction` of every score of the run (DataComp's exact rule, `fraction_threshold`, found
   by `threshold.FractionThreshold` in passes of a fixed histogram on the workers and handed in as
   a side input: no score list on one worker), is rejected with reason `low_clip_score`
   and the threshold used.

Samples read from a pool that carries the model's embeddings (`transforms/crawl/pool.py` set
`embedding_source`) skip steps 1-3: their embeddings and score are the pool's, and with
`reuse_only` (the launcher found the model's embeddings beside the shards) no model is loaded;
a sample without them then fails with `embedding_missing`. The pool's scores of samples an
earlier stage rejected count in the `keep_fraction` rank, as in DataComp's baselines; with the
pool's metadata (`input.metadata`) every metadata row's score is ranked, images that were never
downloaded included (`threshold.py`: exact, in bounded memory).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from schemas.sample import Sample, Status
from transforms.common.failures import FailedRows, Guarded, batch_samples
from transforms.common.progress import NAMESPACE, StageCounter
from transforms.common.routing import SplitByStatus, downloaded
from transforms.embed.clip import ClipEmbedding, OpenClipModelHandler, PreprocessFn, model_identity
from transforms.embed.config import EmbedConfig
from transforms.embed.threshold import FractionThreshold

LOG = logging.getLogger(__name__)


STAGE = "embed"


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


def _score_array(scores: list[float]) -> np.ndarray:
    """A batch of scores as the float64 array `FractionThreshold` counts (NaN stays NaN)."""
    return np.asarray(scores, np.float64)


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
        score = sample.clip_score
        if threshold is not None and score is not None and not score >= threshold:  # NaN: not kept
            detail = f"clip_score {sample.clip_score:.4f} < threshold {threshold:.4f} ({sample.clip_model})"
            self._counter.add(kept=False, reason="low_clip_score")
            yield sample.decided(Status.REJECTED, "low_clip_score", STAGE, detail)
            return
        self._counter.add(kept=True)
        yield sample

    def finish_bundle(self) -> None:
        self._counter.flush()


class DecideClipScore(beam.PTransform):
    """Rejects scored samples below `min_clip_score` or outside the top `keep_fraction` of every
    score of the run (`fraction_threshold` over `scored` and `others`, found by `FractionThreshold`
    in bounded memory and applied as a side input).

    `others` are samples not decided here that carry a score all the same (a pool's score of a
    sample an earlier stage rejected): DataComp ranks the whole pool, so they count in the rank.
    `ranked` (a root transform giving arrays of scores: a pool's metadata, every row of it) is
    ranked instead, exactly and in bounded memory (`threshold.FractionThreshold`)."""

    def __init__(
        self,
        config: EmbedConfig,
        progress_dir: str | None = None,
        others: beam.PCollection | None = None,
        ranked: beam.PTransform | None = None,
    ):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir
        self._others = others
        self._ranked = ranked

    def expand(self, scored: beam.PCollection) -> beam.PCollection:
        threshold = None
        if self._config.keep_fraction is not None and self._ranked is not None:
            threshold = beam.pvalue.AsSingleton(
                scored.pipeline
                | "PoolScores" >> self._ranked
                | "PoolThreshold" >> FractionThreshold(self._config.keep_fraction)
            )
        elif self._config.keep_fraction is not None:
            ranked = [scored] if self._others is None else [scored, self._others]
            threshold = beam.pvalue.AsSingleton(
                ranked
                | "Ranked" >> beam.Flatten()
                | "Scores" >> beam.FlatMap(lambda s: [s.clip_score] if s.clip_score is not None else [])
                | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                | "Arrays" >> beam.Map(_score_array)
                | "Threshold" >> FractionThreshold(self._config.keep_fraction)
            )
        return scored | "Decide" >> beam.ParDo(
            _DecideFn(self._config.min_clip_score, self._progress_dir), quantile_threshold=threshold
        )


class _ReuseFn(beam.DoFn):
    """A sample whose embeddings came with it (a pool's): counted, embeddings kept if asked for;
    one without them (`reuse_only`: the model is not loaded) fails with `embedding_missing`."""

    def __init__(self, keep_embeddings: bool, progress_dir: str | None, decides: bool):
        self._keep = keep_embeddings
        self._progress_dir = progress_dir
        self._decides = decides

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)
        self._reused = Metrics.counter(NAMESPACE, f"{STAGE}/embeddings_reused")

    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.embedding_source is None or sample.image_embedding is None:
            self._counter.add(kept=False, reason="embedding_missing", status=Status.FAILED)
            detail = "the pool has no embedding of this sample for the configured model"
            yield sample.decided(Status.FAILED, "embedding_missing", STAGE, detail)
            return
        self._reused.inc()
        if not self._decides:
            self._counter.add(kept=True)
        if not self._keep:
            sample = sample.evolve(image_embedding=None, text_embedding=None)
        yield sample

    def finish_bundle(self) -> None:
        self._counter.flush()


class EmbedImages(beam.PTransform):
    """Embeds every downloaded pair with CLIP, scores it and applies the configured threshold;
    `ranked` gives the scores `keep_fraction` ranks instead of the run's (`DecideClipScore`)."""

    def __init__(
        self,
        config: EmbedConfig,
        progress_dir: str | None = None,
        reuse_only: bool = False,
        ranked: beam.PTransform | None = None,
    ):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir
        self._reuse_only = reuse_only
        self._ranked = ranked

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        config = self._config
        decides = config.min_clip_score is not None or config.keep_fraction is not None
        todo, passing = samples | "Split" >> SplitByStatus(downloaded)
        reuse = _ReuseFn(config.write_embeddings, self._progress_dir, decides)
        if self._reuse_only:  # the pool holds this model's embeddings: no model is loaded
            scored = todo | "Reuse" >> beam.ParDo(reuse)
            failed: list[beam.PCollection] = []
        else:
            todo, carried = todo | "SplitCarried" >> SplitByStatus(lambda s: s.embedding_source is None)
            scored, failed = self._embed(todo)
            reused = carried | "Reuse" >> beam.ParDo(reuse)
            scored = (scored, reused) | "Scored" >> beam.Flatten()
        if decides:
            decide = DecideClipScore(config, self._progress_dir, passing, self._ranked)
            scored = scored | "DecideClipScore" >> decide
        return (scored, *failed, passing) | "Merge" >> beam.Flatten()

    def _embed(self, todo: beam.PCollection) -> tuple[beam.PCollection, list[beam.PCollection]]:
        """The samples embedded by the model, and those that failed on the way."""
        config = self._config
        decides = config.min_clip_score is not None or config.keep_fraction is not None
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
        return scored, [unreadable, model_failed]
