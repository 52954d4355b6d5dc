"""The text stage: captions cleaned, languages identified, pairs not worth fetching dropped.

- `stage.py`: `FilterText`.
- `normalize.py`: caption cleaning and URL facts; `langid.py` / `scripts.py`: fastText's lid.176
  with the writing system's evidence; `counts.py`: the run-wide counts (duplicate URLs,
  boilerplate captions, the vocabulary).
- `config.py`: the `text` section and the published presets.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.text.config import TextConfig

if TYPE_CHECKING:
    from transforms.text.stage import FilterText

__all__ = ["FilterText", "TextConfig"]

__getattr__ = lazy_exports(__name__, {"FilterText": "stage"})
