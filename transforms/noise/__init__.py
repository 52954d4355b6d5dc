"""The noise stage: how noisy each pair is, and its caption repaired rather than only dropped.

- `stage.py`: `RepairCaptions`.
- Signals: `mixture.py` (two-component fits), `neighbours.py` (cross-modal neighbour agreement).
- Concepts: `concepts.py` (vocabulary, zero-shot concepts, BoW captions, the precision guard),
  `classify.py` (an ImageNet classifier as the concept source for photographs).
- `config.py`: the `noise` section.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.noise.config import NoiseConfig

if TYPE_CHECKING:
    from transforms.noise.stage import RepairCaptions

__all__ = ["NoiseConfig", "RepairCaptions"]

_LAZY = {"RepairCaptions": "stage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
