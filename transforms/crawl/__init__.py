"""The crawl stage: every pending sample's image fetched, decoded, resized and re-encoded.

- `stage.py`: `DownloadImages`.
- `fetch.py`: one image over HTTP(S), politely and safely; `robots.py` (robots.txt, tdmrep.json),
  `optouts.py` (X-Robots-Tag, TDMRep, Content-Usage), `politeness.py` (per-host throttle),
  `netguard.py` (SSRF guard), `watchdog.py` (slow-drip deadlines).
- `imaging.py`: decoding, resizing and encoding as img2dataset does.
- `config.py`: the `crawl` section.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.crawl.config import CrawlConfig

if TYPE_CHECKING:
    from transforms.crawl.stage import DownloadImages

__all__ = ["CrawlConfig", "DownloadImages"]

_LAZY = {"DownloadImages": "stage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
