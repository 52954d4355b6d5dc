"""Text stage: caption hygiene, fastText language ID on the sample web's truth, boilerplate, presets."""

from __future__ import annotations

import collections
import dataclasses

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import ConfigError, load_config
from pipeline.jobs import run_job
from schemas import Sample, Status, make_uid
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.langid import LanguageIdentifier
from transforms.text import FilterText, TextConfig
from transforms.textnorm import canonical_url, count_tokens, looks_binary, normalize_caption


def sample(url: str | None, caption: str | None) -> Sample:
    return Sample(uid=make_uid(url, caption), url=url, caption=caption)


def outcome(s: Sample) -> tuple:
    return (s.url, s.status, s.reason, s.stage, s.lang, len(s.caption_clean or ""))


def assert_text_outcomes(samples: list[Sample], config: TextConfig, expected: list[tuple]) -> None:
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(samples) | FilterText(config) | beam.Map(outcome)
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
        max_words=50,
        blocked_domains=("tracker.example",),
        blocked_extensions=("svg",),
    )
    first_kept = rows[0].uid < rows[1].uid  # of two rows with one canonical URL, the smaller uid stays
    rejected = (Status.REJECTED, "text")
    expected = [
        (
            rows[0].url,
            *((Status.PENDING, None, None) if first_kept else (rejected[0], "duplicate_url", "text")),
            "en",
            33,
        ),
        (
            rows[1].url,
            *((rejected[0], "duplicate_url", "text") if first_kept else (Status.PENDING, None, None)),
            "en",
            34,
        ),
        (rows[2].url, rejected[0], "scheme_not_allowed", "text", "en", 33),
        (rows[3].url, rejected[0], "domain_blocked", "text", "en", 33),
        (rows[4].url, rejected[0], "extension_blocked", "text", "en", 33),
        (rows[5].url, rejected[0], "lang_not_allowed", "text", "fr", 44),
        (rows[6].url, rejected[0], "too_few_words", "text", "fa", 6),  # length rules come before language
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
    from transforms.langid import default_model_path

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
