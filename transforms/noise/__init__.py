"""The noise stage: how noisy each pair is, and its caption repaired rather than only dropped.

- `stage.py`: `JudgeCaptions` (samples → verdicts) and `RepairCaptions` (samples → samples).
- Signals: `mixture.py` (two-component fits), `neighbours.py` (cross-modal neighbour agreement).
- Concepts: `concepts.py` (vocabulary, zero-shot concepts, BoW captions, the precision guard),
  `classify.py` (an ImageNet classifier as the concept source for photographs).
- `config.py`: the `noise` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.noise.config import NoiseConfig

if TYPE_CHECKING:
    from transforms.noise.stage import JudgeCaptions, RepairCaptions

__all__ = ["NoiseConfig", "RepairCaptions", "JudgeCaptions"]

__getattr__ = lazy_exports(__name__, {"RepairCaptions": "stage", "JudgeCaptions": "stage"})
