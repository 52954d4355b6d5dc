"""Clusters of about `cluster_size` members at any n: a two-level k-means partition in Beam.

One k-means trained on one sample has at most `sample // 39` centroids (FAISS wants 39 training
points per centroid), so past `sample // 39 * cluster_size` members its clusters would grow with
n. `ClusterMembers` keeps them near `cluster_size` with a second level trained on the workers:

1. Coarse: `KMeansCentroids` on the uid-hash sample (k1 = ceil(n / cluster_size), at most
   `sample // 39`, handed to the workers as a k1 × d side input); each member goes to its
   nearest coarse centroid, its cell.
2. Fine: a cell the sample expects to hold more than `REFINE_ABOVE` × `cluster_size` members
   is refined into k2 = ceil(expected size / `cluster_size`) clusters (`fine_count`). A bounded
   sample of its members (a seeded uid-hash threshold sized from the expected size, at most
   `min(sample, 256 × k2)` points) trains, on the worker keyed by the cell, a k-means of k2.
3. The members of a refined cell meet its fine centroids in a join keyed by (cell, part), a part
   holding about `JOIN_PART` members, so no side input and no key grows with n; each member
   goes to its nearest fine centroid.

Below the cap (n up to 2.56M at the default 100,000-point sample) k1 is the one k-means of
before, and only its cells above `REFINE_ABOVE` × `cluster_size` are split. Past the cap every
cell is split, and clusters stay near `cluster_size` up to (sample // 39)² × `cluster_size`
members (6.6 × 10¹² at the defaults). An explicit `clusters` fixes k: no cell is refined.

Out: lists of `Placed` (cluster, expected size, cosine to its centroid, member). Cell c keeps the
id c when it is not refined; its fine cluster j has the id c + k1 × j. The expected size (the
samples' shares, scaled to the count) tells a consumer when to tile a cluster. Deterministic:
the samples are chosen by seeded uid hashes, the k-means are seeded, members sorted by uid.

`spill=True` places each member in two clusters, so that members on either side of a cluster
border still meet in one (off by default). Out: lists of `Spilled`, a `Placed` followed by the
ids of all the member's clusters (sorted), so a consumer can judge a pair in one cluster only.
The two clusters are the nearest and the second nearest of:
- the two nearest cells, when the nearest is not refined (in a refined second cell, its nearest
  fine cluster: the member joins that cell's fine centroids without entering its sample);
- the fine clusters of the nearest cell, when it is refined.
Only the nearest placement is in the samples, so the expected sizes count members once; a
cluster holds up to about twice its expected size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import faiss
import numpy as np
import xxhash

from transforms.common.clustering import (
    MIN_POINTS_PER_CENTROID,
    Centroids,
    KMeansCentroids,
    assign,
    normalize,
    train_centroids,
    vectors,
)
from transforms.common.tiling import chunk_of, chunks_for

#: A cell is refined when the sample expects it to hold more than this many times `cluster_size`.
REFINE_ABOVE = 2.0
#: FAISS's k-means uses at most this many training points per centroid.
MAX_POINTS_PER_CENTROID = 256
#: Members of a refined cell per join key with its fine centroids.
JOIN_PART = 5000
#: Drawn above the fine sample's target, so that a cell a little smaller than expected still fills it.
_OVERSAMPLE = 1.25
#: Salt of the fine samples' uid hash (so they do not reuse the coarse sample's order).
_FINE_SALT = 0x5EED_F17E

#: (cluster id, expected size of the cluster, cosine to its centroid, member).
Placed = tuple[int, float, float, Any]
#: A `Placed` with `spill`: (cluster id, expected size, cosine, member, ids of all its clusters).
Spilled = tuple[int, float, float, Any, tuple[int, ...]]
#: A member on its way to a refined cell's join: (fine clusters wanted, placement kept elsewhere
#: or None, member). Fine clusters wanted: 1, or 2 in its nearest cell with `spill`.
_Refining = tuple[int, "tuple[int, float, float] | None", Any]


def fine_count(expected_size: float, cluster_size: int) -> int:
    """k2 of a cell expected to hold `expected_size` members: 1 (not refined) up to
    `REFINE_ABOVE` × `cluster_size`, else one cluster per `cluster_size` members."""
    if expected_size <= REFINE_ABOVE * cluster_size:
        return 1
    return math.ceil(expected_size / cluster_size)


def fine_sample_size(k2: int, sample_size: int) -> int:
    """Training points a refined cell's k-means is given: FAISS's most per centroid, within the sample."""
    return min(sample_size, MAX_POINTS_PER_CENTROID * k2)


def fine_id(cell: int, fine: int, cells: int) -> int:
    """The cluster id of fine cluster `fine` of coarse `cell` (of `cells`); fine 0 keeps the cell's id."""
    return cell + cells * fine


def nearest_two(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each normalised embedding, its two nearest centroid ids (n, 2) and cosines (n, 2); the
    second id is -1 when there is one centroid."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(normalize(centroids))
    cosines, ids = index.search(normalize(embeddings), min(2, len(centroids)))
    if ids.shape[1] == 1:
        ids = np.concatenate([ids, np.full_like(ids, -1)], axis=1)
        cosines = np.concatenate([cosines, np.zeros_like(cosines)], axis=1)
    return ids.astype(np.int64), cosines


def _fraction(uid: str, seed: int) -> float:
    """A member's place in the fine samples' order: a seeded uid hash in [0, 1)."""
    return xxhash.xxh3_64_intdigest(uid.encode(), seed=seed ^ _FINE_SALT) / 2.0**64


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the coarse level decides for each cell: its fine k, sampling rate and join parts."""

    cluster_size: int
    sample_size: int
    refine: bool

    def k2(self, centroids: Centroids, cell: int) -> int:
        return fine_count(centroids.expected_sizes[cell], self.cluster_size) if self.refine else 1

    def rate(self, centroids: Centroids, cell: int) -> float:
        wanted = fine_sample_size(self.k2(centroids, cell), self.sample_size) * _OVERSAMPLE
        return min(1.0, wanted / max(float(centroids.expected_sizes[cell]), 1.0))

    @staticmethod
    def parts(centroids: Centroids, cell: int) -> int:
        return chunks_for(centroids.expected_sizes[cell], JOIN_PART)


class _CoarseFn(beam.DoFn):
    """A batch of members → their cells: `Placed` lists for cells kept whole, members keyed by
    (cell, part) for refined ones (`refine`, as `_Refining`), and the refined cells' training
    samples (`sample`). With `spill`, each member's two placements (see the module docstring)."""

    def __init__(self, embedding: Callable[[Any], bytes], plan: _Plan, seed: int, spill: bool = False):
        self._embedding = embedding
        self._plan = plan
        self._seed = seed
        self._spill = spill

    def process(self, batch: list[Any], centroids: Centroids) -> Iterator[Any]:
        if not len(centroids.vectors):
            return
        points = vectors([self._embedding(m) for m in batch])
        kept: list[Any] = []
        refined: dict[tuple[int, int], list[_Refining]] = {}
        plan = self._plan

        def refine(cell: int, wanted: int, elsewhere: tuple[int, float, float] | None, item: Any) -> None:
            refined.setdefault((cell, chunk_of(item[0], plan.parts(centroids, cell))), []).append(
                (wanted, elsewhere, item)
            )

        if self._spill:
            ids, cosines = nearest_two(points, centroids.vectors)
        else:
            nearest, nearest_cosine = assign(points, centroids.vectors)
            ids = np.column_stack([nearest, np.full_like(nearest, -1)])
            cosines = np.column_stack([nearest_cosine, np.zeros_like(nearest_cosine)])
        for item, (cell, second), (cosine, cosine2) in zip(
            batch, ids.tolist(), cosines.tolist(), strict=True
        ):
            size = float(centroids.expected_sizes[cell])
            if plan.k2(centroids, cell) > 1:
                refine(cell, 2 if self._spill else 1, None, item)
                fraction = _fraction(item[0], self._seed)
                if fraction < plan.rate(centroids, cell):
                    yield beam.pvalue.TaggedOutput(
                        "sample", (cell, (fraction, item[0], self._embedding(item)))
                    )
            elif not self._spill:
                kept.append((cell, size, cosine, item))
            elif second < 0:
                kept.append((cell, size, cosine, item, (cell,)))
            elif plan.k2(centroids, second) > 1:
                refine(second, 1, (cell, size, cosine), item)
            else:
                both = (min(cell, second), max(cell, second))
                kept.append((cell, size, cosine, item, both))
                kept.append((second, float(centroids.expected_sizes[second]), cosine2, item, both))
        if kept:
            yield kept
        for key, members in refined.items():
            yield beam.pvalue.TaggedOutput("refine", (key, members))


@dataclasses.dataclass(frozen=True)
class FineCentroids:
    """One refined cell's fine centroids and their expected sizes (its sample's shares, scaled)."""

    vectors: np.ndarray
    expected_sizes: np.ndarray


def fit_fine(
    sample: Iterable[tuple[float, str, bytes]],
    cell: int,
    expected_size: float,
    k2: int,
    sample_size: int,
    seed: int,
    iterations: int,
) -> FineCentroids | None:
    """The fine k-means of one cell on the `fine_sample_size` sampled members with the lowest
    hashes (fewer centroids when fewer were drawn); None when the sample cannot split the cell."""
    chosen = sorted(sample)[: fine_sample_size(k2, sample_size)]
    k = min(k2, len(chosen) // MIN_POINTS_PER_CENTROID)
    if k < 2:
        return None
    chosen.sort(key=lambda item: item[1])
    points = vectors([item[2] for item in chosen])
    fine = train_centroids(points, k, seed=(seed + 1 + cell) % 2**31, niter=iterations)
    ids, _ = assign(points, fine)
    return FineCentroids(fine, np.bincount(ids, minlength=k) * (expected_size / len(chosen)))


class _TrainFineFn(beam.DoFn):
    """(cell, sampled members) → ((cell, part), `FineCentroids`) for each join part of the cell."""

    def __init__(self, plan: _Plan, seed: int, iterations: int):
        self._plan = plan
        self._seed = seed
        self._iterations = iterations

    def process(
        self, element: tuple[int, Iterable[tuple[float, str, bytes]]], centroids: Centroids
    ) -> Iterator[tuple[tuple[int, int], FineCentroids]]:
        cell, sample = element
        fine = fit_fine(
            sample,
            cell,
            float(centroids.expected_sizes[cell]),
            self._plan.k2(centroids, cell),
            self._plan.sample_size,
            self._seed,
            self._iterations,
        )
        if fine is not None:
            for part in range(self._plan.parts(centroids, cell)):
                yield (cell, part), fine


class _AssignFineFn(beam.DoFn):
    """One join part of a refined cell → its members `Placed` by their nearest fine centroid
    (by the cell itself when its fine k-means could not be trained). With `spill`, `Spilled`:
    also by the second nearest fine centroid (members whose nearest cell this is), or with the
    placement they bring from their nearest cell."""

    def __init__(self, embedding: Callable[[Any], bytes], spill: bool = False):
        self._embedding = embedding
        self._spill = spill

    def process(
        self, element: tuple[tuple[int, int], dict[str, Iterable[Any]]], centroids: Centroids
    ) -> Iterator[list[Any]]:
        (cell, _), joined = element
        members: list[_Refining] = sorted(
            (m for part in joined["members"] for m in part), key=lambda m: m[2][0]
        )
        if not members:
            return
        fines = list(joined["fine"])
        points = vectors([self._embedding(m[2]) for m in members])
        if not fines:
            _, cosine = assign(points, centroids.vectors[cell : cell + 1])
            size = float(centroids.expected_sizes[cell])
            ids, cosines = np.zeros((len(members), 1), dtype=np.int64), cosine[:, None]
            sizes, names = np.array([size]), [cell]
        else:
            fine: FineCentroids = fines[0]
            if self._spill:
                ids, cosines = nearest_two(points, fine.vectors)
            else:
                nearest, cosine = assign(points, fine.vectors)
                ids, cosines = nearest[:, None], cosine[:, None]
            sizes = fine.expected_sizes
            names = [fine_id(cell, j, len(centroids.vectors)) for j in range(len(sizes))]
        if not self._spill:
            yield [
                (names[row[0]], float(sizes[row[0]]), c[0], m[2])
                for m, row, c in zip(members, ids.tolist(), cosines.tolist(), strict=True)
            ]
            return
        placed: list[Spilled] = []
        for (wanted, elsewhere, item), row, cos in zip(members, ids.tolist(), cosines.tolist(), strict=True):
            spots = [
                (names[j], float(sizes[j]), c)
                for j, c in zip(row[:wanted], cos[:wanted], strict=True)
                if j >= 0
            ]
            if elsewhere is not None:
                spots.append(elsewhere)
            clusters = tuple(sorted({spot[0] for spot in spots}))
            placed += [
                (name, size, c, item, clusters) for name, size, c in dict((s[0], s) for s in spots).values()
            ]
        yield placed


class ClusterMembers(beam.PTransform):
    """Members (tuples starting with their uid) → lists of `Placed`, or of `Spilled` with
    `spill` (see the module docstring).

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
        batch_size: int = 8192,
        spill: bool = False,
    ):
        super().__init__()
        self._embedding = embedding
        self._spill = spill
        self._plan = _Plan(cluster_size, sample_size, refine=clusters == 0)
        self._clusters = clusters
        self._seed = seed
        self._iterations = iterations
        self._batch_size = batch_size

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        coarse = beam.pvalue.AsSingleton(
            members
            | "KMeans"
            >> KMeansCentroids(
                embedding=self._embedding,
                sample_size=self._plan.sample_size,
                cluster_size=self._plan.cluster_size,
                clusters=self._clusters,
                seed=self._seed,
                iterations=self._iterations,
            )
        )
        cells = (
            members
            | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=self._batch_size)
            | "AssignCells"
            >> beam.ParDo(
                _CoarseFn(self._embedding, self._plan, self._seed, self._spill), centroids=coarse
            ).with_outputs("refine", "sample", main="kept")
        )
        fine = (
            cells.sample
            | "GroupCellSamples" >> beam.GroupByKey()
            | "TrainFine"
            >> beam.ParDo(_TrainFineFn(self._plan, self._seed, self._iterations), centroids=coarse)
        )
        refined = (
            {"members": cells.refine, "fine": fine}
            | "JoinFine" >> beam.CoGroupByKey()
            | "AssignFine" >> beam.ParDo(_AssignFineFn(self._embedding, self._spill), centroids=coarse)
        )
        return (cells.kept, refined) | "Placed" >> beam.Flatten()
