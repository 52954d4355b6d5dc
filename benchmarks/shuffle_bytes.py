"""Bytes each stage shuffles per pair, measured on a full run of the default pipeline.

Runs the default configuration (the demo's stages) over a generated sample web served on
loopback, with `run.measure_shuffles` (`pipeline/shuffles.py`): every GroupByKey's input is
counted in the coder Beam infers for it. Prints one line per stage (the groupings under its step
name) with bytes per input pair, the largest grouping of each, and the image share of the shard
grouping. `deploy/sizing.py` takes its per-pair shuffle figures from this output.

    .venv/bin/python benchmarks/shuffle_bytes.py --samples 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import defaultdict

from pipeline.config import load_config
from pipeline.jobs import run_job
from sampleweb import SampleWebServer, generate_corpus, write_url_lists

_LOOPBACK = [
    "crawl.allow_private_networks=true",
    "crawl.max_per_host=0",
    "crawl.timeout=2",
    "crawl.deadline=4",
    "crawl.thread_count=16",
]


def stage_of(label: str) -> str:
    """The pipeline step a grouping belongs to: `Dedup`, `Noise`, `WriteShards`…"""
    top = label.split("/", 1)[0]
    return "Noise" if top == "NoiseViews" else top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="pairs in the generated sample web")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="winnow-shuffles-") as work:
        root = os.path.join(work, "web")
        generate_corpus(root, samples=args.samples, seed=args.seed)
        with SampleWebServer(root, host="127.0.0.1") as server:
            urls, _ = write_url_lists(root, server.base_url)
            config = load_config(overrides=[*_LOOPBACK, "run.measure_shuffles=true"])
            stats = run_job(config, [urls], os.path.join(work, "out"))
    pairs = stats["samples"]
    per_stage: dict[str, int] = defaultdict(int)
    largest: dict[str, tuple[int, str]] = {}
    for label, row in stats["shuffles"].items():
        stage = stage_of(label)
        per_stage[stage] += row["bytes"]
        largest[stage] = max(largest.get(stage, (0, "")), (row["bytes"], label))
    kept = stats["status"].get("success", 0)
    downloaded = stats["stages"]["crawl"]["kept"]
    print(
        f"pairs={pairs} downloaded={downloaded} kept={kept} "
        f"tar_bytes_per_kept={stats['shards']['tar_bytes'] / max(kept, 1):,.0f}"
    )
    print(f"{'stage':<14}{'bytes/pair':>12}{'/downloaded':>12}  largest grouping")
    for stage, total in sorted(per_stage.items(), key=lambda kv: -kv[1]):
        size, label = largest[stage]
        print(
            f"{stage:<14}{total / pairs:>12,.0f}{total / max(downloaded, 1):>12,.0f}"
            f"  {label} ({size / pairs:,.0f} B/pair)"
        )
    print(f"{'all':<14}{sum(per_stage.values()) / pairs:>12,.0f}")
    images = sum(row["images"] for row in stats["shuffles"].values())
    print(f"samples with their image bytes entering a shuffle as objects: {images}")


if __name__ == "__main__":
    main()
