"""Noise stage: estimate how noisy each pair is, and repair its caption rather than only drop it.

In: `Sample`s after the embed stage (and dedup, when it runs). Candidates are the samples still
`success` with both embeddings; the others pass through untouched. Out: the same samples, each
candidate with `noise_prob`, `concepts` and the caption columns; a pair too noisy to repair is
`rejected` with reason `noisy_pair`.

1. **Noise probability** (NLIP's noise harmonisation, DivideMix's mixture on the per-sample loss).
   Three signals, each calibrated by a two-component Gaussian mixture fitted to its distribution
   (`transforms/noise/mixture.py`; parameters written to stats.json under `noise`):
   * `clip_score`;
   * caption agreement: the mean cosine of the caption to the captions of its `k` nearest images;
   * image agreement: the mean cosine of the image to the images of its `k` nearest captions
     (`transforms/noise/neighbours.py`).
   `combine: bayes` adds the signals' log-odds against the prior (naive Bayes: independent
   evidence, each weighted by `weights`); `combine: mean` averages the posteriors.
2. **Visual concepts** (ViCHA): the top `concepts_k` terms of the caption language's vocabulary
   by zero-shot similarity; the confident ones are its visual concepts (`transforms/noise/concepts.py`).
   With `concept_model: efficientnet-lite0` they come from an ImageNet classifier instead
   (`transforms/noise/classify.py`): its 1,000 English class names are the vocabulary, its softmax
   probabilities the scores, and only English captions (or captions without a language) get
   visual concepts from it.
3. **BoW caption**: the visual concepts, frequent terms down-weighted (`caption_bow`).
4. **Pseudo-caption**: the caption of the nearest clean image neighbour (`noise_prob` at most
   `pseudo_max_noise`, image cosine at least `pseudo_min_similarity`; `pseudo_source` names it).
   With a model that can write captions (open_clip CoCa) and `generate: auto`, a generated caption
   takes its place (`pseudo_source` names the model).
5. **Policy**: `noise_prob` <= `replace_above`: the caption describes the image; it is kept when it
   names at least `min_coverage` of the visual concepts, else completed with those it misses.
   Above: replaced by the pseudo-caption, else the BoW caption; with neither, or above
   `drop_above`, the pair is rejected (`noisy_pair`). `caption_source` says which caption the
   WebDataset `.txt` holds: `original`, `completed`, `generated`, `neighbour` or `bow`. The
   defaults (`replace_above` 1.0, `min_coverage` 0.0, `drop_above` 1.0) estimate and keep every
   caption as it is; completing, replacing and dropping are opted into.
6. **Precision guard**: before any term is added to a caption or put in a BoW caption, the stage
   measures on the run's clean pairs (`noise_prob` <= `pseudo_max_noise`) how often each visual
   concept is named by the caption (`concepts.trust_terms`). Only terms at or above
   `min_term_precision` over `min_term_support` pairs are used; with none, completion and BoW
   captions are off, and `stats.json` says why (`noise.term_guard`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import xxhash
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from schemas.sample import Sample, Status
from transforms.common.outputs import WithSummary
from transforms.common.progress import NAMESPACE, StageCounter
from transforms.common.routing import SplitByStatus, embedded
from transforms.embed.clip import ClipTextHandler, on_accelerator
from transforms.noise.captions import (
    BOW,
    COMPLETED,
    GENERATED,
    NEIGHBOUR,
    ORIGINAL,
    GenerateCaptions,
    model_generates,
)
from transforms.noise.classify import LABEL_LANGUAGE, ClassifyImages, class_names, classifier_identity
from transforms.noise.concepts import (
    ConceptBank,
    Concepts,
    TrustedTerms,
    Vocabulary,
    append_concepts,
    bank_from_encoded,
    bow_caption,
    choose_vocabulary,
    iter_terms,
    label_bank,
    label_concepts,
    log_bank,
    missing_concepts,
    only_terms,
    read_word_list,
    score_concepts,
    trust_terms,
    vocabulary_prompts,
)
from transforms.noise.config import CLIP, NoiseConfig
from transforms.noise.mixture import Mixture, fit_mixture
from transforms.noise.neighbours import NeighbourAgreement, Space

if TYPE_CHECKING:
    from transforms.embed.config import EmbedConfig

log = logging.getLogger(__name__)

STAGE = "noise"
NOISY_PAIR = "noisy_pair"
SIGNALS = ("clip_score", "caption_agreement", "image_agreement")
_EPS = 1e-6
#: The two neighbour searches: caption agreement searches images, image agreement searches captions.
_SEARCHES: tuple[tuple[str, Space], ...] = (("caption", "image"), ("image", "text"))


# ---------------------------------------------------------------- combining the signals


def combine(log_odds: Sequence[float | None], priors: Sequence[float], config: NoiseConfig) -> float:
    """`noise_prob` from each signal's noise log-odds (None: the signal is missing) and prior.

    `bayes`: the signals as independent evidence: the prior's log-odds plus each signal's weighted
    log-likelihood ratio, compressed by asinh (linear near zero, logarithmic far out). Uncompressed,
    a Gaussian tail gives hundreds of nats: one signal would decide alone and `noise_prob` would
    round to 1.0 for clean and noisy pairs alike, losing their order. `mean`: the weighted mean of
    the signals' posteriors.
    """
    used = [
        (lo, q, w)
        for lo, q, w in zip(log_odds, priors, config.weights, strict=True)
        if lo is not None and w > 0
    ]
    if not used:
        return 0.5
    if config.combine == "mean":
        return float(sum(w * _logistic(lo) for lo, _, w in used) / sum(w for _, _, w in used))
    prior = float(np.clip(np.mean([q for _, q, _ in used]), _EPS, 1 - _EPS))
    logit_prior = math.log(prior / (1 - prior))
    return _logistic(logit_prior + sum(w * math.asinh(lo - logit_prior) for lo, _, w in used))


def _logistic(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The noise estimate of one sample and its image neighbours."""

    uid: str
    noise_prob: float
    signals: tuple[float | None, float | None, float | None]
    neighbours: tuple[tuple[str, float], ...]
    caption: str | None
    lang: str | None


def _signal_value(kind: int) -> Any:
    def value(element: Any) -> Iterator[tuple[str, float]]:
        uid, score = element[0], element[1]
        if score is not None and math.isfinite(score):
            yield uid, float(score)

    return value


class FitMixture(beam.PTransform):
    """(uid, value) → one `Mixture`, fitted on a deterministic sample of at most `sample` values."""

    def __init__(self, sample: int, seed: int):
        super().__init__()
        self._sample = sample
        self._seed = seed

    def expand(self, values: beam.PCollection) -> beam.PCollection:
        seed = self._seed
        return (
            values
            | "Sample"
            >> beam.combiners.Top.Of(
                self._sample, key=lambda kv: xxhash.xxh3_64_intdigest(kv[0].encode(), seed=seed)
            )
            | "Fit" >> beam.Map(lambda sampled: fit_mixture([v for _, v in sorted(sampled)]))
        )


def _estimate(
    element: tuple[str, dict[str, list[Any]]],
    clip: Mixture,
    caption: Mixture,
    image: Mixture,
    config: NoiseConfig,
) -> Iterator[Estimate]:
    uid, joined = element
    if not joined["info"]:
        return
    clip_score, text, lang = joined["info"][0]
    cap = joined["caption"][0] if joined["caption"] else (uid, None, ())
    img = joined["image"][0] if joined["image"] else (uid, None, ())
    values = (clip_score, cap[1], img[1])
    mixtures = (clip, caption, image)
    log_odds = [
        None if v is None or not math.isfinite(v) else float(m.noise_log_odds([v])[0])
        for v, m in zip(values, mixtures, strict=True)
    ]
    priors = [m.weights[0] for m in mixtures]
    yield Estimate(uid, combine(log_odds, priors, config), values, cap[2], text, lang)


# ---------------------------------------------------------------- the concept bank


#: Prompts encoded per model call (a fixed cut: the embeddings do not depend on the runner's batching).
PROMPTS_PER_CALL = 1024


def _prompt_chunks(vocabulary: Vocabulary, templates: Sequence[str]) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """((language, template index, chunk), prompts) for every `PROMPTS_PER_CALL` prompts."""
    for (lang, index), prompts in vocabulary_prompts(vocabulary, templates):
        for chunk, start in enumerate(range(0, len(prompts), PROMPTS_PER_CALL)):
            yield (lang, index, chunk), prompts[start : start + PROMPTS_PER_CALL]


def _clip_bank(
    encoded: list[tuple[tuple[str, int, int], np.ndarray]], vocabulary: Vocabulary, config: NoiseConfig
) -> ConceptBank:
    chunks: dict[tuple[str, int], list[tuple[int, np.ndarray]]] = {}
    for (lang, index, chunk), array in encoded:
        chunks.setdefault((lang, index), []).append((chunk, array))
    joined = {
        key: np.concatenate([array for _, array in sorted(parts, key=_first)]).astype(np.float32)
        for key, parts in chunks.items()
    }
    bank = bank_from_encoded(vocabulary, joined, config.templates, config.bow_subsample)
    log_bank(bank)
    return bank


def _first(item: tuple[int, Any]) -> int:
    return item[0]


def _label_bank(vocabulary: Vocabulary, config: NoiseConfig) -> ConceptBank:
    bank = label_bank(vocabulary, config.bow_subsample)
    if bank.terms != {LABEL_LANGUAGE: class_names()}:  # the class index is the term index
        raise RuntimeError(f"the {config.concept_model} vocabulary is not its class names in order")
    log_bank(bank)
    return bank


def _best_source(
    candidates: Iterable[tuple[float, str, str, str | None]],
) -> tuple[float, str, str, str | None] | None:
    """The most similar clean neighbour (ties: smallest uid)."""
    ranked = sorted(candidates, key=lambda c: (-c[0], c[1]))
    return ranked[0] if ranked else None


class _BestSource(beam.CombineFn):
    def create_accumulator(self) -> list[Any]:
        return []

    def add_input(self, acc: list[Any], item: Any) -> list[Any]:
        best = _best_source([*acc, item])
        return [best] if best else []

    def merge_accumulators(self, accs: Iterable[list[Any]]) -> list[Any]:
        best = _best_source([a for acc in accs for a in acc])
        return [best] if best else []

    def extract_output(self, acc: list[Any]) -> Any:
        return acc[0] if acc else None


# ---------------------------------------------------------------- the decision


def repair(
    sample: Sample,
    estimate: Estimate,
    source: tuple[float, str, str, str | None] | None,
    found: Concepts,
    config: NoiseConfig,
    generates: bool = False,
    trusted: TrustedTerms | None = None,
) -> Sample:
    """The completion policy for one sample: its noise columns set, its caption kept, completed or
    replaced, or the pair rejected as `noisy_pair`. `source` is the clean neighbour whose caption
    it may take: (cosine, uid, caption, lang). With `generates` (the model writes captions), a
    replaced caption is marked `generated`; `GenerateCaptions` then writes it. Only `trusted`
    terms (the precision guard's; None: every term) may complete a caption or make a BoW one."""
    original = sample.caption_clean if sample.caption_clean is not None else sample.caption
    usable = found if trusted is None else only_terms(found, trusted.terms)
    bow = bow_caption(usable, config.bow_terms)
    missing, _ = missing_concepts(original, usable)
    _, coverage = missing_concepts(original, found)
    noise_prob = round(estimate.noise_prob, 6)
    fields: dict[str, Any] = {
        "noise_prob": noise_prob,
        "caption_agreement": estimate.signals[1],
        "image_agreement": estimate.signals[2],
        "concepts": found.scored,
        "caption_original": original,
        "caption_bow": bow,
    }
    if source is not None:
        fields["caption_pseudo"] = source[2]
        fields["pseudo_source"] = f"neighbour:{source[1]}"
    if noise_prob > config.drop_above:
        detail = f"noise_prob {noise_prob:.3f} > noise.drop_above {config.drop_above}"
    elif noise_prob <= config.replace_above:
        if missing and coverage < config.min_coverage and original:
            completed = append_concepts(original, missing, found.lang)
            return sample.evolve(**fields, caption_completed=completed, caption_source=COMPLETED)
        return sample.evolve(**fields, caption_source=ORIGINAL)
    elif generates:
        return sample.evolve(**fields, caption_source=GENERATED)
    elif source is not None or bow:
        return sample.evolve(**fields, caption_source=NEIGHBOUR if source is not None else BOW)
    else:
        detail = f"noise_prob {noise_prob:.3f} > noise.replace_above and nothing to replace the caption with"
    return sample.decided(Status.REJECTED, NOISY_PAIR, STAGE, detail).evolve(**fields)


class _DecideFn(beam.DoFn):
    """Joins each candidate with its estimate and pseudo-caption source; applies the policy."""

    def __init__(self, config: NoiseConfig, progress_dir: str | None, generates: bool):
        self._config = config
        self._progress_dir = progress_dir
        self._generates = generates

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)
        self._sources = {
            name: beam.metrics.Metrics.counter(NAMESPACE, f"noise/caption_{name}")
            for name in (ORIGINAL, COMPLETED, GENERATED, NEIGHBOUR, BOW)
        }

    def process(
        self, element: tuple[str, dict[str, list[Any]]], bank: ConceptBank, trusted: TrustedTerms
    ) -> Iterator[Sample]:
        uid, joined = element
        samples = sorted(joined["sample"], key=_copy_order)
        if not samples:
            return
        first = samples[0]
        estimate: Estimate | None = joined["estimate"][0] if joined["estimate"] else None
        source = joined["pseudo"][0] if joined["pseudo"] else None
        if estimate is None:  # no neighbours were searched for it (cannot happen for a candidate)
            self._counter.add_passed()
            yield from samples
            return
        yield self._decide(first, estimate, source, bank, trusted, _classes(joined))
        yield from samples[1:]  # the same url and caption again: the writer marks it `duplicate_uid`

    def _decide(
        self,
        sample: Sample,
        estimate: Estimate,
        source: Any,
        bank: ConceptBank,
        trusted: TrustedTerms,
        classes: Classes | None,
    ) -> Sample:
        found = _concepts(sample, bank, self._config, classes)
        repaired = repair(sample, estimate, source, found, self._config, self._generates, trusted)
        if repaired.status == Status.SUCCESS:
            self._counter.add(kept=True)
            self._sources[repaired.caption_source or ORIGINAL].inc()
        else:
            self._counter.add(kept=False, reason=NOISY_PAIR)
        return repaired

    def finish_bundle(self) -> None:
        self._counter.flush()


def _copy_order(sample: Sample) -> tuple[str, str]:
    """Order of a uid's copies (the same url and caption); the first is the one judged."""
    return sample.url or "", sample.caption or ""


#: A classifier's best classes of one image: (class index, probability), best first.
Classes = tuple[tuple[int, float], ...]


def _classes(joined: dict[str, list[Any]]) -> Classes | None:
    """The classifier's classes of a joined uid (None: the concepts come from CLIP). Copies of a
    uid share url and caption, so normally their image; `min` keeps the choice deterministic."""
    if "classes" not in joined:
        return None
    return min(joined["classes"]) if joined["classes"] else ()


def _concepts(sample: Sample, bank: ConceptBank, config: NoiseConfig, classes: Classes | None) -> Concepts:
    if config.concept_model != CLIP:
        return label_concepts(
            classes or (), sample.lang, bank, config.min_concept_score, config.concept_margin
        )
    return score_concepts(
        np.asarray(sample.image_embedding, dtype=np.float32)[None, :],
        [sample.lang],
        bank,
        config.concepts_k,
        config.min_concept_score,
        config.concept_margin,
        config.fallback_language,
    )[0]


def _term_evidence(
    element: tuple[str, dict[str, list[Any]]], bank: ConceptBank, config: NoiseConfig
) -> Iterator[tuple[tuple[str, str], tuple[int, int]]]:
    """((lang, term), (1, named)) for each visual concept of a clean pair: the weak label its
    caption gives the precision guard."""
    _, joined = element
    if not joined["sample"] or not joined["estimate"]:
        return
    estimate: Estimate = joined["estimate"][0]
    if estimate.noise_prob > config.pseudo_max_noise:
        return
    sample = min(joined["sample"], key=_copy_order)  # the copy `_DecideFn` judges
    found = _concepts(sample, bank, config, _classes(joined))
    original = sample.caption_clean if sample.caption_clean is not None else sample.caption
    missing, _ = missing_concepts(original, found)
    for term in found.visual:
        yield (found.lang or "und", term), (1, 0 if term in missing else 1)


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    shown = named = 0
    for a, b in pairs:
        shown, named = shown + a, named + b
    return shown, named


def _member(sample: Sample) -> tuple[str, bytes, bytes]:
    return (
        sample.uid,
        np.asarray(sample.image_embedding, dtype=np.float16).tobytes(),
        np.asarray(sample.text_embedding, dtype=np.float16).tobytes(),
    )


def _info(sample: Sample) -> tuple[str, tuple[float | None, str | None, str | None]]:
    caption = sample.caption_clean if sample.caption_clean is not None else sample.caption
    return sample.uid, (sample.clip_score, caption, sample.lang)


def _requests(estimate: Estimate, config: NoiseConfig) -> Iterator[tuple[str, tuple[str, float]]]:
    """(neighbour uid, (uid, cosine)) for each close neighbour of a sample whose caption is replaced."""
    if estimate.noise_prob <= config.replace_above:
        return
    for neighbour, cosine in estimate.neighbours:
        if cosine >= config.pseudo_min_similarity:
            yield neighbour, (estimate.uid, cosine)


def _offers(element: tuple[str, dict[str, list[Any]]], config: NoiseConfig) -> Iterator[tuple[str, Any]]:
    """Each request to a clean neighbour with a caption: (requester, (cosine, neighbour, caption, lang))."""
    neighbour, joined = element
    if not joined["estimate"]:
        return
    found: Estimate = joined["estimate"][0]
    if found.noise_prob > config.pseudo_max_noise or not found.caption:
        return
    for requester, cosine in joined["request"]:
        yield requester, (cosine, neighbour, found.caption, found.lang)


def noise_summary(
    mixtures: Sequence[Mixture],
    bank: ConceptBank,
    config: NoiseConfig,
    trusted: TrustedTerms,
    concept_model: str = CLIP,
) -> dict[str, Any]:
    """What stats.json records under `noise`: the fitted mixtures, the source of the concepts,
    the vocabulary sizes and the precision guard's verdict."""
    return {
        "mixtures": {name: m.as_dict() for name, m in zip(SIGNALS, mixtures, strict=True)},
        "combine": config.combine,
        "weights": dict(zip(SIGNALS, config.weights, strict=True)),
        "concept_model": concept_model,
        "vocabulary": {lang: len(terms) for lang, terms in sorted(bank.terms.items())},
        "term_guard": trusted.summary(),
    }


class RepairCaptions(beam.PTransform):
    """The noise stage (see the module docstring): the samples, and as summary one dict
    (`noise_summary`) for stats.json."""

    def __init__(self, config: NoiseConfig, embed: EmbedConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._embed = embed
        self._progress_dir = progress_dir
        # Read here, so that a bad word list fails before the run starts, naming the file.
        self._word_list = read_word_list(config.vocabulary) if config.vocabulary else None
        self._concept_model = CLIP
        if config.concept_model != CLIP:  # the classifier's class names are the vocabulary
            self._word_list = {LABEL_LANGUAGE: list(class_names())}
            self._concept_model = classifier_identity()
        self._generates = config.generate == "auto" and model_generates(embed)

    def expand(self, samples: beam.PCollection) -> WithSummary:
        config = self._config
        candidates, passing = samples | "Split" >> SplitByStatus(embedded)
        members = candidates | "Members" >> beam.Map(_member)
        infos = candidates | "Infos" >> beam.Map(_info)
        searches = {
            name: members
            | f"{name.capitalize()}Neighbours"
            >> NeighbourAgreement(
                space,
                config.k,
                config.cluster_size,
                config.max_group_size,
                config.kmeans_sample,
                config.seed,
            )
            for name, space in _SEARCHES
        }
        clip_values = infos | "ClipValues" >> beam.FlatMap(lambda kv: _signal_value(0)((kv[0], kv[1][0])))
        mixtures = [
            clip_values | "FitClipScore" >> FitMixture(config.mixture_sample, config.seed),
            searches["caption"]
            | "CaptionValues" >> beam.FlatMap(_signal_value(1))
            | "FitCaptionAgreement" >> FitMixture(config.mixture_sample, config.seed),
            searches["image"]
            | "ImageValues" >> beam.FlatMap(_signal_value(2))
            | "FitImageAgreement" >> FitMixture(config.mixture_sample, config.seed),
        ]
        keyed = {
            "info": infos,
            "caption": searches["caption"] | "KeyCaption" >> beam.Map(lambda a: (a[0], a)),
            "image": searches["image"] | "KeyImage" >> beam.Map(lambda a: (a[0], a)),
        }
        estimates = (
            keyed
            | "JoinSignals" >> beam.CoGroupByKey()
            | "Estimate"
            >> beam.FlatMap(
                _estimate,
                clip=beam.pvalue.AsSingleton(mixtures[0]),
                caption=beam.pvalue.AsSingleton(mixtures[1]),
                image=beam.pvalue.AsSingleton(mixtures[2]),
                config=config,
            )
        )
        keyed_estimates = estimates | "KeyEstimates" >> beam.Map(lambda e: (e.uid, e))

        # Pseudo-captions: the nearest clean neighbour of each sample whose caption is replaced.
        requests = estimates | "Requests" >> beam.FlatMap(_requests, config=config)
        sources = (
            {"request": requests, "estimate": keyed_estimates}
            | "JoinNeighbours" >> beam.CoGroupByKey()
            | "Offers" >> beam.FlatMap(_offers, config=config)
            | "BestSource" >> beam.CombinePerKey(_BestSource())
        )

        # The concept bank: the vocabulary and its prompt-ensembled text embeddings.
        term_counts = (
            infos
            | "Terms" >> beam.FlatMap(lambda kv: iter_terms([(kv[1][1], kv[1][2])]))
            | "CountTerms" >> beam.CombinePerKey(sum)
        )
        caption_counts = (
            infos
            | "Langs" >> beam.Map(lambda kv: (kv[1][2] or "und", 1))
            | "CountLangs" >> beam.CombinePerKey(sum)
        )
        vocabulary = (
            term_counts
            | "AllTerms" >> beam.combiners.ToList()
            | "Vocabulary"
            >> beam.Map(
                lambda counts, langs: choose_vocabulary(
                    counts, langs, config.vocabulary_size, config.vocabulary_min_count, self._word_list
                ),
                langs=beam.pvalue.AsList(caption_counts),
            )
        )
        if config.concept_model == CLIP:  # the vocabulary's prompts through the run's text tower
            encoder: RunInference[Any, Any] = RunInference(KeyedModelHandler(ClipTextHandler(self._embed)))
            bank = (
                vocabulary
                | "Prompts" >> beam.FlatMap(_prompt_chunks, templates=config.templates)
                | "EncodePrompts" >> on_accelerator(encoder, self._embed)
                | "AllPrompts" >> beam.combiners.ToList()
                | "Bank"
                >> beam.Map(_clip_bank, vocabulary=beam.pvalue.AsSingleton(vocabulary), config=config)
            )
        else:
            bank = vocabulary | "LabelBank" >> beam.Map(_label_bank, config=config)

        to_join = {
            "sample": candidates | "KeyByUid" >> beam.Map(lambda s: (s.uid, s)),
            "estimate": keyed_estimates,
            "pseudo": sources,
        }
        if config.concept_model != CLIP:  # the classifier's classes of each image
            classify = ClassifyImages(self._embed, config.concepts_k)
            to_join["classes"] = candidates | "ClassifyImages" >> classify
        joined = to_join | "JoinEstimates" >> beam.CoGroupByKey()
        # The precision guard: how often the clean pairs' captions name each visual concept.
        trusted = (
            joined
            | "TermEvidence"
            >> beam.FlatMap(_term_evidence, bank=beam.pvalue.AsSingleton(bank), config=config)
            | "SumEvidence" >> beam.CombinePerKey(_sum_pairs)
            | "AllEvidence" >> beam.combiners.ToList()
            | "TrustTerms" >> beam.Map(trust_terms, config.min_term_precision, config.min_term_support)
        )
        decided = joined | "Decide" >> beam.ParDo(
            _DecideFn(config, self._progress_dir, self._generates),
            bank=beam.pvalue.AsSingleton(bank),
            trusted=beam.pvalue.AsSingleton(trusted),
        )
        if self._generates:
            decided = decided | "Generate" >> GenerateCaptions(self._embed, self._progress_dir)
        concept_model = self._concept_model
        summary = mixtures[0] | "Summary" >> beam.Map(
            lambda clip, caption, image, bank_, trusted_: noise_summary(
                (clip, caption, image), bank_, config, trusted_, concept_model
            ),
            caption=beam.pvalue.AsSingleton(mixtures[1]),
            image=beam.pvalue.AsSingleton(mixtures[2]),
            bank_=beam.pvalue.AsSingleton(bank),
            trusted_=beam.pvalue.AsSingleton(trusted),
        )
        return WithSummary((decided, passing) | "Merge" >> beam.Flatten(), summary)
