"""Cutting big groups into tiles, so no worker ever holds more than two chunks of one group.

A hash bucket of a million blank images or a cluster of a million copies of one flag would put
all its pairs on one worker. A group larger than `max_size` is cut into
ceil(size / max_size) chunks by uid hash (`chunk_of`), and the pairs of the group into tiles
(a, b), a <= b: each pair meets in exactly one tile, and tiles are independent units of work.

- `TileGroups` (Beam): (key, member) → ((key, a, b), (chunk, member)), with the group sizes counted.
- `chunks_for`: the chunks of a group of a known (or expected) size.
- `split_tile`: a tile's members as (rows, cols).
- `split_cluster`: the same tiling over the positions 0..n-1 of one group held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import xxhash


def chunk_of(uid: str, chunks: int) -> int:
    """The chunk of a uid in a group cut into `chunks` parts (stable across runs and runners)."""
    return xxhash.xxh3_64_intdigest(uid.encode()) % chunks if chunks > 1 else 0


def chunks_for(size: float, max_size: int) -> int:
    """How many chunks a group of `size` members is cut into (1 when it is not above `max_size`)."""
    return math.ceil(size / max_size) if size > max_size else 1


def tiles_of(chunk: int, chunks: int) -> Iterator[tuple[int, int]]:
    """The tiles (a, b), a <= b, that hold `chunk`."""
    for other in range(chunks):
        yield min(chunk, other), max(chunk, other)


class _TileFn(beam.DoFn):
    def __init__(self, max_size: int):
        self._max_size = max_size

    def process(
        self, element: tuple[Any, Any], big: dict[Any, int]
    ) -> Iterator[tuple[tuple[Any, int, int], tuple[int, Any]]]:
        key, member = element
        chunks = chunks_for(big[key], self._max_size) if key in big else 1
        mine = chunk_of(member.uid, chunks)
        for a, b in tiles_of(mine, chunks):
            yield (key, a, b), (mine, member)


class TileGroups(beam.PTransform):
    """(key, member with a `uid`) → ((key, a, b), (chunk, member)): groups above `max_size` tiled."""

    def __init__(self, max_size: int):
        super().__init__()
        self._max_size = max_size

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        max_size = self._max_size
        big = (
            keyed
            | "Ones" >> beam.Map(lambda kv: (kv[0], 1))
            | "Sizes" >> beam.CombinePerKey(sum)
            | "Big" >> beam.Filter(lambda kv: kv[1] > max_size)
        )
        return keyed | "Tile" >> beam.ParDo(_TileFn(max_size), big=beam.pvalue.AsDict(big))


def split_tile(members: Iterable[tuple[int, Any]], a: int, b: int) -> tuple[list[Any], list[Any]]:
    """The (rows, cols) members of tile (a, b), each sorted by uid; the same list twice when a == b."""
    rows = sorted((m for chunk, m in members if chunk == a), key=lambda m: m.uid)
    cols = rows if a == b else sorted((m for chunk, m in members if chunk == b), key=lambda m: m.uid)
    return rows, cols


def split_cluster(n: int, max_size: int) -> list[tuple[range, range]]:
    """Tiles (rows, cols) covering each unordered pair of `n` items exactly once.

    Rows are cut into chunks of at most `max_size`; the tiles are every chunk against itself and
    every chunk against each later chunk: ceil(n / max_size) * (ceil(n / max_size) + 1) / 2 tiles.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be positive, got {max_size}")
    chunks = [range(start, min(start + max_size, n)) for start in range(0, n, max_size)]
    return [(chunks[a], chunks[b]) for a in range(len(chunks)) for b in range(a, len(chunks))]
