"""Perceptual-hash blocklists: which listed 256-bit hash (Meta's PDQ) lies within `max_distance`
bits of an image's hash, without comparing the image to every hash of the list.

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012): the 256 bits are cut into `bands` equal bands. Two hashes at most `d` bits
apart differ in at most ⌊d / bands⌋ bits of at least one band (pigeonhole), so looking up, in each
band's sorted table, the query's band value and every value within r = ⌊d / bands⌋ flipped bits
finds every listed hash within `d`: recall 1.0 at the threshold, by construction. The candidates
are then measured exactly (XOR and popcount over four 64-bit words).

With PDQ's documented match threshold of 31 and 16 bands of 16 bits, r = 1: 17 lookups per band.
A list of n random hashes leaves about 16 × 17 × n / 65,536 candidates per query (4,200 at one
million), against n for a scan (`benchmarks/blocklist_lookup.py` measures both).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8


class HashListError(ValueError):
    """A hash list that cannot be read (the message names the file and the line)."""


def parse_hash_lines(lines: Iterable[str], where: str) -> np.ndarray:
    """(n, 32) uint8 of the 64-hex-digit hashes of a list, one per line; blank lines and `#`
    comments are skipped. `HashListError` names `where` and the line of anything else."""
    hashes = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) != HASH_BYTES:
            raise HashListError(f"{where}:{number}: not a 64-hex-digit hash: {text[:16]!r}…")
        hashes.append(value)
    if not hashes:
        return np.zeros((0, HASH_BYTES), np.uint8)
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES)


def read_hash_list(path: str) -> np.ndarray:
    """The hashes of a list file (local, s3://, gs://): see `parse_hash_lines`."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        text = handle.read().decode("ascii", errors="replace")
    return parse_hash_lines(text.splitlines(), path)


def _words(hashes: np.ndarray) -> np.ndarray:
    """(n, 4) big-endian uint64 words of (n, 32) uint8 hashes."""
    return np.ascontiguousarray(hashes).view(">u8").astype(np.uint64).reshape(-1, 4)


def _probes(bits: int, radius: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `radius` bits set (0 first)."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in chosen) for chosen in itertools.combinations(range(bits), r)]
    return np.array(masks, np.uint32)


class HammingIndex:
    """The listed hashes, found within `max_distance` bits of a query by multi-index hashing."""

    def __init__(self, hashes: np.ndarray, max_distance: int = 31, bands: int = 16):
        if HASH_BITS % bands or HASH_BITS // bands > 32:
            raise ValueError(f"bands ({bands}) must divide {HASH_BITS} into bands of at most 32 bits")
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance ({max_distance}) must be in [0, {HASH_BITS})")
        self.max_distance = max_distance
        self._bands = bands
        self._band_bits = HASH_BITS // bands
        self._words = _words(hashes)
        values = self._band_values(self._words)  # (n, bands)
        self._order = np.argsort(values, axis=0, kind="stable").T  # (bands, n): rows by band value
        self._sorted = np.take_along_axis(values, self._order.T, axis=0).T  # (bands, n)
        self._probes = _probes(self._band_bits, max_distance // bands)

    def __len__(self) -> int:
        return len(self._words)

    def _band_values(self, words: np.ndarray) -> np.ndarray:
        """(n, bands) uint32: band i holds bits [i·w, (i+1)·w) of the hash, from the most significant."""
        per_word = 64 // self._band_bits
        mask = np.uint64((1 << self._band_bits) - 1)
        columns = []
        for word in range(4):
            for k in range(per_word):
                shift = np.uint64(64 - self._band_bits * (k + 1))
                columns.append((words[:, word] >> shift) & mask)
        return np.stack(columns, axis=1).astype(np.uint32)

    def candidates(self, query: bytes) -> np.ndarray:
        """Rows sharing a band with `query` within r flipped bits: a superset of the matches."""
        words = _words(np.frombuffer(query, np.uint8).reshape(1, HASH_BYTES))
        bands = self._band_values(words)[0]
        found = []
        for band, value in enumerate(bands):
            wanted = np.bitwise_xor(self._probes, value)
            lo = np.searchsorted(self._sorted[band], wanted, side="left")
            hi = np.searchsorted(self._sorted[band], wanted, side="right")
            for start, stop in zip(lo.tolist(), hi.tolist(), strict=True):
                if stop > start:
                    found.append(self._order[band, start:stop])
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def distances(self, query: bytes, rows: np.ndarray) -> np.ndarray:
        """Hamming distances from `query` to the listed hashes at `rows`."""
        words = _words(np.frombuffer(query, np.uint8).reshape(1, HASH_BYTES))
        return np.bitwise_count(self._words[rows] ^ words).sum(axis=1).astype(np.int64)

    def nearest(self, query: bytes) -> tuple[int, int] | None:
        """(row, distance) of the closest listed hash within `max_distance` (the lowest row on a
        tie), or None."""
        rows = self.candidates(query)
        if not len(rows):
            return None
        distances = self.distances(query, rows)
        best = int(np.argmin(distances))  # rows are sorted: the lowest row wins a tie
        if distances[best] > self.max_distance:
            return None
        return int(rows[best]), int(distances[best])

    def scan(self, query: bytes) -> tuple[int, int] | None:
        """`nearest` by comparing the query with every listed hash (the reference it must equal)."""
        if not len(self._words):
            return None
        distances = self.distances(query, np.arange(len(self._words)))
        best = int(np.argmin(distances))
        return (best, int(distances[best])) if distances[best] <= self.max_distance else None
