"""The files of an output's index (`OUTPUT/index/`) and moving them on any Beam filesystem.

- `image.index`: the FAISS index of the kept samples' normalised image embeddings (row i has id i).
  An IVF index keeps its inverted lists in `image.ivfdata` beside it (faiss's `OnDiskInvertedLists`,
  memory-mapped when searched); the index names that file by its base name only, so the folder
  can move, be copied or live on an object store. Read it with `faissindex.read_index(path,
  ivfdata)`, or with faiss's own `read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)`.
- `ids.parquet`: row i of the index → uid, url, caption, clip_score, shard.
- `index.json`: what `IndexSummary` records, and the metric. Written last and removed first, so an
  index without it is never read.
- `parts/`: the build's temporary files (`pipeline/output/indexjob.py`: Flat parts, segments of
  IVF lists, the plan), named as temporary writes (`transforms/common/files.TEMP_PREFIX` and a
  32-hex build token), so a crashed build's leftovers are never taken for foreign files and the
  next run of the output clears them.

Local paths are read and written directly (atomically: a temporary name, then a rename); remote
ones (s3://, gs://) are streamed through Beam's `FileSystems`, one upload per file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.output import faissindex
from transforms.common.files import TEMP_PREFIX

INDEX_DIR = "index"
INDEX_FILE = "image.index"
IVFDATA_FILE = "image.ivfdata"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
PARTS_DIR = "parts"
#: Every file an index may have, in the order they are deleted (index.json first).
INDEX_FILES = (INFO_FILE, INDEX_FILE, IVFDATA_FILE, IDS_FILE)
IDS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("clip_score", pa.float32()),
        pa.field("shard", pa.string(), nullable=False),
    ]
)
_COPY_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What `index.json` records about a written index."""

    type: str
    count: int
    dim: int
    model: str | None
    memory_budget_bytes: int


def index_files(kind: str) -> tuple[str, ...]:
    """The files an index of type `kind` consists of, index.json first."""
    return tuple(name for name in INDEX_FILES if name != IVFDATA_FILE or faissindex.needs_training(kind))


def parts_folder(output_dir: str) -> str:
    return f"{output_dir.rstrip('/')}/{INDEX_DIR}/{PARTS_DIR}"


def part_path(output_dir: str, token: str, name: str) -> str:
    """A build's temporary file `name` (token: 32 hex digits naming the build)."""
    return f"{parts_folder(output_dir)}/{TEMP_PREFIX}{token}-{name}"


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def read_bytes(path: str, known: bool = False) -> bytes:
    """The file's bytes; `known`: it was matched, checked or written just before (one request fewer)."""
    if not known and not FileSystems.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        data: bytes = handle.read()
    return data


def fetch(path: str, local: str) -> None:
    """Copies the file at `path` (any filesystem) to the local file `local`, streamed."""
    source = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    with source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, _COPY_CHUNK)


def publish(local: str, path: str) -> None:
    """Moves the local file `local` to `path`: a rename when `path` is local (atomic; `local`
    must be on the same filesystem), one streamed upload otherwise."""
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.replace(local, path)
        return
    with open(local, "rb") as source, FileSystems.create(path) as target:
        shutil.copyfileobj(source, target, _COPY_CHUNK)
    os.remove(local)


@contextmanager
def staging(output_dir: str, token: str) -> Iterator[str]:
    """A local folder for files on their way into `output_dir/index/`: the parts folder itself for
    a local output (so that `publish` is a rename, and a leftover carries a temporary name), a
    temporary folder otherwise. Yields a prefix: staged files are `prefix + name`."""
    if is_local(output_dir):
        os.makedirs(parts_folder(output_dir), exist_ok=True)
        yield part_path(output_dir, token, "")
        return
    with tempfile.TemporaryDirectory(prefix="winnow-index-") as folder:
        yield f"{folder}/"


def read_faiss(output_dir: str) -> faiss.Index:
    """The output's index, with its on-disk inverted lists memory-mapped when it has them."""
    folder = f"{output_dir.rstrip('/')}/{INDEX_DIR}"
    index_path, ivfdata_path = f"{folder}/{INDEX_FILE}", f"{folder}/{IVFDATA_FILE}"
    on_disk = FileSystems.exists(ivfdata_path)
    if is_local(index_path):
        return faissindex.read_index(index_path, ivfdata_path if on_disk else None)
    with tempfile.TemporaryDirectory(prefix="winnow-index-") as workdir:
        local = os.path.join(workdir, INDEX_FILE)
        fetch(index_path, local)
        if not on_disk:
            return faissindex.read_index(local)
        # The mapping outlives the temporary folder: the file is unlinked, not unmapped.
        fetch(ivfdata_path, os.path.join(workdir, IVFDATA_FILE))
        return faissindex.read_index(local, os.path.join(workdir, IVFDATA_FILE))
