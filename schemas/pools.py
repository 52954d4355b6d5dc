"""What a pool of downloaded shards holds, by name: the contract between a pool and its readers.

A pool is a folder (local, s3://, gs://) of WebDataset tars as img2dataset writes them, `NNNNN.tar`
holding `<key>.jpg` (or another image extension, `schemas/images.py`), `<key>.txt` and
`<key>.json`, with siblings found by name. A shard may be compressed as webdataset reads it
(`NNNNN.tar.gz`, `NNNNN.tgz`, `NNNNN.tar.bz2`: read as a stream, its siblings named by `NNNNN`):

- `NNNNN.parquet` (img2dataset, DataComp, Winnow): one row per sample attempted: `key`, `url`,
  `caption` (DataComp: `text`), `status`, `error_message`, sizes, `sha256`, and any saved columns
  (DataComp: `uid`, `clip_b32_similarity_score`, `clip_l14_similarity_score`, `face_bboxes`).
- `NNNNN_stats.json` (img2dataset): the shard's counts (not read: the Parquet has every row).
- `NNNNN.npz` (DataComp): `b32_img`, `b32_txt`, `l14_img`, `l14_txt`, float16 embeddings,
  row-aligned with the Parquet.
- `img_emb/img_emb_NNNNN.npy`, `text_emb/text_emb_NNNNN.npy`, `metadata/metadata_NNNNN.parquet`
  (Winnow, in clip-retrieval's layout): embeddings row-aligned with the metadata's `uid` column;
  the model is the shard Parquet's `clip_model`.

The WebDataset key of a member is its name up to the first dot of its base name, as `webdataset`
splits it (`a/b.c.jpg` → key `a/b`, extension `c.jpg`).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.images import IMAGE_EXTENSIONS

TAR_SUFFIX = ".tar"
#: The names of a pool's shards: a tar, or a tar compressed as webdataset reads it.
SHARD_SUFFIXES = (TAR_SUFFIX, ".tar.gz", ".tgz", ".tar.bz2")
#: `extra` entries of a sample read from a pool: its key in the tar and the tar (webdataset's
#: `__key__`; the shard as given in the input).
KEY, SHARD = "__key__", "__shard__"
_HEX_UID = re.compile(r"^[0-9a-f]{32}$")


@dataclasses.dataclass(frozen=True)
class PoolEmbeddings:
    """One set of precomputed embeddings a pool may carry, and the model that made them."""

    #: The model identity, as `embed` writes it in `clip_model` (`name/pretrained tag`).
    identity: str
    #: Arrays of the `.npz` (DataComp), row-aligned with the shard's Parquet.
    image_key: str
    text_key: str
    #: The Parquet column holding the score DataComp computed with this model (float32 before
    #: storage, so its baselines threshold this column, not the cosine of the float16 arrays).
    score_column: str


#: DataComp CommonPool's embeddings (`.npz` per shard): OpenAI's CLIP ViT-B/32 and ViT-L/14.
DATACOMP_EMBEDDINGS = (
    PoolEmbeddings("ViT-B-32/openai", "b32_img", "b32_txt", "clip_b32_similarity_score"),
    PoolEmbeddings("ViT-L-14/openai", "l14_img", "l14_txt", "clip_l14_similarity_score"),
)


#: Pool columns the crawl stage's pool mode reads from `extra`, carried whatever
#: `input.save_additional_columns` names: the original size (the image rules), the scores and
#: DataComp's `face_bboxes` (the safety stage blurs and counts them instead of detecting).
READ_COLUMNS = (
    "original_width",
    "original_height",
    "face_bboxes",
    "clip_score",
    *(embeddings.score_column for embeddings in DATACOMP_EMBEDDINGS),
)


@dataclasses.dataclass(frozen=True)
class ShardFiles:
    """The files of one shard of a pool, by name (whether each exists is asked separately)."""

    tar: str
    parquet: str
    npz: str
    img_emb: str
    text_emb: str
    metadata: str


def _split(path: str) -> tuple[str, str, str]:
    """(folder, base name, separator) of a local path or an object-store URL."""
    if "://" in path:
        folder, _, name = path.rpartition("/")
        return folder, name, "/"
    folder, name = os.path.split(path)
    return folder, name, os.sep


def base_name(path: str) -> str:
    """The file name of a local path or an object-store URL."""
    return _split(path)[1]


def shard_stem(name: str) -> str | None:
    """The shard's name without its tar suffix (`00001` of `00001.tar.gz`), or None when `name`
    names no shard (`SHARD_SUFFIXES`, in any case)."""
    lower = name.lower()
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_shard(path: str) -> bool:
    """Whether `path` names a pool's shard: a tar, compressed or not."""
    return shard_stem(base_name(path)) is not None


def shard_files(tar: str) -> ShardFiles:
    """The files of the shard whose tar is `tar` (`NNNNN.tar`, or compressed: `NNNNN.tar.gz`)."""
    folder, name, sep = _split(tar)
    stem = shard_stem(name) or name

    def join(*parts: str) -> str:
        return sep.join((folder, *parts)) if folder else sep.join(parts)

    return ShardFiles(
        tar=tar,
        parquet=join(f"{stem}.parquet"),
        npz=join(f"{stem}.npz"),
        img_emb=join("img_emb", f"img_emb_{stem}.npy"),
        text_emb=join("text_emb", f"text_emb_{stem}.npy"),
        metadata=join("metadata", f"metadata_{stem}.parquet"),
    )


def drop_siblings(paths: Iterable[str]) -> list[str]:
    """`paths` without the `.parquet` / `.npz` / `_stats.json` siblings of a tar among them (a
    folder of a pool names its shards, not their metadata)."""
    paths = list(paths)
    siblings: set[str] = set()
    for path in paths:
        folder, name, sep = _split(path)
        stem = shard_stem(name)
        if stem is not None:
            for sibling in (f"{stem}.parquet", f"{stem}.npz", f"{stem}_stats.json"):
                siblings.add(sep.join((folder, sibling)) if folder else sibling)
    return [path for path in paths if path not in siblings]


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member name, webdataset's way: the extension starts at the first
    dot of the base name; ('', '') for a name without one."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return "", ""
    return (f"{folder}/{stem}" if folder else stem), ext


class TailKeepingReader:
    """A binary handle that keeps the last bytes read: a tar read to its end should end with its
    end-of-archive blocks (zeros); `tarfile` reads a tar cut at a member boundary as a shorter
    archive without a word, so a reader checks `ended_with_marker` itself."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if data:
            self._tail = (self._tail + data)[-1024:]
        return data

    def ended_with_marker(self) -> bool:
        return len(self._tail) >= 512 and self._tail[-512:].count(0) == 512


class _Prefixed:
    """A binary handle whose first bytes were already read (to tell its compression): they are
    read again first."""

    def __init__(self, head: bytes, handle: BinaryIO):
        self._head = head
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._handle.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._handle.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data if len(data) == size else data + self._handle.read(size - len(data))


#: Magic numbers of the compressions a shard may have, as webdataset (`tarfile`'s `r|*`) tells
#: them: gzip (RFC 1952, deflate), bzip2 (its header and first block's magic).
_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_MAGIC = re.compile(rb"^BZh[1-9](1AY&SY|\x17rE8P\x90)")


def decompressed(handle: BinaryIO) -> BinaryIO:
    """A shard's bytes as a tar stream: gzip and bzip2 are told by their magic numbers (not the
    name, as webdataset reads a shard) and decompressed as the stream is read, never whole."""
    head = handle.read(10)
    prefixed: BinaryIO = _Prefixed(head, handle)  # type: ignore[assignment]
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=prefixed, mode="rb")  # type: ignore[return-value]
    if _BZIP2_MAGIC.match(head):
        return bz2.BZ2File(prefixed, mode="rb")  # type: ignore[return-value]
    return prefixed


def is_image(ext: str) -> bool:
    """Whether a member's extension (`jpg`, `seg.png`) names an image."""
    return ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def stream_members(tar: str, read: Callable[[str, str], bool]) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, bytes) of each file member of `tar`, front to back; the bytes only of the
    members `read(key, extension)` picks (None for the others).

    A tar cut short raises `tarfile.ReadError`, also where `tarfile` alone would not: cut between
    members (it reads that as a shorter archive; the end-of-archive blocks are checked here) or
    inside a member's data (a stream returns it short; its length is checked). A compressed tar
    is read through its decompressor (`decompressed`) to its end, so one cut short, even in its
    checksum, raises `EOFError` (or `OSError` for a wrong checksum)."""
    with FileSystems.open(tar, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        stream = decompressed(handle)
        reader = TailKeepingReader(stream)
        with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                key, ext = split_member(member.name)
                if not key or not member.isfile():
                    continue
                if not read(key, ext):
                    yield key, ext, None
                    continue
                extracted = archive.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                if len(data) < member.size:
                    raise tarfile.ReadError(
                        f"{member.name}: {len(data)} of {member.size} bytes: the tar was cut short"
                    )
                yield key, ext, data
        if not reader.ended_with_marker():
            raise tarfile.ReadError("the tar ends without its end-of-archive blocks: it was cut short")
        if not isinstance(stream, _Prefixed):  # the rest of the compressed stream: its checksum
            while stream.read(1 << 16):
                pass


def pool_cell(value: Any) -> Any:
    """A pool's Parquet cell as a sample's `extra` (JSON) holds it: bytes as hex, other values
    JSON cannot hold as text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): pool_cell(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pool_cell(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def pool_uid(value: object) -> str | None:
    """The pool's own uid (DataComp's 32 hex digits) when `value` is one, else None."""
    if isinstance(value, str) and _HEX_UID.match(value.lower()):
        return value.lower()
    return None


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def available_embeddings(tar: str) -> dict[str, str]:
    """Identity → where, for each set of precomputed embeddings beside the shard `tar`."""
    files = shard_files(tar)
    found: dict[str, str] = {}
    if exists(files.npz):
        with np.load(io.BytesIO(read_bytes(files.npz))) as arrays:
            names = set(arrays.files)
        for embeddings in DATACOMP_EMBEDDINGS:
            if {embeddings.image_key, embeddings.text_key} <= names:
                found[embeddings.identity] = files.npz
    if exists(files.img_emb) and exists(files.text_emb) and exists(files.metadata) and exists(files.parquet):
        identity = recorded_model(files.parquet)
        if identity:
            found[identity] = files.img_emb
    return found


def recorded_model(parquet: str) -> str | None:
    """The first `clip_model` a shard Parquet records (Winnow's output), or None."""
    with FileSystems.open(parquet, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        file = pq.ParquetFile(handle)
        if "clip_model" not in file.schema_arrow.names:
            return None
        column = file.read(columns=["clip_model"]).column(0).drop_null()
    return str(column[0].as_py()) if len(column) else None


def datacomp_embeddings(identity: str) -> PoolEmbeddings | None:
    return next((e for e in DATACOMP_EMBEDDINGS if e.identity == identity), None)
