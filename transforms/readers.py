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
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Literal

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.sample import Sample, Status, make_uid
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


def rows_to_samples(path: str, config: InputConfig) -> Iterator[Sample]:
    """Every row of one file as a `Sample` (pure; used by the DoFn and by tests)."""
    for index, row in _iter_rows(path, config):
        if index == 0 and isinstance(row, dict) and config.url_col not in row:
            raise InputError(f"{path}: missing url column '{config.url_col}'; the file has {list(row)}")
        yield _row_to_sample(path, index, row, config)


def _row_to_sample(path: str, index: int, row: dict[str, Any] | _BadRow, config: InputConfig) -> Sample:
    if isinstance(row, _BadRow):
        uid = make_uid(f"bad-row:{path}:{index}", None)
        return Sample(uid=uid, url=None, caption=None).decided(
            Status.FAILED, "unparseable_row", "read", row.message
        )
    url = _text(row.get(config.url_col))
    caption = _text(row.get(config.caption_col)) if config.caption_col else None
    extra = {name: _jsonable(row.get(name)) for name in config.save_additional_columns}
    if url is not None:
        url = url.strip()
    if not url:
        # Key rows without a URL by position so two of them never share a uid.
        uid = make_uid(f"missing-url:{path}:{index}", caption)
        return Sample(uid=uid, url=None, caption=caption, extra=extra).decided(
            Status.FAILED, "missing_url", "read", f"{path}: row {index} has no value in '{config.url_col}'"
        )
    return Sample(uid=make_uid(url, caption), url=url, caption=caption, extra=extra)


def _iter_rows(
    path: str, config: InputConfig, limit: int | None = None
) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    fmt = detect_format(path, config.input_format)
    if fmt == "parquet":
        yield from _parquet_rows(path, limit)
        return
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


def _parquet_rows(path: str, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        index = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                if limit is not None and index >= limit:
                    return
                yield index, row
                index += 1


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

    def process(self, path: str) -> Iterator[Sample]:
        for sample in rows_to_samples(path, self._config):
            self._counter.add(kept=sample.status != Status.FAILED, reason=sample.reason)
            yield sample

    def finish_bundle(self) -> None:
        self._counter.flush()


class ReadUrlList(beam.PTransform):
    """Reads the matched input files into `Sample`s, one file per element, files spread over workers."""

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
            | "Rows" >> beam.ParDo(_ReadFileFn(self._config, self._progress_dir))
            | "SpreadRows" >> beam.Reshuffle()  # one big list must not pin the crawl to one worker
        )
