"""Reads URL lists (Parquet, CSV, TSV, JSONL, plain text; optionally gzipped) into `Sample`s.

In: file paths or globs on any Beam filesystem (local, `s3://`, `gs://`). Out: one `Sample` per
input row with a stable `uid`, the url, the caption and the configured extra columns. Column
names follow img2dataset (`url_col`, `caption_col`, `save_additional_columns`) so existing lists
work unchanged. A row without a url is kept with status `failed` / reason `missing_url`; a file
that cannot be read or lacks the url column raises `InputError` naming the file.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.sample import BATCH_SCHEMA, Sample, Status, make_uid, samples_from_batch
from transforms.checks import Check
from transforms.crawl import CrawlConfig
from transforms.harvest import HARVEST_COUNTS, Page, Skipped, archive_pages, pairs_batch, tally
from transforms.pagefetch import HarvestPages
from transforms.progress import StageCounter

LOG = logging.getLogger(__name__)

InputFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt", "wat", "warc", "pages"]
_SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_SUFFIX_FORMATS.update({".txt": "txt", ".wat": "wat", ".warc": "warc"})
#: Web archives: their pairs are harvested from pages (`transforms/harvest.py`), not read as rows.
ARCHIVE_FORMATS = ("wat", "warc")


class InputError(ValueError):
    """An input that cannot be read; the message names the file (and row or column)."""


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The `input` section: what the URL list looks like."""

    #: Column holding the image URL.
    url_col: str = "url"
    #: Column holding the alt-text / caption; empty string for lists without captions.
    caption_col: str = "caption"
    #: Extra input columns carried into every sample's metadata (img2dataset's name).
    save_additional_columns: tuple[str, ...] = ()
    #: `auto` picks by file suffix (after an optional `.gz`/`.bz2`; `.warc.wat.gz` is `wat`,
    #: `.warc.gz` is `warc`). `pages`: the list's URLs are web pages, fetched and harvested for
    #: their image/alt-text pairs (the list's own format is taken from its suffix).
    input_format: InputFormat = "auto"
    #: Largest web-archive record (a page, decompressed) harvested; a larger one is skipped.
    max_record_bytes: int = 10_000_000

    def __post_init__(self) -> None:
        check = Check("input", self)
        check.not_empty("url_col", "save_additional_columns")
        check.at_least(1, "max_record_bytes")


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """The sorted, de-duplicated files matching paths, folders or globs; `InputError` if none match."""
    files: set[str] = set()
    for pattern in patterns:
        candidates = [pattern]
        if not any(ch in pattern for ch in "*?[") and _is_directory(pattern):
            candidates = [pattern.rstrip("/") + "/*"]
        matched = [m.path for result in FileSystems.match(candidates) for m in result.metadata_list]
        matched = [path for path in matched if not path.rsplit("/", 1)[-1].startswith((".", "_"))]
        if not matched:
            raise InputError(f"no input files match '{pattern}'")
        files.update(matched)
    return sorted(files)


def detect_format(path: str, configured: str = "auto") -> str:
    """The reader format for `path`: the configured one, or the one its suffix names."""
    if configured not in ("auto", "pages"):
        return configured
    name = path.lower()
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise InputError(f"{path}: cannot tell the format from the file name; set input.input_format")


def read_columns(path: str, config: InputConfig) -> list[str]:
    """Column names of one input file, read cheaply (for checks before the pipeline starts)."""
    fmt = detect_format(path, config.input_format)
    if fmt in ARCHIVE_FORMATS:
        return []  # pages, not columns
    if fmt == "parquet":
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    if fmt == "txt":
        return [config.url_col]
    for _, row in _iter_rows(path, config, limit=1):
        return list(row) if isinstance(row, dict) else []
    return []


def check_input(path: str, config: InputConfig) -> None:
    """Raises `InputError` if `path` is unreadable or lacks a configured column."""
    try:
        columns = read_columns(path, config)
    except InputError:
        raise
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read input file: {err}") from err
    if not columns:
        return
    wanted = [config.url_col, *config.save_additional_columns]
    missing = [column for column in wanted if column not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; the file has {columns} (see input.url_col)")


#: Rows per record batch the reader emits.
READ_BATCH_ROWS = 4096


def rows_to_samples(path: str, config: InputConfig) -> Iterator[Sample]:
    """Every row of one file as a `Sample` (pure; used by tests and tools)."""
    for batch in file_batches(path, config):
        yield from samples_from_batch(batch)


def file_batches(
    path: str, config: InputConfig, batch_rows: int = READ_BATCH_ROWS, counts: Counter[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Every row of one file, as row batches (`BATCH_SCHEMA`) of at most `batch_rows` rows.

    A web archive gives one row per image/alt-text pair of its pages, and fills `counts` (if
    given) with its page- and image-level counts."""
    fmt = detect_format(path, config.input_format)
    if fmt in ARCHIVE_FORMATS:
        yield from _archive_batches(
            path, fmt, config, batch_rows, counts if counts is not None else Counter()
        )
        return
    if fmt == "parquet":
        yield from _parquet_batches(path, config, batch_rows)
        return
    rows: list[dict[str, Any] | _BadRow] = []
    first = 0
    for index, row in _iter_rows(path, config):
        if index == 0 and isinstance(row, dict) and config.url_col not in row:
            raise InputError(f"{path}: missing url column '{config.url_col}'; the file has {list(row)}")
        rows.append(row)
        if len(rows) == batch_rows:
            yield _rows_to_batch(path, first, rows, config)
            first += len(rows)
            rows = []
    if rows:
        yield _rows_to_batch(path, first, rows, config)


def _archive_batches(
    path: str, fmt: str, config: InputConfig, batch_rows: int, counts: Counter[str]
) -> Iterator[pa.RecordBatch]:
    """The pairs of a WAT or WARC file as row batches; skipped records are counted and logged."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    pages: list[Page] = []
    found = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for page in archive_pages(handle, fmt, config.max_record_bytes):
            tally(counts, page)
            if isinstance(page, Skipped):
                if page.reason != "not_html":  # requests, images, robots.txt: most of any crawl
                    LOG.warning("%s: record skipped (%s): %s", path, page.reason, page.detail)
                continue
            pages.append(page)
            found += len(page.pairs)
            if found >= batch_rows:
                yield pairs_batch(pages, name)
                pages, found = [], 0
    if found:
        yield pairs_batch(pages, name)


def _parquet_batches(path: str, config: InputConfig, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        if config.url_col not in names:
            raise InputError(f"{path}: missing url column '{config.url_col}'; the file has {sorted(names)}")
        wanted = [config.url_col, config.caption_col, *config.save_additional_columns]
        columns = sorted({name for name in wanted if name and name in names})
        first = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            data = {name: batch.column(name).to_pylist() for name in columns}
            n = batch.num_rows
            blank = [None] * n
            urls = data[config.url_col]
            captions = data.get(config.caption_col, blank) if config.caption_col else blank
            extras = [data.get(name, blank) for name in config.save_additional_columns]
            yield _columns_to_batch(path, first, urls, captions, extras, config)
            first += n


def _rows_to_batch(
    path: str, first: int, rows: list[dict[str, Any] | _BadRow], config: InputConfig
) -> pa.RecordBatch:
    good = [row if isinstance(row, dict) else {} for row in rows]
    urls = [row.get(config.url_col) for row in good]
    captions = [row.get(config.caption_col) for row in good] if config.caption_col else [None] * len(rows)
    extras = [[row.get(name) for row in good] for name in config.save_additional_columns]
    bad = {i: row.message for i, row in enumerate(rows) if isinstance(row, _BadRow)}
    return _columns_to_batch(path, first, urls, captions, extras, config, bad)


def _columns_to_batch(
    path: str,
    first: int,
    urls: list[Any],
    captions: list[Any],
    extras: list[list[Any]],
    config: InputConfig,
    bad: dict[int, str] | None = None,
) -> pa.RecordBatch:
    """The row batch for rows `first`, `first + 1`, … of `path`, given column values."""
    n = len(urls)
    out_uid, out_url, out_caption = [], [], []
    status = [Status.PENDING] * n
    reason: list[str | None] = [None] * n
    stage: list[str | None] = [None] * n
    error: list[str | None] = [None] * n
    for i, (url, caption) in enumerate(zip(urls, captions, strict=True)):
        url = url if type(url) is str else _text(url)
        caption = caption if caption is None or type(caption) is str else _text(caption)
        if url is not None:
            url = url.strip()
        index = first + i
        if bad and i in bad:
            uid, url, caption = make_uid(f"bad-row:{path}:{index}", None), None, None
            status[i], reason[i], stage[i], error[i] = Status.FAILED, "unparseable_row", "read", bad[i]
        elif not url:
            # Key rows without a URL by position so two of them never share a uid.
            uid, url = make_uid(f"missing-url:{path}:{index}", caption), None
            status[i], reason[i], stage[i] = Status.FAILED, "missing_url", "read"
            error[i] = f"{path}: row {index} has no value in '{config.url_col}'"
        else:
            uid = make_uid(url, caption)
        out_uid.append(uid)
        out_url.append(url)
        out_caption.append(caption)
    extra: list[str | None] = [None] * n
    if extras:
        names = config.save_additional_columns
        for i, values in enumerate(zip(*extras, strict=True)):
            if not (bad and i in bad):
                extra[i] = json.dumps(
                    {name: _jsonable(v) for name, v in zip(names, values, strict=True)},
                    sort_keys=True,
                    ensure_ascii=False,
                )
    blank = pa.nulls(n)
    columns = {"uid": out_uid, "url": out_url, "caption": out_caption, "extra": extra}
    columns.update(status=status, reason=reason, stage=stage, error=error)
    arrays = [_strings(columns[f.name]) if f.name in columns else blank.cast(f.type) for f in BATCH_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=BATCH_SCHEMA)


def _strings(values: list[str | None]) -> pa.Array:
    """A string array; text that is not valid Unicode (lone surrogates from a JSON escape) has
    the offending characters replaced rather than failing the file."""
    try:
        return pa.array(values, type=pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        cleaned = [v if v is None else v.encode("utf-8", "replace").decode("utf-8") for v in values]
        return pa.array(cleaned, type=pa.string())


def _iter_rows(
    path: str, config: InputConfig, limit: int | None = None
) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    """Rows of a text-format file (CSV, TSV, JSONL, txt) as dicts, or `_BadRow`s."""
    fmt = detect_format(path, config.input_format)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        text = io.TextIOWrapper(_decompressed(path, raw), encoding="utf-8", errors="replace", newline="")
        if fmt in ("csv", "tsv"):
            reader = csv.DictReader(text, delimiter="," if fmt == "csv" else "\t")
            rows: Iterable[dict[str, Any] | _BadRow] = reader
        elif fmt == "jsonl":
            rows = _jsonl_rows(path, text)
        else:
            rows = ({config.url_col: line.strip()} for line in text if line.strip())
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                return
            yield index, row


def _decompressed(path: str, raw: BinaryIO) -> BinaryIO:
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if lower.endswith(".bz2"):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    return raw


@dataclasses.dataclass(frozen=True)
class _BadRow:
    """A row that could not be parsed; it becomes a failed sample, never a crash."""

    message: str


def _jsonl_rows(path: str, lines: Iterable[str]) -> Iterator[dict[str, Any] | _BadRow]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield _BadRow(f"{path}: line {number} is not valid JSON: {err.msg}")
            continue
        yield row if isinstance(row, dict) else _BadRow(f"{path}: line {number} is not a JSON object")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _is_directory(path: str) -> bool:
    if "://" in path:
        return path.endswith("/")
    return os.path.isdir(path)


class _ReadFileFn(beam.DoFn):
    def __init__(self, config: InputConfig, progress_dir: str | None):
        self._config = config
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter("read", self._progress_dir)

    def process(self, path: str) -> Iterator[Any]:
        counts: Counter[str] = Counter()
        for batch in file_batches(path, self._config, counts=counts):
            failed = Counter(batch.column("reason").drop_null().to_pylist())
            self._counter.add_many(kept=batch.num_rows - sum(failed.values()), dropped=failed)
            yield batch
        if counts:
            yield beam.pvalue.TaggedOutput(HARVEST_COUNTS, dict(counts))

    def finish_bundle(self) -> None:
        self._counter.flush()


class ReadUrlBatches(beam.PTransform):
    """Reads the matched input files into row batches (`BATCH_SCHEMA`), files spread over workers.

    Row batches are what the text stage consumes; `ReadUrlList` turns them into `Sample`s."""

    def __init__(
        self,
        files: Sequence[str],
        config: InputConfig,
        progress_dir: str | None = None,
        crawl: CrawlConfig | None = None,
        partitions: int = 64,
    ):
        super().__init__()
        self._files = list(files)
        self._config = config
        self._progress_dir = progress_dir
        self._crawl = crawl or CrawlConfig()  # how pages are fetched in page mode
        self._pages = config.input_format == "pages"
        self._partitions = partitions  # of the distinct-pairs step
        self._archives = any(detect_format(f, config.input_format) in ARCHIVE_FORMATS for f in self._files)
        #: With web archives among the inputs: one dict of page- and image-level counts (`harvest`
        #: in stats.json), set by `expand`.
        self.summary: beam.PCollection | None = None

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        read = (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "Spread" >> beam.Reshuffle()
            | "Batches"
            >> beam.ParDo(_ReadFileFn(self._config, self._progress_dir)).with_outputs(
                HARVEST_COUNTS, main="rows"
            )
        )
        # One big list must not pin the work to one worker.
        batches = read.rows | "SpreadBatches" >> beam.Reshuffle()
        counts = read[HARVEST_COUNTS]
        if self._pages:
            harvested = batches | "HarvestPages" >> HarvestPages(self._crawl, self._config.max_record_bytes)
            batches, counts = harvested.rows, harvested[HARVEST_COUNTS]
        elif not self._archives:
            return batches
        batches = batches | "DistinctPairs" >> DistinctPairs(self._partitions)
        unique = (
            batches | "CountPairs" >> beam.Map(lambda b: b.num_rows) | "SumPairs" >> beam.CombineGlobally(sum)
        )
        self.summary = (
            counts
            | "SumCounts" >> beam.CombineGlobally(_sum_counts)
            | "WithUnique" >> beam.Map(_harvest_summary, unique=beam.pvalue.AsSingleton(unique))
        )
        return batches


def _sum_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counts in dicts:
        total.update(counts)
    return dict(total)


def _harvest_summary(counts: dict[str, int], unique: int) -> dict[str, Any]:
    skipped = {k.split("/", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("skipped/")}
    return {
        "pages": counts.get("pages", 0),
        "pages_with_pairs": counts.get("pages_with_pairs", 0),
        "pairs": counts.get("pairs", 0),
        "unique_pairs": unique,
        "skipped_records": skipped,
    }


def _first_found(extra_json: str | None) -> tuple[str, int, int]:
    """Where a pair was found: (archive file or page URL, byte offset, position on the page)."""
    extra = json.loads(extra_json) if extra_json else {}
    where = str(extra.get("warc_file") or extra.get("page_url") or "")
    return (where, int(extra.get("warc_offset", 0)), int(extra.get("position", 0)))


def _by_partition(batch: pa.RecordBatch, partitions: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The rows of `batch` split by a hash of their uid (the uid is already a hash)."""
    part = np.fromiter((int(uid[:8], 16) % partitions for uid in batch.column("uid").to_pylist()), np.int64)
    for key in np.unique(part):
        yield int(key), batch.filter(pa.array(part == key))


def _distinct(element: tuple[int, Iterable[pa.RecordBatch]]) -> Iterator[pa.RecordBatch]:
    """The first-found row of each uid of one partition, sorted by uid, as row batches."""
    _, batches = element
    table = pa.Table.from_batches(list(batches), schema=BATCH_SCHEMA)
    uids = table.column("uid").to_pylist()
    found = [_first_found(e) for e in table.column("extra").to_pylist()]
    order = sorted(range(len(uids)), key=lambda i: (uids[i], found[i]))
    keep = [i for j, i in enumerate(order) if j == 0 or uids[i] != uids[order[j - 1]]]
    yield from table.take(keep).to_batches(max_chunksize=READ_BATCH_ROWS)


class DistinctPairs(beam.PTransform):
    """One row per (url, caption) pair, before any image is fetched: of the copies found on many
    pages, the first found (archive file or page URL, byte offset, position on the page) is kept.

    Rows stay in Arrow batches: they are hash-partitioned by uid (`partitions`, as the text
    stage's global counts are) and each partition is made distinct in one sort."""

    def __init__(self, partitions: int = 64):
        super().__init__()
        self._partitions = partitions

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "Partition" >> beam.FlatMap(_by_partition, self._partitions)
            | "Group" >> beam.GroupByKey()
            | "Distinct" >> beam.FlatMap(_distinct)
        )


class ReadUrlList(beam.PTransform):
    """Reads the matched input files into `Sample`s (row batches, then one element per row)."""

    def __init__(self, files: Sequence[str], config: InputConfig, progress_dir: str | None = None):
        super().__init__()
        self._batches = ReadUrlBatches(files, config, progress_dir)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadBatches" >> self._batches | "Samples" >> beam.FlatMap(samples_from_batch)
