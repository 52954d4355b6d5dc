"""The PDQ blocklist index finds exactly what a scan of the whole list finds, at every distance up
to the threshold and however the differing bits fall across its bands."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.safety import HammingIndex, read_hash_list
from transforms.safety.hashindex import HashListError, parse_hash_lines


def _flip(hash_: bytes, positions: list[int]) -> bytes:
    bits = np.unpackbits(np.frombuffer(hash_, np.uint8))
    bits[positions] ^= 1
    return np.packbits(bits).tobytes()


@pytest.fixture(scope="module")
def listed() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5_000, 32), dtype=np.uint8)


def test_every_hash_within_the_threshold_is_found_as_a_scan_finds_it(listed: np.ndarray) -> None:
    index = HammingIndex(listed, max_distance=31, bands=16)
    rng = np.random.default_rng(1)
    queries = []
    for distance in range(0, 40):
        for row in rng.choice(len(listed), size=10, replace=False):
            positions = rng.choice(256, size=distance, replace=False).tolist()
            queries.append((int(row), distance, _flip(listed[row].tobytes(), positions)))
    # The hardest spread for the bands: 31 bits, two in each of 15 bands and one in the last.
    spread = [16 * band + k for band in range(15) for k in (0, 1)] + [16 * 15]
    queries.append((7, 31, _flip(listed[7].tobytes(), spread)))
    queries += [(-1, -1, rng.integers(0, 256, 32, dtype=np.uint8).tobytes()) for _ in range(200)]
    for row, distance, query in queries:
        found = index.nearest(query)
        assert found == index.scan(query)
        if 0 <= distance <= 31:
            assert found == (row, distance)
        elif distance > 31 or row < 0:
            assert found is None  # random hashes lie about 128 bits apart


def test_a_wider_threshold_probes_more_bits_per_band(listed: np.ndarray) -> None:
    index = HammingIndex(listed, max_distance=40, bands=16)  # r = 2
    rng = np.random.default_rng(2)
    for row in range(20):
        query = _flip(listed[row].tobytes(), rng.choice(256, size=40, replace=False).tolist())
        assert index.nearest(query) == (row, 40) == index.scan(query)


def test_a_hash_list_names_the_line_it_cannot_read(tmp_path) -> None:
    good = "ab" * 32
    path = tmp_path / "pdq.txt"
    path.write_text(f"# PDQ hashes\n{good}\n\n{good.upper()}  # again\n")
    hashes = read_hash_list(str(path))
    assert hashes.shape == (2, 32) and hashes[0].tobytes() == bytes.fromhex(good)
    with pytest.raises(HashListError, match=r"list\.txt:2: not a 64-hex-digit hash"):
        parse_hash_lines([good, "abc"], "list.txt")
    assert HammingIndex(parse_hash_lines([], "empty")).nearest(bytes(32)) is None
