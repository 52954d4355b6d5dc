"""The text stage's global counts, vectorised: numpy arrays per hash partition, combined by
`CombinePerKey`, never one Python object per row.

- `url_entries` → `UrlCounts`: per 64-bit URL hash, how many rows name it; only URLs named
  more than once come out (the `duplicate_url` side input: their rows meet in `KeepBestOfUrl`).
- `caption_entries` → `CappedDistinctUrls`: per caption hash, at most `cap` distinct URL hashes (a
  caption on millions of pages costs `cap` entries); captions reaching `cap` come out (the
  `boilerplate_caption` side input).
- `ngram_entries` → `Vocabulary`: unigram and bigram counts, the count of the `size`-th most
  frequent n-gram from a histogram of counts (`vocab_threshold`), and the n-grams at or above it
  (the `rare_token` side input).

Entries are `(partition, (column arrays…))` with `partition = hash % partitions`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def vocab_threshold(histogram: dict[int, int], size: int) -> int:
    """The smallest count c such that at most `size` n-grams occur c times or more, from
    {occurrences: number of n-grams}; n-grams tied at the boundary are all left out."""
    kept, threshold = 0, None
    for count in sorted(histogram, reverse=True):
        if kept + histogram[count] > size:
            break
        kept += histogram[count]
        threshold = count
    return threshold if threshold is not None else max(histogram, default=0) + 1


def uids_u64(uids: list[str]) -> np.ndarray:
    """128-bit hex uids as (hi, lo) uint64 rows, ordered like the hex strings."""
    return np.frombuffer(bytes.fromhex("".join(uids)), dtype=">u8").astype("<u8").reshape(-1, 2)


def by_partition(partition: np.ndarray, partitions: int, *columns: np.ndarray) -> Iterator[tuple[int, Any]]:
    """Splits aligned arrays by `partition % partitions`: (partition, (column chunks…))."""
    part = partition % np.uint64(partitions)
    order = np.argsort(part, kind="stable")
    bounds = np.flatnonzero(np.diff(part[order])) + 1
    for chunk in np.split(order, bounds):
        yield int(part[chunk[0]]), tuple(column[chunk] for column in columns)


def url_entries(batch: pa.RecordBatch, partitions: int) -> Iterator[tuple[int, Any]]:
    """(partition, (URL hashes, counts)) for the pending rows of a prepared batch."""
    keys = batch.column("url_hash").drop_null().to_numpy()
    if len(keys):
        keys, counts = np.unique(keys, return_counts=True)
        yield from by_partition(keys, partitions, keys, counts.astype(np.int64))


def caption_entries(batch: pa.RecordBatch, partitions: int) -> Iterator[tuple[int, Any]]:
    """(partition, (caption hashes, URL hashes)) for the pending rows with a caption."""
    mask = batch.column("caption_hash").is_valid()
    captions = batch.column("caption_hash").filter(mask).to_numpy()
    if len(captions):
        urls = batch.column("url_hash").filter(mask).to_numpy()
        yield from by_partition(captions, partitions, captions, urls)


def ngram_entries(batch: pa.RecordBatch, partitions: int) -> Iterator[tuple[int, Any]]:
    """(partition, (n-gram hashes, occurrences)) for every caption of the batch."""
    flat = [pc.list_flatten(batch.column(name)).to_numpy() for name in ("unigrams", "bigrams")]
    hashes, counts = np.unique(np.concatenate(flat), return_counts=True)
    if len(hashes):
        yield from by_partition(hashes, partitions, hashes, counts.astype(np.int64))


class ChunkCombineFn(beam.CombineFn):
    """A combine over tuples of aligned numpy arrays: chunks are concatenated and compacted by
    `reduce` (vectorised), never one Python object per row."""

    _COMPACT_EVERY = 32

    def reduce(self, columns: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def create_accumulator(self) -> list[tuple[np.ndarray, ...]]:
        return []

    def add_input(self, acc: list[tuple[np.ndarray, ...]], chunk: tuple[np.ndarray, ...]) -> list:
        acc.append(chunk)
        return [self._merged(acc)] if len(acc) >= self._COMPACT_EVERY else acc

    def merge_accumulators(self, accs: Iterable[list[tuple[np.ndarray, ...]]]) -> list:
        chunks = [chunk for acc in accs for chunk in acc]
        return [self._merged(chunks)] if chunks else []

    def compact(self, acc: list[tuple[np.ndarray, ...]]) -> list:
        return [self._merged(acc)] if len(acc) > 1 else acc

    def _merged(self, chunks: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        return self.reduce(tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True)))


class UrlCounts(ChunkCombineFn):
    """Per URL key: how many rows name it. Outputs the keys named twice or more."""

    def reduce(self, columns: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        keys, counts = columns
        values, inverse = np.unique(keys, return_inverse=True)
        return values, np.bincount(inverse, weights=counts, minlength=len(values)).astype(np.int64)

    def extract_output(self, acc: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        if not acc:
            return np.empty(0, "<u8")
        keys, counts = self._merged(acc)
        return keys[counts > 1]


class CappedKeys(beam.CombineFn):
    """Arrays of distinct keys (one per partition) → all of them as one sorted array, or None when
    they are more than `limit`: a side input that stays bounded, whatever the input's size. The
    accumulator drops its keys as soon as it passes the limit."""

    def __init__(self, limit: int):
        self._limit = limit

    def create_accumulator(self) -> list[np.ndarray] | None:
        return []

    def add_input(self, acc: list[np.ndarray] | None, keys: np.ndarray) -> list[np.ndarray] | None:
        return self.merge_accumulators([acc, [keys]])

    def merge_accumulators(self, accs: Iterable[list[np.ndarray] | None]) -> list[np.ndarray] | None:
        merged: list[np.ndarray] = []
        for acc in accs:
            if acc is None:
                return None
            merged += acc
        return None if sum(len(keys) for keys in merged) > self._limit else merged

    def extract_output(self, acc: list[np.ndarray] | None) -> np.ndarray | None:
        if acc is None:
            return None
        return np.sort(np.concatenate(acc)) if acc else np.empty(0, "<u8")


class CappedDistinctUrls(ChunkCombineFn):
    """Per caption hash: its distinct URL hashes, at most `cap` of them (enough to decide 'more
    than cap - 1', in memory bounded by cap per caption). Outputs the captions that reach `cap`."""

    def __init__(self, cap: int):
        self._cap = cap

    def reduce(self, columns: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        captions, urls = columns
        order = np.lexsort((urls, captions))
        captions, urls = captions[order], urls[order]
        distinct = np.ones(len(captions), dtype=bool)
        distinct[1:] = (captions[1:] != captions[:-1]) | (urls[1:] != urls[:-1])
        captions, urls = captions[distinct], urls[distinct]
        starts = np.ones(len(captions), dtype=bool)
        starts[1:] = captions[1:] != captions[:-1]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(captions)), 0))
        keep = np.arange(len(captions)) - group_start < self._cap
        return captions[keep], urls[keep]

    def extract_output(self, acc: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        if not acc:
            return np.empty(0, "<u8")
        captions, _ = self._merged(acc)
        values, counts = np.unique(captions, return_counts=True)
        return values[counts >= self._cap]


class NgramCounts(ChunkCombineFn):
    """Occurrences per n-gram hash."""

    def reduce(self, columns: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        hashes, counts = columns
        values, inverse = np.unique(hashes, return_inverse=True)
        return values, np.bincount(inverse, weights=counts, minlength=len(values)).astype(np.int64)

    def extract_output(self, acc: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        return self._merged(acc) if acc else (np.empty(0, "<u8"), np.empty(0, np.int64))


def merge_histograms(histograms: Iterable[dict[int, int]]) -> dict[int, int]:
    merged: Counter[int] = Counter()
    for histogram in histograms:
        merged.update(histogram)
    return dict(merged)


def histogram(counts: np.ndarray) -> dict[int, int]:
    values, frequency = np.unique(counts, return_counts=True)
    return {int(v): int(f) for v, f in zip(values, frequency, strict=True)}


class Vocabulary(beam.PTransform):
    """Hashes of the `size` most frequent unigrams and bigrams (one array per partition)."""

    def __init__(self, size: int, partitions: int):
        super().__init__()
        self._size = size
        self._partitions = partitions

    def expand(self, prepared: beam.PCollection) -> beam.PCollection:
        counts = (
            prepared
            | "Ngrams" >> beam.FlatMap(ngram_entries, self._partitions)
            | "Count" >> beam.CombinePerKey(NgramCounts())
            | "Drop partition" >> beam.Values()
        )
        threshold = (
            counts
            | "Histogram" >> beam.Map(lambda hc: histogram(hc[1]))
            | "MergeHistograms" >> beam.CombineGlobally(merge_histograms)
            | "Threshold" >> beam.Map(vocab_threshold, self._size)
        )
        return counts | "Frequent" >> beam.Map(
            lambda hc, at_least: np.sort(hc[0][hc[1] >= at_least]),
            at_least=beam.pvalue.AsSingleton(threshold),
        )


def member(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` found in the sorted array `sorted_values` (vectorised)."""
    if not len(sorted_values) or not len(values):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[at] == values
