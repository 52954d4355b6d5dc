"""The shared Beam building blocks: k-means, tiling of big groups, union-find with a keep rule."""

from __future__ import annotations

import itertools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.common.clustering import KMeansCentroids, assign, cluster_count, normalize, train_centroids
from transforms.common.tiling import chunk_of, chunks_for, split_cluster, tiles_of
from transforms.common.unionfind import Link, resolve_links, resolve_ranked


def test_train_centroids_is_deterministic_and_assign_agrees_with_argmax() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(3000, 32)).astype(np.float32)
    first = train_centroids(sample, k=16, seed=7)
    assert first.shape == (16, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(first, train_centroids(sample, k=16, seed=7))
    assert not np.array_equal(first, train_centroids(sample, k=16, seed=8))
    queries = rng.normal(size=(500, 32)).astype(np.float32)
    ids, cosines = assign(queries, first)
    similarity = normalize(queries) @ first.T
    assert np.array_equal(ids, similarity.argmax(axis=1))
    np.testing.assert_allclose(cosines, similarity.max(axis=1), rtol=1e-5, atol=1e-6)


def test_kmeans_centroids_in_beam_equal_the_direct_fit_on_the_same_sample():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(400, 8)).astype(np.float16)
    members = [(f"{i:04d}", vectors[i].tobytes()) for i in range(400)]
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        found = p | beam.Create(members) | KMeansCentroids(lambda m: m[1], sample_size=200, cluster_size=50)

        def check(centroids):
            (got,) = centroids
            assert got.vectors.shape == (cluster_count(400, 200, 50), 8) == (5, 8)
            assert abs(float(got.expected_sizes.sum()) - 400) < 1e-6  # the sample's shares, scaled
            ids, _ = assign(vectors.astype(np.float32), got.vectors)
            assert len(set(ids.tolist())) == 5  # every centroid is the nearest of some member

        assert_that(found, check)


def test_kmeans_centroids_of_no_members_are_empty():
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        members = p | beam.Create([("0000", b"")]) | beam.Filter(lambda _: False)
        found = members | KMeansCentroids(lambda m: m[1], sample_size=200, cluster_size=50)

        def check(centroids):
            (got,) = centroids
            assert got.vectors.shape[0] == 0 and len(got.expected_sizes) == 0

        assert_that(found, check)


def test_split_cluster_covers_each_pair_once() -> None:
    for n, size in [(10, 3), (9, 3), (1, 4), (7, 100)]:
        covered = []
        for rows, cols in split_cluster(n, size):
            assert len(rows) <= size and len(cols) <= size
            covered += [(i, j) for i in rows for j in cols if (rows != cols or i < j)]
        assert sorted(covered) == list(itertools.combinations(range(n), 2))


def test_chunks_and_tiles_of_a_big_group():
    assert chunks_for(5000, 5000) == 1 and chunks_for(5001, 5000) == 2 and chunks_for(12_500.5, 5000) == 3
    assert list(tiles_of(1, 3)) == [(0, 1), (1, 1), (1, 2)]
    uids = [f"{i:032x}" for i in range(3000)]
    placed = [chunk_of(uid, 3) for uid in uids]
    assert placed == [chunk_of(uid, 3) for uid in uids] and set(placed) == {0, 1, 2}  # stable, all used
    # Every pair of members is compared in exactly one tile: the tile of its two chunks.
    for a, b in itertools.combinations(range(60), 2):
        shared = set(tiles_of(placed[a], 3)) & set(tiles_of(placed[b], 3))
        compared = [tile for tile in shared if sorted((placed[a], placed[b])) == list(tile)]
        assert len(compared) == 1, (a, b, shared)


def test_union_find_keeps_the_lowest_rank_of_each_chain_and_says_why():
    assert resolve_ranked(["a", "b", "c", "d"], [(0, 1), (1, 2)], [2.0, 1.0, 3.0, 0.0]) == [
        ("a", "b", "b"),
        ("c", "b", "b"),
    ]
    links = [
        Link("a", 2.0, "b", 1.0, "hash distance 3"),
        Link("b", 1.0, "c", 3.0, "hash distance 5"),
        Link("x", 0.0, "y", 0.0, "embedding cosine 0.9990"),
    ]
    resolved = resolve_links(reversed(links), where=" in cluster 4")  # order does not matter
    assert [tuple(r) for r in resolved] == [
        ("a", "b", "duplicate of b; hash distance 3 to b in cluster 4"),
        ("c", "b", "duplicate of b; hash distance 5 to b in cluster 4"),
        ("y", "x", "duplicate of x; embedding cosine 0.9990 to x in cluster 4"),  # a tie goes to the uid
    ]


def _random_links(seed: int) -> list[Link]:
    """Near-duplicate-like groups (pairs, stars, cliques), a few long chains, repeated links."""
    rng = np.random.default_rng(seed)
    rank = {f"u{i:04d}": (float(-rng.integers(1, 5)), float(rng.random())) for i in range(600)}
    uids = sorted(rank)
    links = []

    def link(a: str, b: str, evidence: str) -> None:
        a, b = min(a, b), max(a, b)
        links.append(Link(a, rank[a], b, rank[b], evidence))

    position = 0
    for size in rng.integers(2, 6, size=60):  # small groups, linked at random inside
        group = uids[position : position + size]
        position += size
        for _ in range(int(size) * 2):
            a, b = rng.choice(group, 2, replace=False)
            link(str(a), str(b), f"hash distance {int(rng.integers(0, 10))}")
    for length in (12, 31):  # chains far longer than the propagation rounds
        chain = uids[position : position + length]
        position += length
        for a, b in zip(chain, chain[1:], strict=False):
            link(a, b, "hash distance 1")
    return links + links[:25]  # a link found in two buckets comes twice


def test_connected_components_in_beam_equal_the_single_worker_union_find():
    from transforms.common.unionfind import ConnectedComponents

    for seed in (0, 1):
        links = _random_links(seed)
        oracle = [tuple(r) for r in resolve_links(links, where=" (near)")]
        assert len(oracle) > 150 and any(r[1] != r[0] for r in oracle)
        with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
            found = p | beam.Create(links) | ConnectedComponents(where=" (near)") | beam.Map(tuple)
            assert_that(found, equal_to(oracle))


def test_connected_components_fail_rather_than_answer_before_settling():
    from transforms.common.unionfind import ComponentsNotSettledError, ConnectedComponents

    links = _random_links(0)
    with (
        pytest.raises(Exception, match="still not in a star after 1 large-star/small-star") as raised,
        test_pipeline.TestPipeline(runner=FnApiRunner()) as p,
    ):
        _ = p | beam.Create(links) | ConnectedComponents(alternations=1)
    assert isinstance(raised.value, ComponentsNotSettledError) or "ComponentsNotSettledError" in str(
        raised.value
    )
