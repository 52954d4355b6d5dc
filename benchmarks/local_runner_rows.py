"""Rows lost by Beam's FnApiRunner with worker processes, and by Winnow's `LocalRunner`, side by side.

One join, as Winnow's stages make them: `--pairs` keys, each with a `--payload`-byte value on the
left and a small value on the right, generated in chunks behind a reshuffle and joined by
`CoGroupByKey` on 2 SDK worker processes; a counter after the join says how many values of each
side arrived. Each runner runs the same join `--runs` times, alternating.

Beam's runner side of the gRPC data plane flushes its output streams on a timer
(`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`, one second); a flush between a write of a bundle's
input and the buffer's reset drops the chunk written there. At Beam's own second the race needs a
bundle input that takes over a second to write (`--pairs 300000 --payload 2000 --timer-ms 1000`:
about 600 MB, 30 s a run); `--timer-ms 1` makes it fire on 40 MB (the default here).

    .venv/bin/python benchmarks/local_runner_rows.py --runs 3
    .venv/bin/python benchmarks/local_runner_rows.py --pairs 300000 --timer-ms 1000 --runs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runner import LocalRunner  # noqa: E402

NAMESPACE = "local_runner_rows"
CHUNKS = 30


def _generate(start: int, pairs: int, chunk: int, payload: int):
    for i in range(start, min(start + chunk, pairs)):
        yield f"{i:016x}", b"x" * payload


def _count(joined):
    _, sides = joined
    Metrics.counter(NAMESPACE, "left").inc(len(list(sides["left"])))
    Metrics.counter(NAMESPACE, "right").inc(len(list(sides["right"])))


def run_join(runner: FnApiRunner, pairs: int, payload: int, workers: int) -> tuple[int, int, float]:
    """Values of the left and right side that reached the join's output, and the wall time."""
    options = PipelineOptions(
        [
            f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing",
            "--default_sdk_harness_log_level=WARNING",
        ]
    )
    pipeline = beam.Pipeline(runner=runner, options=options)
    chunk = max(1, pairs // CHUNKS)
    starts = pipeline | beam.Create(list(range(0, pairs, chunk))) | beam.Reshuffle()
    left = starts | "Left" >> beam.FlatMap(_generate, pairs, chunk, payload)
    right = starts | "Right" >> beam.FlatMap(
        lambda start: ((key, len(value)) for key, value in _generate(start, pairs, chunk, payload))
    )
    _ = {"left": left, "right": right} | beam.CoGroupByKey() | beam.Map(_count)
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - started
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    counts = {c.key.metric.name: c.committed for c in counters}
    return counts.get("left", 0), counts.get("right", 0), wall


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=2_000, help="bytes of each left value")
    parser.add_argument(
        "--timer-ms", type=int, default=1, help="Beam's data plane flush timer (its own: 1000)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per runner")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = args.timer_ms
    runners = {"beam FnApiRunner": FnApiRunner, "winnow LocalRunner": LocalRunner}
    lost: dict[str, list[int]] = {name: [] for name in runners}
    for run in range(args.runs):
        for name, runner in runners.items():
            left, right, wall = run_join(runner(), args.pairs, args.payload, args.workers)
            missing = 2 * args.pairs - left - right
            lost[name].append(missing)
            print(
                f"run={run + 1} runner={name!r} left={left} right={right} lost={missing} wall_s={wall:.1f}",
                flush=True,
            )
    print(
        f"\n{args.pairs} pairs ({args.payload} B values), {args.workers} worker processes, "
        f"data plane timer {args.timer_ms} ms, {args.runs} runs each"
    )
    print(f"| runner | runs losing rows | values lost per run (of {2 * args.pairs}) |")
    print("|---|---|---|")
    for name, values in lost.items():
        losing = sum(1 for v in values if v)
        print(f"| {name} | {losing} of {len(values)} | {', '.join(f'{v:,}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
