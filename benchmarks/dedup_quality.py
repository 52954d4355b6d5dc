"""Dedup quality on the sample web's ground truth: each level alone, then all together.

Generates (or reuses) a sample web of `--samples` pairs, serves it on loopback and runs the
pipeline once per configuration, printing the pair precision and recall of the duplicate groups
against the planted ones (copies, re-encodes, resizes, crops, brightness changes, overlaid text)
and the share of pairs of distinct scenes sharing an object that were merged.

    .venv/bin/python benchmarks/dedup_quality.py --samples 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.jobs import run_job  # noqa: E402
from sampleweb import SampleWebServer, generate_corpus, write_url_lists  # noqa: E402
from sampleweb.scoring import duplicate_pair_scores, shared_object_false_positives  # noqa: E402

CRAWL = [
    "crawl.allow_private_networks=true",
    "crawl.timeout=1",
    "crawl.deadline=2",
    "crawl.thread_count=16",
    "run.progress=false",
]
LEVELS = {
    "exact alone": (["run.stages=[crawl,dedup]", "dedup.perceptual=false", "dedup.semantic=false"], True),
    "perceptual alone": (["run.stages=[crawl,dedup]", "dedup.exact=false", "dedup.semantic=false"], False),
    "semantic alone": (["dedup.exact=false", "dedup.perceptual=false"], False),
    "all levels": ([], False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="build/bench-dedup")
    args = parser.parse_args()
    web = os.path.join(args.workdir, f"web-{args.samples}-{args.seed}")
    if not os.path.exists(os.path.join(web, "manifest.parquet")):
        generate_corpus(web, samples=args.samples, seed=args.seed)
    with SampleWebServer(web, host="127.0.0.1", port=0) as server:
        urls, truth_path = write_url_lists(web, server.base_url)
        truth = {row["url"]: row for row in pq.read_table(truth_path).to_pylist()}
        print(f"{args.samples:,} samples, seed {args.seed}")
        header = ("configuration", "precision", "recall", "shared-object FP", "pairs", "run s")
        print("{:<18} {:>9} {:>7} {:>17} {:>8} {:>6}".format(*header))
        for name, (overrides, exact_only) in LEVELS.items():
            output = tempfile.mkdtemp(prefix="winnow-dedup-")
            started = time.monotonic()
            run_job(load_config(overrides=[*CRAWL, *overrides]), [urls], output)
            elapsed = time.monotonic() - started
            rows = [
                row
                for name_ in sorted(os.listdir(output))
                if name_.endswith(".parquet")
                for row in pq.read_table(os.path.join(output, name_)).to_pylist()
            ]
            precision, recall = duplicate_pair_scores(rows, truth, exact_only=exact_only)
            rate, pairs = shared_object_false_positives(rows, truth)
            print(f"{name:<18} {precision:>9.3f} {recall:>7.3f} {rate:>17.5f} {pairs:>8,} {elapsed:>6.1f}")


if __name__ == "__main__":
    main()
