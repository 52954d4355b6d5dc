"""The exact and perceptual dedup levels, and the tiling both hashing and clustering use.

- `ExactDuplicates`: (uid, Fingerprint) → `Decision`s. Groups by the pixel digest; each group keeps
  its first fingerprint by `Fingerprint.rank`, then uid.
- `NearDuplicates`: every fingerprint goes to one LSH bucket per band of its 64-bit hash; inside a
  bucket, pairs within `max_hash_distance` bits are candidates, confirmed when their thumbnail
  signatures agree (`min_thumbnail_similarity`). A pair sharing several bands is judged only in
  the bucket of the first band they share. The confirmed links are few; their connected
  components are found in one step (union-find, as DataTrove's MinHash cluster step does), and
  each component keeps its first fingerprint by rank, then uid.
- `TileGroups`: (key, member) → ((key, a, b), (chunk, member)). A group (bucket or cluster) larger
  than `max_size` is cut into ceil(size / max_size) chunks by uid hash, and each member is sent to
  every tile (a, b), a <= b, that holds its chunk, so each pair of the group meets in exactly one
  tile and no worker holds more than two chunks: a hot bucket (a million blank images) or a
  cluster of a million copies of one flag is spread over many workers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import xxhash

from transforms.common.progress import NAMESPACE
from transforms.dedup.cosine import resolve_ranked
from transforms.dedup.perceptual import cross_pairs, hash_bands, near_duplicate_pairs, signature_similarity
from transforms.dedup.stage import EXACT, NEAR, Decision, DedupConfig, Fingerprint


def chunk_of(uid: str, chunks: int) -> int:
    """The chunk of a uid in a group cut into `chunks` parts (stable across runs and runners)."""
    return xxhash.xxh3_64_intdigest(uid.encode()) % chunks if chunks > 1 else 0


class _TileFn(beam.DoFn):
    def __init__(self, max_size: int):
        self._max_size = max_size

    def process(
        self, element: tuple[Any, Any], big: dict[Any, int]
    ) -> Iterator[tuple[tuple[Any, int, int], tuple[int, Any]]]:
        key, member = element
        chunks = math.ceil(big[key] / self._max_size) if key in big else 1
        mine = chunk_of(member.uid, chunks)
        for other in range(chunks):
            yield (key, min(mine, other), max(mine, other)), (mine, member)


class TileGroups(beam.PTransform):
    """Cuts groups larger than `max_size` into tiles of chunk pairs (see the module docstring)."""

    def __init__(self, max_size: int):
        super().__init__()
        self._max_size = max_size

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        max_size = self._max_size
        big = (
            keyed
            | "Ones" >> beam.Map(lambda kv: (kv[0], 1))
            | "Sizes" >> beam.CombinePerKey(sum)
            | "Big" >> beam.Filter(lambda kv: kv[1] > max_size)
        )
        return keyed | "Tile" >> beam.ParDo(_TileFn(max_size), big=beam.pvalue.AsDict(big))


def split_tile(members: Iterable[tuple[int, Any]], a: int, b: int) -> tuple[list[Any], list[Any]]:
    """The (rows, cols) members of tile (a, b), each sorted by uid; the same list twice when a == b."""
    rows = sorted((m for chunk, m in members if chunk == a), key=lambda m: m.uid)
    cols = rows if a == b else sorted((m for chunk, m in members if chunk == b), key=lambda m: m.uid)
    return rows, cols


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
    signature: bytes
    rank: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Link:
    a: str
    rank_a: Any
    b: str
    rank_b: Any
    evidence: str


class _BucketPairsFn(beam.DoFn):
    """Candidate pairs of one bucket tile, confirmed by their thumbnails."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_comparisons")
        self._links = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_links")

    def process(self, element: tuple[tuple[Any, int, int], Iterable[tuple[int, Any]]]) -> Iterator[_Link]:
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
            similarity = signature_similarity(first.signature, second.signature)
            if similarity >= config.min_thumbnail_similarity:
                self._links.inc()
                evidence = f"hash distance {distance}, thumbnail cosine {similarity:.3f}"
                yield _Link(uid_a, first.rank, uid_b, second.rank, evidence)


def _share_earlier_band(first: int, second: int, band: int, bands: int) -> bool:
    return any(
        x == y for x, y in zip(hash_bands(first, bands)[:band], hash_bands(second, bands)[:band], strict=True)
    )


def components(links: list[_Link], reason: str) -> list[Decision]:
    """The connected components of `links`; each keeps its lowest (rank, uid), the others are removed."""
    uids = sorted({link.a for link in links} | {link.b for link in links})
    position = {uid: index for index, uid in enumerate(uids)}
    ranks: list[Any] = [None] * len(uids)
    evidence: dict[str, tuple[str, str]] = {}
    for link in sorted(links, key=lambda link: (link.a, link.b)):
        ranks[position[link.a]], ranks[position[link.b]] = link.rank_a, link.rank_b
        evidence.setdefault(link.a, (link.b, link.evidence))
        evidence.setdefault(link.b, (link.a, link.evidence))
    pairs = [(position[link.a], position[link.b]) for link in links]
    decisions = []
    for removed, kept, _ in resolve_ranked(uids, pairs, ranks):
        partner, found = evidence[removed]
        decisions.append(Decision(removed, reason, kept, f"duplicate of {kept}; {found} to {partner}"))
    return decisions


class NearDuplicates(beam.PTransform):
    """(uid, Fingerprint) → a `Decision` for every near-duplicate that its group does not keep."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        bands = self._config.bands

        def buckets(element: tuple[str, Fingerprint]) -> Iterator[tuple[tuple[int, int], _HashMember]]:
            uid, found = element
            member = _HashMember(uid, found.hash64, found.signature, found.rank)
            for key in hash_bands(found.hash64, bands):
                yield key, member

        return (
            fingerprints
            | "Buckets" >> beam.FlatMap(buckets)
            | "Tiles" >> TileGroups(self._config.max_group_size)
            | "GroupTiles" >> beam.GroupByKey()
            | "Pairs" >> beam.ParDo(_BucketPairsFn(self._config))
            | "AllLinks" >> beam.combiners.ToList()
            | "Components" >> beam.FlatMap(lambda links: components(links, NEAR))
        )
