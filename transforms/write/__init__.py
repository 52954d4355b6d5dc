"""The write stage: deterministic Parquet + WebDataset shards, embedding files and the stats.

- `shards.py`: `WriteShards` and `WriteStats`.
- `config.py`: the `output` section.

The names of what an output folder holds are in `schemas/layout.py`.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.write.config import OutputConfig

if TYPE_CHECKING:
    from transforms.write.shards import WriteShards, WriteStats

__all__ = ["OutputConfig", "WriteShards", "WriteStats"]

_LAZY = {"WriteShards": "shards", "WriteStats": "shards"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
