"""The semantic dedup level: SemDeDup (Abbas et al., 2023) on the image embeddings, in Beam.

(uid, Fingerprint) → a `Decision` (`semantic_duplicate`) for every sample a group does not keep.

1. `SampleForKMeans`: the `kmeans_sample` embeddings with the largest uid hashes (a deterministic
   sample), and the count of all embeddings.
2. `TrainCentroids`: spherical k-means with FAISS (on a GPU when FAISS sees one) into
   `clusters` centroids (0: about one per `cluster_size` samples), handed to the workers as a
   side input (k × d float32: a few MB even for 50,000 clusters of 512-d).
3. `AssignTiles`: batches of embeddings searched against the centroids (exact inner product). A
   cluster the sample expects to exceed `max_group_size` is cut into tiles (salting, as
   `transforms.dedup.hashed.TileGroups` does), so its work is spread and bounded.
4. `GroupByKey` by (cluster, tile): pairs are only compared inside a cluster.
5. `Similar`: the pairs of each tile with cosine >= 1 - epsilon (blocked matrix products).
6. `Resolve`, per cluster: the linked samples' connected components; each keeps one sample by
   `dedup.keep` (highest `clip_score`, farthest from the centroid, or first uid), ties by uid.

Comparisons made are counted (`dedup/semantic_comparisons`): the sum over clusters of n²/2
instead of N²/2.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

from transforms.common.clustering import Centroids, KMeansCentroids, assign, normalize, vectors
from transforms.common.progress import NAMESPACE
from transforms.common.tiling import chunk_of, chunks_for, tiles_of
from transforms.common.unionfind import Link
from transforms.dedup.config import DedupConfig
from transforms.dedup.cosine import similar_pairs
from transforms.dedup.types import SEMANTIC, Decision, Fingerprint, link_decisions

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
    """Nearest centroid of each member of a batch, and the tiles of its cluster it belongs to.

    A cluster expected (from the k-means sample) to exceed `max_group_size` is cut into chunks by
    uid hash; each member goes to every tile (a, b) holding its chunk (see `TileGroups`). One
    output per tile and batch carries all of the batch's members of that tile.
    """

    def __init__(self, config: DedupConfig):
        self._config = config

    def process(
        self, batch: list[Member], centroids: Centroids
    ) -> Iterator[tuple[tuple[int, int, int], list[_Placed]]]:
        ids, cosines = assign(vectors([m[1] for m in batch]), centroids.vectors)
        tiles: dict[tuple[int, int, int], list[_Placed]] = {}
        max_size = self._config.max_group_size
        for (uid, embedding, score), cluster, cosine in zip(
            batch, ids.tolist(), cosines.tolist(), strict=True
        ):
            chunks = chunks_for(centroids.expected_sizes[cluster], max_size)
            mine = chunk_of(uid, chunks)
            placed = (mine, uid, embedding, _rank(score, cosine, self._config))
            for a, b in tiles_of(mine, chunks):
                tiles.setdefault((cluster, a, b), []).append(placed)
        yield from tiles.items()


class _SimilarFn(beam.DoFn):
    """Links (cosine >= 1 - epsilon) of one tile of one cluster."""

    def __init__(self, epsilon: float):
        self._epsilon = epsilon

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "dedup/semantic_comparisons")

    def process(
        self, element: tuple[tuple[int, int, int], Iterable[list[_Placed]]]
    ) -> Iterator[tuple[int, Link]]:
        (cluster, a, b), parts = element
        placed = sorted({p for part in parts for p in part}, key=lambda p: p[1])
        rows = [p for p in placed if p[0] == a]
        cols = rows if a == b else [p for p in placed if p[0] == b]
        if not rows or not cols:
            return
        row_points = normalize(vectors([p[2] for p in rows]))
        col_points = row_points if a == b else normalize(vectors([p[2] for p in cols]))
        # Positions: rows first, then (off the diagonal) cols.
        offset = 0 if a == b else len(rows)
        links, comparisons = similar_pairs(
            row_points, col_points, range(len(rows)), range(offset, offset + len(cols)), self._epsilon
        )
        self._comparisons.inc(comparisons)
        everyone = rows if a == b else [*rows, *cols]
        for i, j in links:
            first, second = everyone[i], everyone[j]
            if first[1] == second[1]:
                continue
            cosine = float(np.dot(row_points[i], col_points[j - offset]))
            if first[1] > second[1]:
                first, second = second, first
            yield cluster, Link(first[1], first[3], second[1], second[3], f"embedding cosine {cosine:.4f}")


def _resolve(element: tuple[int, Iterable[Link]]) -> list[Decision]:
    cluster, links = element
    return link_decisions(links, SEMANTIC, where=f" in cluster {cluster}")


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
        centroids = members | "KMeans" >> KMeansCentroids(
            embedding=operator.itemgetter(1),
            sample_size=config.kmeans_sample,
            cluster_size=config.cluster_size,
            clusters=config.clusters,
            seed=config.seed,
            iterations=config.kmeans_iterations,
        )
        return (
            members
            | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=16384)
            | "AssignTiles" >> beam.ParDo(_AssignFn(config), centroids=beam.pvalue.AsSingleton(centroids))
            | "GroupTiles" >> beam.GroupByKey()
            | "Similar" >> beam.ParDo(_SimilarFn(config.epsilon))
            | "GroupClusters" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve)
        )
