"""Balance stage: MetaCLIP's metadata curation, after dedup and noise, before the write.

In: light views of the samples still in the running (`success`, or `pending` when no stage
fetched them: `--stages text,balance`), with the verdicts of the stages before applied.
Out (`JudgeBalance`): one verdict per candidate (`schemas.verdict.BALANCE`) setting
`matched_entries` (the matched entry strings, at most `max_matched`) and `balance_prob`
(1 − ∏(1 − pₑ)), and rejecting it with `unmatched_caption` (no entry matched) or `balanced_out`
(every draw failed); and a summary for stats.json.

The steps (`matching.py`, `sampling.py`):
1. `Match`: each caption against its language's entries (one Aho-Corasick automaton per language,
   built once per worker process).
2. `CountEntries`: a combine over every candidate's matches into one count per entry (a numpy
   array of the entries' size, merged across workers).
3. `Probabilities`: p per entry from its count and its language's t, derived for `auto` languages;
   the array reaches every worker as one side input.
4. `Decide`: the seeded draws per caption, and the verdict.

With `balance.entries: auto` the entries are first built from the candidates' captions
(`auto.py`) and reach these steps as one side input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import xxhash
from apache_beam.utils.shared import Shared

from schemas.sample import Sample, Status
from schemas.verdict import BALANCE, Verdict
from transforms.balance.auto import AutoEntries
from transforms.balance.config import AUTO, BalanceConfig
from transforms.balance.entries import ANY, read_entries
from transforms.balance.matching import EntryMatcher
from transforms.balance.sampling import decide, entry_probabilities, tail_share, threshold_for_share
from transforms.common.outputs import WithSummary
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus
from transforms.common.verdicts import ApplyVerdicts, fields_verdict, light

STAGE = "balance"
UNMATCHED = "unmatched_caption"
BALANCED_OUT = "balanced_out"
#: The fields a balance verdict sets.
_FIELDS = ("matched_entries", "balance_prob", "status", "reason", "stage", "error")
#: Entry-count histogram bins: powers of two, [2^k, 2^(k+1)).
_BINS = 40
_HEAD = 20
KEPT_IDS = "kept_ids"


def candidate(sample: Sample) -> bool:
    """Whether the balance stage judges `sample`: kept so far, or not yet fetched."""
    return sample.status in (Status.SUCCESS, Status.PENDING)


class _Entries:
    """The run's entries and their automata, once per worker process (`Shared`)."""

    def __init__(self, entries: list[tuple[str, str]], case_sensitive: bool):
        self.entries = entries
        self.matcher = EntryMatcher(self.entries, case_sensitive)
        self.langs = np.array([lang for lang, _ in self.entries], dtype=object)


class _EntriesOf:
    """A step's view of the run's entries: those of the file `balance.entries`, or `built` (the
    `entries: auto` side input). The automaton is built once per process for each distinct list
    (`Shared`, tagged by a digest of it), and looked up again only when the side input's object
    changes, not per element: the digest of a 500,000-entry list costs milliseconds."""

    def __init__(self, config: BalanceConfig):
        self._config = config
        self._shared = Shared()
        self._built: list[tuple[str, str]] | None = None
        self._entries: _Entries | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_built": None, "_entries": None}

    def __call__(self, built: list[tuple[str, str]] | None = None) -> _Entries:
        if self._entries is None or built is not self._built:
            self._entries = self._acquire(built)
            self._built = built
        return self._entries

    def _acquire(self, built: list[tuple[str, str]] | None) -> _Entries:
        config = self._config
        if built is None:
            assert config.entries is not None
            return self._shared.acquire(
                lambda: _Entries(read_entries(str(config.entries)), config.case_sensitive)
            )
        digest = xxhash.xxh3_128_hexdigest(
            "\x00".join(f"{lang}\x01{entry}" for lang, entry in built).encode()
        )
        return self._shared.acquire(lambda: _Entries(built, config.case_sensitive), tag=digest)


class _MatchFn(beam.DoFn):
    def __init__(self, config: BalanceConfig):
        self._entries = _EntriesOf(config)

    def process(
        self, view: Sample, built: list[tuple[str, str]] | None = None
    ) -> Iterator[tuple[Sample, tuple[int, ...]]]:
        text = view.caption_clean if view.caption_clean is not None else view.caption
        matcher = self._entries(built).matcher
        yield view, tuple(matcher.match(text, view.lang))


class _CountEntries(beam.CombineFn):
    """Entry id tuples → int64 counts per entry, as long as the highest id seen needs (a per-entry
    count array, partial sums merged across workers: the combine Beam lifts before its shuffle)."""

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    def add_input(self, counts: np.ndarray, ids: tuple[int, ...]) -> np.ndarray:
        if ids:
            if ids[-1] >= len(counts):  # ids are sorted
                counts = np.concatenate(
                    [counts, np.zeros(max(ids[-1] + 1 - len(counts), len(counts)), np.int64)]
                )
            counts[list(ids)] += 1
        return counts

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        found = list(accumulators)
        total = np.zeros(max((len(c) for c in found), default=0), np.int64)
        for counts in found:
            total[: len(counts)] += counts
        return total

    def extract_output(self, counts: np.ndarray) -> np.ndarray:
        return counts


def _sized(counts: np.ndarray, size: int) -> np.ndarray:
    """`counts` as one count per entry: padded with zeros, or cut where the array grew past them."""
    if len(counts) >= size:
        return counts[:size]
    return np.concatenate([counts, np.zeros(size - len(counts), np.int64)])


def thresholds(config: BalanceConfig, langs: np.ndarray, counts: np.ndarray) -> dict[str, int]:
    """t per language of the entries: given, `auto` (Meta CLIP 2's rule), or `balance.t`."""
    found = {lang: config.t for lang in sorted(set(langs.tolist()))}
    for lang, value in config.t_per_language.items():
        if value != "auto":
            found[lang] = int(value)
    reference = "en" if "en" in found else ANY
    share = tail_share(counts[langs == reference], found.get(reference, config.t))
    for lang, value in config.t_per_language.items():
        if value == "auto" and lang in found:
            found[lang] = threshold_for_share(counts[langs == lang], share)
    return found


class _Probabilities:
    """counts → p per entry, with the t of each entry's language."""

    def __init__(self, config: BalanceConfig):
        self._config = config
        self._entries = _EntriesOf(config)

    def __call__(self, counts: np.ndarray, built: list[tuple[str, str]] | None = None) -> np.ndarray:
        langs = self._entries(built).langs
        counts = _sized(counts, len(langs))
        per_lang = thresholds(self._config, langs, counts)
        t = np.array([per_lang[lang] for lang in langs.tolist()], np.float64)
        return entry_probabilities(counts, t)


class _DecideFn(beam.DoFn):
    def __init__(self, config: BalanceConfig, progress_dir: str | None):
        self._config = config
        self._progress_dir = progress_dir
        self._entries = _EntriesOf(config)

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(
        self,
        element: tuple[Sample, tuple[int, ...]],
        probabilities: np.ndarray,
        built: list[tuple[str, str]] | None = None,
    ) -> Iterator[Verdict | beam.pvalue.TaggedOutput]:
        view, ids = element
        entries = self._entries(built).entries
        kept, prob = decide(self._config.seed, view.uid, ids, probabilities)
        matched = [entries[i][1] for i in ids[: self._config.max_matched]]
        judged = view.evolve(matched_entries=matched, balance_prob=prob)
        if not ids:
            judged = judged.evolve(
                status=Status.REJECTED, reason=UNMATCHED, stage=STAGE, error="no entry matched"
            )
        elif not kept:
            detail = f"no draw kept it: {len(ids)} matched entries, keep probability {prob:.4g}"
            judged = judged.evolve(status=Status.REJECTED, reason=BALANCED_OUT, stage=STAGE, error=detail)
        self._counter.add(kept=judged.status == view.status, reason=judged.reason)
        if judged.status == view.status:
            yield beam.pvalue.TaggedOutput(KEPT_IDS, ids)
        yield fields_verdict(judged, _FIELDS, BALANCE, "balanced")

    def finish_bundle(self) -> None:
        self._counter.flush()


def _log_bins(counts: np.ndarray) -> list[int]:
    """How many entries have a count in [2^k, 2^(k+1)), k = 0 … _BINS - 1 (zero counts left out)."""
    positive = counts[counts > 0]
    bins = np.minimum(np.floor(np.log2(positive)).astype(np.int64), _BINS - 1)
    return np.bincount(bins, minlength=_BINS).tolist()


class _Summary:
    """(counts before, counts of the kept) → the stage's section of stats.json."""

    def __init__(self, config: BalanceConfig):
        self._config = config
        self._entries = _EntriesOf(config)

    def __call__(
        self, before: np.ndarray, after: np.ndarray, built: list[tuple[str, str]] | None = None
    ) -> dict[str, Any]:
        entries = self._entries(built)
        before, after = _sized(before, len(entries.entries)), _sized(after, len(entries.entries))
        per_lang = thresholds(self._config, entries.langs, before)
        t = np.array([per_lang[lang] for lang in entries.langs.tolist()], np.int64)
        head = np.argsort(-before, kind="stable")[:_HEAD]
        return {
            "entries": len(entries.entries),
            "entries_matched": int((before > 0).sum()),
            "entries_over_t": int((before > t).sum()),
            "t": dict(sorted(per_lang.items())),
            "matches_before": int(before.sum()),
            "matches_after": int(after.sum()),
            "head": [
                {
                    "entry": entries.entries[i][1],
                    "lang": entries.entries[i][0],
                    "count": int(before[i]),
                    "kept": int(after[i]),
                }
                for i in head.tolist()
                if before[i] > 0
            ],  # fmt: skip
            "count_bins_before": _log_bins(before),
            "count_bins_after": _log_bins(after),
        }


class JudgeBalance(beam.PTransform):
    """Candidate views → `WithSummary(verdicts, summary)` (the module docstring's contract)."""

    def __init__(self, config: BalanceConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, views: beam.PCollection) -> WithSummary:
        config = self._config
        side: list[Any] = []  # `entries: auto`: the list built from the captions, as a side input
        if config.entries == AUTO:
            side = [beam.pvalue.AsSingleton(views | "AutoEntries" >> AutoEntries(config))]
        matched = views | "Match" >> beam.ParDo(_MatchFn(config), *side)
        counts = (
            matched
            | "Ids" >> beam.Map(lambda pair: pair[1])
            | "CountEntries" >> beam.CombineGlobally(_CountEntries())
        )
        probabilities = counts | "Probabilities" >> beam.Map(_Probabilities(config), *side)
        decide_fn = _DecideFn(config, self._progress_dir)
        decided = matched | "Decide" >> beam.ParDo(
            decide_fn, beam.pvalue.AsSingleton(probabilities), *side
        ).with_outputs(KEPT_IDS, main="verdicts")
        kept_counts = decided[KEPT_IDS] | "CountKept" >> beam.CombineGlobally(_CountEntries())
        summary = counts | "Summary" >> beam.Map(
            _Summary(config), beam.pvalue.AsSingleton(kept_counts), *side
        )
        return WithSummary(decided.verdicts, summary)


class BalanceConcepts(beam.PTransform):
    """The balance stage on its own: samples → the same samples with `JudgeBalance`'s verdicts
    applied by uid, and its summary. A full run applies the verdicts at the shard grouping."""

    def __init__(self, config: BalanceConfig, progress_dir: str | None = None):
        super().__init__()
        self._judge = JudgeBalance(config, progress_dir)

    def expand(self, samples: beam.PCollection) -> WithSummary:
        candidates, passing = samples | "Split" >> SplitByStatus(candidate)
        views = candidates | "Light" >> beam.Map(lambda s: light(s, embeddings=False))
        judged = views | "Judge" >> self._judge
        decided = candidates | "ApplyVerdicts" >> ApplyVerdicts(judged.rows)
        return WithSummary((decided, passing) | "Merge" >> beam.Flatten(), judged.summary)
