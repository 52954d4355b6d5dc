"""Safety stage: known-bad blocklists, NSFW scores and faces, right after the crawl.

In: `Sample`s from the crawl, each downloaded one carrying `probes` (what `SafetyProbe` measured
while the crawl held the pixels: digests, the original's PDQ hash, faces; the faces already
blurred in the stored image when `safety.blur_faces` is set).
Out: the same samples; `probes` turned into columns and dropped:
- `blocklisted` (rejected): the bytes' digest or the image's PDQ hash is listed; `blocklist` names
  the list, `error` the evidence with hashes truncated. The row keeps nothing of the image: no
  bytes (so no tar member, no thumbnail), no embedding (the embed stage skips rejected rows).
  URLs on the URL list were rejected before the fetch by `ScreenUrls` (`blocklist`: url, domain).
- `too_many_faces` (rejected): more than `safety.max_faces` boxes in `face_bboxes`.
- `nsfw` (rejected): `nsfw_score` above `safety.max_nsfw`; the score is kept on every scored row.
Nothing is dropped: a rejected sample keeps its row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.utils.shared import Shared

from schemas.sample import Sample, Status
from transforms.common.failures import FailedRows, Guarded, batch_samples
from transforms.common.outputs import WithSummary
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus, downloaded
from transforms.safety.blocklists import Blocklists, read_blocklists
from transforms.safety.config import SafetyConfig, is_head
from transforms.safety.head import ClipHead, load_head
from transforms.safety.nsfw import LoadedScorer, NsfwModelHandler, nsfw_identity, preprocess

LOG = logging.getLogger(__name__)
STAGE = "safety"
BLOCKLISTED = "blocklisted"
TOO_MANY_FACES = "too_many_faces"
NSFW = "nsfw"


class _Lists:
    """The run's blocklists, one copy per worker process (`Shared` keeps a weak reference)."""

    def __init__(self, lists: Blocklists):
        self.lists = lists


def _blocked(sample: Sample, blocklist: str, detail: str) -> Sample:
    LOG.info("blocklisted %s (%s): %s", sample.uid, blocklist, detail)
    return sample.evolve(blocklist=blocklist).decided(Status.REJECTED, BLOCKLISTED, STAGE, detail)


class _ListsFn(beam.DoFn):
    """A DoFn holding the run's blocklists (one copy per worker process) and the stage's counter."""

    def __init__(self, config: SafetyConfig, progress_dir: str | None):
        self._config = config
        self._progress_dir = progress_dir
        self._shared = Shared()

    def setup(self) -> None:
        self._lists = self._shared.acquire(lambda: _Lists(read_blocklists(self._config))).lists
        self._counter = StageCounter(STAGE, self._progress_dir)

    def finish_bundle(self) -> None:
        self._counter.flush()


class _ScreenFn(_ListsFn):
    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.status == Status.PENDING and self._lists.urls is not None:
            matched = self._lists.urls.match(sample.url)
            if matched is not None:
                self._counter.add(kept=False, reason=BLOCKLISTED)
                what = "URL" if matched == "url" else "host"
                yield _blocked(sample, matched, f"the {what} is on the URL blocklist")
                return
        yield sample


class ScreenUrls(beam.PTransform):
    """Rejects the pending samples whose URL or host is on `safety.url_blocklist`, before the crawl
    would fetch them (`blocklisted`, `blocklist` = `url` or `domain`)."""

    def __init__(self, config: SafetyConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return samples | "Screen" >> beam.ParDo(_ScreenFn(self._config, self._progress_dir))


class _JudgeFn(_ListsFn):
    """Blocklists and faces of each downloaded sample, from what the crawl's probe measured."""

    def __init__(self, config: SafetyConfig, progress_dir: str | None, scored_later: bool):
        super().__init__(config, progress_dir)
        self._scored_later = scored_later

    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.status != Status.SUCCESS:  # `Sample.decided` dropped what the probe measured
            yield sample
            return
        judged = self._judge(sample)
        if judged.status != Status.SUCCESS or not self._scored_later:
            self._counter.add(
                kept=judged.status == Status.SUCCESS, reason=judged.reason, status=judged.status
            )
        yield judged

    def _judge(self, sample: Sample) -> Sample:
        probes = sample.probes or {}
        measured: dict[str, str] = {kind: probes[kind] for kind in ("md5", "sha1") if kind in probes}
        if sample.sha256 is not None:
            measured["sha256"] = sample.sha256
        matched = self._lists.match_digests(measured) or self._lists.match_pdq(probes.get("pdq"))
        if matched is not None:
            return _blocked(sample, *matched)
        boxes = probes.get("face_bboxes")
        sample = sample.evolve(probes=None, face_bboxes=boxes)
        limit = self._config.max_faces
        if boxes is not None and limit is not None and len(boxes) > limit:
            detail = f"{len(boxes)} faces found ({probes.get('faces_from')}), above safety.max_faces {limit}"
            return sample.decided(Status.REJECTED, TOO_MANY_FACES, STAGE, detail)
        return sample


class _PrepareFn(beam.DoFn):
    def process(self, sample: Sample) -> Iterator[tuple[Sample, np.ndarray]]:
        assert sample.image is not None
        yield sample, preprocess(sample.image)


class _DecideNsfwFn(beam.DoFn):
    def __init__(self, max_nsfw: float | None, progress_dir: str | None):
        self._max_nsfw = max_nsfw
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[Sample, float]) -> Iterator[Sample]:
        sample, score = element
        yield decide_nsfw(sample, score, self._max_nsfw, self._counter)

    def finish_bundle(self) -> None:
        self._counter.flush()


def decide_nsfw(
    sample: Sample, score: float, max_nsfw: float | None, counter: StageCounter | None = None
) -> Sample:
    """`sample` with its NSFW score, rejected (`nsfw`) when the score is above `max_nsfw`."""
    scored = sample.evolve(nsfw_score=score)
    if max_nsfw is not None and score > max_nsfw:
        detail = f"nsfw_score {score:.4f} > safety.max_nsfw {max_nsfw}"
        scored = scored.decided(Status.REJECTED, NSFW, STAGE, detail)
    if counter is not None:
        counter.add(kept=scored.status == Status.SUCCESS, reason=scored.reason)
    return scored


def _facts(sample: Sample) -> tuple[str | None, int, bool, bool, bool]:
    """(blocklist, faces, kept, scored, searched for faces) of a sample: what `_Tally` counts."""
    faces = len(sample.face_bboxes) if sample.face_bboxes else 0
    kept, scored = sample.status == Status.SUCCESS, sample.nsfw_score is not None
    return sample.blocklist, faces, kept, scored, sample.face_bboxes is not None


class _Tally(beam.CombineFn):
    """The stage's section of stats.json: what it looked for and what it found."""

    def __init__(self, config: SafetyConfig):
        self._config = config

    def create_accumulator(self) -> dict[str, Any]:
        return {
            "blocklisted": {},
            "searched_for_faces": 0,
            "with_faces": 0,
            "faces": 0,
            "blurred": 0,
            "nsfw_scored": 0,
        }

    def add_input(
        self, acc: dict[str, Any], facts: tuple[str | None, int, bool, bool, bool]
    ) -> dict[str, Any]:
        blocklist, faces, kept, scored, searched = facts
        if blocklist is not None:
            acc["blocklisted"][blocklist] = acc["blocklisted"].get(blocklist, 0) + 1
        acc["searched_for_faces"] += searched
        if faces:
            acc["with_faces"] += 1
            acc["faces"] += faces
            if self._config.blur_faces and kept:
                acc["blurred"] += 1
        if scored:
            acc["nsfw_scored"] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for key, count in acc["blocklisted"].items():
                merged["blocklisted"][key] = merged["blocklisted"].get(key, 0) + count
            for key in ("searched_for_faces", "with_faces", "faces", "blurred", "nsfw_scored"):
                merged[key] += acc[key]
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        config = self._config
        lists = {
            "url": config.url_blocklist,
            "hash": config.hash_blocklist,
            "pdq": config.pdq_blocklist,
        }
        return {
            **acc,
            "blocklisted": dict(sorted(acc["blocklisted"].items())),
            "lists": {name: path for name, path in lists.items() if path},
            "pdq_max_distance": config.pdq_max_distance,
            "nsfw_model": nsfw_identity(config.nsfw_model) if config.nsfw_model else None,
            "max_nsfw": config.max_nsfw,
            "face_detector": config.detector,
            "blur_faces": config.blur_faces,
            "max_faces": config.max_faces,
        }


class CheckSafety(beam.PTransform):
    """Blocklists, faces and NSFW scores of the crawled samples (the module docstring's contract)."""

    def __init__(self, config: SafetyConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> WithSummary:
        config = self._config
        scores = config.nsfw_model is not None and not is_head(config.nsfw_model)
        judged = samples | "Judge" >> beam.ParDo(_JudgeFn(config, self._progress_dir, scores))
        if scores:
            judged = judged | "Nsfw" >> _ScoreNsfw(config, self._progress_dir)
        # Light facts only: no image bytes cross the combine's shuffle.
        summary = judged | "Facts" >> beam.Map(_facts) | "Tally" >> beam.CombineGlobally(_Tally(config))
        return WithSummary(judged, summary)


class _ScoreNsfw(beam.PTransform):
    def __init__(self, config: SafetyConfig, progress_dir: str | None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        config, progress = self._config, self._progress_dir
        assert config.nsfw_model is not None
        todo, passing = samples | "Split" >> SplitByStatus(downloaded)
        prepare = Guarded(_PrepareFn(), STAGE, "nsfw_preprocess", progress)
        prepared, unreadable = todo | "Preprocess" >> prepare
        handler: KeyedModelHandler[Sample, np.ndarray, float, LoadedScorer] = KeyedModelHandler(
            NsfwModelHandler(config.nsfw_model, config.nsfw_batch_size)
        )
        scored, dead = prepared | "RunInference" >> RunInference(handler).with_exception_handling()
        model_failed = FailedRows(STAGE, "nsfw_model", batch_samples, progress)
        failed = dead.failed_inferences | "ModelFailed" >> model_failed
        decided = scored | "Decide" >> beam.ParDo(_DecideNsfwFn(config.max_nsfw, progress))
        return (decided, unreadable, failed, passing) | "Merge" >> beam.Flatten()


class _Head:
    """The CLIP head, one copy per worker process (`Shared`)."""

    def __init__(self, head: ClipHead):
        self.head = head


class _HeadScoreFn(beam.DoFn):
    def __init__(self, config: SafetyConfig, progress_dir: str | None):
        self._config = config
        self._progress_dir = progress_dir
        self._shared = Shared()

    def setup(self) -> None:
        path = self._config.nsfw_model
        assert path is not None
        self._head = self._shared.acquire(lambda: _Head(load_head(path))).head
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.status != Status.SUCCESS or sample.image_embedding is None:
            yield sample
            return
        # The launch checks the run's model; a pool's reused embeddings might still differ.
        if sample.clip_model != self._head.clip_model:
            raise ValueError(
                f"the CLIP head reads {self._head.clip_model} embeddings; "
                f"{sample.uid} has {sample.clip_model}'s"
            )
        score = float(self._head.score(np.asarray(sample.image_embedding)[None])[0])
        yield decide_nsfw(sample, score, self._config.max_nsfw, self._counter)

    def finish_bundle(self) -> None:
        self._counter.flush()


class ScoreNsfwFromEmbeddings(beam.PTransform):
    """NSFW scores of the embedded samples from a CLIP head (`head.py`) over their image
    embeddings, after the embed stage: no second pass over the pixels. A sample the head cannot
    score (another model's embedding) becomes a failed row (`internal_error`)."""

    def __init__(self, config: SafetyConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        scored, failed = samples | "Score" >> Guarded(
            _HeadScoreFn(self._config, self._progress_dir), STAGE, "nsfw_head", self._progress_dir
        )
        return (scored, failed) | "Merge" >> beam.Flatten()
