"""The `output` section: how shards are cut and written."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """The `output` section: how shards are cut and written."""

    #: Target samples per shard (kept and rejected together); the shard count follows from the total.
    samples_per_shard: int = 10_000
    #: Parquet codec for the metadata files.
    parquet_compression: Literal["snappy", "zstd", "gzip", "none"] = "zstd"
    #: Write a FAISS index of the kept samples' image embeddings to OUTPUT/index/ (with the embed stage).
    index: bool = True
    #: Memory budget of that index in GiB; it picks the index type (Flat, HNSW32 or IVF-PQ).
    index_memory_gb: float = 4.0
    #: Also write the kept samples' uids in DataComp's format (a sorted `.npy` of `u8,u8` pairs,
    #: the input of its `resharder.py`): a name inside the output folder, or an absolute path or
    #: URL that must not exist yet. null = not written.
    uids_file: str | None = None

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"output.samples_per_shard ({self.samples_per_shard}) must be >= 1")
        if not (self.index_memory_gb > 0 and math.isfinite(self.index_memory_gb)):
            raise ValueError(f"output.index_memory_gb ({self.index_memory_gb!r}) must be a number > 0")
        if self.uids_file is not None and not self.uids_file.endswith(".npy"):
            raise ValueError(f"output.uids_file ({self.uids_file!r}) must name a .npy file")
