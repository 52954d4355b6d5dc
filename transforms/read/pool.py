"""A pool of downloaded shards → row batches: img2dataset, DataComp and Winnow WebDataset tars.

In: one shard's tar, compressed or not (`schemas/pools.py` names its siblings). Out: one row per
sample, from the shard's Parquet when there is one (img2dataset writes a row for every sample it
attempted, failed ones included), else one per member set of the tar (its `.txt` is the caption,
its `.json` the metadata). A member set is webdataset's sample: the consecutive members with one
key, a repeated extension starting the next set.

The Parquet names each row's member set by its `key` column. A Parquet without one (DataComp's
metadata Parquet beside a tar) is joined by uid: each row gets the key of the member set whose
`.json` holds its `uid` (the tar is then read here too, for its `.txt` and `.json` only), and
member sets no row names keep rows of their own. A Parquet with neither column is an
`InputError` naming it (`check_shard`, also before the run).

Each row keeps:
- `uid`: the pool's own (DataComp's 32 hex digits) when it has one, so selections compare uid
  for uid; else Winnow's (`make_uid` of url and caption; of the shard and key for a member set
  without a url).
- `extra`: `__key__` (the sample's key in the tar) and `__shard__` (the tar), then the pool's
  other columns with a value (`input.save_additional_columns`, when set, names the ones kept,
  with the sizes and scores the crawl stage reads, `schemas.pools.READ_COLUMNS`).
  A Winnow output's own `extra` is merged in.
- `status`: pending, for the crawl stage to take the image from the tar (`transforms/crawl/pool.py`).
  A sample the pool records as not downloaded (img2dataset's `status` other than `success`) is
  `failed` with reason `not_downloaded` and the pool's status and error message; a sample
  without a key `image_missing` (joined by uid: `unreadable_file` when the tar broke before the
  end); a member set whose key an earlier one has `duplicate_key` (the first keeps its sample; the
  second's uid, when the first has it too, is made from its place in the tar); a tar that cannot
  be read is one `unreadable_file` row after the rows read before the damage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tarfile
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.pools import (
    KEY,
    READ_COLUMNS,
    SHARD,
    exists,
    is_image,
    pool_cell,
    pool_uid,
    shard_files,
    stream_members,
)
from schemas.sample import Sample, Status, batch_from_samples, make_uid
from transforms.common.errors import InputError
from transforms.read.config import InputConfig

LOG = logging.getLogger(__name__)
STAGE = "read"
#: Pool columns that become `Sample` fields rather than `extra` entries.
_STATUS_COLUMNS = ("status", "error_message", "reason", "error")


#: What a row of a shard's Parquet lacking a member set becomes: (reason, message).
_NO_KEY = ("image_missing", "the pool names no key for this sample")


def pool_batches(path: str, config: InputConfig, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of the pool shard whose tar is `path`, in batches of at most `batch_rows`."""
    files = shard_files(path)
    rows: Iterator[Sample]
    if exists(files.parquet):
        with FileSystems.open(files.parquet, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(handle)
        if _join_column(path, files.parquet, table.column_names) == "key":
            rows = _parquet_rows(path, table, config, lambda cell: cell.get("key"))
        else:
            rows = _joined_rows(path, table, config)
    else:
        rows = _tar_rows(path, config)
    batch: list[Sample] = []
    for sample in rows:
        batch.append(sample)
        if len(batch) == batch_rows:
            yield batch_from_samples(batch)
            batch = []
    if batch:
        yield batch_from_samples(batch)


def check_shard(tar: str) -> None:
    """`InputError` when the Parquet beside the shard `tar` can name none of its member sets."""
    parquet = shard_files(tar).parquet
    if exists(parquet):
        with FileSystems.open(parquet, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            names = list(pq.ParquetFile(handle).schema_arrow.names)
        _join_column(tar, parquet, names)


def _join_column(tar: str, parquet: str, names: Collection[str]) -> str:
    """The column of a shard Parquet naming each row's member set: `key`, else `uid` (joined with
    the `.json`'s uid); `InputError` naming the file and the column when it has neither."""
    for column in ("key", "uid"):
        if column in names:
            return column
    raise InputError(
        f"{parquet}: missing column 'key' (nor a 'uid' to join by), so no row names a sample of "
        f"{tar}; the file has {sorted(names)} (a shard's Parquet is img2dataset's, with 'key')"
    )


def _parquet_rows(
    tar: str,
    table: pa.Table,
    config: InputConfig,
    key_of: Callable[[dict[str, Any]], str | None],
    no_key: tuple[str, str] = _NO_KEY,
) -> Iterator[Sample]:
    """One row per row of the shard's Parquet `table`; `key_of(row)` is its member set's key."""
    names = table.column_names
    caption_col = next((c for c in (config.caption_col, "caption", "text") if c and c in names), None)
    url_col = config.url_col if config.url_col in names else None
    kept = (
        (set(config.save_additional_columns) | set(READ_COLUMNS))
        if config.save_additional_columns
        else set(names)
    )
    skip = {url_col, caption_col, "uid", "key", "extra", *_STATUS_COLUMNS}
    carried = [c for c in names if c in kept and c not in skip]
    columns = {name: table.column(name).to_pylist() for name in names}
    for i in range(table.num_rows):
        cell = {name: values[i] for name, values in columns.items()}
        url = cell[url_col] if url_col else None
        caption = cell[caption_col] if caption_col else None
        extra: dict[str, Any] = {}
        if isinstance(cell.get("extra"), str):  # a Winnow output: its input's columns
            extra.update(json.loads(cell["extra"]))
        extra.update({name: pool_cell(cell[name]) for name in carried if cell[name] is not None})
        key = key_of(cell)
        extra[KEY], extra[SHARD] = key, tar
        sample = Sample(pool_uid(cell.get("uid")) or make_uid(url, caption), url, caption, extra)
        yield _decided(sample, cell, key, no_key)


def _decided(
    sample: Sample, cell: dict[str, Any], key: str | None, no_key: tuple[str, str] = _NO_KEY
) -> Sample:
    """The sample, failed when the pool says it was not downloaded or names no key (`no_key`:
    the reason and message)."""
    status = cell.get("status")
    if status is not None and status != "success":
        detail = cell.get("error_message") or cell.get("error") or cell.get("reason") or ""
        return sample.decided(Status.FAILED, "not_downloaded", STAGE, f"{status}: {detail}".rstrip(": "))
    if key is None:
        return sample.decided(Status.FAILED, no_key[0], STAGE, no_key[1])
    return sample


def _joined_rows(tar: str, table: pa.Table, config: InputConfig) -> Iterator[Sample]:
    """The rows of a shard Parquet without `key`, keyed by the uid of the member sets' `.json`,
    then a row for each member set no Parquet row names. Only the first member set of a key can
    be given its image (the crawl reads the tar's first image of the key): a row naming a later
    one is `duplicate_key`."""
    sets, damage = _member_sets(tar)
    by_uid: dict[str, _MemberSet] = {}
    first: dict[str, int] = {}  # key → place of its first member set
    for member_set in sets:
        first.setdefault(member_set.key, member_set.index)
        uid = pool_uid(_json_object(member_set.parts.get("json")).get("uid"))
        if uid is not None:
            by_uid.setdefault(uid, member_set)
    named: set[int] = set()  # places of the member sets a row names

    def key_of(cell: dict[str, Any]) -> str | None:
        found = by_uid.get(pool_uid(cell.get("uid")) or "")
        if found is not None:
            named.add(found.index)
        return found.key if found is not None else None

    no_key = (
        ("unreadable_file", damage) if damage else ("image_missing", f"no member set of {tar} has its uid")
    )
    uids: set[str] = set()
    for sample in _parquet_rows(tar, table, config, key_of, no_key):
        found = by_uid.get(sample.uid)
        if found is not None and first[found.key] != found.index and sample.status == Status.PENDING:
            sample = _duplicate(tar, found, sample, uid_taken=False)
        uids.add(sample.uid)
        yield sample
    taken = {s.key for s in sets if s.index in named and first[s.key] == s.index}
    rest = [member_set for member_set in sets if member_set.index not in named]
    yield from _set_samples(tar, rest, config, taken, uids)


@dataclasses.dataclass
class _MemberSet:
    """One sample of a tar as webdataset groups its members: consecutive members with one key, a
    repeated extension starting the next set."""

    key: str
    #: Its place among the tar's member sets, from 0.
    index: int
    #: Extension (lower case) → bytes: those of the `.txt` and `.json`, empty for the others.
    parts: dict[str, bytes]


def _member_sets(tar: str) -> tuple[list[_MemberSet], str | None]:
    """The member sets of `tar`, front to back, and what stopped the read before its end (None
    when it was read to the end)."""
    sets: list[_MemberSet] = []
    try:
        for key, ext, data in stream_members(tar, lambda key, ext: ext.lower() in ("txt", "json")):
            ext = ext.lower()
            current = sets[-1] if sets else None
            if current is None or current.key != key or ext in current.parts:
                current = _MemberSet(key, len(sets), {})
                sets.append(current)
            current.parts[ext] = data or b""
    except (OSError, tarfile.TarError, EOFError) as err:
        LOG.warning("%s: unreadable after %d samples: %s", tar, len(sets), err)
        return sets, f"{tar}: {err}"
    return sets, None


def _tar_rows(tar: str, config: InputConfig) -> Iterator[Sample]:
    """One row per member set of a tar without a Parquet: `.txt` caption, `.json` metadata."""
    sets, damage = _member_sets(tar)
    yield from _set_samples(tar, sets, config)
    if damage:
        broken = Sample(make_uid(tar, ""), None, None, {SHARD: tar})
        yield broken.decided(Status.FAILED, "unreadable_file", STAGE, damage)


def _set_samples(
    tar: str,
    sets: list[_MemberSet],
    config: InputConfig,
    taken_keys: Collection[str] = (),
    taken_uids: Collection[str] = (),
) -> Iterator[Sample]:
    """A row per member set, by key then place in the tar; a set whose key an earlier set has (or
    is in `taken_keys`) is `duplicate_key`, with a uid of its own when its uid is taken."""
    keys, uids = set(taken_keys), set(taken_uids)
    for member_set in sorted(sets, key=lambda s: (s.key, s.index)):
        sample = _set_sample(tar, member_set, config)
        if member_set.key in keys:
            sample = _duplicate(tar, member_set, sample, sample.uid in uids)
        keys.add(member_set.key)
        uids.add(sample.uid)
        yield sample


def _duplicate(tar: str, member_set: _MemberSet, sample: Sample, uid_taken: bool) -> Sample:
    """A member set whose key an earlier sample of the tar has: its own row, never given the image."""
    detail = f"member set {member_set.index + 1} of {tar} has key {member_set.key!r}, as an earlier sample"
    if uid_taken:  # the same pair written twice: a uid by its place, so the row stays its own
        detail += f" with its uid {sample.uid}"
        sample = sample.evolve(uid=make_uid(f"member-set:{tar}:{member_set.index}", sample.caption))
    return sample.decided(Status.FAILED, "duplicate_key", STAGE, detail + ", which keeps its image")


def _set_sample(tar: str, member_set: _MemberSet, config: InputConfig) -> Sample:
    """The row of one member set, decided when its caption or image is missing."""
    key, parts = member_set.key, member_set.parts
    metadata = _json_object(parts.get("json"))
    caption, readable = _text(parts.get("txt"))
    url = metadata.get(config.url_col) if isinstance(metadata.get(config.url_col), str) else None
    kept = (
        (set(config.save_additional_columns) | set(READ_COLUMNS))
        if config.save_additional_columns
        else set(metadata)
    )
    extra = {k: pool_cell(v) for k, v in metadata.items() if k in kept and k not in ("url", "uid", "key")}
    extra[KEY], extra[SHARD] = key, tar
    # Without a url (no `.json`, or one without it) the pair names no sample: the key does.
    own = make_uid(url, caption) if url else make_uid(f"pool-key:{tar}:{key}", caption)
    sample = Sample(pool_uid(metadata.get("uid")) or own, url, caption, extra)
    if not readable:
        return sample.decided(Status.REJECTED, "caption_not_text", STAGE, "the .txt member is not UTF-8")
    if not any(is_image(ext) for ext in parts):
        return sample.decided(Status.FAILED, "image_missing", STAGE, f"no image member for key {key!r}")
    return _decided(sample, metadata, key)


def _text(data: bytes | None) -> tuple[str | None, bool]:
    if data is None:
        return None, True
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return None, False


def _json_object(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
