"""`winnow demo`: the sample web, served on loopback, through the full pipeline with the default config."""

from __future__ import annotations

import glob
import os
from collections import Counter

import pyarrow.parquet as pq

from pipeline.cli import format_summary
from pipeline.config import RunConfig
from pipeline.jobs import run_job


def run_demo(workdir: str, samples: int, seed: int, config: RunConfig, workers: int | None = None) -> str:
    """Generates (or reuses) the sample web, crawls it, and returns a printable summary."""
    from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists

    web = os.path.join(workdir, "web")
    output = os.path.join(workdir, "shards")
    marker = os.path.join(web, f".generated-{samples}-{seed}")
    if not os.path.exists(marker):
        generate_corpus(web, samples, seed)
        open(marker, "w").close()
    with serve_in_subprocess(web) as base_url:
        urls, truth = write_url_lists(web, base_url)
        stats = run_job(config, [urls], output, workers=workers, show_progress=True)
    return format_summary(stats, output) + "\n" + _truth_check(truth, output)


def _truth_check(truth_path: str, output: str) -> str:
    """How often the pipeline's download outcome matches the sample web's ground truth."""
    truth = pq.read_table(truth_path, columns=["url", "expected_status", "expected_reason"]).to_pylist()
    expected = {row["url"]: (row["expected_status"], row["expected_reason"]) for row in truth}
    files = sorted(glob.glob(os.path.join(output, "*.parquet")))
    got = pq.read_table(files[0], columns=["url", "status", "reason"]).to_pylist() if files else []
    for path in files[1:]:
        got += pq.read_table(path, columns=["url", "status", "reason"]).to_pylist()
    outcome: Counter[str] = Counter()
    for row in got:
        want = expected.get(row["url"])
        if want is None:
            continue
        status_ok = row["status"] == want[0]
        reason_ok = want[0] == "success" or row["reason"] == want[1]
        outcome["match" if status_ok and reason_ok else "differ"] += 1
    total = sum(outcome.values())
    return f"  ground truth: {outcome['match']:,}/{total:,} samples ended as the sample web expects"
