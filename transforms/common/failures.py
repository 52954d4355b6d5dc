"""Nothing disappears on a surprise: an element a step fails on becomes a `failed` row.

A step that decodes stored bytes, fingerprints, preprocesses, runs a model or generates text can
meet an element nobody foresaw (a damaged image carried over from a previous output, say). One
such element must not fail a billion-pair job, nor vanish: `Guarded` runs the step with Beam's
`with_exception_handling()` and turns each dead letter into the sample's own row with status
`failed`, reason `internal_error`, the stage, and the step and error in `error` (the traceback goes
to the log), counted as `<stage>/dropped/internal_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam

from schemas.sample import Sample, Status
from transforms.common.progress import StageCounter

LOG = logging.getLogger(__name__)
INTERNAL_ERROR = "internal_error"


def failed_row(sample: Sample, stage: str, step: str, error: str) -> Sample:
    """`sample` as the row of an element the stage's `step` failed on."""
    return sample.decided(Status.FAILED, INTERNAL_ERROR, stage, f"{step}: {error}"[:2000])


class _FailedRowsFn(beam.DoFn):
    """Dead letters (element, (type, error, traceback)) → one failed row per sample in the element."""

    def __init__(
        self, stage: str, step: str, samples_of: Callable[[Any], Iterable[Sample]], progress_dir: str | None
    ):
        self._stage = stage
        self._step = step
        self._samples_of = samples_of
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter(self._stage, self._progress_dir)

    def process(self, dead_letter: tuple[Any, tuple[Any, str, list[str]]]) -> Iterator[Sample]:
        element, (_, error, trace) = dead_letter
        LOG.error("%s/%s failed on an element: %s\n%s", self._stage, self._step, error, "".join(trace))
        for sample in self._samples_of(element):
            self._counter.add(kept=False, reason=INTERNAL_ERROR, status=Status.FAILED)
            yield failed_row(sample, self._stage, self._step, error)

    def finish_bundle(self) -> None:
        self._counter.flush()


def batch_samples(batch: list[tuple[Sample, Any]]) -> list[Sample]:
    """The samples of a failed `RunInference` batch of (sample, model input) pairs."""
    return [sample for sample, _ in batch]


def _itself(element: Sample) -> Iterable[Sample]:
    return (element,)


class FailedRows(beam.PTransform):
    """Dead letters of one step → failed `Sample` rows; `samples_of(element)` names the samples an
    input element of the step stands for (itself, by default)."""

    def __init__(
        self,
        stage: str,
        step: str,
        samples_of: Callable[[Any], Iterable[Sample]] = _itself,
        progress_dir: str | None = None,
    ):
        super().__init__()
        self._fn = _FailedRowsFn(stage, step, samples_of, progress_dir)

    def expand(self, dead_letters: beam.PCollection) -> beam.PCollection:
        return dead_letters | "Rows" >> beam.ParDo(self._fn)


class Guarded(beam.PTransform):
    """`ParDo(fn)` over samples, with each element it fails on as a failed row: (good, failed)."""

    def __init__(self, fn: beam.DoFn, stage: str, step: str, progress_dir: str | None = None):
        super().__init__()
        self._fn = fn
        self._stage = stage
        self._step = step
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        good, bad = samples | "Run" >> beam.ParDo(self._fn).with_exception_handling()
        failed = bad | "Failed" >> FailedRows(self._stage, self._step, progress_dir=self._progress_dir)
        return good, failed
