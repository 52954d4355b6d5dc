"""A pool of downloaded shards → row batches: img2dataset, DataComp and Winnow WebDataset tars.

In: one shard's tar (`schemas/pools.py` names its siblings). Out: one row per sample, from the
shard's Parquet when there is one (img2dataset writes a row for every sample it attempted, failed
ones included), else one per key of the tar (its `.txt` is the caption, its `.json` the metadata).

Each row keeps:
- `uid`: the pool's own (DataComp's 32 hex digits) when it has one, so selections compare uid
  for uid; else Winnow's (`make_uid` of url and caption).
- `extra`: `__key__` (the sample's key in the tar) and `__shard__` (the tar), then the pool's
  other columns with a value (`input.save_additional_columns`, when set, names the ones kept,
  with the sizes and scores the crawl stage reads, `schemas.pools.READ_COLUMNS`).
  A Winnow output's own `extra` is merged in.
- `status`: pending, for the crawl stage to take the image from the tar (`transforms/crawl/pool.py`).
  A sample the pool records as not downloaded (img2dataset's `status` other than `success`) is
  `failed` with reason `not_downloaded` and the pool's status and error message; a sample
  without a key `image_missing`; a tar that cannot be read is one `unreadable_file` row after the
  rows read before the damage.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.pools import KEY, READ_COLUMNS, SHARD, exists, is_image, pool_uid, shard_files, stream_members
from schemas.sample import Sample, Status, batch_from_samples, make_uid
from transforms.read.config import InputConfig

LOG = logging.getLogger(__name__)
STAGE = "read"
#: Pool columns that become `Sample` fields rather than `extra` entries.
_STATUS_COLUMNS = ("status", "error_message", "reason", "error")


def pool_batches(path: str, config: InputConfig, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of the pool shard whose tar is `path`, in batches of at most `batch_rows`."""
    files = shard_files(path)
    rows = _parquet_rows(path, files.parquet, config) if exists(files.parquet) else _tar_rows(path, config)
    batch: list[Sample] = []
    for sample in rows:
        batch.append(sample)
        if len(batch) == batch_rows:
            yield batch_from_samples(batch)
            batch = []
    if batch:
        yield batch_from_samples(batch)


def _parquet_rows(tar: str, parquet: str, config: InputConfig) -> Iterator[Sample]:
    with FileSystems.open(parquet, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        table = pq.read_table(handle)
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
        extra.update({name: _jsonable(cell[name]) for name in carried if cell[name] is not None})
        key = cell.get("key")
        extra[KEY], extra[SHARD] = key, tar
        sample = Sample(pool_uid(cell.get("uid")) or make_uid(url, caption), url, caption, extra)
        yield _decided(sample, cell, key)


def _decided(sample: Sample, cell: dict[str, Any], key: str | None) -> Sample:
    """The sample, failed when the pool says it was not downloaded or names no key."""
    status = cell.get("status")
    if status is not None and status != "success":
        detail = cell.get("error_message") or cell.get("error") or cell.get("reason") or ""
        return sample.decided(Status.FAILED, "not_downloaded", STAGE, f"{status}: {detail}".rstrip(": "))
    if key is None:
        return sample.decided(Status.FAILED, "image_missing", STAGE, "the pool names no key for this sample")
    return sample


def _tar_rows(tar: str, config: InputConfig) -> Iterator[Sample]:
    """One row per key of a tar without a Parquet: `.txt` caption, `.json` metadata."""
    members: dict[str, dict[str, bytes]] = {}
    try:
        for key, ext, data in stream_members(tar, lambda key, ext: ext in ("txt", "json")):
            members.setdefault(key, {})[ext.lower()] = data or b""
    except (OSError, tarfile.TarError, EOFError) as err:
        LOG.warning("%s: unreadable after %d samples: %s", tar, len(members), err)
        yield from _tar_samples(tar, members, config)
        broken = Sample(make_uid(tar, ""), None, None, {SHARD: tar})
        yield broken.decided(Status.FAILED, "unreadable_file", STAGE, f"{tar}: {err}")
        return
    yield from _tar_samples(tar, members, config)


def _tar_samples(tar: str, members: dict[str, dict[str, bytes]], config: InputConfig) -> Iterator[Sample]:
    for key in sorted(members):
        parts = members[key]
        metadata = _json_object(parts.get("json"))
        caption, readable = _text(parts.get("txt"))
        url = metadata.get(config.url_col) if isinstance(metadata.get(config.url_col), str) else None
        kept = (
            (set(config.save_additional_columns) | set(READ_COLUMNS))
            if config.save_additional_columns
            else set(metadata)
        )
        extra = {k: _jsonable(v) for k, v in metadata.items() if k in kept and k not in ("url", "uid", "key")}
        extra[KEY], extra[SHARD] = key, tar
        sample = Sample(pool_uid(metadata.get("uid")) or make_uid(url, caption), url, caption, extra)
        if not readable:
            yield sample.decided(Status.REJECTED, "caption_not_text", STAGE, "the .txt member is not UTF-8")
        elif not any(is_image(ext) for ext in parts):
            yield sample.decided(Status.FAILED, "image_missing", STAGE, f"no image member for key {key!r}")
        else:
            yield _decided(sample, metadata, key)


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


def _jsonable(value: Any) -> Any:
    """A Parquet cell as JSON can hold it (bytes as hex)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
