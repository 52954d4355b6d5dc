"""Perceptual hashes and LSH banding for near-duplicate images: pure functions, no Beam.

- `phash`: the 64-bit DCT hash as the `imagehash` package (4.x) computes it (grayscale, 32x32
  Lanczos, 2-D DCT-II, top-left 8x8 block, bit = coefficient above the block's median), bits in
  row-major order with the first one the most significant, as in imagehash's hex string.
  `dhash`: the 64-bit difference hash (9x8 grayscale, bit = pixel brighter than its left
  neighbour), same bit order. pHash is least stable on near-blank images, where most of the 64
  coefficients are close to the median.
- `hamming`: the number of differing bits of two hashes.
- `band_keys`: the hash cut into `max_distance + 1` bands; two hashes at most `max_distance` bits
  apart agree exactly on at least one band (pigeonhole), so grouping by every (band index, band
  value) key puts each such pair into at least one common bucket.
- `near_duplicate_pairs`: every pair of one bucket within `max_distance` bits, vectorised. A pair
  that shares several bands is found in each of those buckets; the caller deduplicates.
- `cross_pairs`: the same for the pairs between two lists (one tile of a bucket too big for one
  worker, cut as `semantic.split_cluster` cuts clusters).
- `pixel_digest`: sha256 of the decoded RGB pixels and the size, so re-encoding the same pixels
  losslessly (another PNG compression level, other metadata) keeps the digest.
- `thumbnail_signature` / `signature_similarity`: a 16x16 colour thumbnail with each channel's mean
  removed, as 768 int8 values; the cosine of two signatures confirms a candidate pair. A 64-bit
  hash is unstable on flat images (most of its bits compare near-equal values), so two distinct
  plain-background images can share a hash; their thumbnails differ in colour and layout.
  Removing the means makes the cosine indifferent to brightness changes.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

HASH_BITS = 64
_DCT_SIZE = 32
_LOW_FREQUENCIES = 8
# Rows of the pair matrix compared at once in `near_duplicate_pairs`.
_BLOCK_ROWS = 256
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


@functools.lru_cache(maxsize=1)
def _dct_rows() -> np.ndarray:
    """The first 8 rows of the unnormalised 32-point DCT-II matrix (scipy's default `dct`, halved).

    The unnormalised transform scales every coefficient alike, so the median threshold gives the
    same bits as `imagehash`; the orthonormal one scales row and column 0 differently and would not.
    """
    k = np.arange(_LOW_FREQUENCIES)[:, None]
    n = np.arange(_DCT_SIZE)[None, :]
    matrix = np.cos(np.pi * k * (2 * n + 1) / (2 * _DCT_SIZE))
    matrix.setflags(write=False)
    return matrix


def _bits_to_int(bits: np.ndarray) -> int:
    """64 booleans, first one most significant, as an unsigned int."""
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual (DCT) hash of `image`, equal to `int(str(imagehash.phash(image)), 16)`."""
    gray = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    rows = _dct_rows()
    low = rows @ pixels @ rows.T
    return _bits_to_int(low > np.median(low))


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash of `image`, equal to `int(str(imagehash.dhash(image)), 16)`."""
    gray = image.convert("L").resize((_LOW_FREQUENCIES + 1, _LOW_FREQUENCIES), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.int16)
    return _bits_to_int(pixels[:, 1:] > pixels[:, :-1])


def hamming(a: int, b: int) -> int:
    """Number of bits in which `a` and `b` differ."""
    return (a ^ b).bit_count()


def _band_widths(bands: int) -> list[int]:
    base, extra = divmod(HASH_BITS, bands)
    return [base + 1 if index < extra else base for index in range(bands)]


def band_keys(hash64: int, max_distance: int) -> list[tuple[int, int]]:
    """(band index, band value) for the `max_distance + 1` bands of `hash64`, lowest bits first.

    Band widths differ by at most one bit (the wider ones first). `max_distance` must lie in 0..63
    so that every band has at least one bit.
    """
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
    return hash_bands(hash64, max_distance + 1)


def hash_bands(hash64: int, bands: int) -> list[tuple[int, int]]:
    """(band index, band value) for `bands` (1..64) bands of `hash64`, as `band_keys` cuts them."""
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be in 1..{HASH_BITS}, got {bands}")
    if not 0 <= hash64 < 1 << HASH_BITS:
        raise ValueError(f"not an unsigned 64-bit hash: {hash64}")
    keys = []
    shift = 0
    for index, width in enumerate(_band_widths(bands)):
        keys.append((index, (hash64 >> shift) & ((1 << width) - 1)))
        shift += width
    return keys


def near_duplicate_pairs(items: Sequence[tuple[str, int]], max_distance: int) -> list[tuple[str, str, int]]:
    """(uid_a, uid_b, distance) with uid_a < uid_b for every pair of `items` within `max_distance` bits.

    Sorted by (uid_a, uid_b). Items with the same uid are not paired. The pair matrix is computed
    `_BLOCK_ROWS` rows at a time (XOR, then a byte popcount table), so a bucket of a few thousand
    items needs a few megabytes.
    """
    ordered = sorted(items)
    uids = [uid for uid, _ in ordered]
    hashes = np.array([value for _, value in ordered], dtype=np.uint64)
    pairs: list[tuple[str, str, int]] = []
    for start in range(0, len(ordered), _BLOCK_ROWS):
        block = hashes[start : start + _BLOCK_ROWS, None] ^ hashes[None, start:]
        distances = _POPCOUNT[block.view(np.uint8)].reshape(*block.shape, 8).sum(axis=2)
        rows, cols = np.nonzero(distances <= max_distance)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            a, b = start + row, start + col
            if b > a and uids[a] != uids[b]:
                pairs.append((uids[a], uids[b], int(distances[row, col])))
    pairs.sort()
    return pairs


def hash_words(hashes: Sequence[int], bits: int = HASH_BITS) -> np.ndarray:
    """Hashes of `bits` bits (a multiple of 64: 64 for dHash/pHash, 256 for PDQ) as an (n, bits // 64)
    uint64 array, most significant word first, for `hamming_matrix`."""
    if bits <= 0 or bits % 64:
        raise ValueError(f"hash bits must be a positive multiple of 64, got {bits}")
    words = bits // 64
    mask = (1 << 64) - 1
    out = np.empty((len(hashes), words), dtype=np.uint64)
    for row, value in enumerate(hashes):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"not an unsigned {bits}-bit hash: {value}")
        for word in range(words):
            out[row, words - 1 - word] = (value >> (64 * word)) & mask
    return out


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances (int32) between the rows of two `hash_words` arrays.

    Memory is len(a) × len(b) × words × 8 bytes: callers cut large inputs into row blocks."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"hashes of different widths: {a.shape[1] * 64} and {b.shape[1] * 64} bits")
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    block = a[:, None] ^ b[None, :]
    return _POPCOUNT[block.view(np.uint8)].reshape(*block.shape, 8).sum(axis=2)


def cross_pairs(
    rows: Sequence[tuple[str, int]], cols: Sequence[tuple[str, int]], max_distance: int
) -> list[tuple[str, str, int]]:
    """(uid_a, uid_b, distance), uid_a < uid_b, for every (row, col) pair within `max_distance` bits."""
    col_uids = [uid for uid, _ in cols]
    col_hashes = np.array([value for _, value in cols], dtype=np.uint64)
    pairs: list[tuple[str, str, int]] = []
    for start in range(0, len(rows), _BLOCK_ROWS):
        chunk = rows[start : start + _BLOCK_ROWS]
        distances = _distances(np.array([value for _, value in chunk], dtype=np.uint64), col_hashes)
        for row, col in zip(*np.nonzero(distances <= max_distance), strict=True):
            a, b = chunk[int(row)][0], col_uids[int(col)]
            if a != b:
                pairs.append((min(a, b), max(a, b), int(distances[row, col])))
    pairs.sort()
    return pairs


def pixel_digest(image: Image.Image) -> str:
    """sha256 hex of the image's RGB pixels and size: the same for any lossless re-encoding."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


SIGNATURE_SIDE = 16


def thumbnail_signature(image: Image.Image) -> bytes:
    """768 int8 values: the 16x16 box-filtered RGB thumbnail, each channel's mean removed, scaled
    so that the largest magnitude is 127 (a flat image gives all zeros)."""
    small = image.convert("RGB").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32).reshape(-1, 3)
    centred = (pixels - pixels.mean(axis=0)).reshape(-1)
    peak = float(np.abs(centred).max())
    if peak == 0.0:
        return bytes(centred.size)
    return np.round(centred * (127.0 / peak)).astype(np.int8).tobytes()


def signature_similarity(a: bytes, b: bytes) -> float:
    """Cosine of two thumbnail signatures; 1.0 for two flat images, 0.0 for a flat and a textured one."""
    va = np.frombuffer(a, dtype=np.int8).astype(np.float32)
    vb = np.frombuffer(b, dtype=np.int8).astype(np.float32)
    na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(va, vb) / (na * nb))
