"""`balance.entries: auto`: metadata entries built from the run's own captions, offline.

MetaCLIP's list comes from Wikipedia and WordNet (unigrams seen at least 100 times, bigrams with a
high pointwise mutual information, titles). Without those at hand, the same two kinds are counted
over the captions the stage judges, per language:

- unigrams: words (letter runs; Chinese cut by jieba) in at least `auto_min_count` captions,
  stop words of the language (stopwords-iso) left out;
- bigrams: two adjacent words, neither a stop word, in at least `auto_min_count` captions, whose
  PMI, log2(N · c(ab) / (c(a) · c(b))) over the language's N captions, is at least `auto_min_pmi`.

Of those, each language keeps its `auto_max_entries` most frequent entries (caption count, ties by
entry). Words keep their case (matching is case-sensitive unless `balance.case_sensitive` is
false). The entries come out sorted by language and entry, so their ids are the same on every run.

Every step is keyed; nothing that grows with the captions meets on one worker:
1. `CountGrams`: one caption count per (language, gram), a combine (`(language, ())`: N).
2. A pair's PMI needs its words' counts. Each frequent pair is keyed once by each of its words and
   a salt (a hash of the pair, `_SALTS` values), so a common word's pairs spread over up to
   `_SALTS` keys; `CountAndSalts` (a combine holding at most `_SALTS` salts per word) sends the
   word's count to each salt its pairs use, `JoinWords` meets them: a key holds one count and the
   pairs of that word and salt, about deg(word) / `_SALTS` (deg ≤ 2 × the language's frequent
   words). `ByPair` regroups each pair's two word counts (two elements per key), and `Pmi` cuts
   with the languages' caption counts as a side input (one number per language). The words'
   counts are no side input: the words in `auto_min_count` captions grow with the captions.
3. `TopPerLanguage`: a combine holding at most `auto_max_entries` entries per language; the one
   list (at most that many per language) is then the stage's side input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import xxhash
from apache_beam.metrics import Metrics

from schemas.sample import Sample
from transforms.balance.config import BalanceConfig
from transforms.common.words import WORD, jieba, stop_words

#: Languages cut into words with jieba.
_SEGMENTED = ("zh",)
#: The salts a word's pairs are spread over in the PMI join (see the module docstring).
_SALTS = 4096
#: Elements per key of the two groupings of the PMI join (`tests/scale/test_scale_balance.py`).
_JOIN_ELEMENTS = Metrics.distribution("balance", "auto_join_elements")
_PAIR_ELEMENTS = Metrics.distribution("balance", "auto_pair_elements")

Gram = tuple[str, ...]
#: ((language, gram), caption count): `_counted`'s keys, counted.
Counted = tuple[tuple[str, Gram], int]


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


def _counted(view: Sample) -> Iterator[Counted]:
    lang = view.lang or ""
    text = view.caption_clean if view.caption_clean is not None else view.caption
    yield (lang, ()), 1  # the language's caption count
    for gram in caption_grams(text, lang):
        yield (lang, gram), 1


def entry_text(lang: str, gram: Gram) -> str:
    """A gram as an entry: its words joined by a space, or by nothing in a segmented language."""
    return ("" if lang in _SEGMENTED else " ").join(gram)


def pmi(total: int, both: int, first: int, second: int) -> float:
    """A pair's pointwise mutual information in bits, from caption counts: log2(N·c(ab) / (c(a)·c(b)))."""
    return math.log2(total * both / (first * second))


def _salt(pair: Gram) -> int:
    return xxhash.xxh3_64_intdigest("\x00".join(pair).encode()) % _SALTS


def _kind(element: Counted, kinds: int) -> int:
    """0: a language's caption count, 1: a word's, 2: a pair's."""
    return min(len(element[0][1]), kinds - 1)


def _word_side(element: Counted) -> tuple[tuple[str, str], tuple[int, tuple[int, ...]]]:
    (lang, (word,)), count = element
    return (lang, word), (count, ())


def _pair_ends(element: Counted) -> Iterator[tuple[tuple[str, str, int], tuple[int, Gram, int]]]:
    """A frequent pair keyed once by each of its words and its salt: (lang, word, salt) →
    (the word's position, the pair, the pair's count)."""
    (lang, pair), count = element
    salt = _salt(pair)
    for position, word in enumerate(pair):
        yield (lang, word, salt), (position, pair, count)


def _end_salt(end: tuple[tuple[str, str, int], Any]) -> tuple[tuple[str, str], tuple[int, tuple[int, ...]]]:
    """A pair end as the word's side of `_CountAndSalts`: (lang, word) → (0, (salt,))."""
    (lang, word, salt), _ = end
    return (lang, word), (0, (salt,))


class _CountAndSalts(beam.CombineFn):
    """A word's values, (its caption count, ()) and (0, (salt,)) per pair end holding it → (count,
    the sorted salts of its pairs). The accumulator holds at most `_SALTS` salts, however many
    pairs the word is in."""

    def create_accumulator(self) -> tuple[int, set[int]]:
        return 0, set()

    def add_input(
        self, found: tuple[int, set[int]], value: tuple[int, tuple[int, ...]]
    ) -> tuple[int, set[int]]:
        count, salts = found
        salts.update(value[1])
        return max(count, value[0]), salts

    def merge_accumulators(self, accumulators: Iterable[tuple[int, set[int]]]) -> tuple[int, set[int]]:
        count, salts = 0, set[int]()
        for found_count, found_salts in accumulators:
            count = max(count, found_count)
            salts.update(found_salts)
        return count, salts

    def extract_output(self, found: tuple[int, set[int]]) -> tuple[int, list[int]]:
        return found[0], sorted(found[1])


def _salted_counts(
    element: tuple[tuple[str, str], tuple[int, list[int]]],
) -> Iterator[tuple[tuple[str, str, int], int]]:
    """A frequent word's count, once per salt its pairs use: (lang, word, salt) → count."""
    (lang, word), (count, salts) = element
    if count:  # a word under `auto_min_count` gives its pairs no count (they are under it too)
        for salt in salts:
            yield (lang, word, salt), count


def _with_word_count(
    element: tuple[tuple[str, str, int], dict[str, Iterable[Any]]],
) -> Iterator[tuple[tuple[str, Gram], tuple[int, int, int]]]:
    """One (lang, word, salt) key: the word's count and the pair ends under it → per pair
    (lang, pair) → (the word's position, its count, the pair's count)."""
    (lang, _, _), joined = element
    counts, ends = list(joined["word"]), list(joined["pairs"])
    _JOIN_ELEMENTS.update(len(counts) + len(ends))
    for count in counts:
        for position, pair, both in ends:
            yield (lang, tuple(pair)), (position, count, both)


def _strong_pair(
    element: tuple[tuple[str, Gram], Iterable[tuple[int, int, int]]],
    totals: dict[str, int],
    min_pmi: float,
) -> Iterator[tuple[tuple[str, str], int]]:
    """A pair with both its words' counts → ((lang, entry), count) when its PMI is at least `min_pmi`."""
    (lang, pair), found = element
    ends = list(found)
    _PAIR_ELEMENTS.update(len(ends))
    words = {position: (count, both) for position, count, both in ends}
    if len(words) == 2:
        (first, both), (second, _) = words[0], words[1]
        if pmi(totals[lang], both, first, second) >= min_pmi:
            yield (lang, entry_text(lang, pair)), both


def _by_count(element: tuple[str, int]) -> tuple[int, str]:
    entry, count = element
    return -count, entry  # the least is the most frequent entry, ties by entry


def _sorted_entries(per_language: Iterable[tuple[str, list[tuple[str, int]]]]) -> list[tuple[str, str]]:
    return sorted((lang, entry) for lang, top in per_language for entry, _ in top)


class _StrongPairs(beam.PTransform):
    """(frequent pairs, frequent words, caption count per language) → ((lang, entry), count) of the
    pairs whose PMI reaches `min_pmi` (the module docstring's keyed join)."""

    def __init__(self, min_pmi: float):
        super().__init__()
        self._min_pmi = min_pmi

    def expand(self, parts: tuple[beam.PCollection, beam.PCollection, beam.PCollection]) -> beam.PCollection:
        pairs, words, totals = parts
        ends = pairs | "Ends" >> beam.FlatMap(_pair_ends)
        salts = ends | "EndSalts" >> beam.Map(_end_salt)
        counts = (
            (words | "WordSide" >> beam.Map(_word_side), salts)
            | "BothSides" >> beam.Flatten()
            | "CountAndSalts" >> beam.CombinePerKey(_CountAndSalts())
            | "SaltedCounts" >> beam.FlatMap(_salted_counts)
        )
        return (
            {"word": counts, "pairs": ends}
            | "JoinWords" >> beam.CoGroupByKey()
            | "WithWordCounts" >> beam.FlatMap(_with_word_count)
            | "ByPair" >> beam.GroupByKey()
            | "Pmi" >> beam.FlatMap(_strong_pair, totals=beam.pvalue.AsDict(totals), min_pmi=self._min_pmi)
        )


class SelectEntries(beam.PTransform):
    """((lang, gram), caption count) with `(lang, ())` the language's caption count (`_counted`'s
    keys, counted) → one element: the sorted (language, entry) list (the module docstring)."""

    def __init__(self, config: BalanceConfig):
        super().__init__()
        self._config = config

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        config = self._config
        totals, words, pairs = (
            counts
            | "Frequent" >> beam.Filter(lambda kv, n=config.auto_min_count: kv[1] >= n or not kv[0][1])
            | "ByKind" >> beam.Partition(_kind, 3)  # type: ignore[arg-type]
        )
        language_totals = totals | "Totals" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
        word_entries = words | "WordEntries" >> beam.Map(lambda kv: ((kv[0][0], kv[0][1][0]), kv[1]))
        pair_entries = (pairs, words, language_totals) | "StrongPairs" >> _StrongPairs(config.auto_min_pmi)
        return (
            (word_entries, pair_entries)
            | "Entries" >> beam.Flatten()
            | "OnePerEntry" >> beam.CombinePerKey(max)
            | "ByLanguage" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
            | "TopPerLanguage"
            >> beam.combiners.Top.PerKey(config.auto_max_entries, key=_by_count, reverse=True)
            | "AllLanguages" >> beam.combiners.ToList()
            | "Sorted" >> beam.Map(_sorted_entries)
        )


class AutoEntries(beam.PTransform):
    """Candidate views → one element: the run's sorted (language, entry) list (the module docstring)."""

    def __init__(self, config: BalanceConfig):
        super().__init__()
        self._config = config

    def expand(self, views: beam.PCollection) -> beam.PCollection:
        return (
            views
            | "Grams" >> beam.FlatMap(_counted)
            | "CountGrams" >> beam.CombinePerKey(sum)
            | "Select" >> SelectEntries(self._config)
        )
