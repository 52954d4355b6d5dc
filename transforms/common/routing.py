"""Routing by status: the samples a stage works on, and the ones it passes through untouched.

Every stage after the crawl works on some samples (downloaded ones, or ones with embeddings) and
passes the others (failed, rejected earlier) through as they are. `SplitByStatus(test)` is that
split: samples → (candidates, passing), two PCollections.
"""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam

from schemas.sample import Sample, Status


def downloaded(sample: Sample) -> bool:
    """Still kept, with a stored image: a candidate of the embed and dedup stages."""
    return sample.status == Status.SUCCESS and sample.image is not None


def embedded(sample: Sample) -> bool:
    """Still kept, with both embeddings: a candidate of the noise stage."""
    return (
        sample.status == Status.SUCCESS
        and sample.image_embedding is not None
        and sample.text_embedding is not None
    )


class SplitByStatus(beam.PTransform):
    """Samples → (candidates: `is_candidate(sample)` is true, passing: the others)."""

    def __init__(self, is_candidate: Callable[[Sample], bool]):
        super().__init__()
        self._is_candidate = is_candidate

    def expand(self, samples: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        is_candidate = self._is_candidate

        def route(sample: Sample, partitions: int) -> int:
            return 0 if is_candidate(sample) else 1

        return samples | "Partition" >> beam.Partition(route, 2)  # type: ignore[arg-type]
