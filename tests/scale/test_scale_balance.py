"""`balance.entries: auto` with keyed steps: a caption pair's PMI from keyed joins on its words
(salted, so a common word is no hot key) and the top entries per language from a bounded combine.

The entries must be exactly those of the single-worker rule it replaces (`_old_entry_counts`: the
rule as it ran before, every frequent gram gathered on one worker, then the PMI cut) on real
captions, on one worker and two; and no key of the new graph may group more elements when the
captions grow ×10."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipeline.graph import gathers
from sampleweb.captions import LANGUAGES, boilerplate, describe
from sampleweb.scenes import random_scene
from schemas import Sample, make_uid
from tests.captions_multilingual import CAPTIONS
from transforms.balance.auto import AutoEntries, caption_grams
from transforms.balance.config import BalanceConfig

#: The gathers left, each of one element per language (`pipeline/graph.py`'s walk).
_BOUNDED_GATHERS = [
    ("AutoEntries/Select/AllLanguages", "ToList"),  # one list per language, ≤ auto_max_entries each
    ("AutoEntries/Select/StrongPairs/Pmi", "AsDict"),  # one caption count per language
]


def _old_entry_counts(views: Iterable[Sample], min_count: int, min_pmi: float) -> dict[tuple[str, str], int]:
    """The old rule (`select_entries` before the keyed join, copied): caption counts per
    (language, gram), the frequent ones gathered into one dict, then the PMI cut. Its entries are
    the keys, sorted; the value is the entry's caption count (the larger of a word's and a pair's
    that read the same, as Chinese ones can), which ranks the entries when a language has more
    than `auto_max_entries`."""
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for view in views:
        lang = view.lang or ""
        text = view.caption_clean if view.caption_clean is not None else view.caption
        counts[(lang, ())] += 1
        for gram in caption_grams(text, lang):
            counts[(lang, gram)] += 1
    by_lang: dict[str, dict[tuple[str, ...], int]] = {}
    for (lang, gram), n in counts.items():
        if n >= min_count or not gram:
            by_lang.setdefault(lang, {})[tuple(gram)] = n
    entries: dict[tuple[str, str], int] = {}
    for lang, grams in by_lang.items():
        total = grams.pop((), 0)
        joiner = "" if lang == "zh" else " "
        for gram, n in grams.items():
            if n < min_count:
                continue
            if len(gram) == 2:
                first, second = grams.get(gram[:1], 0), grams.get(gram[1:], 0)
                if not first or not second or math.log2(total * n / (first * second)) < min_pmi:
                    continue
            entry = (lang, joiner.join(gram))
            entries[entry] = max(entries.get(entry, 0), n)
    return entries


def _expected(views: list[Sample], config: BalanceConfig) -> list[tuple[str, str]]:
    """The old rule's sorted entries, cut to the `auto_max_entries` most frequent per language (ties
    by entry)."""
    counted = _old_entry_counts(views, config.auto_min_count, config.auto_min_pmi)
    kept = []
    for lang in sorted({lang for lang, _ in counted}):
        ranked = sorted((-n, entry) for (found, entry), n in counted.items() if found == lang)
        kept += [(lang, entry) for _, entry in ranked[: config.auto_max_entries]]
    return sorted(kept)


def _real_views(n: int, seed: int) -> list[Sample]:
    """`n` captions of the sample web's generator in its seven languages (one in ten boilerplate,
    a third without `caption_clean`), the hand-written captions of eight languages, and one
    caption without a language."""
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n):
        lang = LANGUAGES[i % len(LANGUAGES)]
        text = describe(random_scene(rng), lang, rng) if i % 10 else boilerplate(lang, rng)[0]
        clean = text if i % 3 else None
        views.append(
            Sample(
                uid=make_uid(f"http://x/{i}", text), url=None, caption=text, lang=lang, caption_clean=clean
            )
        )
    for lang, captions in CAPTIONS.items():
        views += [
            Sample(uid=make_uid(lang, t), url=None, caption=t, lang=lang, caption_clean=t) for t in captions
        ]
    views.append(Sample(uid="nolang", url=None, caption="red circle", lang=None))
    return views


def _auto_entries(views: list[Sample], config: BalanceConfig, workers: int = 1) -> list[int]:
    """Runs `AutoEntries` on `views` (the step named `Read`, so the gather walk sees them as the
    run's rows), asserts its one list is `_expected`'s; returns the elements per key of its two
    groupings (the largest)."""
    expected = _expected(views, config)
    options = PipelineOptions(direct_num_workers=workers, direct_running_mode="multi_threading")
    p = beam.Pipeline(runner=FnApiRunner(), options=options)
    found = p | "Read" >> beam.Create(views) | "AutoEntries" >> AutoEntries(config)
    assert_that(found, equal_to([expected]))
    assert [(g.step, g.kind) for g in gathers(p)] == _BOUNDED_GATHERS
    result = p.run()
    result.wait_until_finish()
    return [_distribution_max(result, name) for name in ("auto_join_elements", "auto_pair_elements")]


def _distribution_max(result: beam.runners.runner.PipelineResult, name: str) -> int:
    (found,) = result.metrics().query(MetricsFilter().with_name(name))["distributions"]
    return found.committed.max


def test_scale_item4_auto_entries_are_the_old_selection_on_real_captions():
    views = _real_views(1_500, seed=3)
    settings = [(3, 3.0), (5, 1.5)]
    for min_count, min_pmi in settings:
        config = BalanceConfig(entries="auto", auto_min_count=min_count, auto_min_pmi=min_pmi)
        expected = _expected(views, config)
        assert any(" " in entry for _, entry in expected)  # pairs pass the cut, words too
        assert {lang for lang, _ in expected} >= set(LANGUAGES)
        _auto_entries(views, config)
    # On two workers; and with a per-language limit that binds (ties at the cut broken by entry).
    config = BalanceConfig(entries="auto", auto_min_count=2, auto_min_pmi=0.0, auto_max_entries=25)
    assert len(_expected(views, config)) < len(_old_entry_counts(views, 2, 0.0))
    _auto_entries(views, config, workers=2)


def _hot_word_views(n: int) -> list[Sample]:
    """`n` English captions `photo <word> image`: a new made-up word every 3 captions, so the pairs
    holding `photo` (and `image`) grow with n, as a common word's do in real captions."""
    views = []
    for i in range(n):
        k, word = i // 3, "zq"
        while True:
            word, k = word + "bcdfghjklmnprstvwx"[k % 18], k // 18
            if not k:
                break
        text = f"photo {word} image"
        views.append(
            Sample(uid=make_uid(str(i), text), url=None, caption=text, lang="en", caption_clean=text)
        )
    return views


def test_scale_item4_auto_entries_have_no_hot_key_as_captions_grow_tenfold():
    config = BalanceConfig(entries="auto", auto_min_count=3, auto_min_pmi=0.0)
    small_views, large_views = _hot_word_views(600), _hot_word_views(6_000)
    # `photo` is in 200 frequent pairs, then 2,000: an unsalted join on the word would group
    # 201, then 2,001 elements under one key.
    pairs = [
        sum(entry.startswith("photo ") for _, entry in _expected(v, config))
        for v in (small_views, large_views)
    ]
    assert pairs == [200, 2_000]
    (small_join, small_pair), (large_join, large_pair) = (
        _auto_entries(small_views, config),
        _auto_entries(large_views, config),
    )
    assert small_pair == large_pair == 2  # a pair's two word counts
    # One word count and that word's pairs under one of 4,096 salts (a pair's salt is a hash of
    # it): a handful where one key would hold 2,001 (4 and 7 here).
    assert 2 <= small_join <= large_join <= 12
