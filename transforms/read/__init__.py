"""The read stage: URL lists, web archives, web pages and a previous run's output → rows.

- `lists.py`: `ReadUrlBatches` (Parquet, CSV, TSV, JSONL, text lists, WARC/WAT/ARC archives and
  page lists, on any Beam filesystem) and `DistinctPairs`; `rows.py` says what a record is in
  each text format.
- `harvest.py` / `charsets.py`: image/alt-text pairs from archived HTML, decoded as browsers do.
- `pages.py`: page mode, pages fetched with the crawl's fetcher and harvested.
- `previous.py`: `ReadPreviousOutput` and `KeepSettled` for `winnow run --retry-failed`.
- `config.py`: the `input` section.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.read.config import InputConfig

if TYPE_CHECKING:
    from transforms.read.lists import DistinctPairs, ReadUrlBatches
    from transforms.read.previous import KeepSettled, ReadPreviousOutput

__all__ = ["DistinctPairs", "InputConfig", "KeepSettled", "ReadPreviousOutput", "ReadUrlBatches"]

_LAZY = {
    "ReadUrlBatches": "lists",
    "DistinctPairs": "lists",
    "ReadPreviousOutput": "previous",
    "KeepSettled": "previous",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
