"""Does curation help? `winnow evaluate --ablate` on the sample web: a DataComp in miniature.

Generates the sample web (``--samples`` pairs) and its held-out eval set, serves it on loopback,
runs the pipeline once per curation configuration (``--ablations``), trains the same CLIP
architecture on each output with open_clip's trainer (same recipe, seeds 0..K-1, the same number of
samples seen) and scores it with clip_benchmark.  Prints the table, the wall time, and for each
comparison the difference of means against the standard deviations::

    .venv/bin/python benchmarks/evaluate_curation.py --samples 2000 --samples-seen 6144 --seeds 3

The targets (benchmarks/README.md): Winnow's default beats "no filter" and "CLIP-score top 30 %"
on zero-shot concept accuracy and retrieval recall@5 by more than 2 std (the larger of the two
rows' standard deviations), and caption repair is at least as good as the default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from pipeline.config import default_config_text
from pipeline.evaluate import EvaluateConfig, evaluate_outputs, format_table, write_json
from pipeline.evaluate.ablate import ablation_configs, run_ablations
from pipeline.evaluate.train import TrainRecipe
from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists
from sampleweb.evalset import EVAL_DIR, write_eval_set

#: What the sample web on loopback needs, as in `winnow demo`.
LOOPBACK = ["crawl.allow_private_networks=true", "crawl.max_per_host=0"]


def compare(rows: dict, better: str, worse: str, metric: str) -> str:
    a, b = rows[better][metric], rows[worse][metric]
    gap, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
    verdict = "yes" if gap > 2 * spread else "no"
    return (
        f"{better} - {worse}, {metric}: {gap:+.3f} (std {a['std']:.3f} / {b['std']:.3f}); > 2 std: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="build/evaluate-curation")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-seen", type=int, default=6144)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ablations", default="no-filter,clip-top30,default,repair")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    started = time.monotonic()
    web = os.path.join(args.workdir, "web")
    marker = os.path.join(web, f".generated-{args.samples}-{args.seed}")
    if not os.path.exists(marker):
        generate_corpus(web, args.samples, args.seed)
        write_eval_set(os.path.join(web, EVAL_DIR), args.seed)
        open(marker, "w").close()
    generated = time.monotonic()
    configs = ablation_configs(None, LOOPBACK, args.ablations.split(","), base_text=default_config_text())
    with serve_in_subprocess(web) as base_url:
        urls, _ = write_url_lists(web, base_url)
        runs = run_ablations(configs, [urls], args.workdir)
    curated = time.monotonic()
    config = EvaluateConfig(samples_seen=args.samples_seen, seeds=args.seeds, recipe=TrainRecipe())
    rows = evaluate_outputs(
        [output for _, output in runs],
        os.path.join(web, EVAL_DIR),
        config,
        os.path.join(args.workdir, f"seen{args.samples_seen}"),  # the outputs are shared by every budget
        [name for name, _ in runs],
    )
    trained = time.monotonic()
    report = os.path.join(args.workdir, f"evaluation-seen{args.samples_seen}.json")
    write_json(rows, report, os.path.join(web, EVAL_DIR), config)
    print(format_table(rows))
    print(
        f"wall time: {trained - started:.0f} s (sample web {generated - started:.0f} s, pipeline runs "
        f"{curated - generated:.0f} s, training and scoring {trained - curated:.0f} s)"
    )
    by_name = {row.label: row.metrics for row in rows}
    for metric in ("zeroshot_acc", "retrieval_r5"):
        for worse in ("no-filter", "clip-top30"):
            if "default" in by_name and worse in by_name:
                print(compare(by_name, "default", worse, metric))
        if "repair" in by_name and "default" in by_name:
            print(compare(by_name, "repair", "default", metric))
    print(json.dumps({row.label: row.pool_size for row in rows}))


if __name__ == "__main__":
    main()
