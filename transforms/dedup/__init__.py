"""The dedup stage: evaluation-set copies, exact, near and semantic duplicates removed.

- `stage.py`: `JudgeDuplicates` (samples → verdicts) and `DeduplicateImages` (samples →
  samples). The stage fingerprints the candidates (`fingerprints.py`) and runs
  the levels in order on the survivors of the one before.
- The levels, each (uid, Fingerprint) → `Decision`s: `decontam.py`, `hashed.py` (exact and
  perceptual), `semantic.py` (SemDeDup; `cosine.py` holds its pure steps).
- `types.py`: what the stage and its levels share; `perceptual.py`: the hashes.
- `config.py`: the `dedup` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.dedup.config import DedupConfig

if TYPE_CHECKING:
    from transforms.dedup.stage import DeduplicateImages, JudgeDuplicates

__all__ = ["DedupConfig", "DeduplicateImages", "JudgeDuplicates"]

__getattr__ = lazy_exports(__name__, {"DeduplicateImages": "stage", "JudgeDuplicates": "stage"})
