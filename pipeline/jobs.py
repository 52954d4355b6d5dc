"""Runs one Winnow job end to end: check inputs, build, run, and complete the stats JSON."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.build import build_pipeline
from pipeline.config import RunConfig
from pipeline.progress import ProgressPrinter
from pipeline.runner import is_local, make_pipeline
from transforms.embed import resolve_device
from transforms.progress import NAMESPACE
from transforms.readers import check_input, expand_inputs
from transforms.writers import STATS_FILE, write_atomically

LOG = logging.getLogger(__name__)
_CHECKED_FILES = 20


def run_job(
    config: RunConfig,
    inputs: Sequence[str],
    output_dir: str,
    runner: str = "local",
    beam_args: Sequence[str] = (),
    workers: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Runs the pipeline and returns the stats dict (also written to `<output>/stats.json`).

    Raises `InputError` / `ConfigError` / `EmbedError` before anything runs when the input or the
    model settings are unusable.
    """
    # Filesystem options (S3 endpoint and keys, GCP project) apply to the checks made here too.
    FileSystems.set_options(PipelineOptions(list(beam_args)))
    files = expand_inputs(inputs)
    for path in files[:_CHECKED_FILES]:
        check_input(path, config.input)
    output_dir = output_dir.rstrip("/")
    if FileSystems.get_scheme(output_dir) in (None, "file") and not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)

    local = is_local(runner)
    if local and "embed" in config.run.stages:
        resolve_device(config.embed.device)  # `cuda` on a machine without it: say so before starting
    progress_dir = tempfile.mkdtemp(prefix="winnow-progress-") if local and config.run.progress else None
    stages = ["read", *config.run.stages, "write"]
    pipeline = make_pipeline(runner, beam_args, workers)
    build_pipeline(pipeline, config, files, output_dir, progress_dir)
    started = time.monotonic()
    try:
        if progress_dir and show_progress:
            with ProgressPrinter(progress_dir, stages):
                result = pipeline.run()
                result.wait_until_finish()
        else:
            result = pipeline.run()
            result.wait_until_finish()
    finally:
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    elapsed = time.monotonic() - started

    stats_path = f"{output_dir}/{STATS_FILE}"
    with FileSystems.open(stats_path) as handle:
        stats: dict[str, Any] = json.loads(handle.read())
    stats["input_files"] = len(files)
    stats["duration_s"] = round(elapsed, 3)
    stats["samples_per_s"] = round(stats["samples"] / elapsed, 1) if elapsed else None
    stats["metrics"] = _counters(result)
    write_atomically(stats_path, json.dumps(stats, indent=2, sort_keys=True).encode())
    return stats


def _counters(result: Any) -> dict[str, int]:
    """Beam counters of the `winnow` namespace (`<stage>/total`, …) as the runner reports them."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, AttributeError):  # some runners report no metrics
        return {}
    totals: dict[str, int] = {}
    for counter in queried["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (counter.committed or 0)
    return dict(sorted(totals.items()))
