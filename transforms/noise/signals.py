"""The noise stage's signals, each calibrated by a two-component mixture, and their combination.

- `FitMixture`: one signal's values (a deterministic sample by uid hash) → a `Mixture`
  (`mixture.py`) whose components are "clean" and "noisy".
- `estimate`: a sample's `Estimate`: each signal's noise log-odds under its mixture, combined into
  `noise_prob` by `combine` (`noise.combine`: `bayes`, a weighted log-odds sum compressed by asinh,
  or `mean`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import xxhash

from transforms.common.sampling import HashSample
from transforms.noise.config import NoiseConfig
from transforms.noise.mixture import Mixture, fit_mixture

SIGNALS = ("clip_score", "caption_agreement", "image_agreement")


_EPS = 1e-6


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


def signal_value(kind: int) -> Any:
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
            >> HashSample(
                self._sample, lambda kv: xxhash.xxh3_64_intdigest(kv[0].encode(), seed=seed), "noise"
            )
            | "Fit" >> beam.Map(lambda sampled: fit_mixture([v for _, v in sorted(sampled)]))
        )


def estimate(
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
