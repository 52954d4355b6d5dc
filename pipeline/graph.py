"""Where a built pipeline gathers per-sample data onto one worker.

A step that receives a whole PCollection as one element (a list, iterable or dict side input; a
`ToList` / `ToDict` / `ToSet` combine) runs on one worker and holds every element in memory. That
is fine for a bounded collection (the shard summaries, a k-means sample, the vocabulary) and fatal
for one that grows with the pairs. `gathers(pipeline)` walks the graph and lists every such step
whose input is *per sample*: derived from the rows read (`Read`, `ReadPrevious`) by element-wise
steps, groupings and per-key combines, and not by a global combine (which yields one element).
Per-key combines count as per sample because their keys may be (uids, URLs): a gather after one
is listed, and must be justified where it is bounded (by the vocabulary, by the languages).
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.pvalue import AsDict, AsIter, AsList, AsMultiMap
from apache_beam.transforms import combiners

#: The steps whose outputs are the rows of the run.
ROOTS = ("Read", "ReadPrevious")
_LIST_FNS = (combiners.ToListCombineFn, combiners.ToDictCombineFn, combiners.ToSetCombineFn)
_LIST_SIDE_INPUTS = (AsList, AsIter, AsDict, AsMultiMap)


@dataclasses.dataclass(frozen=True)
class Gather:
    """`step` receives the whole per-sample PCollection `source` as one element, as `kind`."""

    step: str
    kind: str
    source: str


def _is_list_combine(transform: beam.PTransform | None) -> bool:
    if isinstance(transform, (combiners.ToList, combiners.ToDict, combiners.ToSet)):
        return True
    if not isinstance(transform, beam.CombineGlobally):
        return False
    # A CombineFn of Winnow's that keeps every element says so (`gathers_every_element`).
    return isinstance(transform.fn, _LIST_FNS) or getattr(transform.fn, "gathers_every_element", False)


class _Walker(PipelineVisitor):
    def __init__(self) -> None:
        self.per_sample: set[int] = set()
        self.found: list[Gather] = []
        self._reducing: list[str] = []  # the global combines being walked through
        self._producers: dict[int, str] = {}

    def _label(self, pcoll: beam.pvalue.PValue) -> str:
        return self._producers.get(id(pcoll), str(pcoll.producer.full_label if pcoll.producer else pcoll))

    def enter_composite_transform(self, applied: AppliedPTransform) -> None:
        if applied.full_label in ROOTS:
            self.per_sample.update(id(p) for p in applied.outputs.values())
        if isinstance(applied.transform, beam.CombineGlobally) or _is_list_combine(applied.transform):
            inputs = list(applied.main_inputs.values())
            gathering = _is_list_combine(applied.transform) and not self._reducing
            if gathering and any(id(p) in self.per_sample for p in inputs):
                kind = type(applied.transform).__name__
                self.found.extend(Gather(applied.full_label, kind, self._label(p)) for p in inputs)
            self._reducing.append(applied.full_label)

    def leave_composite_transform(self, applied: AppliedPTransform) -> None:
        if self._reducing and self._reducing[-1] == applied.full_label:
            self._reducing.pop()
            for pcoll in applied.outputs.values():  # one element: not per sample
                self.per_sample.discard(id(pcoll))

    def visit_transform(self, applied: AppliedPTransform) -> None:
        for pcoll in applied.outputs.values():
            self._producers[id(pcoll)] = applied.full_label
        for side in applied.side_inputs:
            if isinstance(side, _LIST_SIDE_INPUTS) and id(side.pvalue) in self.per_sample:
                self.found.append(Gather(applied.full_label, type(side).__name__, self._label(side.pvalue)))
        if self._reducing:
            return
        if any(id(p) in self.per_sample for p in applied.main_inputs.values()):
            self.per_sample.update(id(p) for p in applied.outputs.values())


def gathers(pipeline: beam.Pipeline) -> list[Gather]:
    """Every step of the built `pipeline` that gathers a per-sample PCollection (see the module)."""
    walker = _Walker()
    pipeline.visit(walker)
    return sorted(set(walker.found), key=lambda g: (g.step, g.kind, g.source))
