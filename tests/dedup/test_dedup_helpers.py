"""Deduplication building blocks: perceptual hashes, LSH bands and SemDeDup inside a cluster."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import statistics
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance, PngImagePlugin

from sampleweb.scenes import random_scene, render
from transforms.common.clustering import normalize
from transforms.common.tiling import split_cluster
from transforms.dedup.cosine import cluster_duplicates, resolve_duplicates, similar_pairs
from transforms.dedup.perceptual import (
    band_keys,
    dhash,
    hamming,
    near_duplicate_pairs,
    phash,
    pixel_digest,
)

# --------------------------------------------------------------------------- perceptual hashes


def _scene_image(seed: int, size: int = 256) -> Image.Image:
    return render(random_scene(np.random.default_rng(seed)), size, size, grain=4.0, grain_seed=seed)


def _reencode(image: Image.Image, **save: Any) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _reference_phash(image: Image.Image) -> int:
    """The DCT written out as sums of cosines: slow, independent of the matrix form."""
    gray = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels: list[list[float]] = np.asarray(gray, dtype=np.float64).tolist()
    cosines = [[math.cos(math.pi * k * (2 * n + 1) / 64) for n in range(32)] for k in range(8)]
    coefficients = []
    for u in range(8):
        for v in range(8):
            total = 0.0
            for y in range(32):
                row = sum(pixels[y][x] * cosines[v][x] for x in range(32))
                total += cosines[u][y] * row
            coefficients.append(total)
    median = statistics.median(coefficients)
    return int("".join("1" if value > median else "0" for value in coefficients), 2)


def _reference_dhash(image: Image.Image) -> int:
    gray = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels: list[list[int]] = np.asarray(gray).tolist()
    bits = [pixels[y][x + 1] > pixels[y][x] for y in range(8) for x in range(8)]
    return int("".join("1" if bit else "0" for bit in bits), 2)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_phash_matches_the_direct_dct(seed: int) -> None:
    image = _scene_image(seed)
    value = phash(image)
    assert value == _reference_phash(image)
    assert 0 <= value < 1 << 64
    assert value >> 63 == 1  # the DC coefficient (first, most significant bit) is above the median


def test_dhash_matches_the_direct_difference() -> None:
    for seed in (1, 2):
        image = _scene_image(seed)
        assert dhash(image) == _reference_dhash(image)


def test_phash_is_robust_to_small_edits_and_tells_images_apart() -> None:
    images = [_scene_image(seed) for seed in range(1, 17)]
    for image in images:
        original = phash(image)
        edits = [
            _reencode(image, format="JPEG", quality=80),
            image.resize((230, 230), Image.Resampling.BILINEAR),
            ImageEnhance.Brightness(image).enhance(1.1),
        ]
        for edited in edits:
            assert hamming(original, phash(edited)) <= 8
    # Unrelated scenes: mostly 20+ bits apart, and never within the near-duplicate distance.
    distances = [hamming(phash(a), phash(b)) for a, b in itertools.combinations(images, 2)]
    assert min(distances) > 8
    assert np.mean(np.array(distances) >= 20) >= 0.95


def test_hamming() -> None:
    assert hamming(0, 0) == 0
    assert hamming(0, (1 << 64) - 1) == 64
    assert hamming(0b1011, 0b0110) == 3


# --------------------------------------------------------------------------- LSH bands


def _flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


@pytest.mark.parametrize("max_distance", [0, 3, 6, 10])
def test_band_keys_share_a_band_within_the_distance(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    for _ in range(200):
        value = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(0, 2))
        keys = band_keys(value, max_distance)
        assert len(keys) == max_distance + 1
        assert [index for index, _ in keys] == list(range(max_distance + 1))
        distance = int(rng.integers(0, max_distance + 1))
        other = _flip(value, rng.choice(64, size=distance, replace=False).tolist())
        assert set(keys) & set(band_keys(other, max_distance))


def test_band_keys_cover_every_bit_and_the_bound_is_tight() -> None:
    max_distance = 6
    value = 0x0123_4567_89AB_CDEF
    keys = band_keys(value, max_distance)
    widths = [(64 + max_distance - index) // (max_distance + 1) for index in range(max_distance + 1)]
    assert sum(widths) == 64 and max(widths) - min(widths) <= 1
    rebuilt, shift = 0, 0
    for (_, band), width in zip(keys, widths, strict=True):
        rebuilt |= band << shift
        shift += width
    assert rebuilt == value
    # One flipped bit in every band: max_distance + 1 bits apart and no band in common.
    starts = list(itertools.accumulate([0, *widths[:-1]]))
    other = _flip(value, starts)
    assert hamming(value, other) == max_distance + 1
    assert not set(keys) & set(band_keys(other, max_distance))
    with pytest.raises(ValueError):
        band_keys(value, 64)


def test_near_duplicate_pairs_equals_brute_force() -> None:
    rng = np.random.default_rng(5)
    bases = [int(rng.integers(0, 1 << 62)) << 2 for _ in range(40)]
    items = []
    for number in range(700):
        base = bases[int(rng.integers(0, len(bases)))]
        flips = rng.choice(64, size=int(rng.integers(0, 9)), replace=False).tolist()
        items.append((f"{int(rng.integers(0, 1 << 62)):032x}{number}", _flip(base, flips)))
    expected = sorted(
        (min(a[0], b[0]), max(a[0], b[0]), hamming(a[1], b[1]))
        for a, b in itertools.combinations(items, 2)
        if hamming(a[1], b[1]) <= 5
    )
    found = near_duplicate_pairs(items, 5)
    assert found == expected
    assert len(found) > 100
    assert near_duplicate_pairs(items[:1], 5) == []


# --------------------------------------------------------------------------- pixel digest


def test_pixel_digest_ignores_the_encoding_but_not_the_pixels() -> None:
    image = _scene_image(4, size=96)
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("Comment", "re-saved")
    fast = _reencode(image, format="PNG", compress_level=1)
    small = _reencode(image, format="PNG", compress_level=9, pnginfo=metadata)
    files = [hashlib.sha256(_png_bytes(image, level)).hexdigest() for level in (1, 9)]
    assert files[0] != files[1]
    assert pixel_digest(fast) == pixel_digest(small) == pixel_digest(image)
    pixels = np.array(image)
    pixels[20, 10, 0] ^= 1
    changed = Image.fromarray(pixels)
    assert pixel_digest(changed) != pixel_digest(image)
    assert pixel_digest(image.crop((0, 0, 96, 48))) != pixel_digest(image.crop((0, 0, 48, 96)))


def _png_bytes(image: Image.Image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


# --------------------------------------------------------------------------- SemDeDup


def _planted_cluster(seed: int) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """Random unit vectors plus near-copies of some of them, and a chain A~B~C with A and C apart."""
    rng = np.random.default_rng(seed)
    d = 64
    rows = list(rng.normal(size=(300, d)))
    groups = []
    for base in range(0, 60, 3):  # 20 groups: a base row and 1-3 near copies (cosine ~0.995)
        copies = int(rng.integers(1, 4))
        group = [base]
        for _ in range(copies):
            group.append(len(rows))
            rows.append(rows[base] / np.linalg.norm(rows[base]) + rng.normal(scale=0.01, size=d))
        groups.append(group)
    e1, e2 = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    angle = math.acos(0.985)
    chain = []
    for step in range(3):  # cos(A, B) = cos(B, C) = 0.985, cos(A, C) = 0.94
        chain.append(len(rows))
        rows.append(math.cos(step * angle) * e1 + math.sin(step * angle) * e2)
    groups.append(chain)
    order = rng.permutation(len(rows))
    position = {int(old): new for new, old in enumerate(order)}
    uids = [f"{int(value):032x}" for value in rng.integers(0, 1 << 62, size=len(rows))]
    embeddings = np.array([rows[int(old)] for old in order], dtype=np.float32)
    return uids, embeddings, [[position[item] for item in group] for group in groups]


def _expected(uids: list[str], groups: list[list[int]], best: dict[int, float]) -> list[tuple[str, str, str]]:
    """Rows for the planted groups when the member with the lowest (rank, uid) is kept."""
    rows = []
    for group in groups:
        kept = uids[min(group, key=lambda item: (best[item], uids[item]))]
        rows += [(uids[item], kept, kept) for item in group if uids[item] != kept]
    return sorted(rows, key=lambda row: (row[2], row[0]))


def test_cluster_duplicates_recovers_planted_groups_under_each_policy() -> None:
    uids, embeddings, groups = _planted_cluster(11)
    n = len(uids)
    members = [item for group in groups for item in group]
    scores: list[float | None] = [float(value) for value in np.random.default_rng(3).uniform(size=n)]
    centroid = normalize(embeddings).mean(axis=0) + 0.2

    result = cluster_duplicates(uids, embeddings, 0.02, "first_uid", block_size=64)
    assert result.removed == _expected(uids, groups, {item: 0.0 for item in members})
    assert result.comparisons == n * (n - 1) // 2
    assert len(result.removed) == sum(len(group) - 1 for group in groups)
    assert cluster_duplicates(uids, embeddings, 0.02, "first_uid").removed == result.removed

    by_score = cluster_duplicates(uids, embeddings, 0.02, "clip_score", clip_scores=scores, block_size=50)
    assert by_score.removed == _expected(uids, groups, {item: -float(scores[item] or 0) for item in members})

    farthest = cluster_duplicates(uids, embeddings, 0.02, "farthest", centroid=centroid, block_size=1000)
    cosines = normalize(embeddings) @ normalize(centroid)[0]
    assert farthest.removed == _expected(uids, groups, {item: float(cosines[item]) for item in members})
    assert farthest.comparisons == n * (n - 1) // 2

    # The chain's ends are not similar themselves; with a tighter epsilon the chain falls apart.
    chain = groups[-1]
    tight = cluster_duplicates(uids, embeddings, 0.01, "first_uid")
    assert not {uids[item] for item in chain} & {row[0] for row in tight.removed}


def test_cluster_duplicates_ties_and_missing_scores() -> None:
    vector = np.ones((1, 8), dtype=np.float32)
    embeddings = np.concatenate([vector, vector, vector, -vector])
    uids = ["c" * 32, "a" * 32, "b" * 32, "d" * 32]
    tied = cluster_duplicates(uids, embeddings, 0.01, "clip_score", clip_scores=[0.3, 0.3, None, 0.9])
    assert tied.removed == [("b" * 32, "a" * 32, "a" * 32), ("c" * 32, "a" * 32, "a" * 32)]
    assert tied.comparisons == 6
    farthest = cluster_duplicates(uids, embeddings, 0.01, "farthest")
    assert [row[1] for row in farthest.removed] == ["a" * 32, "a" * 32]
    with pytest.raises(ValueError):
        cluster_duplicates(uids, embeddings, 0.01, "clip_score")
    empty = cluster_duplicates([], np.zeros((0, 8), dtype=np.float32), 0.01, "first_uid")
    assert empty.removed == [] and empty.comparisons == 0


def test_tiles_processed_separately_give_the_same_duplicates() -> None:
    uids, embeddings, _ = _planted_cluster(12)
    points = normalize(embeddings)
    links: list[tuple[int, int]] = []
    comparisons = 0
    for rows, cols in reversed(split_cluster(len(uids), 40)):  # as independent work items, any order
        found, count = similar_pairs(
            points[rows.start : rows.stop], points[cols.start : cols.stop], rows, cols, 0.02
        )
        links += found
        comparisons += count
    whole = cluster_duplicates(uids, embeddings, 0.02, "first_uid")
    assert resolve_duplicates(uids, links, "first_uid") == whole.removed
    assert comparisons == whole.comparisons
