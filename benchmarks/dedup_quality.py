"""Dedup quality on the sample web's ground truth: each level alone, then all together.

Generates (or reuses) a sample web of `--samples` pairs, serves it on loopback and runs the
pipeline once per configuration, printing the pair precision and recall of the duplicate groups
against the planted ones (copies, re-encodes, resizes, crops, brightness changes, overlaid text)
and the share of pairs of distinct scenes sharing an object that were merged.

    .venv/bin/python benchmarks/dedup_quality.py --samples 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundtruth import run_on, served_sample_web  # noqa: E402

from sampleweb.scoring import duplicate_pair_scores, shared_object_false_positives  # noqa: E402

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
    with served_sample_web(args.workdir, args.samples, args.seed) as (urls, truth):
        print(f"{args.samples:,} samples, seed {args.seed}")
        header = ("configuration", "precision", "recall", "shared-object FP", "pairs", "run s")
        print("{:<18} {:>9} {:>7} {:>17} {:>8} {:>6}".format(*header))
        for name, (overrides, exact_only) in LEVELS.items():
            run = run_on(urls, overrides, prefix="winnow-dedup-")
            precision, recall = duplicate_pair_scores(run.rows, truth, exact_only=exact_only)
            rate, pairs = shared_object_false_positives(run.rows, truth)
            print(
                f"{name:<18} {precision:>9.3f} {recall:>7.3f} {rate:>17.5f} {pairs:>8,} {run.seconds:>6.1f}"
            )


if __name__ == "__main__":
    main()
