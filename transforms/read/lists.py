"""Reads URL lists (Parquet, CSV, TSV, JSONL, plain text; optionally gzipped) into row batches.

In: file paths or globs on any Beam filesystem (local, `s3://`, `gs://`). Out: Arrow record
batches (`schemas.sample.BATCH_SCHEMA`), one row per input record with a stable `uid`, the url,
the caption and the configured extra columns; the text stage turns rows into `Sample`s. Column
names follow img2dataset (`url_col`, `caption_col`, `save_additional_columns`) so existing lists
work unchanged. A folder is read with its subfolders; names starting with `.` or `_` are skipped.

Every input record gives one row (`transforms/read/rows.py` says what a record is in each text
format; a Parquet record is a row). A record that cannot be used keeps its own row with status
`failed`, stage `read` and a reason: `missing_url`, `unparseable_row`, `undecodable_row`,
`field_too_large`, `caption_not_text` (a JSON object or list as the caption); damage that ends
a file is one more row (`truncated_file`, `unreadable_file`) after the rows read before it. A
file that cannot be opened, or lacks a configured column, raises `InputError` naming the file
(and the column and config key). Messages count from 1: "line N" of a text file, "row N" of a
Parquet file.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas.pools import drop_siblings, is_shard
from schemas.sample import BATCH_SCHEMA, Sample, Status, make_uid, samples_from_batch
from transforms.common.errors import InputError, first_line
from transforms.common.outputs import WithSummary
from transforms.common.progress import StageCounter
from transforms.crawl.config import CrawlConfig
from transforms.read.config import InputConfig
from transforms.read.harvest import HARVEST_COUNTS, Page, Skipped, archive_pages, pairs_batch, tally
from transforms.read.pages import HarvestPages
from transforms.read.pool import check_shard, pool_batches
from transforms.read.rows import Record, UnreadableFile, text_records

LOG = logging.getLogger(__name__)

_SUFFIX_FORMATS = {
    ".tar": "webdataset",  # also `.tar.gz`, `.tar.bz2` (the compression suffix is dropped first)
    ".tgz": "webdataset",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
_SUFFIX_FORMATS.update({".txt": "txt", ".wat": "wat", ".warc": "warc", ".arc": "arc"})
#: Web archives: their pairs are harvested from pages (`transforms/read/harvest.py`), not read as rows.
ARCHIVE_FORMATS = ("wat", "warc", "arc")


__all__ = ["InputConfig", "ReadUrlBatches", "check_input", "expand_inputs"]


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """The sorted, de-duplicated files matching paths, folders (with their subfolders) or globs;
    names starting with `.` or `_` are skipped (in a folder, at any depth). `InputError` if none match."""
    files: set[str] = set()
    for pattern in patterns:
        matched = match_input(pattern)
        if not matched:
            raise InputError(f"no input files match '{pattern}'")
        files.update(matched)
    return sorted(files)


def match_input(pattern: str) -> list[str]:
    """The files one path, folder (with its subfolders) or glob names, hidden ones skipped."""
    candidates = [pattern]
    folder = None
    if not any(ch in pattern for ch in "*?[") and is_directory(pattern):
        folder = pattern.rstrip("/") + "/"
        candidates = [folder + "**"]
    matched = [m.path for result in FileSystems.match(candidates) for m in result.metadata_list]
    visible = [path for path in matched if not _hidden(path, folder)]
    if folder is not None and any(is_shard(path) for path in visible):
        # A folder of tars (compressed or not) is a pool (a Winnow output among them): its shards
        # are the inputs, and their Parquet, embeddings and stats are read with them.
        return [path for path in visible if is_shard(path)]
    # A pool's shard metadata (`NNNNN.parquet` beside `NNNNN.tar`) is read with its tar.
    return drop_siblings(visible)


def _hidden(path: str, folder: str | None) -> bool:
    """Whether a matched file is skipped: its name (or, under `folder`, any part of the path
    below it) starts with `.` or `_`."""
    if folder is not None and "://" not in folder:
        parts = os.path.relpath(path, folder).split(os.sep)
    elif folder is not None and path.startswith(folder):
        parts = path[len(folder) :].split("/")
    else:
        parts = [posixpath.basename(path.rstrip("/")) or path]
    return any(part.startswith((".", "_")) for part in parts)


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
    if fmt in ARCHIVE_FORMATS or fmt == "webdataset":
        return []  # pages, or a pool shard's own layout (`transforms/read/pool.py`)
    if fmt == "parquet":
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    for record in _iter_records(path, config, limit=_COLUMN_LOOKAHEAD):
        if record.values is not None:
            return list(record.values)
    return []


#: Records looked at for the column names of a file without a header (JSONL).
_COLUMN_LOOKAHEAD = 100


def check_input(path: str, config: InputConfig) -> None:
    """Raises `InputError` if `path` is unreadable or lacks a configured column (a pool's shard:
    if its Parquet names none of its samples, `check_shard`)."""
    try:
        if detect_format(path, config.input_format) == "webdataset":
            check_shard(path)
        columns = read_columns(path, config)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, pa.ArrowException, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read input file: {err}") from err
    _check_columns(path, columns, config, detect_format(path, config.input_format))


def _check_columns(path: str, columns: list[str], config: InputConfig, fmt: str) -> None:
    """`InputError` naming the file, the missing columns, the columns found and the config keys."""
    if not columns:
        return  # a web archive, or a file without records
    wanted = [(config.url_col, "input.url_col")]
    # A plain-text list has no captions by its format; a list of pages gets them from the pages.
    if config.caption_col and fmt != "txt" and config.input_format != "pages":
        wanted.append((config.caption_col, "input.caption_col"))
    wanted += [(name, "input.save_additional_columns") for name in config.save_additional_columns]
    missing = [(name, key) for name, key in wanted if name not in columns]
    if not missing:
        return
    keys = ", ".join(dict.fromkeys(key for _, key in missing))
    hint = '; input.caption_col="" reads a list without captions' if "input.caption_col" in keys else ""
    names = [name for name, _ in missing]
    raise InputError(f"{path}: missing column(s) {names}; the file has {columns} (see {keys}){hint}")


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
    if fmt == "webdataset":
        yield from pool_batches(path, config, batch_rows)
        return
    rows: list[Record] = []
    checked = False
    try:
        for record in _iter_records(path, config):
            if not checked and record.values is not None:
                _check_columns(path, list(record.values), config, fmt)
                checked = True
            rows.append(record)
            if len(rows) == batch_rows:
                yield _records_to_batch(path, rows, config)
                rows = []
    except UnreadableFile as err:
        # Damaged before anything could be read (a file the checks before the run did not open):
        # one row says so, as a Parquet file's does.
        rows.append(Record(1, reason=err.reason, message=str(err)))
    if rows:
        yield _records_to_batch(path, rows, config)


def _archive_batches(
    path: str, fmt: str, config: InputConfig, batch_rows: int, counts: Counter[str]
) -> Iterator[pa.RecordBatch]:
    """The pairs of a WAT, WARC or ARC file as row batches; skipped records are counted and logged."""
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
    """The rows of a Parquet file; damage after the footer is one `unreadable_file` row after
    the rows read before it."""
    first = 0
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            parquet = pq.ParquetFile(handle)
            names = list(parquet.schema_arrow.names)
            _check_columns(path, names, config, "parquet")
            wanted = [config.url_col, config.caption_col, *config.save_additional_columns]
            columns = sorted({name for name in wanted if name and name in names})
            # Row group by row group: the rows of the groups before a damaged one are kept.
            groups = range(parquet.num_row_groups)
            batches = (
                batch
                for group in groups
                for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
            )
            for batch in batches:
                data = {name: batch.column(name).to_pylist() for name in columns}
                n = batch.num_rows
                blank = [None] * n
                urls = data[config.url_col]
                captions = data.get(config.caption_col, blank) if config.caption_col else blank
                extras = [data.get(name, blank) for name in config.save_additional_columns]
                where = [f"row {first + i + 1}" for i in range(n)]
                yield _columns_to_batch(path, where, urls, captions, extras, config)
                first += n
    except (OSError, ValueError, pa.ArrowException) as err:
        if isinstance(err, InputError):
            raise
        damaged = f"row {first + 1}"
        message = f"{path}: cannot read from {damaged} on: {first_line(err)}"
        yield _columns_to_batch(
            path,
            [damaged],
            [None],
            [None],
            [[None]] * len(config.save_additional_columns),
            config,
            {0: ("unreadable_file", message)},
        )


def _records_to_batch(path: str, records: list[Record], config: InputConfig) -> pa.RecordBatch:
    good = [record.values or {} for record in records]
    urls = [row.get(config.url_col) for row in good]
    captions = [row.get(config.caption_col) for row in good] if config.caption_col else [None] * len(good)
    extras = [[row.get(name) for row in good] for name in config.save_additional_columns]
    bad = {
        i: (record.reason or "unparseable_row", record.message or "")
        for i, record in enumerate(records)
        if record.values is None
    }
    where = [f"line {record.line}" for record in records]
    return _columns_to_batch(path, where, urls, captions, extras, config, bad)


def _columns_to_batch(
    path: str,
    where: list[str],
    urls: list[Any],
    captions: list[Any],
    extras: list[list[Any]],
    config: InputConfig,
    bad: dict[int, tuple[str, str]] | None = None,
) -> pa.RecordBatch:
    """The row batch of records of `path` given column values; `where[i]` says where record i
    is ("line 3", "row 3"), `bad[i]` (reason, message) why it could not be read."""
    n = len(urls)
    bad = dict(bad or {})
    out_uid, out_url, out_caption = [], [], []
    status = [Status.PENDING] * n
    reason: list[str | None] = [None] * n
    stage: list[str | None] = [None] * n
    error: list[str | None] = [None] * n
    for i, (url, caption) in enumerate(zip(urls, captions, strict=True)):
        if not (_plain(url) and _plain(caption)):
            url, caption = _cell_text(url), _cell_text(caption)
        if i not in bad and (isinstance(url, _NotText) or isinstance(caption, _NotText)):
            bad_cell = _bad_cell(path, where[i], url, config.url_col, caption, config.caption_col)
            if bad_cell:
                bad[i] = bad_cell
        if isinstance(url, str):
            url = url.strip()
        if i in bad:
            uid, url, caption = make_uid(f"bad-row:{path}:{where[i]}", None), None, None
            status[i], reason[i], stage[i], error[i] = Status.FAILED, bad[i][0], "read", bad[i][1]
        elif not url:
            # Key rows without a URL by position so two of them never share a uid.
            uid, url = make_uid(f"missing-url:{path}:{where[i]}", caption), None
            status[i], reason[i], stage[i] = Status.FAILED, "missing_url", "read"
            error[i] = f"{path}: {where[i]} has no value in '{config.url_col}'"
        else:
            uid = make_uid(url, caption)
        out_uid.append(uid)
        out_url.append(url)
        out_caption.append(caption)
    extra: list[str | None] = [None] * n
    if extras:
        names = config.save_additional_columns
        for i, values in enumerate(zip(*extras, strict=True)):
            if i not in bad:
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


class _NotText:
    """A cell that is no text: a JSON object, list or boolean (`caption_not_text` for a caption),
    or text that cannot be Unicode (`undecodable_row`)."""

    def __init__(self, what: str, undecodable: bool = False):
        self.what = what
        self.undecodable = undecodable


def _plain(value: Any) -> bool:
    """Whether a cell is None or valid Unicode text (the common case, checked cheaply)."""
    return value is None or (type(value) is str and (value.isascii() or _encodable(value)))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cell_text(value: Any) -> str | None | _NotText:
    """The text of a url or caption cell: strings as they are, numbers written out."""
    if value is None:
        return value
    if type(value) is str:
        # A JSON `\ud800` escape gives a lone surrogate: no Unicode text, never replaced silently.
        return value if _encodable(value) else _NotText("text with an unpaired surrogate", undecodable=True)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return _NotText("bytes that are not UTF-8", undecodable=True)
    if isinstance(value, bool | dict | list | tuple):
        return _NotText({bool: "a boolean", dict: "an object"}.get(type(value), "a list"))
    if isinstance(value, int | float):
        return json.dumps(value)
    return str(value)


def _bad_cell(
    path: str,
    where: str,
    url: str | None | _NotText,
    url_col: str,
    caption: str | None | _NotText,
    caption_col: str,
) -> tuple[str, str] | None:
    """(reason, message) when the url or the caption of a record is not text."""
    for value, column, code in (
        (url, url_col, "unparseable_row"),
        (caption, caption_col, "caption_not_text"),
    ):
        if isinstance(value, _NotText):
            code = "undecodable_row" if value.undecodable else code
            return code, f"{path}: {where}: '{column}' is {value.what}, not text"
    return None


def _strings(values: list[str | None]) -> pa.Array:
    """A string array. Urls and captions that are not valid Unicode are failed rows by now; text
    elsewhere (an error message quoting such text) has the offending characters replaced."""
    try:
        return pa.array(values, type=pa.string())
    except (UnicodeEncodeError, pa.ArrowException):
        cleaned = [v if v is None else v.encode("utf-8", "replace").decode("utf-8") for v in values]
        return pa.array(cleaned, type=pa.string())


def _iter_records(path: str, config: InputConfig, limit: int | None = None) -> Iterator[Record]:
    """The records of a text-format file (CSV, TSV, JSONL, txt), at most `limit` of them."""
    fmt = detect_format(path, config.input_format)
    try:
        opened = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except OSError as err:
        raise InputError(f"{path}: cannot read input file: {first_line(err)}") from err
    with opened as raw:
        records = text_records(_decompressed(path, raw), path, fmt, config.url_col, config.encoding)
        for index, record in enumerate(records):
            if limit is not None and index >= limit:
                return
            yield record


def _decompressed(path: str, raw: BinaryIO) -> BinaryIO:
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if lower.endswith(".bz2"):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    return raw


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


def is_directory(path: str) -> bool:
    """Whether an input path names a folder (on an object store: it ends with `/`)."""
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
            self._counter.add_many(
                kept=batch.num_rows - sum(failed.values()), dropped=failed, status=Status.FAILED
            )
            yield batch
        if counts:
            yield beam.pvalue.TaggedOutput(HARVEST_COUNTS, dict(counts))

    def finish_bundle(self) -> None:
        self._counter.flush()


def holds_archives(files: Iterable[str], config: InputConfig) -> bool:
    """Whether any of the files is a web archive (its pairs then go through `DistinctPairs`)."""
    return any(detect_format(f, config.input_format) in ARCHIVE_FORMATS for f in files)


class ReadUrlBatches(beam.PTransform):
    """Reads the input files into row batches (`BATCH_SCHEMA`), files spread over workers.

    `inputs` are paths, folders or globs, matched when the job runs (`match_input`), so the job
    graph is the same for one file or a hundred thousand. `archives` says whether any input is a
    web archive (the launcher knows from its own check of the inputs; None: matched here to find
    out). Row batches are what the text stage consumes (it turns them into `Sample`s)."""

    def __init__(
        self,
        inputs: Sequence[str],
        config: InputConfig,
        progress_dir: str | None = None,
        crawl: CrawlConfig | None = None,
        archives: bool | None = None,
    ):
        super().__init__()
        self._inputs = sorted(set(inputs))
        self._config = config
        self._progress_dir = progress_dir
        self._crawl = crawl or CrawlConfig()  # how pages are fetched in page mode
        self._pages = config.input_format == "pages"
        if archives is None:
            archives = holds_archives(expand_inputs(self._inputs), config)
        self._archives = archives

    def expand(self, pbegin: beam.pvalue.PBegin) -> WithSummary:
        """The row batches; with web archives or pages among the inputs, the summary holds one dict
        of page- and image-level counts (`harvest` in stats.json), else it is empty."""
        read = (
            pbegin
            | "Inputs" >> beam.Create(self._inputs)
            | "Match" >> beam.FlatMap(match_input)
            | "Files" >> beam.Distinct()  # a file two patterns name is read once
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
            return WithSummary(batches, pbegin.pipeline | "NoHarvest" >> beam.Create([]))
        batches = batches | "DistinctPairs" >> DistinctPairs()
        unique = (
            batches | "CountPairs" >> beam.Map(lambda b: b.num_rows) | "SumPairs" >> beam.CombineGlobally(sum)
        )
        summary = (
            counts
            | "SumCounts" >> beam.CombineGlobally(_sum_counts)
            | "WithUnique" >> beam.Map(_harvest_summary, unique=beam.pvalue.AsSingleton(unique))
        )
        return WithSummary(batches, summary)


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


def _pair_rows(batch: pa.RecordBatch) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(uid, the row's `BATCH_SCHEMA` values) for each row of `batch`."""
    columns = [batch.column(name).to_pylist() for name in BATCH_SCHEMA.names]
    uids = columns[BATCH_SCHEMA.get_field_index("uid")]
    yield from zip(uids, zip(*columns, strict=True), strict=True)


_EXTRA = BATCH_SCHEMA.get_field_index("extra")
#: Accumulators merged per uid: the most elements a key of `DistinctPairs` groups.
_MERGED = Metrics.distribution("read", "distinct_pairs_merged")


def _found_order(row: tuple[Any, ...]) -> tuple[tuple[str, int, int], str]:
    """Which copy of a pair is kept: the first found, then the smallest `extra` (rows found at
    the same place are the same record)."""
    return (_first_found(row[_EXTRA]), row[_EXTRA] or "")


class _FirstFound(beam.CombineFn):
    """Of the rows of one uid, the first found (`_found_order`): one row per accumulator, so a pair
    found on a million pages costs a row per bundle that saw it, never a million on one worker."""

    def create_accumulator(self) -> tuple[Any, ...] | None:
        return None

    def add_input(self, best: tuple[Any, ...] | None, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return row if best is None or _found_order(row) < _found_order(best) else best

    def merge_accumulators(self, accumulators: Iterable[tuple[Any, ...] | None]) -> tuple[Any, ...] | None:
        rows = [row for row in accumulators if row is not None]
        _MERGED.update(len(rows))
        return min(rows, key=_found_order) if rows else None

    def extract_output(self, best: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return best


def _rows_batch(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    """The rows (`BATCH_SCHEMA` values), sorted by uid, as one row batch."""
    rows = sorted(rows, key=lambda row: (row[0], _found_order(row)))
    columns = [pa.array([row[i] for row in rows], field.type) for i, field in enumerate(BATCH_SCHEMA)]
    return pa.RecordBatch.from_arrays(columns, schema=BATCH_SCHEMA)


class DistinctPairs(beam.PTransform):
    """One row per (url, caption) pair, before any image is fetched: of the copies found on many
    pages, the first found (archive file or page URL, byte offset, position on the page) is kept.

    A keyed combine on the uid (the pair's hash): each row is keyed by its uid and the combine
    keeps the best row (`_FirstFound`), lifted before the shuffle, so no key holds more than a
    row per bundle however often a pair was found. The kept rows come back in row batches (at
    most `READ_BATCH_ROWS`, sorted by uid)."""

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "Rows" >> beam.FlatMap(_pair_rows)
            | "FirstFound" >> beam.CombinePerKey(_FirstFound())
            | "Kept" >> beam.Values()
            | "Batch"
            >> beam.BatchElements(min_batch_size=READ_BATCH_ROWS // 4, max_batch_size=READ_BATCH_ROWS)
            | "RowBatches" >> beam.Map(_rows_batch)
        )
