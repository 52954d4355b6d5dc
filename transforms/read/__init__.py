"""The read stage: URL lists, web archives, web pages and a previous run's output → rows.

- `lists.py`: `ReadUrlBatches` (Parquet, CSV, TSV, JSONL, text lists, WARC/WAT/ARC archives and
  page lists, on any Beam filesystem) and `DistinctPairs`; `rows.py` says what a record is in
  each text format.
- `harvest.py` / `charsets.py`: image/alt-text pairs from archived HTML, decoded as browsers do.
- `pages.py`: page mode, pages fetched with the crawl's fetcher and harvested.
- `previous.py`: `ReadPreviousOutput` and `KeepSettled` for `winnow run --retry-failed`.
- `config.py`: the `input` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.read.config import InputConfig

if TYPE_CHECKING:
    from transforms.read.lists import DistinctPairs, ReadUrlBatches
    from transforms.read.previous import KeepSettled, ReadPreviousOutput

__all__ = ["DistinctPairs", "InputConfig", "KeepSettled", "ReadPreviousOutput", "ReadUrlBatches"]

__getattr__ = lazy_exports(
    __name__,
    {
        "ReadUrlBatches": "lists",
        "DistinctPairs": "lists",
        "ReadPreviousOutput": "previous",
        "KeepSettled": "previous",
    },
)
