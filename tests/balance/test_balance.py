"""MetaCLIP's balancing: the matching semantics on tricky captions, the sampling rule against its
expectation on a skewed pool of 200,000 captions, and the stage in real Beam runs (the same kept
set on every run and worker count, and the same as the rule applied directly)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.jobs import run_job
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.balance.entries import EntriesError, parse_entries
from transforms.balance.matching import EntryMatcher, spacing
from transforms.balance.sampling import (
    decide,
    draw,
    entry_probabilities,
    tail_share,
    threshold_for_share,
)


def _match(entries: list[str], text: str, lang: str = "en", case_sensitive: bool = True) -> list[str]:
    matcher = EntryMatcher([("*", e) for e in entries], case_sensitive)
    return [entries[i] for i in matcher.match(text, lang)]


def test_spacing_is_metaclips():
    assert spacing("a cat,the dog.") == " a cat , the dog .  "
    assert spacing("tab\there\nnew\rline") == " tab here new line "


@pytest.mark.parametrize(
    ("entries", "text", "expected"),
    [
        (["cat"], "a cat.", ["cat"]),  # punctuation wrapped in spaces
        (["cat"], "a category of cats", []),  # an entry inside a longer word never matches
        (["cat"], "Cat on a mat", []),  # case-sensitive, as MetaCLIP
        (["hot dog", "dog"], "a hot dog, please", ["hot dog", "dog"]),  # multi-word and its parts
        (["hot dog"], "a hot  dog", []),  # two spaces are not one
        (["New York"], "New York!Skyline", ["New York"]),
        (["C++"], "I write C++!", ["C++"]),  # punctuation ends an entry without a space
        (["U.S."], "made in the U.S.", []),  # the caption's dots are spaced, the entry's are not
        (["cat", "cat"], "one cat", ["cat", "cat"]),  # an entry listed twice matches twice
        (["猫"], "一只猫在睡觉", ["猫"]),  # CJK: no spaces needed around the entry
        (["小猫"], "这是小猫。", ["小猫"]),
        (["cat"], "a\tcat\nsleeping", ["cat"]),
    ],
)
def test_matching_semantics(entries, text, expected):
    assert _match(entries, text) == expected


def test_case_insensitive_option_and_languages():
    assert _match(["Cat"], "a CAT here", case_sensitive=False) == ["Cat"]
    matcher = EntryMatcher([("en", "cat"), ("de", "Katze"), ("*", "photo")])
    assert matcher.match("a cat photo", "en") == [0, 2]
    assert matcher.match("eine Katze photo", "de") == [1, 2]
    assert matcher.match("eine Katze", "en") == []  # the German entry only in German captions


def test_entries_files():
    assert parse_entries('["cat", "hot dog"]', "m.json") == [("*", "cat"), ("*", "hot dog")]
    assert parse_entries("# comment\nen\tcat\nzh\t猫\n", "e.tsv") == [("en", "cat"), ("zh", "猫")]
    with pytest.raises(EntriesError, match=r"e.tsv:2: expected `lang<TAB>entry`"):
        parse_entries("en\tcat\njust a line\n", "e.tsv")
    with pytest.raises(EntriesError, match="entry 1 is not a non-empty string"):
        parse_entries('["cat", ""]', "m.json")


def test_probabilities_draws_and_the_language_threshold():
    p = entry_probabilities(np.array([0, 5, 20, 80]), np.array([20, 20, 20, 20]))
    assert p.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert draw(0, "u", 1) == draw(0, "u", 1) != draw(1, "u", 1)
    assert decide(0, "u", [], p) == (False, 0.0)
    kept, prob = decide(0, "u", [1, 3], p)
    assert kept and prob == 1.0
    assert decide(0, "u", [3, 3], p)[1] == pytest.approx(1 - 0.75**2)
    counts = np.array([1, 2, 3, 10, 50, 100])
    for share in (0.01, 0.05, 0.1, 0.5, 0.99):
        t = threshold_for_share(counts, share)
        assert tail_share(counts, t) >= share and tail_share(counts, t - 1) < share


def test_kept_counts_follow_the_rule_on_a_skewed_pool():
    """200,000 captions matching 1-3 of 5,000 entries drawn from a Zipf law; t leaves a few
    hundred entries over it. Each entry's kept count is within 4 standard deviations of its
    expectation (captions are drawn independently), tail entries keep every caption, and an entry
    matched alone keeps about min(c, t)."""
    rng = np.random.default_rng(0)
    n_entries, n_captions, t = 5_000, 200_000, 150
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    entries = [f"w{i}" for i in range(n_entries)]
    sizes = rng.integers(1, 4, n_captions)
    sizes[: n_captions // 4] = 1  # a quarter match one entry alone
    picks = rng.choice(n_entries, size=int(sizes.sum()), p=weights)
    matcher = EntryMatcher([("*", e) for e in entries])
    captions, start = [], 0
    for size in sizes:
        captions.append("a photo of " + " and ".join(entries[i] for i in picks[start : start + size]))
        start += size
    matched = [matcher.match(text, "en") for text in captions]
    counts = np.zeros(n_entries, np.int64)
    for ids in matched:
        counts[ids] += 1
    over = int((counts > t).sum())
    assert 100 <= over <= 1_000, over
    p = entry_probabilities(counts, np.full(n_entries, t))
    kept = np.zeros(n_entries, np.int64)
    expected = np.zeros(n_entries)
    variance = np.zeros(n_entries)
    alone_kept = np.zeros(n_entries, np.int64)
    alone = np.zeros(n_entries, np.int64)
    for i, ids in enumerate(matched):
        ok, prob = decide(7, f"uid{i}", ids, p)
        expected[ids] += prob
        variance[ids] += prob * (1 - prob)
        if ok:
            kept[ids] += 1
        if len(ids) == 1:
            alone[ids] += 1
            alone_kept[ids] += ok
    deviation = np.abs(kept - expected) / np.sqrt(np.maximum(variance, 1e-12))
    assert deviation[counts > 0].max() < 4.0, deviation.max()
    tail = (counts > 0) & (counts <= t)
    assert np.array_equal(kept[tail], counts[tail])  # tail entries keep every caption
    head = np.argmax(counts)
    assert alone[head] > t and abs(alone_kept[head] - alone[head] * t / counts[head]) < 4 * np.sqrt(
        alone[head] * p[head] * (1 - p[head])
    )


@pytest.fixture(scope="module")
def entries_file(sample_web, tmp_path_factory) -> str:
    """The sample web's 40 most frequent caption words as a MetaCLIP metadata.json."""
    captions = [c for c in pq.read_table(sample_web.urls).column("caption").to_pylist() if c]
    words: dict[str, int] = {}
    for caption in captions:
        for word in set(caption.split()):
            words[word] = words.get(word, 0) + 1
    path = str(tmp_path_factory.mktemp("entries") / "metadata.json")
    with open(path, "w") as handle:
        json.dump(sorted(words, key=lambda w: (-words[w], w))[:40], handle)
    return path


def _balanced(sample_web, entries: str, output: str, workers: int | None = None) -> list[dict]:
    overrides = [*TEST_OVERRIDES, "run.stages=[text, balance]", f"balance.entries={entries}", "balance.t=15"]
    run_job(load_config(overrides=overrides), [sample_web.urls], output, workers=workers)
    return read_output_rows(output)


def test_the_stage_keeps_the_same_set_on_every_run_and_as_the_rule_says(sample_web, entries_file, tmp_path):
    first = _balanced(sample_web, entries_file, str(tmp_path / "a"))
    second = _balanced(sample_web, entries_file, str(tmp_path / "b"), workers=2)
    kept = [
        {r["uid"] for r in rows if r["stage"] != "balance" and r["status"] == "pending"}
        for rows in (first, second)
    ]
    assert kept[0] == kept[1] and kept[0]
    for name in sorted(os.listdir(tmp_path / "a")):
        if name.endswith(".parquet"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # The rule applied directly to the rows the text stage kept gives the same decisions.
    with open(entries_file) as handle:
        entries = json.load(handle)
    matcher = EntryMatcher([("*", e) for e in entries])
    judged = [r for r in first if r["stage"] in (None, "balance")]
    matched = {r["uid"]: matcher.match(r["caption_clean"], r["lang"]) for r in judged}
    counts = np.zeros(len(entries), np.int64)
    for ids in matched.values():
        counts[ids] += 1
    p = entry_probabilities(counts, np.full(len(entries), 15))
    assert (counts > 15).any()
    for row in judged:
        ok, prob = decide(0, row["uid"], matched[row["uid"]], p)
        reason = None if ok else ("unmatched_caption" if not matched[row["uid"]] else "balanced_out")
        assert row["reason"] == reason and row["balance_prob"] == pytest.approx(prob, abs=1e-6), row
        assert row["matched_entries"] == [entries[i] for i in matched[row["uid"]]]


def test_config_rules(tmp_path, sample_web):
    with pytest.raises(ConfigError, match="balance stage needs its metadata entries"):
        load_config(overrides=["run.stages=[text, balance]"])
    with pytest.raises(ConfigError, match=r"balance.t_per_language.de \('x'\) must be a count"):
        load_config(overrides=["balance.t_per_language={de: x}"])
    bad = tmp_path / "entries.tsv"
    bad.write_text("en\tcat\nno tab here\n")
    config = load_config(overrides=["run.stages=[text, balance]", f"balance.entries={bad}"])
    with pytest.raises(ConfigError, match=r"entries.tsv:2: expected `lang<TAB>entry`"):
        run_job(config, [sample_web.urls], str(tmp_path / "out"))


def test_the_report_draws_entry_counts_before_and_after_with_t(sample_web, entries_file, tmp_path):
    _balanced(sample_web, entries_file, str(tmp_path / "out"))
    with open(tmp_path / "out" / "stats.json") as handle:
        stats = json.load(handle)["balance"]
    assert stats["t"] == {"*": 15} and stats["entries"] == 40 and stats["entries_over_t"] > 0
    assert sum(stats["count_bins_before"]) == stats["entries_matched"]
    assert stats["matches_after"] < stats["matches_before"]
    head = stats["head"][0]
    assert head["count"] > 15 and head["kept"] < head["count"]
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert ">Balance<" in report and "t = 15 (*)" in report and f">{head['entry']}<" in report


def test_the_sample_webs_metadata_names_its_concepts_in_every_language(tmp_path):
    from sampleweb.captions import LANGUAGES
    from sampleweb.metadata import write_metadata

    with open(write_metadata(str(tmp_path)), encoding="utf-8") as handle:
        entries = parse_entries(handle.read(), "metadata.tsv")
    assert {lang for lang, _ in entries} == set(LANGUAGES) and len(entries) == len(set(entries))
    matcher = EntryMatcher(entries)
    found = {
        "en": "A small red circle on a blue background",
        "fr": "Un petit cercle rouge sur un fond bleu",
        "de": "Ein kleiner roter Kreis auf blauem Hintergrund",
        "zh": "蓝色背景上有一个红色的小圆形",
    }
    for lang, caption in found.items():
        assert matcher.match(caption, lang), (lang, caption)


def test_auto_entries_are_frequent_content_words_and_strong_pairs():
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.balance.auto import SelectEntries, caption_grams
    from transforms.balance.config import BalanceConfig

    assert caption_grams("A red circle on the blue background", "en") == {
        ("red",), ("circle",), ("blue",), ("background",), ("red", "circle"), ("blue", "background"),
    }  # fmt: skip
    assert ("的",) not in caption_grams("一个红色的圆形", "zh") and ("红色",) in caption_grams(
        "一个红色的圆形", "zh"
    )
    counts = {
        ("en", ()): 100, ("en", ("hot",)): 10, ("en", ("dog",)): 10, ("en", ("hot", "dog")): 9,
        ("en", ("red",)): 50, ("en", ("car",)): 50, ("en", ("red", "car")): 25, ("en", ("rare",)): 2,
    }  # fmt: skip
    # PMI(hot dog) = log2(100·9 / (10·10)) = 3.17 bits; PMI(red car) = log2(100·25 / 2,500) = 0.
    expected = [("en", "car"), ("en", "dog"), ("en", "hot"), ("en", "hot dog"), ("en", "red")]
    config = BalanceConfig(entries="auto", auto_min_count=5, auto_min_pmi=3.0)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | beam.Create(counts.items()) | SelectEntries(config), equal_to([expected]))
    # At most `auto_max_entries` per language: the most frequent, ties by entry.
    config = BalanceConfig(entries="auto", auto_min_count=5, auto_min_pmi=3.0, auto_max_entries=3)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        found = p | beam.Create(counts.items()) | SelectEntries(config)
        assert_that(found, equal_to([[("en", "car"), ("en", "dog"), ("en", "red")]]))


def test_auto_entries_and_per_language_t_in_a_run(sample_web, tmp_path):
    from sampleweb.metadata import write_metadata
    from transforms.balance.stage import thresholds

    output = str(tmp_path / "auto")
    overrides = [*TEST_OVERRIDES, "run.stages=[text, balance]", "balance.entries=auto", "balance.t=10"]
    stats = run_job(load_config(overrides=overrides), [sample_web.urls], output)["balance"]
    heads = {row["entry"] for row in stats["head"]}
    assert {"background", "circle"} & heads and stats["entries_over_t"] > 0
    assert all(len(e.split()) <= 2 for e in heads)
    rows = read_output_rows(output)
    assert any(r["reason"] == "balanced_out" for r in rows) and any(
        r["stage"] is None and r["matched_entries"] for r in rows
    )

    # Meta CLIP 2's rule: German and Chinese t derived from English's tail share at t = 40.
    entries = write_metadata(str(tmp_path))
    overrides = [*TEST_OVERRIDES, "run.stages=[text, balance]", f"balance.entries={entries}", "balance.t=40",
                 "balance.t_per_language={de: auto, zh: auto, fr: 7}"]  # fmt: skip
    config = load_config(overrides=overrides)
    stats = run_job(config, [sample_web.urls], str(tmp_path / "ml"))["balance"]
    with open(entries, encoding="utf-8") as handle:
        listed = parse_entries(handle.read(), "metadata.tsv")
    matcher = EntryMatcher(listed)
    counts = np.zeros(len(listed), np.int64)
    for row in read_output_rows(str(tmp_path / "ml")):
        if row["stage"] in (None, "balance"):
            counts[matcher.match(row["caption_clean"], row["lang"])] += 1
    langs = np.array([lang for lang, _ in listed], dtype=object)
    expected = thresholds(config.balance, langs, counts)
    assert stats["t"] == expected and expected["fr"] == 7 and expected["en"] == 40
    share = tail_share(counts[langs == "en"], 40)
    assert 0 < share < 1
    for lang in ("de", "zh"):
        assert (
            tail_share(counts[langs == lang], expected[lang])
            >= share
            > tail_share(counts[langs == lang], expected[lang] - 1)
        )
