"""The whole run against its slowest stage: the demo's default stages next to the crawl alone.

One sample web (`--samples` pairs, seed 0, the demo's), served from its own process, is run by
`run_job` (the code `winnow run` calls, everything included: reading, every stage, the shards,
stats and the audit report) with the embedded default config and the demo's overrides, in
process, in three configurations:

- `--stages crawl`: the download stage and the writer (the slowest stage: see `limits.py`);
- `--stages text,crawl`: the same with the text stage first, which rejects pairs before any
  fetch (so the crawl has less to do in the full run too);
- the default stages (`text, crawl, safety, embed, dedup, noise`).

Each configuration also runs on the first `--slice` pairs of the same list. Its time (Beam's
start, models loading, the report) is subtracted, so rates are pairs per second of the work that
grows with the input. Rounds alternate the configurations; medians are printed.

    .venv/bin/python benchmarks/full_pipeline.py --samples 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import RunConfig, default_config_text, load_config  # noqa: E402
from pipeline.jobs import run_job  # noqa: E402
from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists  # noqa: E402

#: The demo's overrides (`winnow demo`): its web is on loopback, on one host.
DEMO = ["crawl.allow_private_networks=true", "crawl.max_per_host=0"]


def config_for(stages: str | None) -> RunConfig:
    overrides = list(DEMO) + ([f"run.stages=[{stages}]"] if stages else [])
    return load_config(None, overrides, base_text=default_config_text())


def timed_run(config: RunConfig, url_list: str, work: str) -> float:
    output = tempfile.mkdtemp(dir=work)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_job(config, [url_list], output)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--slice", type=int, default=100, help="pairs of the fixed-cost run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configs = {
        "crawl (and write)": config_for("crawl"),
        "text, crawl": config_for("text,crawl"),
        "default stages": config_for(None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as work:
        web = os.path.join(work, "web")
        generate_corpus(web, args.samples, 0)
        with serve_in_subprocess(web) as base:
            listed, _ = write_url_lists(web, base)
            table = pq.read_table(listed)
            small = os.path.join(work, "slice.parquet")
            pq.write_table(table.slice(0, args.slice), small)
            pairs = table.num_rows
            for round_ in range(args.repeats):
                order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
                for name in order:
                    whole = timed_run(configs[name], listed, work)
                    fixed = timed_run(configs[name], small, work)
                    seconds[name].append(whole - fixed)
                    took = f"{whole:.1f} s whole, {fixed:.1f} s on {args.slice} pairs"
                    print(f"round {round_ + 1}: {name}: {took}", flush=True)
    rates = {name: (pairs - args.slice) / statistics.median(s) for name, s in seconds.items()}
    crawl = rates["crawl (and write)"]
    print(f"\n{pairs:,} pairs, medians of {args.repeats}, fixed cost subtracted")
    print("| stages | pairs/s | / crawl alone |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.1f} | {rate / crawl:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
