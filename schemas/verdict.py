"""The record a deciding stage emits instead of a changed sample: `Verdict`.

The dedup and noise stages judge each sample against the whole run (its duplicate group, the
noise mixture), so each needs shuffles. They do not move the samples through them: each emits,
per sample it changed, the fields it set (never the image or the embeddings), keyed by uid, and
the samples meet their verdicts once, in the shard grouping (`transforms/common/verdicts.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: The steps that emit verdicts, in the order their verdicts are applied (the pipeline's order).
DEDUP, NOISE, CAPTION, BALANCE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What step `step` set on the sample `uid`: `changes`, (field, value) pairs.

    `candidate` names the test (`transforms.common.verdicts.CANDIDATES`) the copies of the uid the
    step judged passed: the verdict goes to the first such copy in `copy_order` that has none of
    this step yet (copies share url and caption; the writer rejects all but one as `duplicate_uid`).
    """

    uid: str
    step: int
    candidate: str
    changes: tuple[tuple[str, Any], ...]
