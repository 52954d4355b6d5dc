"""The repair policy: what each pair's caption becomes, from its noise estimate and its concepts.

- `repair`: one sample's verdict: kept as it is, completed with the visual concepts it misses,
  replaced by a neighbour's caption, a generated or a BoW caption, or rejected as `noisy_pair`;
  every change carries the evidence measured in the run.
- `DecideFn`: `repair` over the joined sample (its light view), estimate, pseudo-caption source
  and classes, with the concept bank and the precision guard's trusted terms as side inputs; it
  emits the change as a verdict (`transforms/common/verdicts.py`).
- The pseudo-caption search (`pseudo_requests`, `pseudo_offers`, `BestSource`): the nearest clean
  neighbour whose caption a replaced sample may take.
- `term_evidence` / `sum_pairs`: what the precision guard (`concepts.trust_terms`) counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from schemas.sample import Sample, Status
from schemas.verdict import NOISE, Verdict
from transforms.common.progress import NAMESPACE, StageCounter
from transforms.common.verdicts import copy_order, verdict
from transforms.noise.captions import BOW, COMPLETED, GENERATED, NEIGHBOUR, ORIGINAL
from transforms.noise.concepts import (
    ConceptBank,
    Concepts,
    TrustedTerms,
    append_concepts,
    bow_caption,
    label_concepts,
    missing_concepts,
    only_terms,
    score_concepts,
)
from transforms.noise.config import CLIP, STAGE, NoiseConfig
from transforms.noise.signals import Estimate

NOISY_PAIR = "noisy_pair"


def _best_source(
    candidates: Iterable[tuple[float, str, str, str | None]],
) -> tuple[float, str, str, str | None] | None:
    """The most similar clean neighbour (ties: smallest uid)."""
    ranked = sorted(candidates, key=lambda c: (-c[0], c[1]))
    return ranked[0] if ranked else None


class BestSource(beam.CombineFn):
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


class DecideFn(beam.DoFn):
    """Joins each candidate with its estimate and pseudo-caption source; applies the policy and
    emits what it changed as a `Verdict` (step `NOISE`)."""

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
    ) -> Iterator[Verdict]:
        uid, joined = element
        if not joined["sample"]:
            return
        first = min(joined["sample"], key=copy_order)  # copies of a uid are judged once
        estimate: Estimate | None = joined["estimate"][0] if joined["estimate"] else None
        source = joined["pseudo"][0] if joined["pseudo"] else None
        if estimate is None:  # no neighbours were searched for it (cannot happen for a candidate)
            self._counter.add_passed()
            return
        repaired = self._decide(first, estimate, source, bank, trusted, image_classes(joined))
        found = verdict(first, repaired, NOISE, "embedded")
        if found is not None:
            yield found

    def _decide(
        self,
        sample: Sample,
        estimate: Estimate,
        source: Any,
        bank: ConceptBank,
        trusted: TrustedTerms,
        classes: Classes | None,
    ) -> Sample:
        found = visual_concepts(sample, bank, self._config, classes)
        repaired = repair(sample, estimate, source, found, self._config, self._generates, trusted)
        if repaired.status == Status.SUCCESS:
            self._counter.add(kept=True)
            self._sources[repaired.caption_source or ORIGINAL].inc()
        else:
            self._counter.add(kept=False, reason=NOISY_PAIR)
        return repaired

    def finish_bundle(self) -> None:
        self._counter.flush()


#: A classifier's best classes of one image: (class index, probability), best first.
Classes = tuple[tuple[int, float], ...]


def image_classes(joined: dict[str, list[Any]]) -> Classes | None:
    """The classifier's classes of a joined uid (None: the concepts come from CLIP). Copies of a
    uid share url and caption, so normally their image; `min` keeps the choice deterministic."""
    if "classes" not in joined:
        return None
    return min(joined["classes"]) if joined["classes"] else ()


def visual_concepts(
    sample: Sample, bank: ConceptBank, config: NoiseConfig, classes: Classes | None
) -> Concepts:
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


def term_evidence(
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
    sample = min(joined["sample"], key=copy_order)  # the copy `DecideFn` judges
    found = visual_concepts(sample, bank, config, image_classes(joined))
    original = sample.caption_clean if sample.caption_clean is not None else sample.caption
    missing, _ = missing_concepts(original, found)
    for term in found.visual:
        yield (found.lang or "und", term), (1, 0 if term in missing else 1)


def sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    shown = named = 0
    for a, b in pairs:
        shown, named = shown + a, named + b
    return shown, named


def pseudo_requests(estimate: Estimate, config: NoiseConfig) -> Iterator[tuple[str, tuple[str, float]]]:
    """(neighbour uid, (uid, cosine)) for each close neighbour of a sample whose caption is replaced."""
    if estimate.noise_prob <= config.replace_above:
        return
    for neighbour, cosine in estimate.neighbours:
        if cosine >= config.pseudo_min_similarity:
            yield neighbour, (estimate.uid, cosine)


def pseudo_offers(
    element: tuple[str, dict[str, list[Any]]], config: NoiseConfig
) -> Iterator[tuple[str, Any]]:
    """Each request to a clean neighbour with a caption: (requester, (cosine, neighbour, caption, lang))."""
    neighbour, joined = element
    if not joined["estimate"]:
        return
    found: Estimate = joined["estimate"][0]
    if found.noise_prob > config.pseudo_max_noise or not found.caption:
        return
    for requester, cosine in joined["request"]:
        yield requester, (cosine, neighbour, found.caption, found.lang)
