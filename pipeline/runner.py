"""Runner selection: a local in-process runner by default, any Beam runner by name.

Beam's `DirectRunner` first tries to download the Prism binary; Winnow's `local` runner is the
portable FnApiRunner directly, so a local run never reaches for the network. `--workers N`
runs it as N worker processes (0 = one per core). Every other name (`DataflowRunner`,
`SparkRunner`, `FlinkRunner`, `PrismRunner`, ...) and every Beam option passes through.

The worker processes get their input over Beam's gRPC data plane, whose runner side flushes its
output streams on a one-second timer by default. That timer's flush (`get()`, then `_clear()`)
does not exclude the thread writing the bundle's input, so a chunk written between the two is
sent to no one: a bundle whose input takes longer than a second to write (hundreds of MB, as
the shard grouping of a few hundred thousand pairs) silently loses rows (Beam 2.70 and 2.77 both;
measured in `benchmarks/README.md`, "Local runner: rows lost by the data plane's timer").
`LocalRunner` turns the timer off for its run: the streams then flush only from the writing
thread, by size and at the end of the input.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

LOCAL_RUNNERS = {"local", "direct", "directrunner", "fnapirunner", "bundlebaseddirectrunner"}


class LocalRunner(FnApiRunner):
    """Beam's FnApiRunner with the data plane's timed flushing off (see the module docstring):
    the runner side of the gRPC data channels it creates buffers by size only."""

    _lock = threading.Lock()
    _active = 0  # LocalRunner runs in progress in this process
    _beams_value = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        # Beam reads the module constant when it creates the data plane server, inside
        # `run_pipeline`. The first run in progress sets it to 0 and the last one to end restores
        # Beam's value, so concurrent runs neither wait for each other nor undo each other.
        with LocalRunner._lock:
            if LocalRunner._active == 0:
                LocalRunner._beams_value = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
                worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
            LocalRunner._active += 1
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            with LocalRunner._lock:
                LocalRunner._active -= 1
                if LocalRunner._active == 0:
                    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = LocalRunner._beams_value


def is_local(runner: str) -> bool:
    return runner.lower() in LOCAL_RUNNERS


def translated_steps(result: Any) -> dict[str, dict[str, str]]:
    """The job graph a runner built without running it (DataflowRunner's `--dry_run`): each
    transform's name and its resource hints (`accelerator`, `min_ram`, ...)."""
    job = getattr(result, "job", None)
    proto = getattr(job, "proto_pipeline", None)
    if proto is None:
        return {}
    components = proto.components
    steps: dict[str, dict[str, str]] = {}
    for transform in components.transforms.values():
        if not transform.unique_name or transform.unique_name.startswith("ref_"):
            continue
        hints = {}
        if transform.environment_id:
            for urn, value in components.environments[transform.environment_id].resource_hints.items():
                # beam:resources:accelerator:v1 → accelerator
                hints[urn.split(":")[2] if urn.count(":") >= 3 else urn] = value.decode()
        steps[transform.unique_name] = hints
    return dict(sorted(steps.items()))


def related_job_args(beam_args: Sequence[str], suffix: str) -> list[str]:
    """The Beam arguments of a second job of the same run (the output's index): the same, but a
    named job gets `<name>-<suffix>` (Dataflow refuses two active jobs of one name)."""
    args = list(beam_args)
    for i, arg in enumerate(args):
        if arg.startswith("--job_name="):
            args[i] = f"{arg}-{suffix}"
        elif arg == "--job_name" and i + 1 < len(args):
            args[i + 1] = f"{args[i + 1]}-{suffix}"
    return args


def make_pipeline(
    runner: str = "local", beam_args: Sequence[str] = (), workers: int | None = None
) -> beam.Pipeline:
    """A Pipeline for `runner`; `workers` (local only) switches to multi-processing."""
    args = list(beam_args)
    if not is_local(runner):
        return beam.Pipeline(options=PipelineOptions([f"--runner={runner}", *args]))
    if workers is not None:
        count = workers or os.cpu_count() or 1
        args += [f"--direct_num_workers={count}", "--direct_running_mode=multi_processing"]
        if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
            args.append("--default_sdk_harness_log_level=WARNING")  # workers' lifecycle chatter
    return beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(args))
