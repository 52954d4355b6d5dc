"""Verdicts: a stage's decisions as small records, applied to the samples once.

A deciding stage (dedup, noise) works on light views of the samples (no image bytes) and emits
one `schemas.verdict.Verdict` per sample it changed: the fields it set. In a full run the
samples, image bytes and embeddings and all, are joined with every stage's verdicts once, in the
shard grouping (`transforms/write/shards.py`), so the bytes cross one shuffle. A stage used on its
own (`DeduplicateImages`, `RepairCaptions`) applies its verdicts with `ApplyVerdicts`, a join by
uid, and is a samples → samples transform as before.

- `verdict(before, after, step, candidate)`: the verdict that turns `before` into `after`.
- `apply_verdicts(copies, verdicts)`: the copies of one uid with the verdicts applied, in step
  order; a verdict goes to the first copy (`copy_order`) that passes its candidate test and has
  no verdict of that step yet. A sample that leaves `success` loses its image, as
  `Sample.decided` does.
- `apply_by_uid(samples, verdicts)`: the same for the samples of many uids (a shard).
- `fields_verdict(sample, fields, step, candidate)`: the verdict setting `fields` as `sample` has them.
- `light(sample)`: the view a stage judges: the sample without its image bytes (and, with
  `embeddings=False`, without its embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam

from schemas.sample import Sample, Status
from schemas.verdict import Verdict
from transforms.common.routing import embedded

#: Fields a verdict never carries: they stay with the sample and move once.
_HEAVY = frozenset({"image", "image_embedding", "text_embedding"})


def _kept(sample: Sample) -> bool:
    return sample.status == Status.SUCCESS


def _balanced(sample: Sample) -> bool:
    return sample.status in (Status.SUCCESS, Status.PENDING)


def _any(sample: Sample) -> bool:
    return True


def _generated(sample: Sample) -> bool:
    return sample.status == Status.SUCCESS and sample.caption_source == "generated"


#: The candidate tests a verdict may name: which copies of a uid its step judged. The dedup stage
#: judges downloaded samples; `kept` is that test on light views too (after the crawl, a sample
#: still `success` has its image), so the verdict finds its copy with or without the bytes.
#: `any` is every copy: the verdicts of a retry (`transforms/read/previous.py`), which settle rows
#: whatever status the stages left them in.
CANDIDATES: dict[str, Callable[[Sample], bool]] = {
    "kept": _kept,
    "embedded": embedded,
    "generated": _generated,
    "balanced": _balanced,
    "any": _any,
}


def copy_order(sample: Sample) -> tuple[str, str, str]:
    """Order of a uid's copies (the same url and caption): the first candidate is the one judged."""
    return sample.sha256 or "", sample.url or "", sample.caption or ""


def light(sample: Sample, embeddings: bool = True) -> Sample:
    """`sample` without its image bytes (and without its embeddings unless `embeddings`)."""
    if embeddings:
        return sample.evolve(image=None)
    return sample.evolve(image=None, image_embedding=None, text_embedding=None)


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def verdict(before: Sample, after: Sample, step: int, candidate: str) -> Verdict | None:
    """The verdict that turns `before` into `after` (heavy fields aside); None if nothing changed."""
    old = before.__dict__
    changes = tuple(
        (name, value)
        for name, value in after.__dict__.items()
        if name not in _HEAVY and not _same(old[name], value)
    )
    if not changes:
        return None
    if candidate not in CANDIDATES:
        raise ValueError(f"unknown candidate test {candidate!r}")
    return Verdict(before.uid, step, candidate, changes)


def fields_verdict(sample: Sample, fields: Iterable[str], step: int, candidate: str) -> Verdict:
    """The verdict setting `fields` to their values in `sample`: for a step whose result is a
    sample but whose input is not at hand (a failed row, a written caption)."""
    return Verdict(sample.uid, step, candidate, tuple((name, getattr(sample, name)) for name in fields))


def apply(sample: Sample, found: Verdict) -> Sample:
    """`sample` with one verdict applied."""
    changed = sample.evolve(**dict(found.changes))
    if changed.status != Status.SUCCESS and changed.image is not None:
        changed = changed.evolve(image=None)
    return changed


def _verdict_order(found: Verdict) -> tuple[int, str]:
    return found.step, repr(found.changes)


def apply_verdicts(copies: Iterable[Sample], verdicts: Iterable[Verdict]) -> list[Sample]:
    """The copies of one uid, in `copy_order`, with `verdicts` applied (see the module)."""
    out = sorted(copies, key=copy_order)
    if not out:
        return out
    judged: set[tuple[int, int]] = set()
    for found in sorted(verdicts, key=_verdict_order):
        test = CANDIDATES[found.candidate]
        for i, sample in enumerate(out):
            if (found.step, i) not in judged and test(sample):
                out[i] = apply(sample, found)
                judged.add((found.step, i))
                break
        else:
            raise ValueError(
                f"verdict of step {found.step} for {found.uid}: no copy left that passes {found.candidate!r}"
            )
    return out


def apply_by_uid(samples: Iterable[Sample], verdicts: Iterable[Verdict]) -> list[Sample]:
    """`samples` (any uids) with `verdicts` applied, one uid at a time. A verdict whose uid no
    sample has is a bug upstream: it raises, never is skipped."""
    found: dict[str, list[Verdict]] = {}
    for each in verdicts:
        found.setdefault(each.uid, []).append(each)
    copies: dict[str, list[Sample]] = {}
    for sample in samples:
        copies.setdefault(sample.uid, []).append(sample)
    out: list[Sample] = []
    for uid, same in copies.items():
        out += apply_verdicts(same, found.pop(uid)) if uid in found else same
    if found:
        raise ValueError(f"verdicts for {len(found)} uid(s) without a sample, e.g. {min(found)}")
    return out


def _joined(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Sample]:
    _, joined = element
    yield from apply_verdicts(joined["sample"], joined["verdict"])


class ApplyVerdicts(beam.PTransform):
    """Samples → the same samples with `verdicts` (one or more PCollections) applied, joined by uid."""

    def __init__(self, verdicts: beam.PCollection | list[beam.PCollection]):
        super().__init__()
        self._verdicts = verdicts if isinstance(verdicts, list) else [verdicts]

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        verdicts = (
            self._verdicts[0]
            if len(self._verdicts) == 1
            else self._verdicts | "AllVerdicts" >> beam.Flatten()
        )
        return (
            {
                "sample": samples | "KeySamples" >> beam.Map(lambda s: (s.uid, s)),
                "verdict": verdicts | "KeyVerdicts" >> beam.Map(lambda v: (v.uid, v)),
            }
            | "JoinVerdicts" >> beam.CoGroupByKey()
            | "Apply" >> beam.FlatMap(_joined)
        )
