"""`balance.entries: auto`: metadata entries built from the run's own captions, offline.

MetaCLIP's list comes from Wikipedia and WordNet (unigrams seen at least 100 times, bigrams with a
high pointwise mutual information, titles). Without those at hand, the same two kinds are counted
over the captions the stage judges, per language:

- unigrams: words (letter runs; Chinese cut by jieba) in at least `auto_min_count` captions,
  stop words of the language (stopwords-iso) left out;
- bigrams: two adjacent words, neither a stop word, in at least `auto_min_count` captions, whose
  PMI, log2(N · c(ab) / (c(a) · c(b))) over the language's N captions, is at least `auto_min_pmi`.

Words keep their case (matching is case-sensitive unless `balance.case_sensitive` is false). The
entries come out sorted by language and entry, so their ids are the same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import apache_beam as beam

from schemas.sample import Sample
from transforms.balance.config import BalanceConfig
from transforms.common.words import WORD, jieba, stop_words

#: Languages cut into words with jieba.
_SEGMENTED = ("zh",)


def tokens(text: str, lang: str) -> list[str]:
    """The words of a caption, in order, case kept."""
    if lang in _SEGMENTED:
        return [w for w in jieba().lcut(text) if WORD.fullmatch(w)]
    return WORD.findall(text)


def caption_grams(text: str | None, lang: str | None) -> set[tuple[str, ...]]:
    """The distinct unigrams `(a,)` and bigrams `(a, b)` of a caption, stop words left out."""
    if not text or not lang:
        return set()
    stops = stop_words(lang)
    shortest = 1 if lang in _SEGMENTED else 2
    content = [w if w.lower() not in stops and len(w) >= shortest else None for w in tokens(text, lang)]
    grams: set[tuple[str, ...]] = {(w,) for w in content if w}
    for first, second in zip(content, content[1:], strict=False):
        if first and second:
            grams.add((first, second))
    return grams


def _counted(view: Sample) -> Iterator[tuple[tuple[str, tuple[str, ...]], int]]:
    lang = view.lang or ""
    text = view.caption_clean if view.caption_clean is not None else view.caption
    yield (lang, ()), 1  # the language's caption count
    for gram in caption_grams(text, lang):
        yield (lang, gram), 1


def select_entries(
    counts: Iterable[tuple[tuple[str, tuple[str, ...]], int]], min_count: int, min_pmi: float
) -> list[tuple[str, str]]:
    """(language, entry) pairs from the caption counts of grams (`_counted`'s keys), sorted."""
    by_lang: dict[str, dict[tuple[str, ...], int]] = {}
    for (lang, gram), n in counts:
        by_lang.setdefault(lang, {})[tuple(gram)] = n
    entries = []
    for lang, grams in by_lang.items():
        total = grams.pop((), 0)
        joiner = "" if lang in _SEGMENTED else " "
        for gram, n in grams.items():
            if n < min_count:
                continue
            if len(gram) == 2:
                first, second = grams.get(gram[:1], 0), grams.get(gram[1:], 0)
                if not first or not second or math.log2(total * n / (first * second)) < min_pmi:
                    continue
            entries.append((lang, joiner.join(gram)))
    return sorted(set(entries))


class AutoEntries(beam.PTransform):
    """Candidate views → one element: the run's (language, entry) list (the module docstring)."""

    def __init__(self, config: BalanceConfig):
        super().__init__()
        self._config = config

    def expand(self, views: beam.PCollection) -> beam.PCollection:
        config = self._config
        return (
            views
            | "Grams" >> beam.FlatMap(_counted)
            | "CountGrams" >> beam.CombinePerKey(sum)
            | "Frequent" >> beam.Filter(lambda kv, n=config.auto_min_count: kv[1] >= n or not kv[0][1])
            | "AllFrequent" >> beam.combiners.ToList()
            | "Select" >> beam.Map(select_entries, config.auto_min_count, config.auto_min_pmi)
        )
