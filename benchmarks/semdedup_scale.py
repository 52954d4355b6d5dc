"""Semantic dedup at scale: synthetic embeddings with planted duplicate groups through the Beam stage.

Generates `--n` unit vectors of dimension `--dim` inside the pipeline (no 1 GB `Create`): points
scattered around `--topics` topic directions (so k-means has structure to find, and neighbours
inside a cluster are similar but not duplicates), of which `--dup-rate` are planted copies of
another point (cosine about 1 - delta²/2 to it, delta = `--delta`). The stage
(`transforms.dedup.semantic.SemDeDupEmbeddings`, the semantic level of `winnow run`) then runs with
the default config, and the script prints wall time, peak memory, recall and precision of the
planted groups, and the pairwise comparisons made as a share of n².

    .venv/bin/python benchmarks/semdedup_scale.py --n 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runner import make_pipeline  # noqa: E402
from transforms.dedup.config import DedupConfig
from transforms.dedup.semantic import SemDeDupEmbeddings, member  # noqa: E402

CHUNK = 10_000


@dataclasses.dataclass(frozen=True)
class Synthetic:
    n: int
    dim: int
    topics: int
    dup_rate: float
    delta: float
    spread: float
    seed: int

    def originals(self) -> int:
        return self.n - round(self.n * self.dup_rate)

    def topic_centres(self) -> np.ndarray:
        centres = np.random.default_rng(self.seed).standard_normal((self.topics, self.dim))
        return (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)

    def point(self, index: int, centres: np.ndarray) -> np.ndarray:
        """Row `index`: an original around a topic, or (index >= originals) a copy of an original."""
        rng = np.random.default_rng((self.seed, index))
        if index < self.originals():
            topic = int(rng.integers(self.topics))
            vector = centres[topic] + self.spread * rng.standard_normal(self.dim).astype(np.float32)
        else:
            source = self.source(index)
            base = self.point(source, centres)
            noise = rng.standard_normal(self.dim).astype(np.float32)
            vector = base + self.delta * noise / np.linalg.norm(noise)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def source(self, index: int) -> int:
        """The original a planted copy duplicates (several copies may share one)."""
        return int(np.random.default_rng((self.seed, index, 1)).integers(self.originals()))


def _uid(index: int) -> str:
    return f"{index:032x}"


def _generate(start: int, synthetic: Synthetic) -> Iterator[object]:
    centres = synthetic.topic_centres()
    for index in range(start, min(start + CHUNK, synthetic.n)):
        yield member(_uid(index), synthetic.point(index, centres).astype(np.float16), float(index % 97) / 97)


def _peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--topics", type=int, default=2000)
    parser.add_argument("--dup-rate", type=float, default=0.2, help="share of rows that are planted copies")
    parser.add_argument("--delta", type=float, default=0.02, help="size of a copy's perturbation")
    parser.add_argument("--spread", type=float, default=0.06, help="scatter around a topic, per dimension")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    synthetic = Synthetic(args.n, args.dim, args.topics, args.dup_rate, args.delta, args.spread, args.seed)
    config = DedupConfig()

    decisions: list[tuple[str, str]] = []
    started = time.monotonic()
    pipeline = make_pipeline("local", [], args.workers)
    removed = (
        pipeline
        | "Chunks" >> beam.Create(list(range(0, args.n, CHUNK)))
        | "Reshuffle" >> beam.Reshuffle()
        | "Generate" >> beam.FlatMap(_generate, synthetic)
        | "SemDeDup" >> SemDeDupEmbeddings(config)
        | "Pairs" >> beam.Map(lambda d: (d.uid, d.duplicate_of))
        | "All" >> beam.combiners.ToList()
    )
    out_dir = Path("build/bench-semdedup")
    out_dir.mkdir(parents=True, exist_ok=True)
    removed | "Write" >> beam.Map(lambda rows: np.save(out_dir / "removed.npy", np.array(rows, dtype=object)))
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.monotonic() - started
    decisions = [tuple(row) for row in np.load(out_dir / "removed.npy", allow_pickle=True)]
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_name("dedup/semantic_comparisons"))["counters"]
    }
    comparisons = counters.get("dedup/semantic_comparisons", 0)

    originals = synthetic.originals()
    group_of = {index: synthetic.source(index) for index in range(originals, args.n)}
    planted = len(group_of)
    removed_ids = {int(uid, 16) for uid, _ in decisions}
    # A planted group (an original and its copies) should keep exactly one member.
    members: dict[int, list[int]] = {}
    for copy, source in group_of.items():
        members.setdefault(source, [source]).append(copy)
    expected_removals = sum(len(group) - 1 for group in members.values())
    found = sum(min(len(group) - 1, sum(m in removed_ids for m in group)) for group in members.values())
    in_groups = {m for group in members.values() for m in group}
    false_removals = sum(1 for index in removed_ids if index not in in_groups)
    own, children = _peak_rss_mb()
    print(f"n={args.n:,} dim={args.dim} planted copies={planted:,} workers={args.workers}")
    print(f"wall time: {elapsed:.1f} s ({args.n / elapsed:,.0f} embeddings/s)")
    print(f"peak RSS: launcher {own:,.0f} MB, largest worker {children:,.0f} MB")
    recall = found / max(1, expected_removals)
    precision = 1 - false_removals / max(1, len(removed_ids))
    print(f"removed: {len(removed_ids):,}; recall of planted removals {recall:.4f}")
    print(f"removals outside planted groups: {false_removals:,} (precision {precision:.4f})")
    share = comparisons / args.n**2
    print(f"comparisons: {comparisons:,} = {share:.2e} of n² (all pairs: {args.n**2 / 2:.2e})")


if __name__ == "__main__":
    main()
