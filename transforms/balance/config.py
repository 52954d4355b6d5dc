"""The `balance` section: MetaCLIP's metadata balancing (entries, the threshold t, the draws)."""

from __future__ import annotations

import dataclasses

from transforms.common.checks import Check

#: `balance.entries` value that builds the entries from the run's captions.
AUTO = "auto"
#: MetaCLIP-400M's threshold (Xu et al., 2023); Meta CLIP 2 uses 170,000 for English at 2.5B pairs.
METACLIP_T = 20_000


@dataclasses.dataclass(frozen=True)
class BalanceConfig:
    """The `balance` section."""

    #: The metadata entries (local, s3://, gs://): MetaCLIP's `metadata.json` (a JSON list of
    #: strings, matched in every caption) or lines of `lang<TAB>entry` (an entry is matched only
    #: in captions of its language, as in Meta CLIP 2); or `auto`: built from the run's captions
    #: (`auto.py`). Required by the balance stage.
    entries: str | None = None
    #: An entry matched by more than t captions keeps each with probability t / count.
    t: int = METACLIP_T
    #: t for some languages (`{de: 40000}`); `auto` as a language's value derives it from the
    #: counts so that its tail share equals English's at `t` (Meta CLIP 2's rule). Others use `t`.
    t_per_language: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Match entries case-sensitively, as MetaCLIP does.
    case_sensitive: bool = True
    #: Seed of the draws (a caption's draw for an entry is a hash of seed, uid and entry).
    seed: int = 0
    #: At most this many matched entries are written per row (`matched_entries`); all are used.
    max_matched: int = 32
    #: `entries: auto`: a word or word pair must be in at least this many captions of its language.
    auto_min_count: int = 5
    #: `entries: auto`: a word pair's least pointwise mutual information, in bits.
    auto_min_pmi: float = 3.0
    #: `entries: auto`: each language keeps at most this many entries, its most frequent (MetaCLIP's
    #: list holds 500,000).
    auto_max_entries: int = 500_000

    def __post_init__(self) -> None:
        check = Check("balance", self)
        check.at_least(1, "t", "max_matched", "auto_min_count", "auto_max_entries")
        check.at_least(0.0, "auto_min_pmi")
        check.seed("seed")
        check.not_empty("entries")
        for lang, value in self.t_per_language.items():
            if value != "auto" and not (value.isdigit() and int(value) >= 1):
                raise ValueError(f"balance.t_per_language.{lang} ({value!r}) must be a count >= 1 or auto")
