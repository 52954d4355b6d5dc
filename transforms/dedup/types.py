"""What the dedup levels share: the config, a candidate's fingerprint, a removal decision, reasons.

The stage (`transforms/dedup/stage.py`) makes the fingerprints and applies the decisions; each
level (`exact`/`near` in `hashed.py`, `semantic.py`, `decontam.py`) turns fingerprints into
decisions. Both sides import these types from here, so no level imports the stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from transforms.common.unionfind import Link, resolve_links

EXACT, NEAR, SEMANTIC, EVAL = "exact_duplicate", "near_duplicate", "semantic_duplicate", "eval_contamination"
#: The least PDQ quality whose hash is compared: ThreatExchange discards hashes of quality <= 49
#: (flat or nearly flat images, whose 256 bits are mostly noise).
MIN_HASH_QUALITY = 50


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the dedup levels know of one candidate sample."""

    uid: str
    sha256: str | None
    pixels: str
    #: The perceptual hash (`dedup.hash`) as an unsigned int of `DedupConfig.hash_bits` bits: 64
    #: for dHash/pHash, 256 for PDQ (most significant bit first, as the hash's hex form).
    hash64: int
    signature: bytes
    area: int
    clip_score: float | None
    embedding: Any = None  # float16 (d,) or None
    #: PDQ's quality (0-100) of `hash64`; None for the hashes without one (dHash, pHash).
    hash_quality: int | None = None

    @property
    def rank(self) -> tuple[float, float]:
        """Sorts the copy an exact or perceptual group keeps first (before the uid tie-break)."""
        score = self.clip_score
        return (-float(self.area), math.inf if score is None or math.isnan(score) else -score)


def comparable(found: Fingerprint) -> bool:
    """Whether the hash levels (near duplicates, decontamination by hash) compare `found`'s hash:
    always for dHash/pHash, for PDQ only at quality >= `MIN_HASH_QUALITY`. A sample whose hash is
    not compared still goes through the exact and semantic levels (and decontamination by
    embedding)."""
    return found.hash_quality is None or found.hash_quality >= MIN_HASH_QUALITY


@dataclasses.dataclass(frozen=True)
class Decision:
    """A removed sample: why, which sample (or eval image) it duplicates, and the evidence."""

    uid: str
    reason: str
    duplicate_of: str
    detail: str


def link_decisions(links: Iterable[Link], reason: str, where: str = "") -> list[Decision]:
    """The decisions of one level from its links: each connected group keeps its lowest (rank, uid)."""
    return [Decision(r.removed, reason, r.kept, r.detail) for r in resolve_links(links, where)]
