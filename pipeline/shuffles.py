"""What a run moves through its shuffles, measured: elements and encoded bytes per GroupByKey.

`measure_shuffles(pipeline)` (with `run.measure_shuffles: true`) adds, beside every GroupByKey of
the built pipeline (also those inside `CoGroupByKey` and `CombinePerKey`), a step that counts the
elements entering it, their size in the coder Beam infers for that PCollection (what a runner
writes to its shuffle, before any combiner lifting), and how many of them hold a `Sample` with
its image bytes. The counts are Beam counters in the `winnow:shuffle` namespace; `shuffle_table`
turns a finished job's counters into one row per grouping. `deploy/sizing.py` takes its
bytes-per-pair figures from such a run.

Everything here observes; it changes no element, so the shards are the same with or without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor

from schemas.sample import Sample

NAMESPACE = "winnow:shuffle"
_PROBE_PREFIX = "ShuffleProbe"


def _holds_image(value: Any, depth: int = 0) -> bool:
    """Whether `value` is, or holds (in tuples, lists, dict values), a sample with image bytes."""
    if isinstance(value, Sample):
        return value.image is not None
    if depth > 3:
        return False
    if isinstance(value, (tuple, list)):
        return any(_holds_image(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_holds_image(v, depth + 1) for v in value.values())
    return False


class _ProbeFn(beam.DoFn):
    def __init__(self, label: str, coder: beam.coders.Coder):
        self._label = label
        self._coder = coder

    def setup(self) -> None:
        self._elements = beam.metrics.Metrics.counter(NAMESPACE, f"{self._label}/elements")
        self._bytes = beam.metrics.Metrics.counter(NAMESPACE, f"{self._label}/bytes")
        self._images = beam.metrics.Metrics.counter(NAMESPACE, f"{self._label}/images")

    def process(self, element: Any) -> Iterator[Any]:
        self._elements.inc()
        self._bytes.inc(len(self._coder.encode(element)))
        if _holds_image(element):
            self._images.inc()
        return iter(())


class _FindGroupings(PipelineVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[str, beam.PCollection]] = []

    def visit_transform(self, applied: AppliedPTransform) -> None:
        if isinstance(applied.transform, beam.GroupByKey) and not applied.full_label.startswith(
            _PROBE_PREFIX
        ):
            (pcoll,) = applied.main_inputs.values()
            if isinstance(pcoll, beam.PCollection):
                self.found.append((applied.full_label, pcoll))


def groupings(pipeline: beam.Pipeline) -> list[tuple[str, beam.PCollection]]:
    """(full label, input PCollection) of every GroupByKey in the built pipeline."""
    finder = _FindGroupings()
    pipeline.visit(finder)
    return finder.found


def measure_shuffles(pipeline: beam.Pipeline) -> int:
    """Adds a probe beside every GroupByKey (see the module); returns how many it added."""
    found = groupings(pipeline)
    for label, pcoll in found:
        coder = beam.coders.registry.get_coder(pcoll.element_type)
        _ = pcoll | f"{_PROBE_PREFIX}[{label}]" >> beam.ParDo(_ProbeFn(label, coder))
    return len(found)


def shuffle_table(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """`{grouping label: {"elements", "bytes", "images"}}` from the job's `winnow:shuffle` counters."""
    table: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        label, _, field = name.rpartition("/")
        if field in ("elements", "bytes", "images"):
            table.setdefault(label, {"elements": 0, "bytes": 0, "images": 0})[field] += value
    return dict(sorted(table.items()))
