"""The balance stage through Beam on a skewed pool: the rule's expectation per entry, the same
kept set on every run and worker count, and the time it takes.

A pool of `--captions` captions (default 200,000) over 5,000 entries whose frequencies follow a
Zipf law (1 to 3 entries per caption, a quarter with one alone), written as a Parquet URL list,
goes through `winnow run --stages balance` twice: with one worker process and with two. Checked:
- both runs keep exactly the same uids;
- every entry's kept count lies within 4 standard deviations of its expectation under MetaCLIP's
  rule (the sum over its captions of 1 − ∏(1 − pₑ), captions drawn independently), entries
  under t keep every caption, and the count Beam made equals a direct count.

    .venv/bin/python benchmarks/balance_pool.py --captions 200000 --t 150
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.jobs import run_job  # noqa: E402
from transforms.balance.matching import EntryMatcher  # noqa: E402
from transforms.balance.sampling import entry_probabilities  # noqa: E402


def pool(n_captions: int, n_entries: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    entries = [f"w{i}" for i in range(n_entries)]
    sizes = rng.integers(1, 4, n_captions)
    sizes[: n_captions // 4] = 1
    picks = rng.choice(n_entries, size=int(sizes.sum()), p=weights)
    captions, start = [], 0
    for size in sizes:
        captions.append("a photo of " + " and ".join(entries[i] for i in picks[start : start + size]))
        start += size
    return entries, captions


def rows(output: str) -> list[dict]:
    found: list[dict] = []
    for name in sorted(os.listdir(output)):
        if name.endswith(".parquet"):
            found += pq.read_table(
                os.path.join(output, name), columns=["uid", "caption", "status", "balance_prob"]
            ).to_pylist()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--entries", type=int, default=5_000)
    parser.add_argument("--t", type=int, default=150)
    args = parser.parse_args()
    entries, captions = pool(args.captions, args.entries, 0)
    with tempfile.TemporaryDirectory() as work:
        listed = os.path.join(work, "pool.parquet")
        urls = [f"https://example.com/{i}.jpg" for i in range(len(captions))]
        pq.write_table(pa.table({"url": urls, "caption": captions}), listed)
        meta = os.path.join(work, "metadata.json")
        with open(meta, "w") as handle:
            json.dump(entries, handle)
        overrides = [
            "run.stages=[balance]", f"balance.entries={meta}", f"balance.t={args.t}",
            "run.progress=false", "output.samples_per_shard=20000", "output.index=false",
        ]  # fmt: skip
        kept_sets, seconds = [], []
        for workers in (1, 2):
            output = os.path.join(work, f"out-{workers}")
            started = time.perf_counter()
            run_job(load_config(overrides=overrides), [listed], output, workers=workers)
            seconds.append(time.perf_counter() - started)
            found = rows(output)
            kept_sets.append({r["uid"] for r in found if r["status"] == "pending"})
        print(f"{len(captions):,} captions, {len(entries):,} entries, t = {args.t}")
        for workers, took, kept in zip((1, 2), seconds, kept_sets, strict=True):
            rate = len(captions) / took
            print(f"  {workers} worker(s): {took:6.1f} s ({rate:,.0f} captions/s), kept {len(kept):,}")
        print(f"  the same kept set with 1 and 2 workers: {kept_sets[0] == kept_sets[1]}")
        matcher = EntryMatcher([("*", e) for e in entries])
        counts = np.zeros(len(entries), np.int64)
        kept_counts = np.zeros(len(entries), np.int64)
        expected = np.zeros(len(entries))
        variance = np.zeros(len(entries))
        for row in found:
            ids = matcher.match(row["caption"], "en")
            counts[ids] += 1
            prob = row["balance_prob"] or 0.0
            expected[ids] += prob
            variance[ids] += prob * (1 - prob)
            if row["status"] == "pending":
                kept_counts[ids] += 1
        p = entry_probabilities(counts, np.full(len(entries), args.t))
        deviation = np.abs(kept_counts - expected) / np.sqrt(np.maximum(variance, 1e-12))
        tail = (counts > 0) & (counts <= args.t)
        over = int((counts > args.t).sum())
        print(f"  entries over t: {over:,}; the largest: {counts.max():,} captions, p = {p.min():.4f}")
        print(
            f"  largest deviation from the expectation: {deviation[counts > 0].max():.2f} standard deviations"
        )
        whole = int(np.sum(kept_counts[tail] == counts[tail]))
        print(f"  entries under t keeping every caption: {whole:,} of {int(tail.sum()):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
