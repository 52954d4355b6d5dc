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
3. `near_duplicate` (`dedup.perceptual`): a perceptual hash (`dedup.hash`) within
   `max_hash_distance` bits, compared inside blocks of about `cluster_size` samples cut by a
   k-means of the thumbnails, each sample in its two nearest (`transforms/dedup/blocks.py`; or
   by LSH banding with `dedup.near_blocking: bands`, `transforms/dedup/hashed.py`), confirmed by
   thumbnail similarity.
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
import xxhash

from schemas.sample import Sample, Status
from schemas.verdict import DEDUP, Verdict
from transforms.common.failures import Guarded
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus, downloaded
from transforms.common.unionfind import Least, PartedGroups
from transforms.common.verdicts import ApplyVerdicts, copy_order, fields_verdict, light, verdict
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


def _spread_tagged(value: tuple[int, str]) -> int:
    return xxhash.xxh3_64_intdigest(value[1].encode())


def _follow(element: tuple[str, tuple[int, str], int, list[tuple[int, str]]]) -> Iterator[tuple[str, str]]:
    """A kept uid's removed members (tag 1) → (removed, root): the kept uid's own root if a later
    level removed it (tag 0, the least value: the part's summary), else the kept uid."""
    kept, (tag, least), _, values = element
    root = least if tag == 0 else kept
    for value_tag, uid in values:
        if value_tag == 1:
            yield uid, root


def _resolve_groups(levels: list[beam.PCollection]) -> beam.PCollection:
    """(uid, group) for every removed sample: the uid its chain of duplicates finally keeps.

    A sample removed at one level duplicates a survivor of that level, which a later level may
    remove in turn; resolving the levels from the last one back, each needs one join, by the kept
    uid: a `PartedGroups`, so a kept uid with thousands of copies comes in parts.
    """
    roots: beam.PCollection | None = None
    for index, level in reversed(list(enumerate(levels))):
        pointing = level | f"ByKept{index}" >> beam.Map(lambda d: (d.duplicate_of, d.uid))
        if roots is None:
            roots = pointing | f"Roots{index}" >> beam.Map(lambda kv: (kv[1], kv[0]))
            continue
        tagged = (
            pointing | f"Removed{index}" >> beam.Map(lambda kv: (kv[0], (1, kv[1]))),
            roots | f"Root{index}" >> beam.Map(lambda kv: (kv[0], (0, kv[1]))),
        ) | f"Tagged{index}" >> beam.Flatten()
        resolved = (
            tagged
            | f"JoinRoots{index}" >> PartedGroups(Least(), _spread_tagged)
            | f"Follow{index}" >> beam.FlatMap(_follow)
        )
        roots = (roots, resolved) | f"AllRoots{index}" >> beam.Flatten()
    assert roots is not None
    return roots


class _VerdictFn(beam.DoFn):
    """Joins each candidate's light view with its decision and group → its verdict. Rows repeating
    a uid (the same url and caption) are judged once: the writer rejects the others as `duplicate_uid`."""

    def __init__(self, progress_dir: str | None):
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Verdict]:
        uid, joined = element
        if not joined["sample"]:
            return
        first = min(joined["sample"], key=copy_order)
        decision: Decision | None = joined["removed"][0] if joined["removed"] else None
        group = joined["group"][0] if joined["group"] else (uid if joined["keeps"] else None)
        if decision is None:
            self._counter.add(kept=True)
            after = first.evolve(dup_group=group)
        else:
            self._counter.add(kept=False, reason=decision.reason)
            after = first.decided(Status.REJECTED, decision.reason, STAGE, decision.detail).evolve(
                duplicate_of=decision.duplicate_of, dup_group=group
            )
        found = verdict(first, after, DEDUP, "kept")
        if found is not None:
            yield found

    def finish_bundle(self) -> None:
        self._counter.flush()


def _failure_verdict(failed: Sample) -> Verdict:
    """The verdict of a candidate the fingerprint step failed on (its row, `failed_row`)."""
    return fields_verdict(failed, ("status", "reason", "stage", "error"), DEDUP, "kept")


class JudgeDuplicates(beam.PTransform):
    """Samples → the dedup stage's verdicts (`schemas.verdict.Verdict`, step `DEDUP`): every
    removed sample's rejection, every group member's `dup_group`, every fingerprint failure.
    Only light records cross its shuffles (see the module docstring).

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
        candidates = samples | "Candidates" >> beam.Filter(downloaded)
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
        enabled = [(name, level) for name, level, wanted in levels if wanted]
        for position, (name, level) in enumerate(enabled):
            decisions = fingerprints | name >> level
            removals.append(decisions)
            if name != "Eval":
                grouped.append(decisions)
            if position + 1 < len(enabled):  # only a later level reads the survivors
                fingerprints = _survivors(fingerprints, decisions, name)
        keyed = fingerprinted | "KeyByUid" >> beam.Map(lambda pair: (pair[0].uid, light(pair[0], False)))
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
            | "Verdicts" >> beam.ParDo(_VerdictFn(self._progress_dir))
        )
        failures = broken | "FailureVerdicts" >> beam.Map(_failure_verdict)
        return (decided, failures) | "AllVerdicts" >> beam.Flatten()


class DeduplicateImages(JudgeDuplicates):
    """The dedup stage on its own: samples → the same samples, duplicates removed (`JudgeDuplicates`'
    verdicts applied by uid). A full run applies the verdicts at the shard grouping instead.
    It takes the judge's arguments."""

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        candidates, passing = samples | "Split" >> SplitByStatus(downloaded)
        judge = JudgeDuplicates(self._config, self._image_options, self._embed, self._progress_dir)
        verdicts = candidates | "Judge" >> judge
        decided = candidates | "ApplyVerdicts" >> ApplyVerdicts(verdicts)
        return (decided, passing) | "Merge" >> beam.Flatten()
