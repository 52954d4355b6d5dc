"""Text stage: caption hygiene, fastText language ID on the sample web's truth, boilerplate, presets."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import ConfigError, load_config
from pipeline.jobs import run_job
from schemas import Sample, Status, batch_from_samples, make_uid, samples_from_batch
from tests.conftest import TEST_OVERRIDES, read_output_rows
from tests.hostile import HostileSite
from transforms.text.config import TextConfig
from transforms.text.counts import vocab_threshold
from transforms.text.langid import LanguageIdentifier
from transforms.text.normalize import (
    canonical_url,
    count_tokens,
    looks_binary,
    normalize_caption,
    parsed_url_facts,
    url_facts,
)
from transforms.text.stage import FilterText, keeper_order, url_reason


def sample(url: str | None, caption: str | None) -> Sample:
    return Sample(uid=make_uid(url, caption), url=url, caption=caption)


def outcome(s: Sample) -> tuple:
    return (s.url, s.status, s.reason, s.stage, s.lang, len(s.caption_clean or ""))


def assert_text_outcomes(samples: list[Sample], config: TextConfig, expected: list[tuple]) -> None:
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        batch = batch_from_samples(samples)
        out = (
            p
            | beam.Create([batch])
            | FilterText(config)
            | beam.FlatMap(samples_from_batch)
            | beam.Map(outcome)
        )
        assert_that(out, equal_to(expected))


def test_normalize_caption():
    assert normalize_caption("  Caf&eacute;\u0301 &amp; tea\x00\u200b\n\tcup  ", 100) == "Café́ & tea cup"
    assert normalize_caption("e\u0301", 10) == "é"  # NFC
    assert normalize_caption("word " * 100, 22) == "word word word word"  # cut at a word boundary
    assert len(normalize_caption("x" * 5000, 1000)) == 1000


def test_token_counts_mean_the_same_across_scripts():
    assert count_tokens("a red circle on a blue background") == 7
    assert count_tokens("绿色背景上的一个红色圆形") == 12
    assert count_tokens("赤い丸 and a star") == 6  # 3 characters + 3 words
    assert count_tokens("— , !") == 0


def test_canonical_url():
    assert canonical_url("HTTP://Example.COM:80/a.jpg?x=1#top") == "http://example.com/a.jpg?x=1"
    assert canonical_url("https://example.com:443") == "https://example.com/"
    assert canonical_url("https://example.com:8443/a") == "https://example.com:8443/a"
    assert canonical_url("not a url") is None


def test_binary_and_broken_captions():
    assert looks_binary("\x00\x01\x02garbage\ufffd\ufffd\ufffd")
    assert not looks_binary("a normal caption")


def test_presets_and_overrides():
    rules = TextConfig(preset="datacomp_basic").rules()
    assert (rules.languages, rules.min_words, rules.min_chars) == (frozenset({"en"}), 3, 6)
    rules = TextConfig(preset="align", max_words=0, languages=("zh",)).rules()
    assert (rules.min_words, rules.max_words, rules.boilerplate_max_urls) == (3, 0, 10)
    assert rules.languages == frozenset({"zh"})
    assert TextConfig(preset="laion").rules().min_chars == 5
    with pytest.raises(ConfigError, match="text.preset: invalid value"):
        load_config(overrides=["text.preset=laion400"])


def test_rules_reasons_and_url_hygiene():
    rows = [
        sample("http://a.example/1.jpg", "a red circle on a blue background"),  # kept
        sample("HTTP://A.example:80/1.jpg", "another caption for the same image"),  # duplicate url
        sample("ftp://a.example/2.jpg", "a red circle on a blue background"),
        sample("http://ads.tracker.example/3.jpg", "a red circle on a blue background"),
        sample("http://a.example/4.svg", "a red circle on a blue background"),
        sample("http://a.example/5.jpg", "un grand cercle rouge sur un fond bleu clair"),
        sample("http://a.example/6.jpg", "circle"),
        sample("http://a.example/7.jpg", None),
        sample("http://a.example/8.jpg", "\x00\x01\ufffd\ufffd\ufffd binary"),
        sample("http://a.example/9.jpg", "word " * 300_000),  # a megabyte-long caption
    ]
    config = TextConfig(
        preset="datacomp_basic",
        measure="winnow",  # the preset's rules, measured on the cleaned caption
        max_words=50,
        blocked_domains=("tracker.example",),
        blocked_extensions=("svg",),
    )
    rejected = (Status.REJECTED, "text")
    expected = [
        (rows[0].url, Status.PENDING, None, None, "en", 33),  # of one URL's rows, the most words stay
        (rows[1].url, rejected[0], "duplicate_url", "text", "en", 34),
        (rows[2].url, rejected[0], "scheme_not_allowed", "text", "en", 33),
        (rows[3].url, rejected[0], "domain_blocked", "text", "en", 33),
        (rows[4].url, rejected[0], "extension_blocked", "text", "en", 33),
        (rows[5].url, rejected[0], "lang_not_allowed", "text", "fr", 44),
        # Length rules come before language; a Latin word is never Persian (fastText top-1 `fa`).
        (rows[6].url, rejected[0], "too_few_words", "text", "de", 6),
        (rows[7].url, rejected[0], "empty_caption", "text", None, 0),
        (rows[8].url, rejected[0], "caption_not_text", "text", "en", 10),
        (rows[9].url, rejected[0], "too_many_words", "text", "en", 999),
    ]
    assert_text_outcomes(rows, config, expected)


def test_language_id_accuracy_on_the_sample_web(sample_web):
    truth = [t for t in sample_web.truth_rows() if t["noise"] == "none" and t["lang"]]
    captions = {r["url"]: r["caption"] for r in pq.read_table(sample_web.urls).to_pylist()}
    model = LanguageIdentifier()
    predicted = model.predict([normalize_caption(captions[t["url"]], 1000) for t in truth])
    per_lang: dict[str, list[bool]] = collections.defaultdict(list)
    for t, (lang, _) in zip(truth, predicted, strict=True):
        per_lang[t["lang"]].append(lang == t["lang"])
    assert {"en", "fr", "de", "es", "zh"} <= set(per_lang)
    for lang, hits in per_lang.items():
        assert sum(hits) / len(hits) >= 0.9, (lang, sum(hits), len(hits))


def test_boilerplate_caught_and_clean_captions_spared(sample_web, tmp_path):
    threshold = 2  # the fixture's corpus is small: "shared by more than two URLs"
    config = load_config(
        overrides=[*TEST_OVERRIDES, f"text.boilerplate_max_urls={threshold}", "run.stages=[text]"]
    )
    run_job(config, [sample_web.urls], str(tmp_path))
    rows = {r["url"]: r for r in read_output_rows(str(tmp_path))}
    truth = sample_web.truth_rows()
    urls_per_caption = collections.Counter(rows[t["url"]]["caption_clean"].casefold() for t in truth)
    repeated = [
        t
        for t in truth
        if t["noise"] == "boilerplate"
        and urls_per_caption[rows[t["url"]]["caption_clean"].casefold()] > threshold
    ]
    flagged = [t for t in truth if rows[t["url"]]["reason"] == "boilerplate_caption"]
    assert repeated and all(rows[t["url"]]["reason"] == "boilerplate_caption" for t in repeated)
    assert not [t for t in flagged if t["noise"] == "none"]  # no clean caption rejected by the rule


def test_rejected_rows_are_kept_and_never_fetched(sample_web, tmp_path):
    overrides = [*TEST_OVERRIDES, "text.preset=datacomp_basic", "text.boilerplate_max_urls=2"]
    stats = run_job(load_config(overrides=overrides), [sample_web.urls], str(tmp_path))
    rows = read_output_rows(str(tmp_path))
    rejected = [r for r in rows if r["stage"] == "text"]
    assert len(rows) == stats["samples"] and rejected
    assert all(r["status"] == "rejected" and r["reason"] and r["http_status"] is None for r in rejected)
    assert {r["reason"] for r in rejected} >= {"lang_not_allowed", "boilerplate_caption"}
    text = stats["stages"]["text"]
    assert stats["stages"]["crawl"]["total"] == text["kept"] == text["total"] - len(rejected)
    assert stats["metrics"]["crawl/total"] == text["kept"]  # the download stage saw only what passed


def test_lid_model_from_a_path(tmp_path):
    from transforms.text.langid import default_model_path

    copy = tmp_path / "lid.176.ftz"
    with open(default_model_path(), "rb") as handle:
        copy.write_bytes(handle.read())
    config = dataclasses.replace(TextConfig(), lid_model=str(copy))
    row = sample("http://x/1.jpg", "ein roter Kreis auf blauem Hintergrund")
    assert_text_outcomes([row], config, [(row.url, Status.PENDING, None, None, "de", 38)])


def test_every_control_and_format_character_becomes_a_space():
    import sys
    import unicodedata

    invisible = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp") and not 0xD800 <= c < 0xE000
    ]
    assert len(invisible) > 150
    assert [hex(ord(ch)) for ch in invisible if normalize_caption("a" + ch + "é", 10) != "a é"] == []


def test_url_fast_path_agrees_with_the_full_parse():
    urls = [
        "http://a.example/1.jpg",
        "https://img.cdn-3.example.org/path/to/x.PNG?w=200&h=100",
        "http://a/b?",
        "http://a/b?x=1?y",
        "http://a/b#frag",
        "HTTP://A.example/1.jpg",
        "http://a.example:80/1.jpg",
        "http://a.example:8080/1.jpg",
        "http://user:pw@a.example/1.jpg",
        "http://a.example",
        "http://a.example/sp ace.jpg",
        "http://a.example/tab\t.jpg",
        "ftp://a.example/1.jpg",
        "http://[::1]/x.jpg",
        "http:///nohost.jpg",
    ]
    for url in urls:
        assert url_facts(url) == parsed_url_facts(url), url


def test_token_count_fast_paths_agree_with_the_definition():
    import random
    import re
    import string

    word = re.compile(r"\S*[^\W_]\S*")  # the definition: whitespace chunks with a letter or digit
    rng = random.Random(1)
    alphabet = string.ascii_letters[:5] + string.digits[:2] + "    " + string.punctuation + "éß—«»…"
    for _ in range(20_000):
        text = normalize_caption("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))), 1000)
        assert count_tokens(text) == len(word.findall(text)), text


def test_duplicate_urls_across_batches_keep_the_smallest_uid():
    rows = [sample(f"http://x.example/{i % 7}.jpg", f"caption number {i} here") for i in range(40)]
    config = TextConfig(dedupe_urls=True)
    winners = {}
    for row in rows:
        key = row.url
        winners[key] = min(winners.get(key, row.uid), row.uid)
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        batches = [batch_from_samples(rows[i : i + 6]) for i in range(0, len(rows), 6)]
        out = (
            p
            | beam.Create(batches)
            | FilterText(config)
            | beam.FlatMap(samples_from_batch)
            | beam.Map(lambda s: (s.uid, s.reason))
        )
        expected = [(r.uid, None if r.uid == winners[r.url] else "duplicate_url") for r in rows]
        assert_that(out, equal_to(expected))


def test_vocab_threshold_keeps_at_most_size_ngrams():
    histogram = {10: 2, 5: 3, 2: 10, 1: 100}  # occurrences: number of n-grams
    assert vocab_threshold(histogram, 5) == 5  # 2 + 3 n-grams occur 5 times or more
    assert vocab_threshold(histogram, 4) == 10  # the 3 tied at 5 would overshoot: all left out
    assert vocab_threshold(histogram, 1000) == 1  # everything fits
    assert vocab_threshold(histogram, 1) == 11  # not even the top group fits: nothing is frequent


def test_rare_token_rule_rejects_captions_outside_the_vocabulary():
    common = [sample(f"http://x.example/{i}.jpg", "a red circle on a blue background") for i in range(30)]
    common += [sample(f"http://y.example/{i}.jpg", "a blue circle on a red background") for i in range(30)]
    rare = sample("http://z.example/1.jpg", "a red zorblax on a blue background")
    # 14 n-grams occur 30 times or more, the rest once; the 11 most frequent (count >= 31, ties
    # at 30 left out) hold every common unigram but not "zorblax".
    config = TextConfig(vocab_size=13)
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        rows = [*common, rare]
        batches = [batch_from_samples(rows[i : i + 16]) for i in range(0, len(rows), 16)]
        out = (
            p
            | beam.Create(batches)
            | FilterText(config)
            | beam.FlatMap(samples_from_batch)
            | beam.Map(lambda s: (s.url, s.reason))
        )
        assert_that(out, equal_to([(r.url, None) for r in common] + [(rare.url, "rare_token")]))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    winnow = os.path.join(os.path.dirname(sys.executable), "winnow")
    overrides = [arg for item in TEST_OVERRIDES for arg in ("--set", item)]
    return subprocess.run([winnow, "run", *args, *overrides], capture_output=True, text=True, timeout=300)


def test_keeper_order_prefers_a_passing_then_longer_caption_then_the_smallest_uid():
    codes = np.array([0, 2, 0, 0, 0], np.int8)  # row 1 breaks a caption rule
    clean = ["a cat", "a big grey cat on a mat", "", "a grey cat", "a grey cat"]
    tokens = np.array([2, 7, 0, 3, 3])
    uids = ["e", "a", "b", "d", "c"]
    assert keeper_order(codes, clean, tokens, uids, [None] * 5) == [4, 3, 0, 2, 1]


def test_item10_identical_rows_and_copies_of_a_url_are_fetched_once(tmp_path):
    good = "a red circle on a blue background"
    with HostileSite("missing") as site:
        rows = []
        for i in range(5):
            url = site.url(f"/free/{i}.jpg")
            # Two empty captions (one uid), a one-word caption, two identical good rows, and the
            # URL once more with a fragment (the same canonical URL): 30 rows, 5 URLs to fetch.
            rows += [(url, ""), (url, ""), (url, "circle"), (url, good), (url, good), (url + "#top", good)]
        path = tmp_path / "list.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("url", "caption"), *rows])
        result = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--stages", "text,crawl")
        fetched = [p for p in site.requests if p.startswith("/free/")]
    assert result.returncode == 0, result.stderr
    assert sorted(fetched) == sorted(f"/free/{i}.jpg" for i in range(5))  # each URL once
    assert "25 fetches saved" in result.stdout
    out = read_output_rows(str(tmp_path / "out"))
    assert len(out) == 30
    kept = {r["url"].split("#")[0]: r for r in out if r["status"] == Status.SUCCESS}
    assert len(kept) == 5 and all(r["caption"] == good for r in kept.values())
    for row in out:
        if row["status"] != Status.SUCCESS:
            assert (row["status"], row["reason"], row["stage"]) == (Status.REJECTED, "duplicate_url", "text")
            assert row["duplicate_of"] == kept[row["url"].split("#")[0]]["uid"], row
            assert row["duplicate_of"] in row["error"]


def test_item13_bad_hosts_and_ports_get_invalid_url_and_idn_forms_collapse(tmp_path):
    caption = "a red circle on a blue background"
    bad = {
        "http://exa mple.com/a.jpg": "U+0020",
        "http://exa\u200bmple.com/a.jpg": "U+200B",
        "http://%65xample.com/a.jpg": "percent-encoded",
        "http://example.com:70000/a.jpg": "'70000' is not in 1-65535",
        "http://i\u2764.example/a.jpg": "not a valid international host name",
        "http://a..example/a.jpg": "empty label",
        "not a url": "no scheme",
    }
    same = [
        ("http://bücher.example/a.jpg", "http://xn--bcher-kva.example/a.jpg", "http://BÜCHER.example./a.jpg"),
        ("http://example.com./b.jpg", "http://example.com/b.jpg", "HTTP://EXAMPLE.COM:80/b.jpg#x"),
    ]
    path = tmp_path / "list.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        rows = [(url, caption) for url in bad] + [(url, caption) for group in same for url in group]
        csv.writer(handle).writerows([("url", "caption"), *rows])
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--stages", "text")
    assert result.returncode == 0, result.stderr
    out = {r["url"]: r for r in read_output_rows(str(tmp_path / "out"))}
    for url, why in bad.items():
        assert (out[url]["reason"], out[url]["stage"]) == ("invalid_url", "text"), out[url]
        assert why in out[url]["error"], out[url]["error"]
    for group in same:
        decided = [out[url] for url in group]
        kept = [r for r in decided if r["reason"] is None]
        assert len(kept) == 1, decided
        assert all(
            r["reason"] == "duplicate_url" and r["duplicate_of"] == kept[0]["uid"]
            for r in decided
            if r != kept[0]
        )


def test_url_hosts_in_ascii_form():
    assert canonical_url("http://bücher.example/a.jpg") == "http://xn--bcher-kva.example/a.jpg"
    assert canonical_url("http://example.com./a.jpg") == "http://example.com/a.jpg"
    assert canonical_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert canonical_url("http://my_host.example/x") == "http://my_host.example/x"
    assert url_facts("http://exa\u00admple.com/").problem.startswith("the host contains U+00AD")
    assert url_facts("http://example.com:0/").problem == "port 0 is not in 1-65535"
    rules = TextConfig(blocked_domains=("BÜCHER.example.",)).rules()
    assert url_reason(url_facts("http://img.xn--bcher-kva.example/a.jpg"), rules) == "domain_blocked"
    assert url_reason(url_facts("http://bücher.example/a.jpg"), rules) == "domain_blocked"


def _keyed_rows(batches: beam.PCollection, config: TextConfig, label: str) -> beam.PCollection:
    return (
        batches
        | label >> FilterText(config)
        | f"{label}Rows" >> beam.FlatMap(samples_from_batch)
        | f"{label}Keyed" >> beam.Map(lambda s: (s.uid, repr(sorted(s.__dict__.items(), key=str))))
    )


def test_repeated_urls_too_many_to_hold_are_found_by_a_keyed_join():
    rows = [sample(f"http://x.example/{i % 11}.jpg", f"caption number {i} here") for i in range(60)]
    rows += [sample(f"http://y.example/{i}.jpg", f"a unique photo {i}") for i in range(30)]
    rows += [sample(None, "no url at all"), sample("not a url", "broken")]
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        batches = p | beam.Create([batch_from_samples(rows[i : i + 9]) for i in range(0, len(rows), 9)])
        held = _keyed_rows(batches, TextConfig(dedupe_urls=True), "Held")  # 11 repeated keys in memory
        joined = _keyed_rows(batches, TextConfig(dedupe_urls=True, repeated_urls_in_memory=5), "Joined")
        compared = (
            {"held": held, "joined": joined}
            | beam.CoGroupByKey()
            | beam.Map(
                lambda kv: (
                    len(kv[1]["held"]),
                    kv[1]["held"] == kv[1]["joined"],
                    "duplicate_url" in str(kv[1]["held"]),
                )
            )
        )
        expected = [(1, True, False)] * (len(rows) - 49) + [(1, True, True)] * 49  # 60 rows of 11 URLs
        assert_that(compared, equal_to(expected))


def test_boilerplate_captions_too_many_to_hold_are_found_by_a_keyed_join():
    rows = [
        sample(f"http://x.example/{i}.jpg", f"click here {i % 3}") for i in range(24)
    ]  # 3 captions, 8 pages each
    rows += [sample(f"http://y.example/{i}.jpg", f"a unique photo of a dog {i}") for i in range(30)]
    rows += [sample(f"http://z.example/{i}.jpg", "shared by two") for i in range(2)]
    rows += [sample(None, "no url at all"), sample("http://w.example/a.jpg", "")]
    config = TextConfig(dedupe_urls=True, boilerplate_max_urls=3)
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        batches = p | beam.Create([batch_from_samples(rows[i : i + 7]) for i in range(0, len(rows), 7)])
        held = _keyed_rows(batches, config, "Held")
        joined = _keyed_rows(batches, dataclasses.replace(config, boilerplate_in_memory=2), "Joined")
        compared = (
            {"held": held, "joined": joined}
            | beam.CoGroupByKey()
            | beam.Map(
                lambda kv: (kv[1]["held"] == kv[1]["joined"], "boilerplate_caption" in str(kv[1]["held"]))
            )
        )
        assert_that(compared, equal_to([(True, True)] * 24 + [(True, False)] * (len(rows) - 24)))


def test_capped_keys_keep_all_keys_up_to_the_limit_and_none_beyond():
    from transforms.text.counts import CappedKeys

    parts = [np.array([5, 1], "<u8"), np.array([3], "<u8"), np.array([9, 7], "<u8")]
    fn = CappedKeys(5)
    acc = fn.merge_accumulators([fn.add_input(fn.create_accumulator(), p) for p in parts])
    assert fn.extract_output(acc).tolist() == [1, 3, 5, 7, 9]
    assert fn.extract_output(fn.create_accumulator()).tolist() == []
    over = CappedKeys(4)
    acc = over.merge_accumulators([over.add_input(over.create_accumulator(), p) for p in parts])
    assert acc is None and over.extract_output(acc) is None
