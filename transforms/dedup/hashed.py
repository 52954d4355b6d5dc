"""The exact and perceptual dedup levels.

- `ExactDuplicates`: (uid, Fingerprint) → `Decision`s. Groups by the pixel digest; each group keeps
  its first fingerprint by `Fingerprint.rank`, then uid.
- `NearDuplicates`: the fingerprints whose hash is `comparable` → near-duplicate `Decision`s.
  Pairs within `max_hash_distance` bits whose thumbnails agree (`min_thumbnail_similarity`) are
  linked; the links' connected components are found across workers
  (`common.unionfind.ConnectedComponents`: large-star/small-star, nothing gathered), and each
  component keeps its first fingerprint by rank, then uid. Where pairs are looked for is
  `dedup.near_blocking`:
  - `clusters` (the default, `transforms/dedup/blocks.py`): inside blocks of about
    `cluster_size` fingerprints, a k-means of the thumbnail signatures with each fingerprint in
    its two nearest clusters; identical (hash, thumbnail) members collapse before the hashes of
    a block are compared all against all, vectorised. Work per sample is bounded by the blocks'
    size, whatever n; a pair whose thumbnails fall in clusters that neither member's two nearest
    share is missed.
  - `bands` (64-bit hashes): every fingerprint's uid, hash and rank go to one LSH bucket per
    band of its hash; inside a bucket, pairs within the distance are candidates (a pair sharing
    several bands only in the bucket of the first band they share). The members with a
    candidate in a bucket tile get their thumbnail signature there (one join), and the tile's
    candidates are confirmed there. Exhaustive within the distance (with the default bands),
    but a bucket holds about n / 2^(64 / bands) members: the work per sample grows with n.
  Either way a tile emits a spanning forest of its confirmed pairs, not every pair (a group of n
  copies gives about n links), leaving out what other tiles connect.

A hot bucket or block (a million blank images) is cut into tiles (`transforms/common/tiling.py`),
so no worker holds more than two chunks of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from transforms.common.progress import NAMESPACE
from transforms.common.tiling import TileGroups, split_tile
from transforms.common.unionfind import ConnectedComponents, Link, forest_pairs
from transforms.dedup.blocks import BlockLinks
from transforms.dedup.config import DedupConfig
from transforms.dedup.perceptual import cross_pairs, hash_bands, near_duplicate_pairs, signature_similarity
from transforms.dedup.types import EXACT, NEAR, Decision, Fingerprint, comparable

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


#: A bucket tile's key: ((band, band value), chunk a, chunk b).
_TileKey = tuple[tuple[int, int], int, int]


class _BucketPairsFn(beam.DoFn):
    """The members of one bucket tile that have a pair to judge there: another hash within
    `max_hash_distance` bits, sharing no earlier band (a pair is judged in the bucket of the first
    band it shares). Only these members' thumbnails travel to the tile (`_TileForestFn`)."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_comparisons")

    def process(
        self, element: tuple[_TileKey, Iterable[tuple[int, Any]]]
    ) -> Iterator[tuple[str, tuple[_TileKey, int, _HashMember]]]:
        key, members = element
        (band, _), a, b = key
        config = self._config
        rows, cols = split_tile(members, a, b)
        by_uid = {m.uid: m for m in (*rows, *cols)}
        if a == b:
            pairs = near_duplicate_pairs([(m.uid, m.hash64) for m in rows], config.max_distance)
            self._comparisons.inc(len(rows) * (len(rows) - 1) // 2)
        else:
            pairs = cross_pairs(
                [(m.uid, m.hash64) for m in rows], [(m.uid, m.hash64) for m in cols], config.max_distance
            )
            self._comparisons.inc(len(rows) * len(cols))
        active: set[str] = set()
        for uid_a, uid_b, _ in pairs:
            if not (
                band and _share_earlier_band(by_uid[uid_a].hash64, by_uid[uid_b].hash64, band, config.bands)
            ):
                active.update((uid_a, uid_b))
        chunk_of_row = {m.uid: a for m in rows}
        for uid in sorted(active):
            yield uid, (key, chunk_of_row.get(uid, b), by_uid[uid])


@dataclasses.dataclass(frozen=True)
class _Signed:
    """A bucket tile's member with its thumbnail signature, to confirm its pairs in the tile."""

    uid: str
    hash64: int
    rank: tuple[float, float]
    signature: bytes


def _sign(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[_TileKey, tuple[int, _Signed]]]:
    """A uid's signature, sent to each bucket tile where it has a pair to judge."""
    _, joined = element
    for signature in joined["signature"][:1]:
        for key, chunk, found in joined["tile"]:
            yield key, (chunk, _Signed(found.uid, found.hash64, found.rank, signature))


class _TileForestFn(beam.DoFn):
    """The confirmed links of one bucket tile, as a spanning forest: hashes within the distance
    whose thumbnails agree (`min_thumbnail_similarity`). Not every pair: a group of n copies gives
    about n links. The pairs judged elsewhere (sharing an earlier band, or, off the diagonal, in
    one chunk) are confirmed here too, only to know what those tiles connect; a link is emitted
    only where it joins groups they leave apart."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def setup(self) -> None:
        self._links = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_links")

    def process(self, element: tuple[_TileKey, Iterable[tuple[int, _Signed]]]) -> Iterator[Link]:
        ((band, _), a, b), members = element
        config = self._config
        placed = sorted(set(members), key=lambda cm: cm[1].uid)
        chunk = {m.uid: c for c, m in placed}
        everyone = [m for _, m in placed]
        position = {m.uid: index for index, m in enumerate(everyone)}
        to_forest, joined, evidence = [], [], {}
        for uid_a, uid_b, distance in near_duplicate_pairs(
            [(m.uid, m.hash64) for m in everyone], config.max_distance
        ):
            first, second = everyone[position[uid_a]], everyone[position[uid_b]]
            similarity = signature_similarity(first.signature, second.signature)
            if similarity < config.min_thumbnail_similarity:
                continue
            pair = (position[uid_a], position[uid_b])
            elsewhere = band and _share_earlier_band(first.hash64, second.hash64, band, config.bands)
            if elsewhere or (a != b and chunk[uid_a] == chunk[uid_b]):
                joined.append(pair)
            else:
                to_forest.append(pair)
                evidence[pair] = f"hash distance {distance}, thumbnail cosine {similarity:.3f}"
        for i, j in forest_pairs([m.uid for m in everyone], to_forest, joined):
            first, second = everyone[i], everyone[j]
            self._links.inc()
            yield Link(first.uid, first.rank, second.uid, second.rank, evidence[(i, j)])


class _ConfirmInTiles(beam.PTransform):
    """(bucket tile, member with a pair there), (uid, Fingerprint) → `Link`s. Each such member's
    thumbnail signature (768 bytes) joins it once per tile where it has a pair to judge; the
    pairs are confirmed and forested in the tile."""

    def __init__(self, fingerprints: beam.PCollection, config: DedupConfig):
        super().__init__()
        self._fingerprints = fingerprints
        self._config = config

    def expand(self, active: beam.PCollection) -> beam.PCollection:
        return (
            {
                "signature": self._fingerprints
                | "Signatures" >> beam.Map(lambda kv: (kv[0], kv[1].signature)),
                "tile": active,
            }
            | "JoinSignatures" >> beam.CoGroupByKey()
            | "Sign" >> beam.FlatMap(_sign)
            | "GroupSigned" >> beam.GroupByKey()
            | "Forest" >> beam.ParDo(_TileForestFn(self._config))
        )


def _share_earlier_band(first: int, second: int, band: int, bands: int) -> bool:
    return any(
        x == y for x, y in zip(hash_bands(first, bands)[:band], hash_bands(second, bands)[:band], strict=True)
    )


class _BandLinks(beam.PTransform):
    """(uid, Fingerprint) → `Link`s, by LSH bands of the hash (`near_blocking: bands`)."""

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
            | "Confirm" >> _ConfirmInTiles(fingerprints, self._config)
        )


class NearDuplicates(beam.PTransform):
    """(uid, Fingerprint) → a `Decision` for every near-duplicate that its group does not keep.

    Only the fingerprints whose hash is `comparable` take part."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        config = self._config
        compared = fingerprints | "Comparable" >> beam.Filter(lambda kv: comparable(kv[1]))
        if config.near_blocking == "bands":
            links = compared | "Bands" >> _BandLinks(config)
        else:
            links = compared | "Blocks" >> BlockLinks(config)
        return (
            links
            | "Components" >> ConnectedComponents()
            | "Decisions" >> beam.Map(lambda r: Decision(r.removed, NEAR, r.kept, r.detail))
        )
