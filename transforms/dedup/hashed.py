"""The exact and perceptual dedup levels.

- `ExactDuplicates`: (uid, Fingerprint) → `Decision`s. Groups by the pixel digest; each group keeps
  its first fingerprint by `Fingerprint.rank`, then uid.
- `NearDuplicates`: every fingerprint's uid, hash and rank go to one LSH bucket per band of its
  64-bit hash; inside a bucket, pairs within `max_hash_distance` bits are candidates (a pair
  sharing several bands only in the bucket of the first band they share). The candidates then
  meet the two thumbnail signatures (one join: each signature moves once, not once per band) and
  are confirmed when they agree (`min_thumbnail_similarity`). The confirmed links' connected
  components are found across workers (`common.unionfind.ConnectedComponents`: min-label
  propagation, then a union-find over the few links left), and each component keeps its first
  fingerprint by rank, then uid.

A hot bucket (a million blank images) is cut into tiles (`transforms/common/tiling.py`), so no
worker holds more than two chunks of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.common.progress import NAMESPACE
from transforms.common.tiling import TileGroups, split_tile
from transforms.common.unionfind import ConnectedComponents, Link
from transforms.dedup.config import DedupConfig
from transforms.dedup.perceptual import cross_pairs, hash_bands, near_duplicate_pairs, signature_similarity
from transforms.dedup.types import EXACT, NEAR, Decision, Fingerprint

# ---------------------------------------------------------------- exact


def _exact_group(element: tuple[str, Iterable[tuple[Any, str, str | None]]]) -> Iterator[Decision]:
    digest, members = element
    ordered = sorted(set(members))
    _, kept, kept_sha = ordered[0]
    for _, uid, sha in ordered[1:]:
        if uid != kept:
            files = "; the downloaded files are identical too" if sha and sha == kept_sha else ""
            detail = f"the same decoded pixels as {kept} (sha256 of the RGB pixels {digest[:16]}{files})"
            yield Decision(uid, EXACT, kept, detail)


class ExactDuplicates(beam.PTransform):
    """(uid, Fingerprint) → a `Decision` for every sample whose pixels another kept sample has."""

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        return (
            fingerprints
            | "ByPixels" >> beam.Map(lambda kv: (kv[1].pixels, (kv[1].rank, kv[0], kv[1].sha256)))
            | "Group" >> beam.GroupByKey()
            | "Decide" >> beam.FlatMap(_exact_group)
        )


# ---------------------------------------------------------------- perceptual


@dataclasses.dataclass(frozen=True)
class _HashMember:
    uid: str
    hash64: int
    rank: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """Two hashes within the distance, a < b: a pair to confirm by its thumbnails."""

    a: _HashMember
    b: _HashMember
    distance: int


class _BucketPairsFn(beam.DoFn):
    """Candidate pairs of one bucket tile: hashes within `max_hash_distance` bits, each pair once."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_comparisons")

    def process(
        self, element: tuple[tuple[Any, int, int], Iterable[tuple[int, Any]]]
    ) -> Iterator[_Candidate]:
        (band_key, a, b), members = element
        band = band_key[0]
        config = self._config
        rows, cols = split_tile(members, a, b)
        by_uid = {m.uid: m for m in (*rows, *cols)}
        if a == b:
            pairs = near_duplicate_pairs([(m.uid, m.hash64) for m in rows], config.max_hash_distance)
            self._comparisons.inc(len(rows) * (len(rows) - 1) // 2)
        else:
            pairs = cross_pairs(
                [(m.uid, m.hash64) for m in rows], [(m.uid, m.hash64) for m in cols], config.max_hash_distance
            )
            self._comparisons.inc(len(rows) * len(cols))
        for uid_a, uid_b, distance in pairs:
            first, second = by_uid[uid_a], by_uid[uid_b]
            if band and _share_earlier_band(first.hash64, second.hash64, band, config.bands):
                continue  # judged in the bucket of that earlier band
            yield _Candidate(first, second, distance)


def _signature_halves(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[tuple[str, str], Any]]:
    """A uid's signature, sent to each candidate pair it is part of."""
    _, joined = element
    for signature in joined["signature"][:1]:
        for pair in joined["pair"]:
            yield pair, signature


class _ConfirmFn(beam.DoFn):
    """A candidate pair with both thumbnail signatures → a `Link` when they agree."""

    def __init__(self, min_similarity: float):
        self._min_similarity = min_similarity

    def setup(self) -> None:
        self._links = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_links")

    def process(self, element: tuple[tuple[str, str], dict[str, list[Any]]]) -> Iterator[Link]:
        (uid_a, uid_b), joined = element
        if not joined["candidate"] or len(joined["signature"]) != 2:
            return
        candidate: _Candidate = joined["candidate"][0]
        first, second = joined["signature"]
        similarity = signature_similarity(first, second)
        if similarity >= self._min_similarity:
            self._links.inc()
            evidence = f"hash distance {candidate.distance}, thumbnail cosine {similarity:.3f}"
            yield Link(uid_a, candidate.a.rank, uid_b, candidate.b.rank, evidence)


class _ConfirmPairs(beam.PTransform):
    """(candidate pairs, (uid, Fingerprint)) → `Link`s. Only the candidates meet the thumbnail
    signatures (768 bytes each): every fingerprint's signature crosses one join, not one bucket
    per band."""

    def __init__(self, fingerprints: beam.PCollection, min_similarity: float):
        super().__init__()
        self._fingerprints = fingerprints
        self._min_similarity = min_similarity

    def expand(self, candidates: beam.PCollection) -> beam.PCollection:
        keyed = candidates | "ByPair" >> beam.Map(lambda c: ((c.a.uid, c.b.uid), c))
        signatures = (
            {
                "signature": self._fingerprints
                | "Signatures" >> beam.Map(lambda kv: (kv[0], kv[1].signature)),
                "pair": keyed | "Ends" >> beam.FlatMap(lambda kv: ((kv[0][0], kv[0]), (kv[0][1], kv[0]))),
            }
            | "JoinSignatures" >> beam.CoGroupByKey()
            | "ToPairs" >> beam.FlatMap(_signature_halves)
        )
        return (
            {"candidate": keyed, "signature": signatures}
            | "JoinPairs" >> beam.CoGroupByKey()
            | "Confirm" >> beam.ParDo(_ConfirmFn(self._min_similarity))
        )


def _share_earlier_band(first: int, second: int, band: int, bands: int) -> bool:
    return any(
        x == y for x, y in zip(hash_bands(first, bands)[:band], hash_bands(second, bands)[:band], strict=True)
    )


class NearDuplicates(beam.PTransform):
    """(uid, Fingerprint) → a `Decision` for every near-duplicate that its group does not keep."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        bands = self._config.bands

        def buckets(element: tuple[str, Fingerprint]) -> Iterator[tuple[tuple[int, int], _HashMember]]:
            uid, found = element
            member = _HashMember(uid, found.hash64, found.rank)
            for key in hash_bands(found.hash64, bands):
                yield key, member

        return (
            fingerprints
            | "Buckets" >> beam.FlatMap(buckets)
            | "Tiles" >> TileGroups(self._config.max_group_size)
            | "GroupTiles" >> beam.GroupByKey()
            | "Pairs" >> beam.ParDo(_BucketPairsFn(self._config))
            | "Confirm" >> _ConfirmPairs(fingerprints, self._config.min_thumbnail_similarity)
            | "Components" >> ConnectedComponents()
            | "Decisions" >> beam.Map(lambda r: Decision(r.removed, NEAR, r.kept, r.detail))
        )
