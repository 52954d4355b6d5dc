"""The semantic dedup level: SemDeDup (Abbas et al., 2023) on the image embeddings, in Beam.

(uid, Fingerprint) → a `Decision` (`semantic_duplicate`) for every sample a group does not keep.

1-2. `Cluster` (`transforms.common.partition.ClusterMembers`): spherical k-means with FAISS (on
   a GPU when FAISS sees one) on a deterministic sample into `clusters` centroids (0: about one
   per `cluster_size` samples), and, when the sample cannot train that many, a second k-means
   per oversized cell on the workers, so clusters stay near `cluster_size` at any n. Each
   embedding goes to its nearest centroid (exact inner product).
3. `AssignTiles`: a cluster the samples expect to exceed `max_group_size` is cut into tiles
   (salting, as `transforms.dedup.hashed.TileGroups` does), so its work is spread and bounded.
4. `GroupByKey` by (cluster, tile): pairs are only compared inside a cluster.
5. `Similar`: the pairs of each tile with cosine >= 1 - epsilon (FAISS range search), of which
   only a spanning forest is emitted: a group of n copies gives about n links, not n²/2.
6. `Components`: the linked samples' connected components across workers
   (`transforms.common.unionfind.ConnectedComponents`, nothing gathered per cluster); each keeps
   one sample by `dedup.keep` (highest `clip_score`, farthest from the centroid, or first uid),
   ties by uid.

Comparisons made are counted (`dedup/semantic_comparisons`): the sum over clusters of n²/2
instead of N²/2.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

from transforms.common.clustering import normalize, vectors
from transforms.common.partition import ClusterMembers, Placed
from transforms.common.progress import NAMESPACE
from transforms.common.tiling import chunk_of, chunks_for, tiles_of
from transforms.common.unionfind import ConnectedComponents, ForestOfBlocks, Link, node_order
from transforms.dedup.config import DedupConfig
from transforms.dedup.cosine import similar_pair_arrays
from transforms.dedup.types import SEMANTIC, Decision, Fingerprint

#: A member of the semantic level: (uid, float16 embedding bytes, clip_score). Plain tuples keep
#: Beam's coders on their fast path (no pickling per element).
Member = tuple[str, bytes, "float | None"]
#: A member inside a tile: (chunk, uid, embedding bytes, rank).
_Placed = tuple[int, str, bytes, float]


def member(uid: str, embedding: np.ndarray, clip_score: float | None = None) -> Member:
    """The record `SemDeDupEmbeddings` takes: a uid, its image embedding (d,), its CLIP score."""
    return uid, np.asarray(embedding, dtype=np.float16).tobytes(), clip_score


def _rank(clip_score: float | None, cosine: float, config: DedupConfig) -> float:
    if config.keep == "clip_score":
        return math.inf if clip_score is None or math.isnan(clip_score) else -clip_score
    if config.keep == "farthest":
        return cosine
    return 0.0


class _AssignFn(beam.DoFn):
    """The tiles of its cluster each member of a batch belongs to (`transforms.common.partition`
    placed it in the cluster).

    A cluster expected (from the k-means samples) to exceed `max_group_size` is cut into chunks by
    uid hash; each member goes to every tile (a, b) holding its chunk (see `TileGroups`). One
    output per tile and batch carries all of the batch's members of that tile.
    """

    def __init__(self, config: DedupConfig):
        self._config = config

    def process(self, batch: list[Placed]) -> Iterator[tuple[tuple[int, int, int], list[_Placed]]]:
        tiles: dict[tuple[int, int, int], list[_Placed]] = {}
        max_size = self._config.max_group_size
        for cluster, expected_size, cosine, (uid, embedding, score) in batch:
            chunks = chunks_for(expected_size, max_size)
            mine = chunk_of(uid, chunks)
            placed = (mine, uid, embedding, _rank(score, cosine, self._config))
            for a, b in tiles_of(mine, chunks):
                tiles.setdefault((cluster, a, b), []).append(placed)
        yield from tiles.items()


_Pairs = tuple[np.ndarray, np.ndarray]


def _tile_pairs(points: np.ndarray, rows: int, diagonal: bool, epsilon: float) -> tuple[_Pairs, _Pairs, int]:
    """(pairs to forest, pairs the diagonal tiles connect, comparisons) of one tile, as index arrays.

    `points`: the tile's normalised embeddings, its `rows` first and then (off the diagonal) its
    columns. On the diagonal every similar pair is to forest; off it the cross pairs are, and the
    pairs inside each chunk are what the two diagonal tiles connect (compared again to know it).
    """
    none = np.zeros(0, dtype=np.int64)
    if diagonal:
        first, second, comparisons = similar_pair_arrays(points, points, True, epsilon)
        return (first, second), (none, none), comparisons
    first, second, comparisons = similar_pair_arrays(points[:rows], points[rows:], False, epsilon)
    inside_first, inside_second = [none], [none]
    for start, stop in ((0, rows), (rows, len(points))):
        block = points[start:stop]
        x, y, more = similar_pair_arrays(block, block, True, epsilon)
        inside_first.append(x + start)
        inside_second.append(y + start)
        comparisons += more
    joined = (np.concatenate(inside_first), np.concatenate(inside_second))
    return (first, second + rows), joined, comparisons


def _star_first(pairs: _Pairs, rank: np.ndarray) -> _Pairs:
    """Pairs of positions → the same pairs as (lower, higher) `node_order` ranks, sorted."""
    x, y = rank[pairs[0]], rank[pairs[1]]
    low, high = np.minimum(x, y), np.maximum(x, y)
    order = np.lexsort((high, low))
    return low[order], high[order]


class _SimilarFn(beam.DoFn):
    """A spanning forest of the links (cosine >= 1 - epsilon) of one tile of one cluster.

    Not every similar pair: a group of n copies gives n - 1 links, taken least uid (by
    `node_order`) first, so a group of copies is a star around one member. A tile off the diagonal
    (a, b) also compares chunk a with itself and b with itself (the diagonal tiles' work, done
    again) only to know what those tiles connect: it emits just the cross links that join groups
    they leave apart, so a cluster of copies cut into c chunks gives about n + c²/2 links, not c·n.
    """

    def __init__(self, epsilon: float):
        self._epsilon = epsilon

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/semantic_comparisons")
        self._links = beam.metrics.Metrics.counter(NAMESPACE, "dedup/semantic_links")

    def process(self, element: tuple[tuple[int, int, int], Iterable[list[_Placed]]]) -> Iterator[Link]:
        (cluster, a, b), parts = element
        placed = sorted({p for part in parts for p in part}, key=lambda p: p[1])
        rows = [p for p in placed if p[0] == a]
        cols = rows if a == b else [p for p in placed if p[0] == b]
        if not rows or not cols:
            return
        everyone = rows if a == b else [*rows, *cols]
        points = normalize(vectors([p[2] for p in everyone]))
        pairs, joined, comparisons = _tile_pairs(points, len(rows), a == b, self._epsilon)
        self._comparisons.inc(comparisons)
        by_rank = sorted(range(len(everyone)), key=lambda i: node_order(everyone[i][1]))
        rank = np.empty(len(everyone), dtype=np.int64)
        rank[by_rank] = np.arange(len(everyone))
        forest = ForestOfBlocks(len(everyone))
        forest.add(*_star_first(joined, rank), emit=False)
        for low, high in forest.add(*_star_first(pairs, rank)):
            i, j = by_rank[low], by_rank[high]
            first, second = sorted((everyone[i], everyone[j]), key=lambda p: p[1])
            if first[1] == second[1]:
                continue
            cosine = float(np.dot(points[i], points[j]))
            self._links.inc()
            evidence = f"embedding cosine {cosine:.4f} in cluster {cluster}"
            yield Link(first[1], first[3], second[1], second[3], evidence)


class SemanticDuplicates(beam.PTransform):
    """SemDeDup over the fingerprints that carry an image embedding."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        members = fingerprints | "Embedded" >> beam.FlatMap(_members)
        return members | "SemDeDup" >> SemDeDupEmbeddings(self._config)


def _members(element: tuple[str, Fingerprint]) -> Iterator[Member]:
    uid, found = element
    if found.embedding is not None:
        yield member(uid, found.embedding, found.clip_score)


class SemDeDupEmbeddings(beam.PTransform):
    """`member` records → `Decision`s: the SemDeDup steps of the module docstring."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        config = self._config
        return (
            members
            | "Cluster"
            >> ClusterMembers(
                embedding=operator.itemgetter(1),
                sample_size=config.kmeans_sample,
                cluster_size=config.cluster_size,
                clusters=config.clusters,
                seed=config.seed,
                iterations=config.kmeans_iterations,
                batch_size=16384,
            )
            | "AssignTiles" >> beam.ParDo(_AssignFn(config))
            | "GroupTiles" >> beam.GroupByKey()
            | "Similar" >> beam.ParDo(_SimilarFn(config.epsilon))
            | "Components" >> ConnectedComponents()
            | "Decisions" >> beam.Map(lambda r: Decision(r.removed, SEMANTIC, r.kept, r.detail))
        )
