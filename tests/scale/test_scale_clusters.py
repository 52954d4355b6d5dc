"""Clusters of bounded size at any n: the two-level k-means partition (`transforms.common.partition`).

Small stand-ins for the default sizes: a k-means sample of 1,560 points supports one k-means of at
most 40 centroids (39 points each), as 100,000 supports 2,564; `cluster_size` 40 puts the old cap
at 1,600 members, so 2,500 and 25,000 members are 1.6× and 16× past it (clusters of 62 and 625
with one k-means, searched for neighbours in chunks of `max_group_size` 200).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import apache_beam as beam
import faiss
import numpy as np
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from transforms.common.clustering import assign, fit_centroids, normalize
from transforms.common.partition import REFINE_ABOVE, ClusterMembers
from transforms.noise.neighbours import NeighbourAgreement

SAMPLE = 1560
CLUSTER_SIZE = 40
DIM = 16
TOPICS = 300


def _blobs(n: int, seed: int) -> np.ndarray:
    """n points drawn from one mixture of 300 topic directions (many true clusters, denser as n
    grows, as more pairs of the same concepts come in), float16 as samples carry them."""
    centres = normalize(np.random.default_rng(0).standard_normal((TOPICS, DIM)))
    rng = np.random.default_rng(seed)
    topic = rng.integers(len(centres), size=n)
    return normalize(centres[topic] + 0.1 * rng.standard_normal((n, DIM))).astype(np.float16)


def _members(points: np.ndarray) -> list[tuple[str, bytes, bytes]]:
    return [(f"{i:07d}", row.tobytes(), row.tobytes()) for i, row in enumerate(points)]


def _run(members: list, tmp: Path, sample: int = SAMPLE) -> tuple[dict, dict]:
    """uid → (cluster id, expected size) from `ClusterMembers`, and uid → its neighbours' uids from
    `NeighbourAgreement` (image space, k = 10), both on `members` in one real Beam pipeline."""
    out = tmp / f"run-{len(members)}-{sample}"
    out.mkdir()

    def saver(name):
        return lambda rows: (out / name).write_text(json.dumps(sorted(rows)))

    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        rows = p | beam.Create(members)
        placed = (
            rows
            | ClusterMembers(lambda m: m[1], sample_size=sample, cluster_size=CLUSTER_SIZE)
            | beam.FlatMap(lambda batch: [(m[0], c, e) for c, e, _, m in batch])
        )
        assert_that(placed, saver("placed"), label="SavePlaced")
        found = (
            rows
            | NeighbourAgreement("image", 10, CLUSTER_SIZE, max_group_size=200, kmeans_sample=sample)
            | beam.Map(lambda a: (a[0], [uid for uid, _ in a[2]]))
        )
        assert_that(found, saver("neighbours"), label="SaveNeighbours")
    placed_rows = json.loads((out / "placed").read_text())
    return {u: (c, e) for u, c, e in placed_rows}, dict(json.loads((out / "neighbours").read_text()))


def _recall(points: np.ndarray, neighbours: dict) -> float:
    """Mean share of each member's exact 10 nearest neighbours (all pairs) that were found."""
    vectors = normalize(points.astype(np.float32))
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    _, exact = index.search(vectors, 11)
    hits = [
        len({f"{j:07d}" for j in exact[i] if j != i}.intersection(neighbours[f"{i:07d}"])) / 10
        for i in range(len(points))
    ]
    return float(np.mean(hits))


def _below_the_old_cap(tmp: Path) -> float:
    """With k under the cap, every member's cell is its old cluster; the share left unsplit."""
    n, sample = 2_000, 2_000  # the sample holds every member; k = 50 <= 2,000 // 39
    points = _blobs(n, seed=5)
    members = _members(points)
    placed, _ = _run(members, tmp, sample=sample)
    # The old single k-means, trained on the same sample (every member, in uid order).
    old = fit_centroids(points.astype(np.float32), n, CLUSTER_SIZE, 0, seed=0, iterations=20)
    k = len(old.vectors)
    assert k == math.ceil(n / CLUSTER_SIZE)
    old_ids, _ = assign(points.astype(np.float32), old.vectors)
    new_ids = np.array([placed[m[0]][0] for m in members])
    assert np.array_equal(new_ids % k, old_ids)
    unchanged = ~(old.expected_sizes > REFINE_ABOVE * CLUSTER_SIZE)[old_ids]
    assert np.array_equal(new_ids[unchanged], old_ids[unchanged])  # only cells above 2× are split
    return float(unchanged.mean())


def test_scale_item2_clusters_and_neighbour_recall_hold_as_n_grows(tmp_path):
    largest, recall = {}, {}
    for n in (2_500, 25_000):
        points = _blobs(n, seed=n)
        placed, neighbours = _run(_members(points), tmp_path)
        assert len(placed) == n == len(neighbours)  # every member placed and searched once
        sizes = np.bincount([cluster for cluster, _ in placed.values()])
        sizes = sizes[sizes > 0]
        # k grows with n: one k-means could give at most SAMPLE // 39 = 40 clusters.
        assert len(sizes) >= 0.6 * n / CLUSTER_SIZE, (n, len(sizes))
        largest[n], recall[n] = int(sizes.max()), _recall(points, neighbours)
        assert largest[n] <= 4 * CLUSTER_SIZE, (n, largest[n])
    assert largest[25_000] <= 1.5 * largest[2_500] + CLUSTER_SIZE, largest
    # One capped k-means would search 25,000 members' neighbours in chunks of 200 of clusters of
    # ~625 (about a third of each neighbourhood); with the fine level, recall holds.
    assert recall[2_500] >= 0.6, recall
    assert recall[25_000] >= recall[2_500] - 0.05, recall
    # Below the old cap the partition is the old one, but for its cells above 2 × cluster_size.
    assert _below_the_old_cap(tmp_path) >= 0.8
