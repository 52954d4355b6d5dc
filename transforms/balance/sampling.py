"""MetaCLIP's balancing: each entry's keep probability from its count, and the draws per caption.

An entry matched by c captions keeps each with probability p = t / c when c > t, else 1
(`metaclip/balancing.py`: `entry_count[entry_count < t] = t; entry_prob = t / entry_count`). A
caption is kept when the draw of any of its matched entries succeeds, so with probability
1 − ∏(1 − pₑ); a caption that matches no entry is not kept. MetaCLIP draws with `random.random()`;
Winnow's draw for (caption, entry) is a hash of the run's seed, the caption's uid and the entry id,
so the kept set is the same on every run, runner and worker count.

Meta CLIP 2 balances each language with its own t. `threshold_for_share` derives it: the t at which
the share of a language's matches that fall in entries with fewer than t matches (its "tail")
equals the share English keeps at its own t (`tail_share`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

_SCALE = float(2**64)


def entry_probabilities(counts: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """float64 p per entry: t / c where c > t, else 1 (an entry nobody matched keeps 1)."""
    counts = np.asarray(counts, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > thresholds, thresholds / np.maximum(counts, 1.0), 1.0)


def draw(seed: int, uid: str, entry_id: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, uid, entry_id)."""
    return xxhash.xxh3_64_intdigest(f"{uid}:{entry_id}".encode(), seed=seed) / _SCALE


def decide(seed: int, uid: str, entry_ids: Sequence[int], probabilities: np.ndarray) -> tuple[bool, float]:
    """(kept, probability of being kept) of a caption matching `entry_ids`."""
    if not entry_ids:
        return False, 0.0
    p = probabilities[list(entry_ids)]
    kept = any(draw(seed, uid, e) < pe for e, pe in zip(entry_ids, p.tolist(), strict=True))
    return kept, float(1.0 - np.prod(1.0 - p))


def tail_share(counts: np.ndarray, t: float) -> float:
    """The share of all matches that fall in entries matched fewer than `t` times."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total else 1.0


def threshold_for_share(counts: np.ndarray, share: float) -> int:
    """The smallest t whose `tail_share` reaches `share` (Meta CLIP 2's per-language t)."""
    values = np.sort(np.asarray(counts, np.float64)[np.asarray(counts) > 0])
    if not len(values):
        return 1
    if share <= 0:  # no tail to match: below the rarest entry, every matched entry is over t
        return max(1, int(values[0]))
    cumulative = np.cumsum(values) / values.sum()
    # tail_share(t) for t just above values[i] is cumulative[i] (entries equal to values[i] included).
    index = int(np.searchsorted(cumulative, share - 1e-12, side="left"))
    if index >= len(values):
        return int(values[-1]) + 1
    return int(values[index]) + 1
