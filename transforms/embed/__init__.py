"""The embed stage: CLIP image and text embeddings, the CLIP score and the decision on it.

- `stage.py`: `EmbedImages` and `DecideClipScore`.
- `clip.py`: the model (identity, loading, preprocessing, the `RunInference` handler).
- `models/`: the shipped model, `winnow-tiny-clip`.
- `config.py`: the `embed` section.

Importing the package gives the config at once and loads the transforms when first asked for,
so reading a config never imports Beam's model libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from transforms.embed.config import EmbedConfig

if TYPE_CHECKING:
    from transforms.embed.stage import DecideClipScore, EmbedImages

__all__ = ["DecideClipScore", "EmbedConfig", "EmbedImages"]

_LAZY = {"EmbedImages": "stage", "DecideClipScore": "stage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
