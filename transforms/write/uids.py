"""The kept samples' uids in DataComp's format: the selection a DataComp tool reads.

DataComp's baselines save a selection as a sorted NumPy array of `u8,u8` pairs, the high and low
64 bits of each 32-hex-digit uid (`baselines/apply_filter.py`), which its `resharder.py` takes.
Winnow's uids have the same shape, and a pool's own uids are kept (`transforms/read/pool.py`), so
a selection from a DataComp pool names the pool's samples.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas.layout import shard_stems
from schemas.sample import Status
from transforms.common.files import write_atomically
from transforms.common.manifest import record_files

UID_DTYPE = np.dtype("u8,u8")


def uids_array(uids: list[str]) -> np.ndarray:
    """Sorted `u8,u8` pairs of 32-hex-digit uids."""
    pairs = np.array([(int(uid[:16], 16), int(uid[16:32], 16)) for uid in uids], UID_DTYPE)
    return np.sort(pairs)


def uids_path(output_dir: str, uids_file: str) -> tuple[str, bool]:
    """Where `output.uids_file` goes, and whether that is inside the output folder."""
    if "://" in uids_file or os.path.isabs(uids_file):
        return uids_file, False
    return f"{output_dir.rstrip('/')}/{uids_file}", True


def kept_uids(output_dir: str) -> list[str]:
    """The uids of the samples a finished output kept (status `success`), from its Parquet files."""
    uids: list[str] = []
    for stem in shard_stems(output_dir):
        path = f"{output_dir.rstrip('/')}/{stem}.parquet"
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(io.BytesIO(handle.read()), columns=["uid", "status"])
        uids += [
            u
            for u, s in zip(table["uid"].to_pylist(), table["status"].to_pylist(), strict=True)
            if s == Status.SUCCESS
        ]
    return uids


def write_uids_file(output_dir: str, uids_file: str) -> dict[str, object]:
    """Writes the kept uids of `output_dir` to `uids_file`; returns what stats.json records."""
    path, inside = uids_path(output_dir, uids_file)
    array = uids_array(kept_uids(output_dir))
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getvalue())
    if inside:
        record_files(output_dir, [uids_file])
    return {"path": path, "count": int(len(array))}
