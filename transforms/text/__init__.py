"""The text stage: captions cleaned, languages identified, pairs not worth fetching dropped.

- `stage.py`: `FilterText`.
- `normalize.py`: caption cleaning and URL facts; `langid.py` / `scripts.py`: fastText's lid.176
  with the writing system's evidence; `counts.py`: the run-wide counts (duplicate URLs,
  boilerplate captions, the vocabulary).
- `config.py`: the `text` section and the published presets.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.text.config import TextConfig

if TYPE_CHECKING:
    from transforms.text.stage import FilterText

__all__ = ["FilterText", "TextConfig"]

_LAZY = {"FilterText": "stage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
