"""The perceptual level's candidate pairs inside blocks of bounded size (`near_blocking: clusters`).

(uid, Fingerprint) → `Link`s of confirmed near-duplicates, as a spanning forest per tile.

1. `Blocks` (`transforms.common.partition.ClusterMembers` with `spill`): the 16x16 thumbnail
   signatures (768 int8, mean-removed) are clustered with the semantic level's settings
   (`cluster_size`, `kmeans_sample`, `clusters`, `seed`, `kmeans_iterations`), and each
   fingerprint goes to its two nearest clusters, so near-copies on a cluster border still meet.
   A confirmed pair has thumbnail cosine >= `min_thumbnail_similarity`, the geometry the
   clusters are cut in; the signatures exist in every run, with or without the embed stage. A
   flat image's signature is all zeros: it is clustered as the all-ones direction, orthogonal to
   every mean-removed signature, so the flat images all go to the same two clusters (their own
   when they are many) and meet each other there.
2. `AssignTiles`: a block expected (from the k-means samples, twice its size for the spill) to
   exceed `max_group_size` is cut into tiles (`transforms/common/tiling.py`), so no worker holds
   more than two chunks of it. Only members' uid, hash, rank and signature travel.
3. `Forest` (`block_links`): in a tile, members with the same (chunk, hash, signature, clusters)
   are collapsed into a star around one representative; only representatives are compared,
   their hashes vectorised (`perceptual.hamming_matrix`, any multiple of 64 bits) in row blocks,
   confirmed by thumbnail cosine. A pair two blocks both hold is judged in the lower block id
   only, a pair inside one chunk in the diagonal tile only (as the semantic level tiles); the
   other pairs are compared only to know what those units connect. A tile emits a spanning
   forest (`common.unionfind.ForestOfBlocks`): a group of n copies gives about n links.

Work per sample is the size of its two blocks, not of the collection: `dedup/hash_comparisons`
counts the representative pairs compared. The trade-off against `near_blocking: bands` (every
pair within the distance, in buckets that grow with n): a pair whose thumbnails fall in
clusters neither member's two nearest share is missed (`benchmarks/dedup_quality.py` measures
it). Deterministic: clusters are seeded, tiles sorted by uid, forests taken in `node_order`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.common.clustering import normalize
from transforms.common.partition import ClusterMembers, Spilled
from transforms.common.progress import NAMESPACE
from transforms.common.tiling import chunk_of, chunks_for, tiles_of
from transforms.common.unionfind import ForestOfBlocks, Link, node_order
from transforms.dedup.config import DedupConfig
from transforms.dedup.perceptual import hamming, hamming_matrix, hash_words, signature_similarity
from transforms.dedup.types import Fingerprint

#: A member of the level: (uid, thumbnail signature, hash, rank). Plain tuples keep Beam's coders
#: fast. The hash is typed `Any`: Beam's int coder stops at 2**63, a hash (64 or 256 bits) does not.
Member = tuple[str, bytes, Any, tuple[float, float]]
#: A member in a block tile: (chunk, uid, signature, hash, rank, ids of its blocks).
Placed = tuple[int, str, bytes, Any, tuple[float, float], tuple[int, ...]]
#: A block holds its members and the spilled ones of its neighbours: up to about twice the
#: members the k-means samples expect in it.
SPILL = 2.0
#: Bytes of one row block of the Hamming matrix (rows × columns × hash words × 8).
_BLOCK_BYTES = 16 << 20
#: Close pairs whose thumbnail cosines are computed at once: ~25 MB of gathered float32 signatures.
_PAIR_CHUNK = 4096


def _signature_vector(found: Member) -> bytes:
    """The float16 vector a member is clustered by: its signature, or for a flat image (all
    zeros) the all-ones direction, orthogonal to every mean-removed signature."""
    values = np.frombuffer(found[1], dtype=np.int8)
    if not values.any():
        return np.ones(len(values), dtype=np.float16).tobytes()
    return values.astype(np.float16).tobytes()


def _member(element: tuple[str, Fingerprint]) -> Member:
    uid, found = element
    return uid, found.signature, found.hash64, found.rank


class _AssignTilesFn(beam.DoFn):
    """A batch of `Spilled` members → ((block, a, b), [`Placed`]) for every tile holding them."""

    def __init__(self, max_size: int):
        self._max_size = max_size

    def process(self, batch: list[Spilled]) -> Iterator[tuple[tuple[int, int, int], list[Placed]]]:
        tiles: dict[tuple[int, int, int], list[Placed]] = {}
        for block, expected_size, _, (uid, signature, hash_value, rank), blocks in batch:
            chunks = chunks_for(SPILL * expected_size, self._max_size)
            mine = chunk_of(uid, chunks)
            placed = (mine, uid, signature, hash_value, rank, blocks)
            for a, b in tiles_of(mine, chunks):
                tiles.setdefault((block, a, b), []).append(placed)
        yield from tiles.items()


_Pairs = tuple[np.ndarray, np.ndarray]


class _Tile:
    """One tile's members in `node_order` (a position is a rank), collapsed into units."""

    def __init__(self, block: int, a: int, b: int, members: Sequence[Placed], bits: int):
        self.block, self.diagonal = block, a == b
        self.members = sorted(members, key=lambda m: node_order(m[1]))
        units: dict[tuple[int, int, bytes, tuple[int, ...]], list[int]] = {}
        for position, (chunk, _, signature, hash_value, _, blocks) in enumerate(self.members):
            units.setdefault((chunk, hash_value, signature, blocks), []).append(position)
        self.units = list(units.values())
        reps = np.array([unit[0] for unit in self.units], dtype=np.int64)
        self.reps = reps
        self.in_rows = np.array([self.members[r][0] == a for r in reps], dtype=bool)
        self.words = hash_words([self.members[r][3] for r in reps], bits)
        self.points = normalize(
            np.stack([np.frombuffer(self.members[r][2], dtype=np.int8) for r in reps]).astype(np.float32)
        )
        self.flat = np.linalg.norm(self.points, axis=1) == 0
        self.other = np.array([_other_block(self.members[r][5], block) for r in reps], dtype=np.int64)

    def stars(self) -> _Pairs:
        """Each unit's representative (its least rank) to its other members."""
        first = [unit[0] for unit in self.units for _ in unit[1:]]
        second = [member for unit in self.units for member in unit[1:]]
        return np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)

    def cosines(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Thumbnail cosines of representative pairs (1.0 for two flat images, as `signature_similarity`).
        The pairs' signatures are gathered `_PAIR_CHUNK` pairs at a time: a row block of `_close`
        may hold millions of close pairs (a large group of near-copies), and gathering both sides
        whole would take 6 KB a pair."""
        values = np.empty(len(i), dtype=np.float32)
        for start in range(0, len(i), _PAIR_CHUNK):
            end = start + _PAIR_CHUNK
            values[start:end] = np.einsum("ij,ij->i", self.points[i[start:end]], self.points[j[start:end]])
        return np.where(self.flat[i] & self.flat[j], 1.0, values)

    def elsewhere(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether a representative pair is judged in a lower block both members are in."""
        other = self.other[i]
        return (other == self.other[j]) & (other >= 0) & (other < self.block)


def _other_block(blocks: tuple[int, ...], block: int) -> int:
    """A member's block other than `block` (-1 when it has none); members have at most two."""
    others = [b for b in blocks if b != block]
    return min(others) if others else -1


def _close(
    words: np.ndarray, rows: np.ndarray, cols: np.ndarray, upper: bool, max_distance: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Row blocks of (row index, col index, distance, comparisons) for the pairs of `rows` × `cols`
    (indices into `words`) within `max_distance`; `upper`: rows == cols, pairs i < j only."""
    if not len(rows) or not len(cols):
        return
    step = max(1, _BLOCK_BYTES // (len(cols) * words.shape[1] * 8))
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        targets = cols[start:] if upper else cols
        distances = hamming_matrix(words[block], words[targets])
        keep = distances <= max_distance
        if upper:  # the block's row r is paired with the targets after its own position only
            keep &= np.arange(len(targets))[None, :] > np.arange(len(block))[:, None]
        r, c = np.nonzero(keep)
        yield block[r], targets[c], distances[r, c], distances.size


def block_links(
    key: tuple[int, int, int], members: Sequence[Placed], config: DedupConfig
) -> tuple[list[Link], int]:
    """The links one block tile emits (a spanning forest of its confirmed pairs judged here, less
    what the units it overlaps connect), and the hash comparisons it made."""
    block, a, b = key
    rows = [m for m in members if m[0] == a]
    if not rows or (a != b and len(rows) == len(members)):
        return [], 0
    tile = _Tile(block, a, b, members, config.hash_bits)
    forest = ForestOfBlocks(len(tile.members))
    stars = tile.stars()
    if tile.diagonal:
        # a unit's members share their blocks: its pairs are judged in its lowest one
        here = np.array([_other_block(tile.members[i][5], block) for i in stars[0].tolist()], dtype=np.int64)
        judged = (here < 0) | (here > block)
        forest.add(*_sorted(stars[0][~judged], stars[1][~judged]), emit=False)
        emitted = forest.add(*_sorted(stars[0][judged], stars[1][judged]))
    else:
        forest.add(*_sorted(*stars), emit=False)  # inside one chunk: the diagonal tiles' pairs
        emitted = []
    comparisons = 0
    everyone = np.arange(len(tile.reps))
    passes: list[tuple[np.ndarray, np.ndarray, bool, bool]] = []
    if tile.diagonal:
        passes.append((everyone, everyone, True, True))
    else:
        inside_rows, inside_cols = everyone[tile.in_rows], everyone[~tile.in_rows]
        passes += [(inside_rows, inside_rows, True, False), (inside_cols, inside_cols, True, False)]
        passes.append((inside_rows, inside_cols, False, True))
    for rows_, cols_, upper, judge in passes:
        for i, j, _, made in _close(tile.words, rows_, cols_, upper, config.max_distance):
            comparisons += made
            confirmed = tile.cosines(i, j) >= config.min_thumbnail_similarity
            i, j = i[confirmed], j[confirmed]
            here = ~tile.elsewhere(i, j) if judge else np.zeros(len(i), dtype=bool)
            first, second = tile.reps[i], tile.reps[j]
            forest.add(*_sorted(first[~here], second[~here]), emit=False)
            emitted += forest.add(*_sorted(first[here], second[here]))
    return [_link(tile.members[x], tile.members[y]) for x, y in emitted], comparisons


def _sorted(x: np.ndarray, y: np.ndarray) -> _Pairs:
    """Pairs of positions (ranks) as (lower, higher), sorted: the order `ForestOfBlocks` takes."""
    low, high = np.minimum(x, y), np.maximum(x, y)
    order = np.lexsort((high, low))
    return low[order], high[order]


def _link(x: Placed, y: Placed) -> Link:
    first, second = sorted((x, y), key=lambda m: m[1])
    distance, cosine = hamming(first[3], second[3]), signature_similarity(first[2], second[2])
    evidence = f"hash distance {distance}, thumbnail cosine {cosine:.3f}"
    return Link(first[1], first[4], second[1], second[4], evidence)


class _ForestFn(beam.DoFn):
    """One block tile → its `Link`s (`block_links`), counting comparisons and links."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_comparisons")
        self._links = beam.metrics.Metrics.counter(NAMESPACE, "dedup/hash_links")

    def process(self, element: tuple[tuple[int, int, int], Iterable[list[Placed]]]) -> Iterator[Link]:
        key, parts = element
        members = sorted({m for part in parts for m in part}, key=lambda m: m[1])
        links, comparisons = block_links(key, members, self._config)
        self._comparisons.inc(comparisons)
        self._links.inc(len(links))
        yield from links


class BlockLinks(beam.PTransform):
    """(uid, Fingerprint) → `Link`s of near-duplicates found inside blocks (the module docstring)."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        config = self._config
        return (
            fingerprints
            | "Members" >> beam.Map(_member)
            | "Blocks"
            >> ClusterMembers(
                embedding=_signature_vector,
                sample_size=config.kmeans_sample,
                cluster_size=config.cluster_size,
                clusters=config.clusters,
                seed=config.seed,
                iterations=config.kmeans_iterations,
                spill=True,
            )
            | "AssignTiles" >> beam.ParDo(_AssignTilesFn(config.max_group_size))
            | "GroupTiles" >> beam.GroupByKey()
            | "Forest" >> beam.ParDo(_ForestFn(config))
        )
