"""A two-component 1-D Gaussian mixture: turns a score into the probability that the pair is noise.

DivideMix (Li et al., 2020) and NLIP (Huang et al., 2023) fit a two-component mixture to the
per-sample loss and read the posterior of the high-loss component as the probability that a label
is noisy. Winnow does the same on scores where higher means cleaner (`clip_score`, neighbour
agreement): the component with the lower mean is the noise component.

`fit_mixture(values)` runs EM from a deterministic start (the 10th and 90th percentiles), so the
same values give the same parameters. `Mixture.noise_log_odds(x)` is the log-odds of the noise
component's posterior, made strictly decreasing in the score (beyond either mean it goes on in a
straight line), so a wider noise component cannot flag very high scores and the estimates never
saturate into ties; `noise_probability(x)` is its logistic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Variance floor, as a fraction of the data's variance: keeps a component from collapsing onto one value.
_MIN_VARIANCE_SHARE = 1e-4


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Fitted parameters; component 0 is the noise one (lower mean)."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    samples: int
    iterations: int
    log_likelihood: float

    def noise_log_odds(self, values: Any) -> np.ndarray:
        """log(P(noise | x) / P(clean | x)) at each value (array in, array out), strictly decreasing.

        Between the two means this is the mixture's own log-odds, a quadratic whose slope is negative
        at both means and so everywhere between them; beyond either mean it continues as a straight
        line with the slope it has there. So a higher score always means a lower noise estimate (a
        wide noise component cannot flag very high scores), and the estimate never saturates into
        ties: two very clean or very noisy pairs are still ranked against each other.
        """
        x = np.asarray(values, dtype=np.float64)
        if self.samples == 0 or self.means[0] == self.means[1]:
            return np.zeros(x.shape)
        (w0, w1), (m0, m1), (s0, s1) = self.weights, self.means, self.stds
        bias = math.log(max(w0, 1e-300) / s0) - math.log(max(w1, 1e-300) / s1)

        def inside(t: np.ndarray | float) -> np.ndarray:
            return np.asarray(bias - 0.5 * ((t - m0) / s0) ** 2 + 0.5 * ((t - m1) / s1) ** 2)

        def slope(t: float) -> float:
            return -(t - m0) / s0**2 + (t - m1) / s1**2

        clipped = np.clip(x, m0, m1)
        out = inside(clipped)
        out = np.where(x > m1, inside(m1) + slope(m1) * (x - m1), out)
        out = np.where(x < m0, inside(m0) + slope(m0) * (x - m0), out)
        return np.asarray(out, dtype=np.float64)

    def noise_probability(self, values: Any) -> np.ndarray:
        """Posterior of the noise component at each value: the logistic of `noise_log_odds`."""
        log_odds = self.noise_log_odds(values)
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * log_odds)))

    def _components(self) -> list[tuple[float, float, float]]:
        return list(zip(self.weights, self.means, self.stds, strict=True))

    def as_dict(self) -> dict[str, Any]:
        """For stats.json: rounded parameters and the fit's diagnostics."""
        names = ("noise", "clean")
        return {
            **{
                name: {"weight": round(w, 6), "mean": round(m, 6), "std": round(s, 6)}
                for name, (w, m, s) in zip(names, self._components(), strict=True)
            },
            "samples": self.samples,
            "iterations": self.iterations,
            "log_likelihood": round(self.log_likelihood, 4),
        }


def _log_normal(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def fit_mixture(
    values: Sequence[float] | np.ndarray, max_iterations: int = 300, tolerance: float = 1e-9
) -> Mixture:
    """EM for a two-component Gaussian mixture on finite `values` (NaN and inf are ignored)."""
    x = np.asarray(values, dtype=np.float64)
    x = np.sort(x[np.isfinite(x)])  # sorted: the sums, and so the fit, do not depend on input order
    if len(x) < 2 or float(x[-1] - x[0]) == 0.0:
        centre = float(x.mean()) if len(x) else 0.0
        return Mixture((0.5, 0.5), (centre, centre), (1.0, 1.0), len(x), 0, 0.0)
    floor = max(float(x.var()) * _MIN_VARIANCE_SHARE, 1e-12)
    means = np.array([np.quantile(x, 0.1), np.quantile(x, 0.9)])
    variances = np.full(2, max(float(x.var()), floor))
    weights = np.array([0.5, 0.5])
    previous = -math.inf
    log_likelihood = previous
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        log_p = np.stack(
            [
                _log_normal(x, float(m), math.sqrt(v)) + math.log(w)
                for w, m, v in zip(weights, means, variances, strict=True)
            ]
        )
        top = log_p.max(axis=0)
        total = top + np.log(np.exp(log_p - top).sum(axis=0))
        log_likelihood = float(total.sum())
        resp = np.exp(log_p - total)
        mass = resp.sum(axis=1) + 1e-300
        weights = np.clip(mass / len(x), 1e-6, 1.0)
        weights /= weights.sum()
        means = (resp @ x) / mass
        variances = np.maximum((resp * (x[None, :] - means[:, None]) ** 2).sum(axis=1) / mass, floor)
        if abs(log_likelihood - previous) <= tolerance * abs(log_likelihood):
            break
        previous = log_likelihood
    order = np.argsort(means)
    return Mixture(
        weights=(float(weights[order[0]]), float(weights[order[1]])),
        means=(float(means[order[0]]), float(means[order[1]])),
        stds=(float(math.sqrt(variances[order[0]])), float(math.sqrt(variances[order[1]]))),
        samples=len(x),
        iterations=iteration,
        log_likelihood=log_likelihood,
    )
