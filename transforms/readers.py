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
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.sample import BATCH_SCHEMA, Sample, Status, make_uid, samples_from_batch
from transforms.progress import StageCounter

LOG = logging.getLogger(__name__)

InputFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt"]
_SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_SUFFIX_FORMATS[".txt"] = "txt"


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
    #: `auto` picks by file suffix (after an optional `.gz`/`.bz2`).
    input_format: InputFormat = "auto"


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
    if configured != "auto":
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
    path: str, config: InputConfig, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Every row of one file, as row batches (`BATCH_SCHEMA`) of at most `batch_rows` rows."""
    if detect_format(path, config.input_format) == "parquet":
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

    def process(self, path: str) -> Iterator[pa.RecordBatch]:
        for batch in file_batches(path, self._config):
            failed = Counter(batch.column("reason").drop_null().to_pylist())
            self._counter.add_many(kept=batch.num_rows - sum(failed.values()), dropped=failed)
            yield batch

    def finish_bundle(self) -> None:
        self._counter.flush()


class ReadUrlBatches(beam.PTransform):
    """Reads the matched input files into row batches (`BATCH_SCHEMA`), files spread over workers.

    Row batches are what the text stage consumes; `ReadUrlList` turns them into `Sample`s."""

    def __init__(self, files: Sequence[str], config: InputConfig, progress_dir: str | None = None):
        super().__init__()
        self._files = list(files)
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "Spread" >> beam.Reshuffle()
            | "Batches" >> beam.ParDo(_ReadFileFn(self._config, self._progress_dir))
            | "SpreadBatches" >> beam.Reshuffle()  # one big list must not pin the work to one worker
        )


class ReadUrlList(beam.PTransform):
    """Reads the matched input files into `Sample`s (row batches, then one element per row)."""

    def __init__(self, files: Sequence[str], config: InputConfig, progress_dir: str | None = None):
        super().__init__()
        self._batches = ReadUrlBatches(files, config, progress_dir)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadBatches" >> self._batches | "Samples" >> beam.FlatMap(samples_from_batch)
