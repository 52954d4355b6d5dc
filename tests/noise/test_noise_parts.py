"""The noise stage's parts, without a pipeline: the mixture, caption terms, the policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.sample import Sample, Status
from transforms.noise.concepts import (
    Concepts,
    append_concepts,
    balancing_weights,
    caption_terms,
    choose_vocabulary,
    embed_vocabulary,
    mentioned,
    missing_concepts,
    only_terms,
    read_word_list,
    score_concepts,
    term_words,
    trust_terms,
    words,
)
from transforms.noise.config import NoiseConfig
from transforms.noise.mixture import fit_mixture
from transforms.noise.neighbours import knn_agreement
from transforms.noise.policy import repair
from transforms.noise.signals import Estimate, combine


def test_mixture_recovers_two_components_and_is_monotone():
    rng = np.random.default_rng(0)
    noisy = rng.normal(0.1, 0.05, 300)
    clean = rng.normal(0.7, 0.1, 1700)
    values = np.concatenate([clean, noisy])
    fitted = fit_mixture(values)
    assert fitted.means[0] == pytest.approx(0.1, abs=0.02) and fitted.means[1] == pytest.approx(0.7, abs=0.02)
    assert fitted.weights[0] == pytest.approx(0.15, abs=0.02)
    grid = np.linspace(-0.5, 1.5, 201)
    posterior = fitted.noise_probability(grid)
    assert np.all(np.diff(posterior) <= 1e-12)  # never rises with the score
    assert posterior[0] > 0.99 and posterior[-1] < 0.01
    # The log-odds fall strictly, beyond both means too: very clean pairs are not tied.
    assert np.all(np.diff(fitted.noise_log_odds(grid)) < 0)
    assert fitted.noise_log_odds([0.9])[0] > fitted.noise_log_odds([1.4])[0]
    assert fit_mixture(values[::-1]) == fitted  # the order of the values does not matter
    assert fitted.as_dict()["noise"]["mean"] == pytest.approx(fitted.means[0], abs=1e-6)


def test_mixture_of_constant_or_empty_values_is_uninformative():
    assert fit_mixture([]).noise_probability([0.3])[0] == 0.5
    assert fit_mixture([0.4] * 10).samples == 10


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_combine_bayes_and_mean():
    config = NoiseConfig()
    prior = [0.1, 0.1, 0.1]
    one = combine([_logit(0.8), None, None], prior, config)  # a missing signal is skipped
    assert 0.1 < one < 0.8  # evidence for noise raises the estimate above the prior, tempered
    # Agreeing evidence sharpens the estimate beyond any single signal; disagreeing evidence softens it.
    assert combine([_logit(0.8)] * 3, prior, config) > one
    assert combine([_logit(0.8), _logit(0.01), _logit(0.01)], prior, config) < one
    assert combine([None, None, None], prior, config) == 0.5
    # At the prior, a signal adds nothing.
    assert combine([_logit(0.1), None, None], prior, config) == pytest.approx(0.1)
    mean = NoiseConfig(combine="mean", weights=(2.0, 1.0, 1.0))
    assert combine([60.0, -60.0, -60.0], [0.1] * 3, mean) == pytest.approx(0.5)
    # A zero weight leaves a signal out.
    only_clip = NoiseConfig(weights=(1.0, 0.0, 0.0))
    assert combine([_logit(0.3), 5.0, 5.0], prior, only_clip) == combine(
        [_logit(0.3), None, None], prior, config
    )
    # Far-out evidence neither saturates nor ties: the order of very noisy pairs is kept.
    assert combine([900.0, 400.0, 400.0], prior, config) > combine([800.0, 400.0, 400.0], prior, config)
    assert combine([900.0, 400.0, 400.0], prior, config) < 1.0


def test_noise_config_is_checked():
    with pytest.raises(ValueError, match="noise.weights"):
        NoiseConfig(weights=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="noise.templates"):
        NoiseConfig(templates=("a photo",))
    with pytest.raises(ValueError, match="noise.replace_above"):
        NoiseConfig(replace_above=1.5)


def test_caption_terms_per_language():
    assert caption_terms("A small red circle on the left and a blue square.", "en") >= {
        "red circle",
        "blue square",
        "circle",
        "square",
    }
    assert "the" not in caption_terms("the red circle", "en")  # stop words go
    assert "cercle rouge" in caption_terms("Un petit cercle rouge sur un fond noir", "fr")
    assert "fond noir" in caption_terms("Un petit cercle rouge sur un fond noir", "fr")
    zh = caption_terms("一张图片，绿色背景上画着一个红色的小圆形", "zh")
    assert "红色圆形" in zh and "绿色背景" in zh  # the pair spans the particle and the size word
    assert caption_terms(None, "en") == set() and caption_terms("", "en") == set()


def test_mentioned_and_completion():
    caption = "A small red circle on a black background."
    found = Concepts("en", [], ["red circle", "blue square", "black background"], [])
    missing, coverage = missing_concepts(caption, found)
    assert missing == ["blue square"] and coverage == pytest.approx(2 / 3)
    assert append_concepts(caption, missing, "en") == "A small red circle on a black background, blue square"
    assert mentioned(words("红色的小圆形", "zh"), term_words("红色圆形", "zh"), "zh")
    assert not mentioned(words("red big circle", "en"), ("red", "circle"), "en")  # en: words side by side
    assert append_concepts("一个红色的圆形。", ["蓝色正方形"], "zh") == "一个红色的圆形，蓝色正方形"


def test_word_list_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# colours and shapes\nred circle\nfr\tcercle rouge\n\n", encoding="utf-8")
    listed = read_word_list(str(path))
    assert listed == {"*": ["red circle"], "fr": ["cercle rouge"]}
    vocabulary = choose_vocabulary([(("fr", "cercle rouge"), 4)], [("fr", 10), ("en", 5)], 100, 3, listed)
    assert vocabulary.terms == {"en": ("red circle",), "fr": ("cercle rouge", "red circle")}
    assert vocabulary.counts["fr"] == (4, 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt"):
        read_word_list(str(empty))


def test_vocabulary_from_counts_keeps_frequent_terms():
    counts = [(("en", "red circle"), 5), (("en", "blue square"), 2), (("en", "circle"), 9)]
    counts.append((("de", "roter kreis"), 3))
    vocabulary = choose_vocabulary(counts, [("en", 10), ("de", 4)], size=1, min_count=3)
    assert vocabulary.terms == {"en": ("circle",), "de": ("roter kreis",)}


def test_balancing_down_weights_frequent_terms():
    weights = balancing_weights([100, 10, 1], captions=100, subsample=0.05)
    assert weights[0] == pytest.approx(np.sqrt(0.05)) and weights[2] == 1.0
    assert weights[0] < weights[1] <= weights[2]


def _bank(terms, vectors):
    vocabulary = choose_vocabulary([(("en", t), 1) for t in terms], [("en", 100)], 100, 1)
    lookup = dict(zip(terms, vectors, strict=True))
    return embed_vocabulary(
        vocabulary, lambda texts: np.array([lookup[t] for t in texts]), ["{}"], subsample=1.0
    )


def test_zero_shot_concepts_drop_words_inside_a_chosen_phrase():
    terms = ["red circle", "circle", "blue square", "green star"]
    vectors = np.eye(4, dtype=np.float32)
    bank = _bank(terms, vectors)
    image = np.array([[0.7, 0.6, 0.65, 0.1]], dtype=np.float32)
    found = score_concepts(image, ["en"], bank, top_k=4, min_score=0.3, relative=0.2, fallback="en")[0]
    assert [t for t, _ in found.scored] == ["red circle", "blue square", "circle", "green star"]
    assert found.visual == ["red circle", "blue square"]  # "circle" is inside "red circle"
    # A language without a vocabulary falls back to English.
    assert score_concepts(image, ["xx"], bank, 4, 0.3, 0.2, "en")[0].lang == "en"


def _sample(caption: str) -> Sample:
    return Sample("u1", "http://x/1.jpg", caption, caption_clean=caption, status=Status.SUCCESS)


def _estimate(noise_prob: float) -> Estimate:
    return Estimate("u1", noise_prob, (0.8, 0.5, 0.5), (), None, "en")


def test_a_clean_caption_naming_every_concept_is_left_unchanged():
    caption = "A red circle and a blue square on a black background."
    found = Concepts("en", [("red circle", 0.5)], ["red circle", "blue square", "black background"], [])
    out = repair(_sample(caption), _estimate(0.02), None, found, NoiseConfig())
    assert out.status == Status.SUCCESS and out.caption_source == "original"
    assert out.caption_completed is None and out.chosen_caption() == caption
    assert out.caption_original == caption and out.noise_prob == pytest.approx(0.02)


def test_policy_completes_replaces_or_drops():
    config = NoiseConfig(replace_above=0.5, min_coverage=1.0)  # repair opted into
    found = Concepts(
        "en",
        [("red circle", 0.5)],
        ["red circle", "blue square"],
        [("blue square", 0.4), ("red circle", 0.3)],
    )
    completed = repair(_sample("A red circle."), _estimate(0.1), None, found, config)
    assert completed.caption_source == "completed"
    assert completed.chosen_caption() == "A red circle, blue square"
    bow = repair(_sample("A cat on a sofa."), _estimate(0.9), None, found, config)
    assert bow.caption_source == "bow" and bow.chosen_caption() == "blue square, red circle"
    source = (0.95, "u9", "A blue square next to a red circle", "en")
    moved = repair(_sample("A cat on a sofa."), _estimate(0.9), source, found, config)
    assert moved.caption_source == "neighbour" and moved.pseudo_source == "neighbour:u9"
    assert moved.chosen_caption() == source[2] and moved.caption_bow == "blue square, red circle"
    nothing = Concepts("en", [], [], [])
    dropped = repair(_sample("A cat on a sofa."), _estimate(0.9), None, nothing, config)
    assert (dropped.status, dropped.reason, dropped.stage) == (Status.REJECTED, "noisy_pair", "noise")
    assert "nothing to replace" in dropped.error and dropped.caption_original == "A cat on a sofa."
    strict = repair(_sample("A cat."), _estimate(0.9), source, found, NoiseConfig(drop_above=0.8))
    assert strict.reason == "noisy_pair" and "drop_above" in strict.error


def test_the_precision_guard_trusts_only_terms_the_clean_captions_confirm():
    evidence = [
        (("en", "red circle"), (40, 38)),  # named by 95 % of the clean captions it was found for
        (("en", "blue square"), (40, 8)),  # a colour the model sees, a shape it guesses
        (("en", "green star"), (5, 5)),  # right every time, but too rarely seen to count
    ]
    trusted = trust_terms(evidence, min_precision=0.8, min_support=20)
    assert trusted.terms == frozenset({("en", "red circle")})
    summary = trusted.summary()
    assert (summary["terms_measured"], summary["terms_trusted"]) == (2, 1) and "repair" not in summary
    assert [t["term"] for t in summary["best_terms"]] == ["red circle", "blue square", "green star"]
    assert summary["best_terms"][1] == {"lang": "en", "term": "blue square", "support": 40, "precision": 0.2}
    config = NoiseConfig(replace_above=0.5, min_coverage=1.0)
    found = Concepts(
        "en",
        [("red circle", 0.5)],
        ["red circle", "blue square"],
        [("blue square", 0.4), ("red circle", 0.3)],
    )
    # Only the trusted term may complete a caption or make a BoW caption.
    completed = repair(_sample("A photo."), _estimate(0.1), None, found, config, trusted=trusted)
    assert completed.chosen_caption() == "A photo, red circle"
    bow = repair(_sample("A cat on a sofa."), _estimate(0.9), None, found, config, trusted=trusted)
    assert bow.caption_source == "bow" and bow.chosen_caption() == "red circle"
    assert bow.concepts == [("red circle", 0.5)]  # the scores stay as measured
    # Nothing trusted: no completion, no BoW caption; the summary says why.
    none = trust_terms(evidence, min_precision=0.99, min_support=20)
    assert none.terms == frozenset() and none.summary()["repair"].startswith("off:")
    kept = repair(_sample("A photo."), _estimate(0.1), None, found, config, trusted=none)
    assert kept.caption_source == "original" and kept.chosen_caption() == "A photo."
    dropped = repair(_sample("A cat on a sofa."), _estimate(0.9), None, found, config, trusted=none)
    assert dropped.reason == "noisy_pair" and dropped.caption_bow is None
    assert only_terms(found, none.terms).visual == []


def test_knn_agreement_is_high_for_matching_captions():
    # Two groups of images; captions follow the images except for the last row, which takes the
    # other group's caption.
    image = np.array([[1, 0], [0.99, 0.1], [0.98, 0.15], [0, 1], [0.1, 0.99], [0.15, 0.98]], dtype=np.float32)
    text = image.copy()
    text[5] = [1, 0]
    found = knn_agreement(["a", "b", "c", "d", "e", "f"], image, text, k=2)
    agreements = [a for _, a, _ in found]
    assert agreements[5] < 0.3 < min(agreements[:3])
    assert [uid for uid, _ in found[0][2]] == ["b", "c"]  # nearest images first


@pytest.mark.parametrize("word_list", [None, {"en": ["red circle", "zebra"], "*": ["blue"]}])
def test_the_vocabulary_from_pruned_counts_equals_the_one_from_every_count(word_list):
    """Only the terms the vocabulary can take reach the one step that builds it; the result is the
    same as from every (language, term) count (ties by term, the minimum count, the word list)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing import test_pipeline
    from apache_beam.testing.util import assert_that

    from transforms.noise.concepts import choose_vocabulary
    from transforms.noise.stage import _CandidateTerms

    rng = np.random.default_rng(4)
    words = ["red", "blue", "circle", "red circle", "zebra", "cat", "dog", "sky", "tree", "car"]
    counts = [
        ((lang, f"{word}{suffix}"), int(rng.integers(1, 9)))
        for lang in ("en", "fr", "zh")
        for word in words
        for suffix in ("", "s", "x")
    ]
    langs = [("en", 500), ("fr", 300), ("zh", 200)]
    config = NoiseConfig(vocabulary_size=7, vocabulary_min_count=3)
    oracle = choose_vocabulary(counts, langs, 7, 3, word_list)
    assert oracle.terms and sum(len(t) for t in oracle.terms.values()) < len(counts)

    def check(pruned: list) -> None:
        assert len(pruned) < len(counts)  # fewer reached the step
        assert choose_vocabulary(pruned, langs, 7, 3, word_list) == oracle

    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        pruned = p | beam.Create(counts) | _CandidateTerms(config, word_list) | beam.combiners.ToList()
        assert_that(pruned, lambda lists: check(lists[0]))
