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
   `combine: bayes` (`transforms/noise/signals.py`) adds the signals' log-odds against the prior
   (naive Bayes: independent evidence, each weighted by `weights`); `combine: mean` averages the
   posteriors.
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
   takes its place (`pseudo_source` names the model; `transforms/noise/captions.py`).
5. **Policy** (`transforms/noise/policy.py`): `noise_prob` <= `replace_above`: the caption
   describes the image; it is kept when it names at least `min_coverage` of the visual concepts,
   else completed with those it misses. Above: replaced by the pseudo-caption, else the BoW
   caption; with neither, or above `drop_above`, the pair is rejected (`noisy_pair`).
   `caption_source` says which caption the WebDataset `.txt` holds: `original`, `completed`,
   `generated`, `neighbour` or `bow`. The defaults (`replace_above` 1.0, `min_coverage` 0.0,
   `drop_above` 1.0) estimate and keep every caption as it is; completing, replacing and dropping
   are opted into.
6. **Precision guard**: before any term is added to a caption or put in a BoW caption, the stage
   measures on the run's clean pairs (`noise_prob` <= `pseudo_max_noise`) how often each visual
   concept is named by the caption (`concepts.trust_terms`). Only terms at or above
   `min_term_precision` over `min_term_support` pairs are used; with none, completion and BoW
   captions are off, and `stats.json` says why (`noise.term_guard`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from schemas.sample import Sample
from schemas.verdict import CAPTION, Verdict
from transforms.common.outputs import WithSummary
from transforms.common.routing import SplitByStatus, embedded
from transforms.common.verdicts import ApplyVerdicts, apply_verdicts, fields_verdict, light
from transforms.embed.clip import ClipTextHandler, on_accelerator
from transforms.noise.captions import GENERATED, GenerateCaptions, model_generates
from transforms.noise.classify import LABEL_LANGUAGE, ClassifyImages, class_names, classifier_identity
from transforms.noise.concepts import (
    ConceptBank,
    TrustedTerms,
    Vocabulary,
    bank_from_encoded,
    choose_vocabulary,
    iter_terms,
    label_bank,
    log_bank,
    read_word_list,
    trust_terms,
    vocabulary_prompts,
)
from transforms.noise.config import CLIP, NoiseConfig
from transforms.noise.mixture import Mixture
from transforms.noise.neighbours import NeighbourAgreement, Space
from transforms.noise.policy import (
    BestSource,
    DecideFn,
    pseudo_offers,
    pseudo_requests,
    sum_pairs,
    term_evidence,
)
from transforms.noise.signals import (
    SIGNALS,
    FitMixture,
    estimate,
    signal_value,
)

if TYPE_CHECKING:
    from transforms.embed.config import EmbedConfig

log = logging.getLogger(__name__)

#: The two neighbour searches: caption agreement searches images, image agreement searches captions.
_SEARCHES: tuple[tuple[str, Space], ...] = (("caption", "image"), ("image", "text"))


# ---------------------------------------------------------------- combining the signals


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


# ---------------------------------------------------------------- the decision


def _member(sample: Sample) -> tuple[str, bytes, bytes]:
    return (
        sample.uid,
        np.asarray(sample.image_embedding, dtype=np.float16).tobytes(),
        np.asarray(sample.text_embedding, dtype=np.float16).tobytes(),
    )


def _info(sample: Sample) -> tuple[str, tuple[float | None, str | None, str | None]]:
    caption = sample.caption_clean if sample.caption_clean is not None else sample.caption
    return sample.uid, (sample.clip_score, caption, sample.lang)


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


def _listed(word_list: dict[str, list[str]]) -> Any:
    everywhere = set(word_list.get("*", []))
    listed = {lang: set(terms) | everywhere for lang, terms in word_list.items()}

    def keep(element: tuple[tuple[str, str], int]) -> bool:
        (lang, term), _ = element
        return term in listed.get(lang, everywhere)

    return keep


def _by_count(element: tuple[tuple[str, str], int]) -> tuple[int, str]:
    (_, term), count = element
    return (-count, term)  # the least is the most frequent term, ties by term


class _CandidateTerms(beam.PTransform):
    """((lang, term), count) → only those the vocabulary can take: per language the
    `vocabulary_size` most frequent terms in at least `vocabulary_min_count` captions, or the word
    list's terms. So the one step that builds the vocabulary gets a bounded list, not every term."""

    def __init__(self, config: NoiseConfig, word_list: dict[str, list[str]] | None):
        super().__init__()
        self._config = config
        self._word_list = word_list

    def expand(self, term_counts: beam.PCollection) -> beam.PCollection:
        if self._word_list is not None:
            return term_counts | "Listed" >> beam.Filter(_listed(self._word_list))
        least, size = self._config.vocabulary_min_count, self._config.vocabulary_size
        return (
            term_counts
            | "Frequent" >> beam.Filter(lambda element: element[1] >= least)
            | "ByLanguage" >> beam.Map(lambda element: (element[0][0], element))
            | "TopPerLanguage" >> beam.combiners.Top.PerKey(size, key=_by_count, reverse=True)
            | "Terms" >> beam.FlatMap(lambda kv: kv[1])
        )


class JudgeCaptions(beam.PTransform):
    """The noise stage's judgement (see the module docstring): samples → their verdicts
    (`schemas.verdict.Verdict`, steps `NOISE` and `CAPTION`), and as summary one dict
    (`noise_summary`) for stats.json.

    Its input is the samples, or (views, images): light views to judge (no image bytes:
    `transforms.common.verdicts.light`) and the same samples with their images, for the two steps
    that look at the pixels: the image classifier (`concept_model` other than CLIP) and the
    caption decoder.
    """

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

    def expand(self, samples: beam.PCollection | tuple[beam.PCollection, beam.PCollection]) -> WithSummary:
        config = self._config
        if isinstance(samples, tuple):
            samples, with_images = samples
            candidates = samples | "Embedded" >> beam.Filter(embedded)
            images = with_images | "EmbeddedImages" >> beam.Filter(embedded)
        else:
            candidates = images = samples | "Embedded" >> beam.Filter(embedded)
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
        clip_values = infos | "ClipValues" >> beam.FlatMap(lambda kv: signal_value(0)((kv[0], kv[1][0])))
        mixtures = [
            clip_values | "FitClipScore" >> FitMixture(config.mixture_sample, config.seed),
            searches["caption"]
            | "CaptionValues" >> beam.FlatMap(signal_value(1))
            | "FitCaptionAgreement" >> FitMixture(config.mixture_sample, config.seed),
            searches["image"]
            | "ImageValues" >> beam.FlatMap(signal_value(2))
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
                estimate,
                clip=beam.pvalue.AsSingleton(mixtures[0]),
                caption=beam.pvalue.AsSingleton(mixtures[1]),
                image=beam.pvalue.AsSingleton(mixtures[2]),
                config=config,
            )
        )
        keyed_estimates = estimates | "KeyEstimates" >> beam.Map(lambda e: (e.uid, e))

        # Pseudo-captions: the nearest clean neighbour of each sample whose caption is replaced.
        requests = estimates | "Requests" >> beam.FlatMap(pseudo_requests, config=config)
        sources = (
            {"request": requests, "estimate": keyed_estimates}
            | "JoinNeighbours" >> beam.CoGroupByKey()
            | "Offers" >> beam.FlatMap(pseudo_offers, config=config)
            | "BestSource" >> beam.CombinePerKey(BestSource())
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
            | "Candidates" >> _CandidateTerms(config, self._word_list)
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
            to_join["classes"] = images | "ClassifyImages" >> classify
        joined = to_join | "JoinEstimates" >> beam.CoGroupByKey()
        # The precision guard: how often the clean pairs' captions name each visual concept.
        trusted = (
            joined
            | "TermEvidence" >> beam.FlatMap(term_evidence, bank=beam.pvalue.AsSingleton(bank), config=config)
            | "SumEvidence" >> beam.CombinePerKey(sum_pairs)
            | "AllEvidence" >> beam.combiners.ToList()
            | "TrustTerms" >> beam.Map(trust_terms, config.min_term_precision, config.min_term_support)
        )
        decided = joined | "Decide" >> beam.ParDo(
            DecideFn(config, self._progress_dir, self._generates),
            bank=beam.pvalue.AsSingleton(bank),
            trusted=beam.pvalue.AsSingleton(trusted),
        )
        if self._generates:
            captioned = (decided, images) | "Generate" >> _GenerateVerdicts(self._embed, self._progress_dir)
            decided = (decided, captioned) | "WithCaptions" >> beam.Flatten()
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
        return WithSummary(decided, summary)


def _marked(found: Verdict) -> bool:
    return ("caption_source", GENERATED) in found.changes


def _to_caption(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Sample]:
    """The copy of a uid its noise verdict marked `generated`, with that verdict applied."""
    _, joined = element
    if joined["verdict"]:
        for sample in apply_verdicts(joined["image"], joined["verdict"]):
            if sample.caption_source == GENERATED:
                yield sample


#: The fields the caption decoder's step sets (`GenerateCaptions`).
_CAPTION_FIELDS = ("caption_pseudo", "pseudo_source", "caption_source", "status", "reason", "stage", "error")


def _caption_verdict(sample: Sample) -> Verdict:
    return fields_verdict(sample, _CAPTION_FIELDS, CAPTION, "generated")


class _GenerateVerdicts(beam.PTransform):
    """(noise verdicts, candidates with their images) → the caption decoder's verdicts for the
    samples marked `generated`. The decoder needs the pixels, so the candidates' images cross one
    more shuffle here, and only when the run's model writes captions."""

    def __init__(self, embed: EmbedConfig, progress_dir: str | None):
        super().__init__()
        self._embed = embed
        self._progress_dir = progress_dir

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        verdicts, images = inputs
        return (
            {
                "verdict": verdicts
                | "Marked" >> beam.Filter(_marked)
                | "KeyMarked" >> beam.Map(lambda v: (v.uid, v)),
                "image": images | "KeyImages" >> beam.Map(lambda s: (s.uid, s)),
            }
            | "JoinImages" >> beam.CoGroupByKey()
            | "ToCaption" >> beam.FlatMap(_to_caption)
            | "Captions" >> GenerateCaptions(self._embed, self._progress_dir)
            | "CaptionVerdicts" >> beam.Map(_caption_verdict)
        )


class RepairCaptions(beam.PTransform):
    """The noise stage on its own: samples → the same samples with `JudgeCaptions`' verdicts
    applied by uid, and its summary. A full run applies the verdicts at the shard grouping."""

    def __init__(self, config: NoiseConfig, embed: EmbedConfig, progress_dir: str | None = None):
        super().__init__()
        self._judge = JudgeCaptions(config, embed, progress_dir)

    def expand(self, samples: beam.PCollection) -> WithSummary:
        candidates, passing = samples | "Split" >> SplitByStatus(embedded)
        views = candidates | "Light" >> beam.Map(light)
        judged = (views, candidates) | "Judge" >> self._judge
        decided = candidates | "ApplyVerdicts" >> ApplyVerdicts(judged.rows)
        return WithSummary((decided, passing) | "Merge" >> beam.Flatten(), judged.summary)
