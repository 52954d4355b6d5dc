"""The balance stage: MetaCLIP's metadata curation (Meta CLIP 2's per-language thresholds).

- `stage.py`: `JudgeBalance` (views → verdicts) and `BalanceConcepts` (samples → samples).
- `matching.py`: MetaCLIP's substring matching with one Aho-Corasick automaton per language.
- `sampling.py`: the keep probability of each entry and the seeded draws per caption.
- `entries.py`: the entries file (`metadata.json`, or `lang<TAB>entry` lines).
- `config.py`: the `balance` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.balance.config import BalanceConfig
from transforms.common.exports import lazy_exports

if TYPE_CHECKING:
    from transforms.balance.stage import BalanceConcepts, JudgeBalance

__all__ = ["BalanceConcepts", "BalanceConfig", "JudgeBalance"]

__getattr__ = lazy_exports(__name__, {"BalanceConcepts": "stage", "JudgeBalance": "stage"})
