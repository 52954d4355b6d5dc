"""The write stage: deterministic Parquet + WebDataset shards, embedding files and the stats.

- `shards.py`: `WriteShards` and `WriteStats`.
- `config.py`: the `output` section.

The names of what an output folder holds are in `schemas/layout.py`.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.write.config import OutputConfig

if TYPE_CHECKING:
    from transforms.write.shards import WriteShards, WriteStats

__all__ = ["OutputConfig", "WriteShards", "WriteStats"]

__getattr__ = lazy_exports(__name__, {"WriteShards": "shards", "WriteStats": "shards"})
