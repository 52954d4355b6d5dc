"""Assembles the Beam pipeline: read → the selected stages, in order → shards → stats."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apache_beam as beam

from pipeline.config import RunConfig
from transforms.crawl import DownloadImages
from transforms.readers import ReadUrlList
from transforms.text import FilterText
from transforms.writers import WriteShards, WriteStats

StageFactory = Callable[[RunConfig, "str | None"], beam.PTransform]

#: Stages in pipeline order, named after their modules in `transforms/`.
STAGES: dict[str, StageFactory] = {
    "text": lambda config, progress: FilterText(config.text, progress),
    "crawl": lambda config, progress: DownloadImages(config.crawl, progress),
}


def build_pipeline(
    pipeline: beam.Pipeline,
    config: RunConfig,
    input_files: Sequence[str],
    output_dir: str,
    progress_dir: str | None = None,
) -> beam.PCollection:
    """Adds Winnow's transforms to `pipeline`; returns the PCollection holding the stats dict."""
    samples = pipeline | "Read" >> ReadUrlList(input_files, config.input, progress_dir)
    # Stages decide but never drop rows, so the shard count is fixed once the lists are read.
    total = samples | "CountSamples" >> beam.combiners.Count.Globally()
    for name in STAGES:
        if name in config.run.stages:
            samples = samples | name.capitalize() >> STAGES[name](config, progress_dir)
    shards = samples | "WriteShards" >> WriteShards(output_dir, config.output, progress_dir, total)
    return shards | "WriteStats" >> WriteStats(output_dir, ["read", *config.run.stages])
