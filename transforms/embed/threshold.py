"""DataComp's top-fraction threshold, exact, with bounded memory: a radix selection in Beam.

DataComp's `baselines/apply_filter.py` (`get_threshold`) keeps the samples scoring at least the
score at position ⌊n · fraction⌋ of all n scores sorted from the highest (NaN, a missing score,
counts in n and sorts last). `fraction_threshold` is that rule on an array in memory. Over a pool
of billions of scores no worker holds them all: `FractionThreshold` finds the same value in four
passes over the scores, each a global combine of a fixed 2^16-bucket histogram (512 KB, whatever n):

1. every score is mapped to a 64-bit key that sorts as the float does (`order_keys`);
2. the first pass counts the scores (and the NaNs) per value of the key's top 16 bits; the
   bucket holding the wanted rank is found from the counts;
3. each next pass counts, among the scores in that bucket only, the next 16 bits, and narrows the
   bucket, until all 64 bits (the score itself) are known.

No approximation: the result is the score `fraction_threshold` returns, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

_BITS = 16
_BUCKETS = 1 << _BITS
_NAN = _BUCKETS  # the first pass's extra bucket: scores without a value
_SIGN = np.uint64(1 << 63)


def fraction_threshold(scores: np.ndarray, keep_fraction: float) -> float:
    """DataComp's threshold for keeping the top `keep_fraction` (`baselines/apply_filter.py`,
    `get_threshold`): the score at position ⌊n · fraction⌋ of the scores sorted from the highest;
    samples scoring at least that are kept. -inf (keep all) when that position is past the end."""
    n = int(len(scores) * keep_fraction)
    if n >= len(scores):
        return float("-inf")
    return float(-np.sort(-scores)[n])


def order_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the (non-NaN) float64 `scores` do (-0.0 is 0.0)."""
    bits = (np.asarray(scores, np.float64) + 0.0).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_score(key: int) -> float:
    """The float64 whose `order_keys` key is `key`."""
    value = np.uint64(key)
    bits = value & ~_SIGN if value & _SIGN else ~value
    return float(np.array([bits], np.uint64).view(np.float64)[0])


@dataclasses.dataclass(frozen=True)
class Selection:
    """Where the selection stands after a pass: the key's top `bits` bits are `prefix`, and the
    wanted score is the `rank`-th smallest (from 0) of the scores whose key starts so; or, with
    `threshold` set, it is found."""

    rank: int = 0
    prefix: int = 0
    bits: int = 0
    threshold: float | None = None


class _Histogram(beam.CombineFn):
    """Sums bucket counts: arrays of bucket numbers in, one int64 count per bucket out."""

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(_BUCKETS + 1, np.int64)

    def add_input(self, accumulator: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        accumulator += np.bincount(buckets, minlength=_BUCKETS + 1)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        total = self.create_accumulator()
        for accumulator in accumulators:
            total += accumulator
        return total

    def extract_output(self, accumulator: np.ndarray) -> np.ndarray:
        return accumulator


def _buckets(scores: np.ndarray, selection: Selection | None) -> Iterator[np.ndarray]:
    """The bucket of each score of `scores` the pass after `selection` counts (None: the first)."""
    scores = np.asarray(scores, np.float64)
    if selection is None:
        missing = np.isnan(scores)
        keys = order_keys(scores[~missing])
        buckets = (keys >> np.uint64(64 - _BITS)).astype(np.int64)
        yield np.concatenate([buckets, np.full(int(missing.sum()), _NAN, np.int64)])
        return
    if selection.threshold is not None:
        return
    keys = order_keys(scores[~np.isnan(scores)])
    keys = keys[(keys >> np.uint64(64 - selection.bits)) == np.uint64(selection.prefix)]
    if len(keys):
        shift = np.uint64(64 - selection.bits - _BITS)
        yield ((keys >> shift) & np.uint64(_BUCKETS - 1)).astype(np.int64)


def _narrow(counts: np.ndarray, rank: int, prefix: int, bits: int) -> Selection:
    """The selection once the bucket holding the `rank`-th smallest is known from `counts`."""
    below = np.cumsum(counts[:_BUCKETS])
    bucket = int(np.searchsorted(below, rank, side="right"))
    rank -= int(below[bucket - 1]) if bucket else 0
    prefix, bits = (prefix << _BITS) | bucket, bits + _BITS
    if bits == 64:
        return Selection(threshold=key_score(prefix))
    return Selection(rank, prefix, bits)


def _start(counts: np.ndarray, keep_fraction: float) -> Selection:
    """The selection after the first pass: the rank DataComp's rule asks for among n scores."""
    n = int(counts.sum())
    position = int(n * keep_fraction)  # from the highest, NaNs last
    if position >= n:
        return Selection(threshold=float("-inf"))
    valued = n - int(counts[_NAN])
    if position >= valued:  # a NaN at the position: DataComp's `>= NaN` keeps nothing
        return Selection(threshold=float("inf"))
    return _narrow(counts, valued - 1 - position, 0, 0)


def _step(counts: np.ndarray, selection: Selection) -> Selection:
    if selection.threshold is not None:
        return selection
    return _narrow(counts, selection.rank, selection.prefix, selection.bits)


class FractionThreshold(beam.PTransform):
    """Arrays of scores (float64, NaN for a missing one) → the one threshold of DataComp's rule
    for keeping the top `keep_fraction` of them all (`fraction_threshold`, exactly)."""

    def __init__(self, keep_fraction: float):
        super().__init__()
        self._fraction = keep_fraction

    def expand(self, scores: beam.PCollection) -> beam.PCollection:
        counts = (
            scores
            | "Buckets0" >> beam.FlatMap(_buckets, None)
            | "Count0" >> beam.CombineGlobally(_Histogram())
        )
        selection = counts | "Start" >> beam.Map(_start, self._fraction)
        for n in range(1, 64 // _BITS):
            counts = (
                scores
                | f"Buckets{n}" >> beam.FlatMap(_buckets, beam.pvalue.AsSingleton(selection))
                | f"Count{n}" >> beam.CombineGlobally(_Histogram())
            )
            selection = counts | f"Narrow{n}" >> beam.Map(_step, beam.pvalue.AsSingleton(selection))
        return selection | "Threshold" >> beam.Map(lambda s: s.threshold)
