"""Noise estimation and caption repair on the sample web's ground truth.

For each seed, generates (or reuses) a sample web of `--samples` pairs, serves it on loopback,
runs the default pipeline with caption repair turned on (`REPAIR`; the precision guard at its
defaults) and scores the noise stage against the planted caption noise:

* ROC-AUC for mismatched captions (against clean ones) of `noise_prob`, and of each signal alone
  (`clip_score`, caption agreement, image agreement), measured on the same rows;
* concept recall of partial captions before and after completion, against the true scene;
* concept F1 of the replacements of mismatched captions; the share of clean captions unchanged,
  and the share given a concept that is not in the scene;
* which caption the tar holds, by source, and the precision guard's verdict.

Each seed's figures are checked against the repair targets (`TARGETS`); the exit status is 1 when
one is missed.

    .venv/bin/python benchmarks/noise_quality.py --samples 2000 --seeds 7 8 9
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundtruth import run_on, served_sample_web  # noqa: E402

from sampleweb.scoring import NoiseScores, noise_scores, roc_auc  # noqa: E402

#: Repair is opted into (the defaults keep every caption): what this benchmark measures.
REPAIR = ["noise.replace_above=0.5", "noise.min_coverage=1.0"]

#: (label, measure, at least (True) or at most (False), bound): what caption repair must reach.
TARGETS = (
    ("partial captions' concept recall after completion", lambda s: s.partial_recall_chosen, True, 0.9),
    ("concept F1 of replaced mismatched captions", lambda s: s.replacement_f1, True, 0.7),
    ("clean captions shipped unchanged", lambda s: s.clean_unchanged, True, 0.95),
    ("clean captions given a concept not in the scene", lambda s: s.clean_foreign, False, 0.01),
    ("noise_prob ROC-AUC", lambda s: s.auc_noise_prob, True, 0.97),
    ("noise_prob ROC-AUC above clip_score's", lambda s: s.auc_noise_prob - s.auc_clip_score, True, 1e-9),
)


def missed_targets(scores: NoiseScores) -> list[str]:
    """The targets `scores` misses, one line each."""
    missed = []
    for label, measure, at_least, bound in TARGETS:
        value = measure(scores)
        if math.isnan(value) or (value < bound if at_least else value > bound):
            missed.append(f"{label}: {value:.3f} ({'<' if at_least else '>'} {bound:g})")
    return missed


def one_seed(samples: int, seed: int, workdir: str, output: str | None, overrides: list[str]) -> list[str]:
    with served_sample_web(workdir, samples, seed) as (urls, truth):
        run = run_on(urls, [*REPAIR, *overrides], output=output, prefix="winnow-noise-")
    rows, stats, elapsed = run.rows, run.stats, run.seconds
    judged = [r for r in rows if r["noise_prob"] is not None]
    scores = noise_scores(judged, truth)
    print(f"{samples:,} samples, seed {seed}: {len(judged):,} judged by the noise stage; run {elapsed:.0f} s")
    label = "ROC-AUC, mismatched vs clean captions"
    print(f"{label:<44} ({scores.mismatched} mismatched, {scores.clean} clean)")
    by_noise: dict[str, list[dict]] = {"mismatched": [], "none": []}
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
        f"{scores.partial_recall_chosen:.3f} shipped caption"
    )
    print(
        f"mismatched captions: {scores.replaced_mismatched}/{scores.mismatched} replaced, "
        f"{scores.dropped_mismatched} dropped; concept F1 of the replacement {scores.replacement_f1:.3f}"
    )
    print(
        f"clean captions ({scores.clean}): {scores.clean_unchanged:.3f} unchanged, "
        f"{scores.clean_foreign:.3f} given a concept not in the scene"
    )
    sources = Counter(r["caption_source"] or r["reason"] for r in judged)
    print("caption in the tar, by source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    guard = stats["noise"]["term_guard"]
    print(
        f"precision guard: {guard['terms_trusted']} of {guard['terms_measured']} measured terms trusted"
        + (f"; repair {guard['repair']}" if "repair" in guard else "")
    )
    print(f"mixtures: {stats['noise']['mixtures']}")
    missed = missed_targets(scores)
    print("targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--workdir", default="build/bench-noise")
    parser.add_argument("--output", default=None, help="output folder of a single seed (default: temporary)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. noise.k=20")
    args = parser.parse_args()
    if args.output and len(args.seeds) > 1:
        parser.error("--output takes one seed")
    missed = 0
    for seed in args.seeds:
        missed += len(one_seed(args.samples, seed, args.workdir, args.output, args.overrides))
        print()
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
