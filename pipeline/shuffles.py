"""What a run moves through its shuffles, measured: elements and encoded bytes per GroupByKey.

`measure_shuffles(pipeline)` (with `run.measure_shuffles: true`) adds, beside every GroupByKey of
the built pipeline (also those inside `CoGroupByKey` and `CombinePerKey`), a step that counts the
elements entering it, their size in the coder Beam infers for that PCollection (what a runner
writes to its shuffle, before any combiner lifting), and how many of them hold a `Sample` with
its image bytes. Beside every GroupByKey whose groups a step reads as a whole (not the ones inside
a `CombinePerKey`, whose runner combines as it goes and holds one accumulator per key), a second
step records how many elements each key's group holds (a Beam distribution: its maximum is the
largest group). The counts are in the `winnow:shuffle` namespace; `shuffle_table` turns a finished
job's counters and group maxima into one row per grouping, and `stage_msecs` sums the runner's
own execution time per top-level step (Beam's `ptransform_execution_time` monitoring metric, where
the runner reports it). `deploy/sizing.py` takes its per-pair figures from such a run
(`benchmarks/scale.py`).

Everything here observes; it changes no element, so the shards are the same with or without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor

from schemas.sample import Sample

NAMESPACE = "winnow:shuffle"
_PROBE_PREFIX = "ShuffleProbe"
#: The distribution of elements per key of a grouping: `<label>/group_elements`.
GROUP_FIELD = "group_elements"
_EXECUTION_TIME = "ptransform_execution_time:total_msecs:v1"


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


class _GroupSizeFn(beam.DoFn):
    """Records how many values each key of a grouping's output holds."""

    def __init__(self, label: str):
        self._label = label

    def setup(self) -> None:
        self._sizes = beam.metrics.Metrics.distribution(NAMESPACE, f"{self._label}/{GROUP_FIELD}")

    def process(self, element: tuple[Any, Iterable[Any]]) -> Iterator[Any]:
        values = element[1]
        self._sizes.update(len(values) if isinstance(values, Sized) else sum(1 for _ in values))
        return iter(())


def _inside_combine(applied: AppliedPTransform) -> bool:
    parent = applied.parent
    while parent is not None:
        if isinstance(parent.transform, beam.CombinePerKey):
            return True
        parent = parent.parent
    return False


class _FindGroupings(PipelineVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[str, beam.PCollection, beam.PCollection | None]] = []

    def visit_transform(self, applied: AppliedPTransform) -> None:
        if isinstance(applied.transform, beam.GroupByKey) and not applied.full_label.startswith(
            _PROBE_PREFIX
        ):
            (pcoll,) = applied.main_inputs.values()
            output = None if _inside_combine(applied) else applied.outputs.get(None)
            grouped = output if isinstance(output, beam.PCollection) else None
            if isinstance(pcoll, beam.PCollection):
                self.found.append((applied.full_label, pcoll, grouped))


def groupings(pipeline: beam.Pipeline) -> list[tuple[str, beam.PCollection]]:
    """(full label, input PCollection) of every GroupByKey in the built pipeline."""
    return [(label, pcoll) for label, pcoll, _ in _find(pipeline)]


def _find(pipeline: beam.Pipeline) -> list[tuple[str, beam.PCollection, beam.PCollection | None]]:
    finder = _FindGroupings()
    pipeline.visit(finder)
    return finder.found


def measure_shuffles(pipeline: beam.Pipeline) -> int:
    """Adds a probe beside every GroupByKey (see the module); returns how many it added."""
    found = _find(pipeline)
    for label, pcoll, grouped in found:
        coder = beam.coders.registry.get_coder(pcoll.element_type)
        _ = pcoll | f"{_PROBE_PREFIX}[{label}]" >> beam.ParDo(_ProbeFn(label, coder))
        if isinstance(grouped, beam.PCollection):
            _ = grouped | f"{_PROBE_PREFIX}Groups[{label}]" >> beam.ParDo(_GroupSizeFn(label))
    return len(found)


def group_maxima(result: Any) -> dict[str, int]:
    """`{grouping label: the most elements one key grouped}` from a finished job's distributions
    (empty when the runner reports none)."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    maxima: dict[str, int] = {}
    for found in queried["distributions"]:
        label, _, field = found.key.metric.name.rpartition("/")
        if field == GROUP_FIELD and found.committed is not None and found.committed.count:
            maxima[label] = max(maxima.get(label, 0), int(found.committed.max))
    return maxima


def stage_msecs(result: Any) -> dict[str, int]:
    """Milliseconds the runner spent in each top-level step of the job (Beam's
    `ptransform_execution_time` monitoring metric, summed over the steps inside it and over the
    workers); empty when the runner reports none. The probes' own time is left out."""
    try:
        queried = result.monitoring_metrics().query()
    except (NotImplementedError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in queried["counters"]:
        if not str(counter.key.metric.name).endswith(_EXECUTION_TIME) or not counter.key.step:
            continue
        top = counter.key.step.split("/", 1)[0]
        if not top.startswith(_PROBE_PREFIX):
            totals[top] = totals.get(top, 0) + int(counter.committed or 0)
    return dict(sorted(totals.items()))


def shuffle_table(
    counters: dict[str, int], maxima: dict[str, int] | None = None
) -> dict[str, dict[str, int]]:
    """`{grouping label: {"elements", "bytes", "images"}}` from the job's `winnow:shuffle` counters,
    with `"max_group"` (the most elements one key grouped) where `maxima` has the grouping."""
    table: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        label, _, field = name.rpartition("/")
        if field in ("elements", "bytes", "images"):
            table.setdefault(label, {"elements": 0, "bytes": 0, "images": 0})[field] += value
    for label, largest in (maxima or {}).items():
        if label in table:
            table[label]["max_group"] = largest
    return dict(sorted(table.items()))
