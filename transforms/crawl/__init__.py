"""The crawl stage: every pending sample's image fetched, decoded, resized and re-encoded.

- `stage.py`: `DownloadImages`.
- `fetch.py`: one image over HTTP(S), politely and safely; `robots.py` (robots.txt, tdmrep.json),
  `optouts.py` (X-Robots-Tag, TDMRep, Content-Usage), `politeness.py` (per-host throttle),
  `netguard.py` (SSRF guard), `watchdog.py` (slow-drip deadlines).
- `imaging.py`: decoding, resizing and encoding as img2dataset does.
- `config.py`: the `crawl` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.crawl.config import CrawlConfig

if TYPE_CHECKING:
    from transforms.crawl.stage import DownloadImages

__all__ = ["CrawlConfig", "DownloadImages"]

__getattr__ = lazy_exports(__name__, {"DownloadImages": "stage"})
