"""The kept samples' uids in DataComp's format: the selection a DataComp tool reads.

DataComp's baselines save a selection as a sorted NumPy array of `u8,u8` pairs, the high and low
64 bits of each 32-hex-digit uid (`baselines/apply_filter.py`), which its `resharder.py` takes.
Winnow's uids have the same shape, and a pool's own uids are kept (`transforms/read/pool.py`), so
a selection from a DataComp pool names the pool's samples.

With `output.uids_file`, each shard writer also writes its shard's kept uids, sorted, in that
format (`uids/uids_NNNNN.npy`, `part_name`); after the job the launcher merges the parts into the
one sorted file (`write_uids_file`), streaming: a k-way merge reading each part in chunks of
`chunk_rows` rows, at most `fan_in` parts at a time (more parts are merged in rounds through
local temporary runs). Its memory is O(fan_in × chunk_rows), whatever the number of uids. The
parts stay in the output (the manifest records them with their shard), so the selection of a run
the launcher did not wait for (`--no-wait`) is there too.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.layout import shard_stems
from transforms.common.files import open_atomically
from transforms.common.manifest import record_files

UID_DTYPE = np.dtype("u8,u8")
#: The folder of the per-shard parts inside the output.
PARTS_DIR = "uids"
#: Rows read from a part at a time, and parts merged at a time.
CHUNK_ROWS = 4_096
FAN_IN = 64


class UidsFileError(ValueError):
    """A uids part that is not a 1-D `u8,u8` NumPy array (not written by Winnow, or cut short)."""


def uids_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted `u8,u8` pairs of 32-hex-digit uids."""
    pairs = np.array([(int(uid[:16], 16), int(uid[16:32], 16)) for uid in uids], UID_DTYPE)
    return np.sort(pairs)


def uids_path(output_dir: str, uids_file: str) -> tuple[str, bool]:
    """Where `output.uids_file` goes, and whether that is inside the output folder."""
    if "://" in uids_file or os.path.isabs(uids_file):
        return uids_file, False
    return f"{output_dir.rstrip('/')}/{uids_file}", True


def part_name(stem: str) -> str:
    """The part of shard `stem` (`NNNNN`), relative to the output folder."""
    return f"{PARTS_DIR}/{PARTS_DIR}_{stem}.npy"


def uids_part(uids: Iterable[str]) -> bytes:
    """A shard's part: the `.npy` bytes of its kept `uids`, sorted."""
    buffer = io.BytesIO()
    np.save(buffer, uids_array(uids))
    return buffer.getvalue()


def _npy_header(count: int) -> bytes:
    """The header `np.save` writes for `count` uid pairs."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (count,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _read_header(handle: BinaryIO, path: str) -> int:
    """The number of pairs of the part `handle` reads, its position moved to the first one."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as err:
        raise UidsFileError(f"{path}: not a NumPy array ({err})") from None
    if dtype != UID_DTYPE or fortran or len(shape) != 1:
        raise UidsFileError(f"{path}: not a 1-D {UID_DTYPE} array of uids")
    return int(shape[0])


def _chunks(handle: BinaryIO, count: int, chunk_rows: int, path: str) -> Iterator[np.ndarray]:
    """The pairs of a part, `chunk_rows` at a time."""
    left = count
    while left:
        want = min(left, chunk_rows) * UID_DTYPE.itemsize
        data = b""
        while len(data) < want:
            piece = handle.read(want - len(data))
            if not piece:
                raise UidsFileError(f"{path}: cut short ({count - left} of {count} uids read)")
            data += piece
        chunk = np.frombuffer(data, UID_DTYPE)
        left -= len(chunk)
        yield chunk


def merged_chunks(sources: Iterable[Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
    """The pairs of sorted sources, sorted: a k-way merge chunk by chunk. Each round emits every
    pair not above the smallest of the sources' current last pairs, which all later pairs are at
    least: at most one chunk per source is held."""
    current: list[tuple[np.ndarray, Iterator[np.ndarray]]] = []
    for source in sources:
        first = next(source, None)
        if first is not None:
            current.append((first, source))
    while current:
        bound = min(current, key=lambda held: tuple(held[0][-1]))[0][-1]
        taken, kept = [], []
        for chunk, source in current:
            cut = int(np.searchsorted(chunk, bound, side="right"))
            taken.append(chunk[:cut])
            rest = chunk[cut:] if cut < len(chunk) else next(source, None)
            if rest is not None:
                kept.append((rest, source))
        current = kept
        yield np.sort(np.concatenate(taken))


def _write_merged(target: str, paths: list[str], chunk_rows: int) -> int:
    """Merges the parts `paths` into `target` (`np.save`'s bytes of the sorted union); the count."""
    with contextlib.ExitStack() as stack:
        sources, count = [], 0
        for path in paths:
            handle = stack.enter_context(
                FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
            )
            n = _read_header(handle, path)
            count += n
            sources.append(_chunks(handle, n, chunk_rows, path))
        written = 0
        with open_atomically(target) as out:
            out.write(_npy_header(count))
            for block in merged_chunks(sources):
                out.write(block.tobytes())
                written += len(block)
        if written != count:  # cannot happen unless a part changed under the merge
            raise UidsFileError(f"{target}: merged {written} uids of the parts' {count}")
    return count


def merge_parts(paths: list[str], target: str, chunk_rows: int = CHUNK_ROWS, fan_in: int = FAN_IN) -> int:
    """Merges sorted uid parts into `target`, streaming; returns the number of uids. More than
    `fan_in` parts are merged `fan_in` at a time into local temporary runs, then the runs."""
    if len(paths) <= fan_in:
        return _write_merged(target, paths, chunk_rows)
    with tempfile.TemporaryDirectory(prefix="winnow-uids-") as scratch:
        runs = []
        for start in range(0, len(paths), fan_in):
            run = os.path.join(scratch, f"run_{start // fan_in:06d}.npy")
            _write_merged(run, paths[start : start + fan_in], chunk_rows)
            runs.append(run)
        return merge_parts(runs, target, chunk_rows, fan_in)


def write_uids_file(output_dir: str, uids_file: str) -> dict[str, object]:
    """Merges the shards' parts of `output_dir` into `uids_file`; returns what stats.json records."""
    output_dir = output_dir.rstrip("/")
    path, inside = uids_path(output_dir, uids_file)
    parts = [f"{output_dir}/{part_name(stem)}" for stem in shard_stems(output_dir)]
    count = merge_parts(parts, path)
    if inside:
        record_files(output_dir, [uids_file])
    return {"path": path, "count": count}
