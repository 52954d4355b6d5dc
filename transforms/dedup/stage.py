"""Dedup stage: exact, perceptual and semantic duplicates, and evaluation-set decontamination.

In: `Sample`s after the crawl (and the embed stage, for the semantic level). Candidates are the
samples still `success` with an image; the others pass through untouched. Out: the same samples;
a removed one is `rejected` with its reason, the uid it duplicates in `duplicate_of` and its
group in `dup_group` (the uid of the sample the group keeps, which carries it too).

Levels, in order, each working on the survivors of the one before and each switchable:

1. `eval_contamination` (`dedup.eval_images`): near-duplicates of an evaluation image, by hash
   and thumbnail (as level 3) or by embedding cosine; `duplicate_of` names the eval image.
2. `exact_duplicate` (`dedup.exact`): the same decoded pixels (sha256 of the RGB pixels and
   size); the same downloaded bytes (sha256, recorded by the crawl) imply the same pixels.
3. `near_duplicate` (`dedup.perceptual`): a 64-bit perceptual hash within `max_hash_distance`
   bits, found by LSH banding (`transforms/dedup/hashed.py`), confirmed by thumbnail similarity.
4. `semantic_duplicate` (`dedup.semantic`, needs the embed stage): SemDeDup on the image
   embeddings (`transforms/dedup/semantic.py`).

Which sample a group keeps: at the exact and perceptual levels the one with the most source pixels,
then the highest `clip_score`, then the smallest uid; at the semantic level `dedup.keep` decides.
Every choice is deterministic, so the same input gives the same shards.

Only light records (`Fingerprint`: hashes, the thumbnail, the embedding) move through the levels'
shuffles; the samples with their images are joined with the decisions once, at the end.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import apache_beam as beam
from PIL import Image

from schemas.sample import Sample, Status
from transforms.common.checks import Check
from transforms.common.progress import StageCounter
from transforms.crawl.imaging import ImageOptions, content_box
from transforms.dedup.cosine import KeepPolicy
from transforms.dedup.perceptual import dhash, phash, pixel_digest, thumbnail_signature

if TYPE_CHECKING:
    from transforms.embed.clip import EmbedConfig

STAGE = "dedup"
EXACT, NEAR, SEMANTIC, EVAL = "exact_duplicate", "near_duplicate", "semantic_duplicate", "eval_contamination"


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """The `dedup` section."""

    #: Remove samples whose decoded pixels equal another's (`exact_duplicate`).
    exact: bool = True
    #: Remove samples whose perceptual hash and thumbnail match another's (`near_duplicate`).
    perceptual: bool = True
    #: Remove samples whose image embedding is within `epsilon` of another's (`semantic_duplicate`).
    semantic: bool = True
    #: The 64-bit perceptual hash (as `imagehash` computes it): `dhash` (gradients) or `phash` (DCT).
    hash: Literal["dhash", "phash"] = "dhash"
    #: Most differing hash bits between near-duplicates.
    max_hash_distance: int = 10
    #: LSH bands of the hash; 0: `max_hash_distance + 1`, which finds every pair within the distance.
    #: Fewer, wider bands make smaller buckets and may miss pairs near the distance.
    hash_bands: int = 0
    #: Least cosine of the two 16x16 mean-removed colour thumbnails that confirms a hash match.
    min_thumbnail_similarity: float = 0.9
    #: Semantic duplicates have image-embedding cosine >= 1 - epsilon (depends on the model).
    epsilon: float = 0.001
    #: k-means clusters; 0: one per `cluster_size` samples (at most one per 39 training points).
    clusters: int = 0
    #: Average cluster size aimed at when `clusters` is 0.
    cluster_size: int = 1000
    #: Embeddings the k-means is trained on (a deterministic sample by uid hash).
    kmeans_sample: int = 100_000
    #: k-means iterations.
    kmeans_iterations: int = 20
    #: Clusters and hash buckets larger than this are compared in tiles of this many samples.
    max_group_size: int = 5000
    #: Which sample a semantic group keeps: `clip_score` (highest), `farthest` (from the cluster
    #: centroid, as SemDeDup does) or `first_uid`.
    keep: KeepPolicy = "clip_score"
    #: Seed of the k-means and of the training sample.
    seed: int = 0
    #: Evaluation images to decontaminate against: a folder or glob of image files, WebDataset
    #: tars or Parquet files with an image column (local, s3://, gs://). None: no decontamination.
    eval_images: str | None = None
    #: Least image-embedding cosine that marks a sample as a copy of an evaluation image.
    eval_min_cosine: float = 0.999

    def __post_init__(self) -> None:
        check = Check("dedup", self)
        check.between(0, 63, "max_hash_distance")
        check.between(0, self.max_hash_distance + 1, "hash_bands")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"dedup.epsilon ({self.epsilon!r}) must be in [0, 1)")
        check.at_least(1, "cluster_size", "kmeans_sample", "kmeans_iterations", "max_group_size")
        check.at_least(0, "clusters")
        check.between(-1, 1, "min_thumbnail_similarity", "eval_min_cosine")  # cosines
        check.seed("seed")
        check.not_empty("eval_images")

    @property
    def bands(self) -> int:
        return self.hash_bands or self.max_hash_distance + 1


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the dedup levels know of one candidate sample."""

    uid: str
    sha256: str | None
    pixels: str
    hash64: int
    signature: bytes
    area: int
    clip_score: float | None
    embedding: Any = None  # float16 (d,) or None

    @property
    def rank(self) -> tuple[float, float]:
        """Sorts the copy an exact or perceptual group keeps first (before the uid tie-break)."""
        score = self.clip_score
        return (-float(self.area), math.inf if score is None or math.isnan(score) else -score)


@dataclasses.dataclass(frozen=True)
class Decision:
    """A removed sample: why, which sample (or eval image) it duplicates, and the evidence."""

    uid: str
    reason: str
    duplicate_of: str
    detail: str


def fingerprint(sample: Sample, hash_kind: str, options: ImageOptions) -> Fingerprint:
    """The fingerprint of a downloaded sample: its stored image decoded once, without the white
    padding of the `border` resize mode (which would make every padded image look alike)."""
    with Image.open(io.BytesIO(sample.image or b"")) as opened:
        image = opened.convert("RGB")
    if sample.original_width and sample.original_height:
        box = content_box(sample.original_width, sample.original_height, options)
        if box is not None and image.size == (options.image_size, options.image_size):
            image = image.crop(box)
    return Fingerprint(
        uid=sample.uid,
        sha256=sample.sha256,
        pixels=pixel_digest(image),
        hash64=(phash if hash_kind == "phash" else dhash)(image),
        signature=thumbnail_signature(image),
        area=(sample.original_width or image.width) * (sample.original_height or image.height),
        clip_score=sample.clip_score,
        embedding=sample.image_embedding,
    )


def _route(sample: Sample, partitions: int) -> int:
    """0: a dedup candidate (downloaded and kept so far), 1: pass through."""
    return 0 if sample.status == Status.SUCCESS and sample.image is not None else 1


class _FingerprintFn(beam.DoFn):
    def __init__(self, hash_kind: str, options: ImageOptions):
        self._hash = hash_kind
        self._options = options

    def process(self, sample: Sample) -> Iterator[tuple[str, Fingerprint]]:
        yield sample.uid, fingerprint(sample, self._hash, self._options)


def _survivors(fingerprints: beam.PCollection, decisions: beam.PCollection, label: str) -> beam.PCollection:
    """The (uid, fingerprint) pairs that `decisions` did not remove."""

    def keep(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, Fingerprint]]:
        uid, joined = element
        if not joined["removed"]:
            for found in joined["fingerprint"][:1]:
                yield uid, found

    return (
        {"fingerprint": fingerprints, "removed": decisions | f"Key{label}" >> beam.Map(lambda d: (d.uid, d))}
        | f"Join{label}" >> beam.CoGroupByKey()
        | f"Survivors{label}" >> beam.FlatMap(keep)
    )


def _resolve_groups(levels: list[beam.PCollection]) -> beam.PCollection:
    """(uid, group) for every removed sample: the uid its chain of duplicates finally keeps.

    A sample removed at one level duplicates a survivor of that level, which a later level may
    remove in turn; resolving the levels from the last one back, each needs one join.
    """
    roots: beam.PCollection | None = None
    for index, level in reversed(list(enumerate(levels))):
        pointing = level | f"ByKept{index}" >> beam.Map(lambda d: (d.duplicate_of, d.uid))
        if roots is None:
            roots = pointing | f"Roots{index}" >> beam.Map(lambda kv: (kv[1], kv[0]))
            continue

        def follow(element: tuple[str, dict[str, list[str]]]) -> Iterator[tuple[str, str]]:
            kept, joined = element
            root = joined["root"][0] if joined["root"] else kept
            for removed in joined["removed"]:
                yield removed, root

        resolved = (
            {"removed": pointing, "root": roots}
            | f"JoinRoots{index}" >> beam.CoGroupByKey()
            | f"Follow{index}" >> beam.FlatMap(follow)
        )
        roots = (roots, resolved) | f"AllRoots{index}" >> beam.Flatten()
    assert roots is not None
    return roots


class _ApplyFn(beam.DoFn):
    """Joins each candidate with its decision and group. Rows repeating a uid (the same url and
    caption) pass unchanged after the first: the writer rejects them as `duplicate_uid`."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Sample]:
        uid, joined = element
        samples = sorted(joined["sample"], key=lambda s: (s.sha256 or "", s.url or "", s.caption or ""))
        if not samples:
            return
        decision: Decision | None = joined["removed"][0] if joined["removed"] else None
        group = joined["group"][0] if joined["group"] else (uid if joined["keeps"] else None)
        first = samples[0]
        if decision is None:
            self._counter.add(kept=True)
            yield first.evolve(dup_group=group)
        else:
            self._counter.add(kept=False, reason=decision.reason)
            yield first.decided(Status.REJECTED, decision.reason, STAGE, decision.detail).evolve(
                duplicate_of=decision.duplicate_of, dup_group=group
            )
        yield from samples[1:]  # the same url and caption again: the writer marks it `duplicate_uid`

    def finish_bundle(self) -> None:
        self._counter.flush()


class DeduplicateImages(beam.PTransform):
    """Removes evaluation-set copies and exact, near and semantic duplicates, keeping one per group.

    `image_options` (the crawl's) normalise the eval images; `embed` is the run's embed config, or
    None when the run does not embed (then the semantic level and eval embeddings are skipped).
    """

    def __init__(
        self,
        config: DedupConfig,
        image_options: ImageOptions,
        embed: EmbedConfig | None,
        progress_dir: str | None = None,
    ):
        super().__init__()
        self._config = config
        self._image_options = image_options
        self._embed = embed
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        from transforms.dedup.decontam import DecontaminateEval
        from transforms.dedup.hashed import ExactDuplicates, NearDuplicates
        from transforms.dedup.semantic import SemanticDuplicates

        config = self._config
        candidates, passing = samples | "Split" >> beam.Partition(_route, 2)  # type: ignore[arg-type]
        fingerprints = candidates | "Fingerprint" >> beam.ParDo(
            _FingerprintFn(config.hash, self._image_options)
        )
        removals: list[beam.PCollection] = []
        grouped: list[beam.PCollection] = []
        levels: list[tuple[str, beam.PTransform, bool]] = [
            (
                "Eval",
                DecontaminateEval(config, self._image_options, self._embed),
                config.eval_images is not None,
            ),
            ("Exact", ExactDuplicates(), config.exact),
            ("Near", NearDuplicates(config), config.perceptual),
            ("Semantic", SemanticDuplicates(config), config.semantic and self._embed is not None),
        ]
        for name, level, enabled in levels:
            if not enabled:
                continue
            decisions = fingerprints | name >> level
            removals.append(decisions)
            if name != "Eval":
                grouped.append(decisions)
            fingerprints = _survivors(fingerprints, decisions, name)
        keyed = candidates | "KeyByUid" >> beam.Map(lambda s: (s.uid, s))
        if removals:
            removed = (
                removals | "AllRemovals" >> beam.Flatten() | "KeyRemoved" >> beam.Map(lambda d: (d.uid, d))
            )
        else:
            removed = samples.pipeline | "NoRemovals" >> beam.Create([])
        if grouped:
            groups = _resolve_groups(grouped)
            keeps = (
                groups
                | "Keepers" >> beam.Map(lambda kv: (kv[1], True))
                | "OneKeeper" >> beam.CombinePerKey(any)
            )
        else:
            groups = samples.pipeline | "NoGroups" >> beam.Create([])
            keeps = samples.pipeline | "NoKeepers" >> beam.Create([])
        decided = (
            {"sample": keyed, "removed": removed, "group": groups, "keeps": keeps}
            | "JoinDecisions" >> beam.CoGroupByKey()
            | "Apply" >> beam.ParDo(_ApplyFn(self._progress_dir))
        )
        return (decided, passing) | "Merge" >> beam.Flatten()
