"""Noise estimation and caption repair on the sample web's ground truth.

Generates (or reuses) a sample web of `--samples` pairs, serves it on loopback, runs the default
pipeline once with caption repair turned on (`REPAIR`) and scores the noise stage against the
planted caption noise:

* ROC-AUC for mismatched captions (against clean ones) of `noise_prob`, and of each signal alone
  (`clip_score`, caption agreement, image agreement), measured on the same rows;
* concept recall of partial captions before and after completion, against the true scene;
* concept F1 of the replacements of mismatched captions; the share of clean captions unchanged;
* which caption the tar holds, by source.

    .venv/bin/python benchmarks/noise_quality.py --samples 2000
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundtruth import run_on, served_sample_web  # noqa: E402

from sampleweb.scoring import noise_scores, roc_auc  # noqa: E402

#: Repair is opted into (the defaults keep every caption): what this benchmark measures.
REPAIR = ["noise.replace_above=0.5", "noise.min_coverage=1.0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="build/bench-noise")
    parser.add_argument("--output", default=None, help="output folder (default: a new temporary one)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. noise.k=20")
    args = parser.parse_args()
    with served_sample_web(args.workdir, args.samples, args.seed) as (urls, truth):
        run = run_on(urls, [*REPAIR, *args.overrides], output=args.output, prefix="winnow-noise-")
    rows, stats, elapsed = run.rows, run.stats, run.seconds
    judged = [r for r in rows if r["noise_prob"] is not None]
    scores = noise_scores(judged, truth)
    print(
        f"{args.samples:,} samples, seed {args.seed}: {len(judged):,} judged by the noise stage; "
        f"run {elapsed:.0f} s"
    )
    print(
        f"{'ROC-AUC, mismatched vs clean captions':<44} "
        f"({scores.mismatched} mismatched, {scores.clean} clean)"
    )
    by_noise = {"mismatched": [], "none": []}
    for row in judged:
        kind = truth[row["url"]]["noise"]
        if kind in by_noise:
            by_noise[kind].append(row)
    signals = {
        "noise_prob": lambda r: r["noise_prob"],
        "clip_score alone": lambda r: -r["clip_score"],
        "caption agreement alone": lambda r: -r["caption_agreement"],
        "image agreement alone": lambda r: -r["image_agreement"],
    }
    for name, value in signals.items():
        auc = roc_auc([value(r) for r in by_noise["mismatched"]], [value(r) for r in by_noise["none"]])
        print(f"  {name:<42} {auc:.4f}")
    print(
        f"partial captions ({scores.partial}): concept recall {scores.partial_recall_original:.3f} original, "
        f"{scores.partial_recall_chosen:.3f} chosen caption"
    )
    print(
        f"mismatched captions: {scores.replaced_mismatched}/{scores.mismatched} replaced, "
        f"concept F1 of the replacement {scores.replacement_f1:.3f}"
    )
    print(f"clean captions left unchanged: {scores.clean_unchanged:.3f}")
    sources = Counter(r["caption_source"] or r["reason"] for r in judged)
    print("caption in the tar, by source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    print(f"mixtures: {stats['noise']['mixtures']}")


if __name__ == "__main__":
    main()
