"""The perceptual level compares hashes only inside blocks of bounded size (`near_blocking:
clusters`): its work per sample stays flat as n grows, it finds the groups the exhaustive LSH
banding finds, and identical members are collapsed before any comparison."""

from __future__ import annotations

import functools

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipeline.cli import main
from transforms.common.partition import ClusterMembers
from transforms.common.progress import NAMESPACE
from transforms.dedup.blocks import BlockLinks, Member, _signature_vector, block_links
from transforms.dedup.config import DedupConfig
from transforms.dedup.hashed import NearDuplicates
from transforms.dedup.perceptual import hash_bands
from transforms.dedup.types import NEAR, Fingerprint

SIDE = 768  # bytes of a thumbnail signature
HASH_PROTOTYPES = 16  # skew: every hash is one of 16 prototypes with 6 bits flipped


def _counter(result: beam.runners.runner.PipelineResult, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(c.committed for c in found)


@functools.lru_cache(maxsize=4)
def _topics(n: int) -> tuple[np.ndarray, np.ndarray]:
    """One topic (a signature direction) per 50 samples, and the 16 hash prototypes."""
    rng = np.random.default_rng([11, n])
    return rng.normal(size=(max(1, n // 50), SIDE)), rng.integers(0, 2**63, HASH_PROTOTYPES, dtype=np.int64)


def _signature(vector: np.ndarray) -> bytes:
    return np.clip(np.round(vector / np.abs(vector).max() * 127), -127, 127).astype(np.int8).tobytes()


def _skewed(i: int, n: int) -> tuple[str, Fingerprint]:
    """Sample i of n: every 10th a flat image (hash 0, signature 0, as blank banners are), the
    others a topic's signature with noise (thumbnail cosine ~0.5 within a topic) and a hash
    sharing most bits with a sixteenth of the collection."""
    uid = f"s{i:06d}"
    if i % 10 == 0:
        return uid, Fingerprint(uid, None, uid, 0, bytes(SIDE), 100, None)
    topics, prototypes = _topics(n)
    rng = np.random.default_rng([12, n, i])
    topic = int(rng.integers(len(topics)))
    hash_value = int(prototypes[topic % HASH_PROTOTYPES])
    for bit in rng.choice(64, 6, replace=False):
        hash_value ^= 1 << int(bit)
    signature = _signature(topics[topic] + rng.normal(size=SIDE))
    return uid, Fingerprint(uid, None, uid, hash_value, signature, 100, None)


def _band_comparisons(fingerprints: list[tuple[str, Fingerprint]], bands: int) -> int:
    """The pairs `near_blocking: bands` compares (every pair of each band bucket; counted as
    `_BucketPairsFn` counts an untiled bucket)."""
    sizes: dict[tuple[int, int], int] = {}
    for _, found in fingerprints:
        for key in hash_bands(found.hash64, bands):
            sizes[key] = sizes.get(key, 0) + 1
    return sum(size * (size - 1) // 2 for size in sizes.values())


def _block_comparisons(n: int, config: DedupConfig) -> tuple[int, int]:
    """(hash comparisons, links) of `BlockLinks` over the n skewed samples, from its counters."""
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(range(n)) | beam.Map(_skewed, n) | BlockLinks(config)
    result = p.run()
    result.wait_until_finish()
    return _counter(result, "dedup/hash_comparisons"), _counter(result, "dedup/hash_links")


def test_scale_item1_hash_comparisons_per_sample_stay_flat():
    config = DedupConfig(cluster_size=200)
    per_sample = {}
    for n in (2_000, 20_000):
        comparisons, links = _block_comparisons(n, config)
        banded = _band_comparisons([_skewed(i, n) for i in range(n)], config.bands)
        per_sample[n] = (comparisons / n, banded / n)
        print(f"n={n}: clusters {comparisons / n:.0f} comparisons per sample, bands {banded / n:.0f}")
        assert links == n // 10 - 1  # the flat images, one star; the noisy topics share no near copy
    (small, small_bands), (large, large_bands) = per_sample[2_000], per_sample[20_000]
    assert large <= 1.2 * small and small <= 1.2 * large, per_sample
    assert large_bands >= 5 * small_bands, per_sample  # the band buckets grow with n
    assert large < large_bands / 5


# ---------------------------------------------------------------- recall against the bands


def _planted(seed: int = 5) -> tuple[list[tuple[str, Fingerprint]], list[tuple[str, str]]]:
    """20 topics of 60 distinct samples, and 150 near-copy pairs: 100 inside topics, 50 halfway
    on either side of the border between two topics, each copy 0-8 hash bits off."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(20, SIDE))
    fingerprints: list[tuple[str, Fingerprint]] = []
    pairs: list[tuple[str, str]] = []

    def add(uid: str, vector: np.ndarray, hash_value: int) -> None:
        fingerprints.append((uid, Fingerprint(uid, None, uid, hash_value, _signature(vector), 100, None)))

    for t in range(20):
        for j in range(60):
            add(f"t{t:02d}-{j:02d}", topics[t] + 1.2 * rng.normal(size=SIDE), int(rng.integers(0, 2**63)))
    for k in range(150):
        if k < 100:
            base = topics[k % 20] + 1.2 * rng.normal(size=SIDE)
            a, b = base, base + 0.15 * rng.normal(size=SIDE)
        else:  # either side of the border between two topics (thumbnail cosine ~0.96)
            first, second = rng.choice(20, 2, replace=False)
            middle = topics[first] + topics[second] + 0.3 * rng.normal(size=SIDE)
            apart = 0.15 * (topics[first] - topics[second])
            a, b = middle + apart, middle - apart
        hash_value = int(rng.integers(0, 2**63))
        flipped = hash_value
        for bit in rng.choice(64, int(rng.integers(0, 9)), replace=False):
            flipped ^= 1 << int(bit)
        add(f"p{k:03d}a", a, hash_value)
        add(f"p{k:03d}b", b, flipped)
        pairs.append((f"p{k:03d}a", f"p{k:03d}b"))
    return fingerprints, pairs


def _check_decisions(fingerprints: list[tuple[str, Fingerprint]], config: DedupConfig) -> None:
    """`NearDuplicates` removes each planted b copy for its a (same area and score, smaller uid
    kept), and nothing else."""
    expected = [
        (uid, NEAR, uid[:-1] + "a") for uid, _ in fingerprints if uid.startswith("p") and uid[-1] == "b"
    ]
    p = beam.Pipeline(runner=FnApiRunner())
    decisions = p | beam.Create(fingerprints) | NearDuplicates(config)
    assert_that(decisions | beam.Map(lambda d: (d.uid, d.reason, d.duplicate_of)), equal_to(expected))
    p.run().wait_until_finish()


def _nearest_clusters(
    fingerprints: list[tuple[str, Fingerprint]], config: DedupConfig, folder: str
) -> dict[str, int]:
    """Each member's nearest cluster, as the blocks' k-means (same sample and seed) places it."""
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create(fingerprints)
        | beam.Map(lambda kv: (kv[0], kv[1].signature, kv[1].hash64, kv[1].rank)).with_output_types(Member)
        | ClusterMembers(
            embedding=_signature_vector,
            sample_size=config.kmeans_sample,
            cluster_size=config.cluster_size,
            seed=config.seed,
            iterations=config.kmeans_iterations,
        )
        | beam.FlatMap(lambda batch: [f"{m[0]} {cluster}" for cluster, _, _, m in batch])
        | beam.io.WriteToText(f"{folder}/nearest", shard_name_template="")
    )
    p.run().wait_until_finish()
    with open(f"{folder}/nearest") as lines:
        return {uid: int(cluster) for uid, cluster in (line.split() for line in lines)}


def test_scale_item1_clusters_find_the_groups_the_bands_find(tmp_path):
    fingerprints, pairs = _planted()
    blocks = DedupConfig(cluster_size=100)
    # The border pairs really straddle clusters: their thumbnails' nearest centroids differ.
    nearest = _nearest_clusters(fingerprints, blocks, str(tmp_path))
    straddling = [a for a, b in pairs if nearest[a] != nearest[b]]
    print(f"{len(straddling)} of {len(pairs)} planted pairs straddle two clusters")
    assert len(straddling) >= 10, straddling
    # Both blockings find exactly the planted pairs, the straddling ones too.
    _check_decisions(fingerprints, blocks)
    _check_decisions(fingerprints, DedupConfig(cluster_size=100, near_blocking="bands"))


# ---------------------------------------------------------------- identical members


def test_scale_item1_identical_members_are_collapsed_and_all_linked():
    flat = bytes(SIDE)
    placed = [(0, f"f{i:04d}", flat, 0, (-100.0, float(i % 3)), (0,)) for i in range(1000)]
    placed += [(0, f"g{i:04d}", flat, 1 << i, (-100.0, 0.0), (0,)) for i in range(10)]
    links, comparisons = block_links((0, 0, 0), sorted(placed, key=lambda m: m[1]), DedupConfig())
    # 11 distinct (hash, signature) units: 55 comparisons of representatives, not 1010²/2.
    assert comparisons <= 11 * 11, comparisons
    # One spanning tree: 1009 links joining all 1010 members.
    assert len(links) == 1009
    parent = {m[1]: m[1] for m in placed}

    def find(uid: str) -> str:
        while parent[uid] != uid:
            uid = parent[uid]
        return uid

    for link in links:
        parent[find(link.a)] = find(link.b)
    assert len({find(m[1]) for m in placed}) == 1
    # Through Beam with the block cut into tiles of 300: every copy removed for one kept.
    fingerprints = [(m[1], Fingerprint(m[1], None, m[1], m[3], flat, 100, None)) for m in placed]
    p = beam.Pipeline(runner=FnApiRunner())
    decisions = p | beam.Create(fingerprints) | NearDuplicates(DedupConfig(max_group_size=300))
    assert_that(decisions | beam.Map(lambda d: d.duplicate_of) | beam.Distinct(), equal_to(["f0000"]))
    assert_that(decisions | beam.combiners.Count.Globally(), equal_to([1009]), label="count")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "dedup/hash_comparisons") < 1010 * 1009 // 20


def test_scale_item1_bands_need_a_64_bit_hash(capsys):
    with pytest.raises(ValueError, match="near_blocking"):
        DedupConfig(hash="pdq", near_blocking="bands")
    assert main(["config", "--set", "dedup.hash=pdq", "--set", "dedup.near_blocking=bands"]) == 2
    assert "dedup.near_blocking" in capsys.readouterr().err
    # hash_bands means nothing to a 256-bit hash (no level bands it): refused, not ignored.
    assert main(["config", "--set", "dedup.hash=pdq", "--set", "dedup.hash_bands=4"]) == 2
    err = capsys.readouterr().err
    assert "dedup.hash_bands (4)" in err and len(err.strip().splitlines()) == 1
    assert DedupConfig(hash="dhash", hash_bands=4).bands == 4


def test_scale_item1_a_tile_of_near_copies_confirms_its_pairs_in_bounded_memory():
    """A large group of near-copies in one tile: every pair of it is close, yet confirming them
    must not gather the signatures of all the pairs at once (6 KB a pair)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    base = rng.integers(-100, 100, SIDE).astype(np.int16)
    members = 800  # 319,600 close pairs: gathered whole, about 1.9 GB
    placed = []
    for i in range(members):
        noisy = np.clip(base + rng.integers(-3, 4, SIDE), -127, 127).astype(np.int8).tobytes()
        placed.append((0, f"c{i:04d}", noisy, 0xF0F0, (-100.0, 0.0), (0,)))
    tracemalloc.start()
    try:
        links, comparisons = block_links((0, 0, 0), placed, DedupConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert comparisons >= members * (members - 1) // 2  # every pair compared
    assert len(links) == members - 1  # one spanning tree of the group
    assert peak < 300 << 20, f"peak {peak >> 20} MB"
