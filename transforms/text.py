"""Text stage: caption cleaning, URL hygiene, fastText language ID and caption rules, before any fetch.

In: `Sample`s from the reader. Out: the same samples with `caption_clean`, `num_tokens`, `lang`
and `lang_score` set; those that break a rule get status `rejected`, stage `text` and one reason,
checked in this order (the first that applies is recorded):

| reason | rule |
|---|---|
| `scheme_not_allowed`, `domain_blocked`, `extension_blocked` | URL hygiene keys |
| `caption_not_text` | the caption is binary data or a broken decoding |
| `duplicate_url` | another row has the same canonical URL (the one with the smallest uid is kept) |
| `empty_caption` | no caption while a length rule is active |
| `boilerplate_caption` | the caption is shared by more than `boilerplate_max_urls` distinct URLs |
| `too_few_words`, `too_many_words`, `too_short` | `min_words`, `max_words`, `min_chars` |
| `lang_not_allowed`, `low_lang_score` | `languages`, `min_lang_score` |

Rejected samples are never fetched: the crawl stage passes them through untouched.
Boilerplate captions are counted over the whole dataset with a combiner (hot keys fanned out);
only the small set of frequent captions reaches the rules, as a side input.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.utils.shared import Shared

from schemas.sample import Sample, Status
from transforms.langid import LanguageIdentifier
from transforms.progress import StageCounter
from transforms.textnorm import (
    canonical_url,
    count_tokens,
    domain_matches,
    looks_binary,
    normalize_caption,
    url_extension,
)

STAGE = "text"
_RULE_KEYS = ("languages", "min_lang_score", "min_words", "max_words", "min_chars", "boilerplate_max_urls")
Preset = Literal["none", "datacomp_basic", "align", "laion"]

#: Published recipes. Keys set in the config override these.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # DataComp "basic filtering" (Gadre et al., 2023): English by fastText, > 2 words, > 5 characters.
    "datacomp_basic": {"languages": ("en",), "min_words": 3, "min_chars": 6},
    # ALIGN (Jia et al., 2021, §3): 3–20 unigrams; alt-text shared by more than 10 images dropped.
    "align": {"min_words": 3, "max_words": 20, "boilerplate_max_urls": 10},
    # LAION-400M/5B: captions shorter than 5 characters dropped.
    "laion": {"min_chars": 5},
}


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The `text` section. Rule keys left unset (null) take the preset's value; 0 turns a rule off."""

    #: Named recipe: none, datacomp_basic, align, laion.
    preset: Preset = "none"
    #: Allowed caption languages (fastText codes, e.g. [en] or [en, fr, zh]); empty = any.
    languages: tuple[str, ...] | None = None
    #: Minimum fastText probability of the top language.
    min_lang_score: float | None = None
    #: Minimum / maximum tokens (words; characters for Chinese, Japanese, Korean).
    min_words: int | None = None
    max_words: int | None = None
    #: Minimum characters of the cleaned caption.
    min_chars: int | None = None
    #: Captions shared by more than this many distinct URLs are boilerplate.
    boilerplate_max_urls: int | None = None
    #: Cleaned captions are cut at this many characters (the raw caption is kept).
    max_caption_chars: int = 1000
    #: Collapse rows with the same canonical URL to one.
    dedupe_urls: bool = True
    #: URL schemes that may be fetched.
    allowed_schemes: tuple[str, ...] = ("http", "https")
    #: Domains (and their subdomains) never fetched.
    blocked_domains: tuple[str, ...] = ()
    #: File extensions (without dot) never fetched, e.g. [svg, ico].
    blocked_extensions: tuple[str, ...] = ()
    #: fastText language-ID model (local, s3://, gs://); empty = the bundled lid.176.ftz.
    lid_model: str = ""
    #: Captions per fastText predict call.
    lid_batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.max_caption_chars < 1 or self.lid_batch_size < 1:
            raise ValueError("text.max_caption_chars and text.lid_batch_size must be >= 1")

    def rules(self) -> Rules:
        """The effective rules: the preset, overridden by every key that is set."""
        merged = dict(PRESETS[self.preset])
        for name in (
            "languages",
            "min_lang_score",
            "min_words",
            "max_words",
            "min_chars",
            "boilerplate_max_urls",
        ):
            value = getattr(self, name)
            if value is not None:
                merged[name] = value
        return Rules(
            languages=frozenset(merged.get("languages") or ()),
            min_lang_score=float(merged.get("min_lang_score") or 0.0),
            min_words=int(merged.get("min_words") or 0),
            max_words=int(merged.get("max_words") or 0),
            min_chars=int(merged.get("min_chars") or 0),
            boilerplate_max_urls=int(merged.get("boilerplate_max_urls") or 0),
            max_caption_chars=self.max_caption_chars,
            dedupe_urls=self.dedupe_urls,
            allowed_schemes=frozenset(s.lower() for s in self.allowed_schemes),
            blocked_domains=frozenset(d.lower().strip(".") for d in self.blocked_domains),
            blocked_extensions=frozenset(e.lower().lstrip(".") for e in self.blocked_extensions),
        )


@dataclasses.dataclass(frozen=True)
class Rules:
    """Resolved rules; 0 or empty means off."""

    languages: frozenset[str]
    min_lang_score: float
    min_words: int
    max_words: int
    min_chars: int
    boilerplate_max_urls: int
    max_caption_chars: int
    dedupe_urls: bool
    allowed_schemes: frozenset[str]
    blocked_domains: frozenset[str]
    blocked_extensions: frozenset[str]


def caption_key(caption: str) -> str:
    """What counts as 'the same caption' for the boilerplate rule."""
    return caption.casefold()


def prepare(sample: Sample, rules: Rules) -> Sample:
    """Cleans the caption and applies the URL hygiene rules (pure)."""
    clean = normalize_caption(sample.caption or "", rules.max_caption_chars)
    sample = sample.evolve(caption_clean=clean, num_tokens=count_tokens(clean))
    if sample.status != Status.PENDING or sample.url is None:
        return sample
    reason = _url_reason(sample.url, rules)
    return sample.decided(Status.REJECTED, reason, STAGE, sample.url[:200]) if reason else sample


def _url_reason(url: str, rules: Rules) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "scheme_not_allowed"
    if parts.scheme.lower() not in rules.allowed_schemes:
        return "scheme_not_allowed"
    if rules.blocked_domains and domain_matches(parts.hostname or "", rules.blocked_domains):
        return "domain_blocked"
    if rules.blocked_extensions and url_extension(url) in rules.blocked_extensions:
        return "extension_blocked"
    return None


def caption_reason(
    sample: Sample, rules: Rules, duplicate_of: dict[str, str], frequent: frozenset[str]
) -> str | None:
    """The first caption rule `sample` breaks, in the documented order, or None (pure)."""
    raw, clean = sample.caption or "", sample.caption_clean or ""
    if looks_binary(raw):
        return "caption_not_text"
    if rules.dedupe_urls and duplicate_of and sample.url is not None:
        winner = duplicate_of.get(canonical_url(sample.url) or sample.url)
        if winner is not None and winner != sample.uid:
            return "duplicate_url"
    if not clean and (rules.min_words or rules.min_chars or rules.languages):
        return "empty_caption"
    if rules.boilerplate_max_urls and caption_key(clean) in frequent:
        return "boilerplate_caption"
    tokens = sample.num_tokens or 0
    if rules.min_words and tokens < rules.min_words:
        return "too_few_words"
    if rules.max_words and tokens > rules.max_words:
        return "too_many_words"
    if rules.min_chars and len(clean) < rules.min_chars:
        return "too_short"
    if rules.languages and sample.lang not in rules.languages:
        return "lang_not_allowed"
    if rules.min_lang_score and (sample.lang_score or 0.0) < rules.min_lang_score:
        return "low_lang_score"
    return None


class _CappedDistinct(beam.CombineFn):
    """Counts distinct values up to `cap` (enough to decide 'more than N'), in bounded memory."""

    def __init__(self, cap: int):
        self._cap = cap

    def create_accumulator(self) -> set[bytes]:
        return set()

    def add_input(self, acc: set[bytes], value: bytes) -> set[bytes]:
        if len(acc) < self._cap:
            acc.add(value)
        return acc

    def merge_accumulators(self, accs: Iterable[set[bytes]]) -> set[bytes]:
        merged: set[bytes] = set()
        for acc in accs:
            for value in acc:
                if len(merged) >= self._cap:
                    return merged
                merged.add(value)
        return merged

    def extract_output(self, acc: set[bytes]) -> int:
        return len(acc)


class _FrequentCaptions(beam.PTransform):
    """Captions shared by more than `max_urls` distinct URLs (a small collection)."""

    def __init__(self, max_urls: int, fanout: int = 16):
        super().__init__()
        self._max_urls = max_urls
        self._fanout = fanout

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        max_urls = self._max_urls
        return (
            samples
            | "Pending"
            >> beam.Filter(lambda s: s.status == Status.PENDING and bool(s.caption_clean) and s.url)
            | "CaptionUrl"
            >> beam.Map(
                lambda s: (
                    caption_key(s.caption_clean),
                    hashlib.blake2b(s.url.encode(), digest_size=8).digest(),
                )
            )
            | "DistinctUrls"
            >> beam.CombinePerKey(_CappedDistinct(max_urls + 1)).with_hot_key_fanout(self._fanout)
            | "MoreThanN" >> beam.Filter(lambda kv: kv[1] > max_urls)
            | "Captions" >> beam.Keys()
        )


def _url_hash(url: str) -> bytes:
    return hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class _DuplicateUrls(beam.PTransform):
    """(canonical url, uid kept) for every URL that more than one row names."""

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return (
            samples
            | "WithUrl" >> beam.Filter(lambda s: s.status == Status.PENDING and s.url is not None)
            | "UrlUid" >> beam.Map(lambda s: (canonical_url(s.url) or s.url, (1, s.uid)))
            | "CountAndFirst" >> beam.CombinePerKey(_reduce_pairs)
            | "Repeated" >> beam.Filter(lambda kv: kv[1][0] > 1)
            | "Winner" >> beam.MapTuple(lambda url, count_uid: (url, count_uid[1]))
        )


def _reduce_pairs(pairs: Iterable[tuple[int, str]]) -> tuple[int, str]:
    total, first = 0, None
    for count, uid in pairs:
        total += count
        first = uid if first is None or uid < first else first
    return total, first or ""


class _JudgeFn(beam.DoFn):
    """Identifies languages for a batch with fastText, then applies the caption rules."""

    def __init__(self, config: TextConfig, progress_dir: str | None):
        self._config = config
        self._rules = config.rules()
        self._progress_dir = progress_dir
        self._shared = Shared()

    def setup(self) -> None:
        path = self._config.lid_model or None
        self._model = self._shared.acquire(lambda: LanguageIdentifier(path))
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(
        self, batch: list[Sample], duplicate_of: dict[str, str], frequent: Iterable[str]
    ) -> Iterator[Sample]:
        frequent_set = frozenset(frequent)
        languages = self._model.predict([s.caption_clean or "" for s in batch])
        for sample, (lang, score) in zip(batch, languages, strict=True):
            sample = sample.evolve(lang=lang if sample.caption_clean else None, lang_score=score)
            if sample.status == Status.PENDING:
                reason = caption_reason(sample, self._rules, duplicate_of, frequent_set)
                if reason:
                    sample = sample.decided(Status.REJECTED, reason, STAGE, f"text rule: {reason}")
                self._counter.add(kept=reason is None, reason=reason)
            else:
                self._counter.add_passed()
            yield sample

    def finish_bundle(self) -> None:
        self._counter.flush()


class FilterText(beam.PTransform):
    """Cleans captions, identifies their language and rejects pairs not worth fetching."""

    def __init__(self, config: TextConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        rules = self._config.rules()
        prepared = samples | "Prepare" >> beam.Map(prepare, rules)
        duplicates = prepared | "DuplicateUrls" >> _DuplicateUrls()
        if rules.boilerplate_max_urls:
            frequent = prepared | "FrequentCaptions" >> _FrequentCaptions(rules.boilerplate_max_urls)
        else:
            frequent = samples.pipeline | "NoFrequentCaptions" >> beam.Create([])
        return (
            prepared
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=self._config.lid_batch_size)
            | "Judge"
            >> beam.ParDo(
                _JudgeFn(self._config, self._progress_dir),
                duplicate_of=beam.pvalue.AsDict(duplicates),
                frequent=beam.pvalue.AsList(frequent),
            )
        )
