"""A local worker's peak memory against the collection's size, on Beam's bundle input and on
Winnow's bounded pieces, side by side.

One grouping, as Winnow's stages make them: `n` keys, each with a `--payload`-byte value
generated on the workers behind a reshuffle, grouped by `GroupByKey` on 2 SDK worker processes.
Each configuration runs in a fresh process per size (Beam's methods are replaced per process):

- `beam`: Beam's FnApiRunner input handling: a worker's whole share of the grouping's output is
  one byte string, sent as one message;
- `winnow`: `LocalRunner` as Winnow runs it: the share in pieces of `BUNDLE_CHUNK_BYTES`, flushed
  after each (`pipeline.runner.install_bounded_bundles`).

It prints, per configuration and size, the wall time and the peak RSS (VmHWM, polled from /proc)
of the largest worker process and of the launcher, then each configuration's worker growth
between the smallest and the largest size.

    .venv/bin/python benchmarks/local_runner_memory.py
    .venv/bin/python benchmarks/local_runner_memory.py --sizes 20000,80000 --payload 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CHUNK = 1_000


def _run(n: int, payload: int, mode: str) -> dict[str, float]:
    import apache_beam as beam
    from scale import Peaks

    import pipeline.runner as runner

    if mode == "beam":
        runner.install_bounded_bundles = lambda: None  # Beam's own input handling
    peaks = Peaks(os.getpid(), 0.2)
    peaks.start()
    start = time.perf_counter()
    with runner.make_pipeline("local", [], 2) as pipeline:
        _ = (
            pipeline
            | beam.Create(list(range(0, n, CHUNK)))
            | beam.Reshuffle()
            | beam.FlatMap(lambda s: range(s, min(s + CHUNK, n)))
            | beam.Map(lambda i: (i, os.urandom(payload)))
            | beam.GroupByKey()
            | beam.Map(lambda kv: len(list(kv[1])))
            | beam.combiners.Count.Globally()
        )
    wall = time.perf_counter() - start
    peaks.stop()
    return {"wall_s": wall, "worker_mb": max(peaks.workers.values()), "launcher_mb": peaks.launcher}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20000,80000")
    parser.add_argument("--payload", type=int, default=10_000, help="bytes per element")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run(int(args.one[1]), args.payload, args.one[0])))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {"beam": {}, "winnow": {}}
    for n in sizes:
        for mode in results:
            out = subprocess.run(
                [sys.executable, __file__, "--payload", str(args.payload), "--one", mode, str(n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            results[mode][n] = figures
            print(
                f"{mode:6} n={n:>8} payload={args.payload} wall_s={figures['wall_s']:.1f} "
                f"worker_peak_mb={figures['worker_mb']:.0f} launcher_peak_mb={figures['launcher_mb']:.0f}",
                flush=True,
            )
    low, high = sizes[0], sizes[-1]
    for mode, by_size in results.items():
        growth = by_size[high]["worker_mb"] / by_size[low]["worker_mb"]
        per = (by_size[high]["worker_mb"] - by_size[low]["worker_mb"]) * 1024 / (high - low)
        print(f"{mode:6} worker peak {low} -> {high}: {growth:.2f}x ({per:+.1f} KB per element)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
