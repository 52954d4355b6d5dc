"""Spherical k-means in Beam: centroids trained on a deterministic sample, and cluster assignment.

Both the semantic dedup level (SemDeDup) and the noise stage's neighbour search compare samples
only inside a cluster of their embeddings, so the work is the sum of the squared cluster sizes
instead of n².

- `normalize`, `train_centroids`, `assign`: the numeric steps (FAISS; on a GPU only when FAISS
  sees one).
- `KMeansCentroids` (Beam): members → one `Centroids`, to be used as a singleton side input:
  the `sample_size` members with the largest uid hashes (a deterministic sample, `HashSample`:
  only members over a hash threshold reach the selection), k from the
  total count, spherical k-means on that sample, and each cluster's expected size (the sample's
  share, scaled to the total), which tells an assignment step when to tile a cluster.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
import faiss
import numpy as np
import xxhash

from transforms.common.sampling import HashSample

#: FAISS wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous, row-wise L2-normalised copy (all-zero rows stay zero)."""
    rows = np.array(embeddings, dtype=np.float32, ndmin=2, copy=True, order="C")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


def vectors(embeddings: Sequence[bytes]) -> np.ndarray:
    """(n, d) float32 from float16 embedding bytes (the form samples carry them in); (0, 0) for none."""
    if not embeddings:
        return np.zeros((0, 0), dtype=np.float32)
    return (
        np.frombuffer(b"".join(embeddings), dtype=np.float16).reshape(len(embeddings), -1).astype(np.float32)
    )


def train_centroids(sample: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """(k, d) float32 unit-norm centroids of spherical k-means on the normalised `sample` rows.

    On CPU the result depends only on the inputs and `seed`, not on the number of threads (FAISS
    sums each centroid's points in a fixed order); a GPU run may differ from a CPU one.
    """
    points = normalize(sample)
    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {points.shape[0]}")
    kmeans = faiss.Kmeans(
        points.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=faiss.get_num_gpus() > 0
    )
    kmeans.train(points)
    assert kmeans.centroids is not None
    return normalize(kmeans.centroids)


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each normalised embedding, the nearest centroid id (int64) and the cosine to it (float32)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(normalize(centroids))
    cosines, ids = index.search(normalize(embeddings), 1)
    return ids[:, 0].astype(np.int64), cosines[:, 0]


def cluster_count(total: int, sample: int, cluster_size: int, clusters: int = 0) -> int:
    """k: `clusters`, or one per `cluster_size` members; never more than the sample supports."""
    wanted = clusters or math.ceil(total / cluster_size)
    return max(1, min(wanted, sample // MIN_POINTS_PER_CENTROID or 1, sample))


@dataclasses.dataclass(frozen=True)
class Centroids:
    """The trained centroids and each cluster's expected size (from the sample, scaled to the total)."""

    vectors: np.ndarray
    expected_sizes: np.ndarray


def fit_centroids(
    points: np.ndarray, total: int, cluster_size: int, clusters: int, seed: int, iterations: int
) -> Centroids:
    """`Centroids` of the sample `points` (rows in a fixed order) for a collection of `total`."""
    if not len(points):
        return Centroids(np.zeros((0, 0), dtype=np.float32), np.zeros(0))
    k = cluster_count(total, len(points), cluster_size, clusters)
    centroids = train_centroids(points, k, seed=seed, niter=iterations)
    ids, _ = assign(points, centroids)
    return Centroids(centroids, np.bincount(ids, minlength=k) * (total / len(points)))


def sample_key(seed: int) -> Callable[[Any], int]:
    """The order of the k-means sample: a seeded hash of the member's uid (its first field)."""
    return lambda member: xxhash.xxh3_64_intdigest(member[0].encode(), seed=seed)


def _train(
    sample: Sequence[Any],
    total: int,
    embedding: Callable[[Any], bytes],
    cluster_size: int,
    clusters: int,
    seed: int,
    iterations: int,
) -> Centroids:
    ordered = sorted(sample, key=lambda member: member[0])
    points = vectors([embedding(member) for member in ordered])
    return fit_centroids(points, total, cluster_size, clusters, seed, iterations)


class KMeansCentroids(beam.PTransform):
    """Members (tuples starting with their uid) → one `Centroids` (see the module docstring).

    `embedding(member)` gives the member's float16 embedding bytes that are clustered.
    """

    def __init__(
        self,
        embedding: Callable[[Any], bytes],
        sample_size: int,
        cluster_size: int,
        clusters: int = 0,
        seed: int = 0,
        iterations: int = 20,
    ):
        super().__init__()
        self._embedding = embedding
        self._sample_size = sample_size
        self._cluster_size = cluster_size
        self._clusters = clusters
        self._seed = seed
        self._iterations = iterations

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        total = members | "Count" >> beam.combiners.Count.Globally()
        sample = members | "SampleForKMeans" >> HashSample(
            self._sample_size, sample_key(self._seed), "kmeans"
        )
        return sample | "TrainCentroids" >> beam.Map(
            _train,
            total=beam.pvalue.AsSingleton(total),
            embedding=self._embedding,
            cluster_size=self._cluster_size,
            clusters=self._clusters,
            seed=self._seed,
            iterations=self._iterations,
        )
