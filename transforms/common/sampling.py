"""A deterministic sample of bounded size, chosen by hash before any global step.

`HashSample(size, key)`: elements → one list, the `size` elements with the largest `key` (a
uniform 64-bit hash of the element's uid), as `beam.combiners.Top.Of(size, key=key)` gives them,
but without shipping every bundle's top `size` to one reducer. The elements are counted first (a
global count, one number); then only those whose key clears a threshold go on, the threshold set
so that `candidates(size, total)` of the `total` are expected to pass (`size` plus a margin of
20 % and 64), and `Top.Of` picks the sample among those. Its input is thus bounded by the margin,
whatever the total.

The sample is a function of the keys alone: the same on every run, runner and worker count. It is
the `Top.Of` sample unless fewer than `size` keys clear the threshold, which for a uniform hash is
a deviation of more than six standard deviations below the mean (then the sample holds the
fewer that passed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

_SPACE = 1 << 64


def candidates(size: int, total: int) -> int:
    """How many of `total` elements are expected to clear the threshold for a sample of `size`."""
    return min(total, math.ceil(size * 1.2) + 64)


def threshold(size: int, total: int) -> int:
    """The smallest 64-bit key that goes on to the top-`size` selection among `total` elements
    (0: every element goes on)."""
    wanted = candidates(size, total)
    if wanted >= total:
        return 0
    return _SPACE - (_SPACE * wanted) // total


class HashSample(beam.PTransform):
    """Elements → one list of the `size` elements with the largest `key` (see the module).

    `namespace` names the metric counting the elements that reach the selection
    (`<namespace>/sample_candidates`)."""

    def __init__(self, size: int, key: Callable[[Any], int], namespace: str = "sample"):
        super().__init__()
        self._size = size
        self._key = key
        self._namespace = namespace

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        key, size = self._key, self._size
        passed = Metrics.counter(self._namespace, "sample_candidates")

        def clears(element: Any, total: int) -> bool:
            if key(element) >= threshold(size, total):
                passed.inc()
                return True
            return False

        total = elements | "Count" >> beam.combiners.Count.Globally()
        return (
            elements
            | "Threshold" >> beam.Filter(clears, beam.pvalue.AsSingleton(total))
            | "Top" >> beam.combiners.Top.Of(size, key=key)
        )
