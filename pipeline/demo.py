"""`winnow demo`: the sample web, served on loopback, through the full pipeline with the default config."""

from __future__ import annotations

import glob
import os
import time
from collections import Counter

import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.jobs import run_job
from pipeline.summary import format_summary
from sampleweb.scoring import duplicate_pair_scores, noise_scores
from transforms.common.manifest import record_files


def run_demo(
    workdir: str, samples: int, seed: int, config: RunConfig, workers: int | None = None, port: int = 0
) -> str:
    """Generates (or reuses) the sample web, crawls it, and returns a printable summary."""
    started = time.monotonic()
    from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists
    from sampleweb.metadata import write_metadata

    web = os.path.join(workdir, "web")
    output = os.path.join(workdir, "shards")
    marker = os.path.join(web, f".generated-{samples}-{seed}")
    if not os.path.exists(marker):
        generate_corpus(web, samples, seed)
        open(marker, "w").close()
        record_files(web, [os.path.basename(marker)])
    write_metadata(web)  # the entries a run with the balance stage needs
    with serve_in_subprocess(web, port=port) as base_url:
        urls, truth = write_url_lists(web, base_url)
        stats = run_job(config, [urls], output, workers=workers, show_progress=True)
    return format_summary(stats, output, time.monotonic() - started) + "\n" + _truth_check(truth, output)


def _truth_check(truth_path: str, output: str) -> str:
    """How the pipeline's outcomes compare with the sample web's ground truth."""
    truth = {row["url"]: row for row in pq.read_table(truth_path).to_pylist()}
    got = [row for path in sorted(glob.glob(os.path.join(output, "*.parquet")))
           for row in pq.read_table(path).to_pylist()]  # fmt: skip
    download: Counter[str] = Counter()
    text: Counter[str] = Counter()
    scores: dict[str, list[float]] = {"none": [], "mismatched": []}
    for row in got:
        want = truth.get(row["url"])
        if want is None:
            continue
        if row["clip_score"] is not None and want["noise"] in scores:
            scores[want["noise"]].append(row["clip_score"])
        if row["stage"] == "text":
            text["rejected"] += 1
            text["rejected_clean"] += want["noise"] == "none"
            text["boilerplate_caught"] += (
                row["reason"] == "boilerplate_caption" and want["noise"] == "boilerplate"
            )
            continue
        # A pair rejected after the download (by its CLIP score, as a duplicate, as too noisy to
        # repair) was fetched as expected.
        status = "success" if row["stage"] in ("embed", "dedup", "noise") else row["status"]
        reason_ok = want["expected_status"] == "success" or row["reason"] == want["expected_reason"]
        download["match" if status == want["expected_status"] and reason_ok else "differ"] += 1
    boilerplate = sum(1 for t in truth.values() if t["noise"] == "boilerplate")
    fetched = sum(download.values())
    lines = [
        f"  ground truth, text: {text['rejected']:,} pairs rejected before any fetch "
        f"({text['rejected_clean']:,} of them with a clean caption); "
        f"{text['boilerplate_caught']}/{boilerplate} boilerplate captions caught",
        f"  ground truth, download: {download['match']:,}/{fetched:,} fetched samples "
        "ended as the sample web expects",
    ]
    clean, mismatched = scores["none"], scores["mismatched"]
    if clean and mismatched:
        wins = sum((c > m) + 0.5 * (c == m) for c in clean for m in mismatched)
        auc = wins / (len(clean) * len(mismatched))
        lines.append(
            f"  ground truth, embed: mean clip_score {sum(clean) / len(clean):.2f} for clean captions, "
            f"{sum(mismatched) / len(mismatched):.2f} for mismatched ones (ROC-AUC {auc:.3f})"
        )
    if any(row["stage"] == "dedup" for row in got):
        precision, recall = duplicate_pair_scores([r for r in got if r["url"] in truth], truth)
        lines.append(
            f"  ground truth, dedup: duplicate pairs found with precision {precision:.3f}, "
            f"recall {recall:.3f}"
        )
    if any(row.get("noise_prob") is not None for row in got):
        found = noise_scores([r for r in got if r["url"] in truth], truth)
        lines.append(
            f"  ground truth, noise: ROC-AUC for mismatched captions {found.auc_noise_prob:.3f} by "
            f"noise_prob, {found.auc_clip_score:.3f} by clip_score alone; "
            f"{found.dropped_mismatched}/{found.mismatched} mismatched pairs dropped, "
            f"{found.replaced_mismatched} replaced"
            + (f" (concept F1 {found.replacement_f1:.2f}); " if found.replaced_mismatched else "; ")
            + f"partial captions' concept recall {found.partial_recall_original:.2f} -> "
            f"{found.partial_recall_chosen:.2f}; "
            f"{found.clean_unchanged:.1%} of clean captions kept as they are, "
            f"{found.clean_foreign:.1%} given a concept not in the image"
        )
    return "\n".join(lines)
