"""The embed stage: CLIP image and text embeddings, the CLIP score and the decision on it.

- `stage.py`: `EmbedImages` and `DecideClipScore`.
- `clip.py`: the model (identity, loading, preprocessing, the `RunInference` handler).
- `models/`: the shipped model, `winnow-tiny-clip`.
- `config.py`: the `embed` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.embed.config import EmbedConfig

if TYPE_CHECKING:
    from transforms.embed.stage import DecideClipScore, EmbedImages

__all__ = ["DecideClipScore", "EmbedConfig", "EmbedImages"]

__getattr__ = lazy_exports(__name__, {"EmbedImages": "stage", "DecideClipScore": "stage"})
