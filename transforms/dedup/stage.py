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

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import apache_beam as beam

from schemas.sample import Sample, Status
from transforms.common.failures import Guarded
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus, downloaded
from transforms.crawl.config import ImageOptions
from transforms.dedup.config import DedupConfig
from transforms.dedup.decontam import DecontaminateEval
from transforms.dedup.fingerprints import FingerprintFn
from transforms.dedup.hashed import ExactDuplicates, NearDuplicates
from transforms.dedup.semantic import SemanticDuplicates
from transforms.dedup.types import Decision, Fingerprint

if TYPE_CHECKING:
    from transforms.embed.config import EmbedConfig

STAGE = "dedup"


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
        config = self._config
        candidates, passing = samples | "Split" >> SplitByStatus(downloaded)
        fingerprinted, broken = candidates | "Fingerprint" >> Guarded(
            FingerprintFn(config.hash, self._image_options), STAGE, "fingerprint", self._progress_dir
        )
        fingerprints = fingerprinted | "Fingerprints" >> beam.Map(lambda pair: (pair[0].uid, pair[1]))
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
        keyed = fingerprinted | "KeyByUid" >> beam.Map(lambda pair: (pair[0].uid, pair[0]))
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
        return (decided, broken, passing) | "Merge" >> beam.Flatten()
