"""Writing files so that nothing half-written is ever seen, on any Beam filesystem.

`write_atomically` writes a local file under a temporary name (`TEMP_PREFIX`) and renames it into
place; on an object store one upload is visible only when complete (`open_atomically`: the same for
a file written piece by piece). A write that fails (a full
disk, an interrupt) removes its temporary file before the error goes on. One a killed run
left behind is recognised by its name (`transforms/common/manifest.py`) and only such files are
ever cleaned up. `read_text_file` reads a small text file (a list, a config) from any of them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

#: What a write in progress is called until it is renamed: `_tmp-<32 hex>-<name>`.
TEMP_PREFIX = "_tmp-"


@contextlib.contextmanager
def open_atomically(path: str) -> Iterator[BinaryIO]:
    """`write_atomically` for a file written piece by piece: a handle whose writes appear at `path`
    only when the block ends without an error (a local temporary file renamed, or one upload)."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        with FileSystems.create(path) as handle:  # object stores: one upload, visible when complete
            yield handle
        return
    path = path.removeprefix("file://")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; Winnow writes files only")
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with open(temp, "wb") as handle:
            yield handle
        os.replace(temp, path)  # atomic, and replaces a file only
    except BaseException:  # a full disk, an interrupt: the partial file goes, the error stays
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def write_atomically(path: str, data: bytes) -> None:
    """Writes `path` so that readers never see a partial file. An existing file is replaced in one
    rename; a folder at `path` is never touched (`IsADirectoryError`)."""
    with open_atomically(path) as handle:
        handle.write(data)


def read_text_file(path: str) -> str:
    """A whole UTF-8 text file (local, s3://, gs://), never decompressed by its name.
    `ValueError` says why it cannot be read: missing, unreadable, or not UTF-8."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
