"""The dedup stage: evaluation-set copies, exact, near and semantic duplicates removed.

- `stage.py`: `DeduplicateImages`, which fingerprints the candidates (`fingerprints.py`) and runs
  the levels in order on the survivors of the one before.
- The levels, each (uid, Fingerprint) → `Decision`s: `decontam.py`, `hashed.py` (exact and
  perceptual), `semantic.py` (SemDeDup; `cosine.py` holds its pure steps).
- `types.py`: what the stage and its levels share; `perceptual.py`: the hashes.
- `config.py`: the `dedup` section.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.dedup.config import DedupConfig

if TYPE_CHECKING:
    from transforms.dedup.stage import DeduplicateImages

__all__ = ["DedupConfig", "DeduplicateImages"]

_LAZY = {"DeduplicateImages": "stage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
