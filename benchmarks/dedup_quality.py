"""Dedup quality on the sample web's ground truth: each level alone, then all together, and the
perceptual level's blockings (`dedup.near_blocking`) side by side, on the sample web and on
`benchmarks/scale.py`'s hard data.

Generates (or reuses) a sample web of `--samples` pairs, serves it on loopback and runs the
pipeline once per configuration, printing the pair precision and recall of the duplicate groups
against the planted ones (copies, re-encodes, resizes, crops, brightness changes, overlaid text)
and the share of pairs of distinct scenes sharing an object that were merged.

The blockings: the perceptual level alone with `near_blocking: bands` (every pair within the
distance), `clusters` at the default `cluster_size` (1000: at 2,000 samples two clusters, so
about everything meets) and `clusters` with `cluster_size` `--small-cluster` (blocks much
smaller than the web, as at web scale). Each `clusters` run also gets its recall against the
pairs `bands` groups. Then the same three on `--hard` pairs of `scale.py`'s hard data (scenes
with flat backgrounds, Zipf copy counts, one group of n // 15 near-copies), fingerprinted in
process and run through `NearDuplicates` alone, with the hash comparisons per sample.

    .venv/bin/python benchmarks/dedup_quality.py --samples 2000 --hard 6000
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundtruth import run_on, served_sample_web  # noqa: E402
from scale import plan_layout, sample_bytes  # noqa: E402

from sampleweb.scoring import duplicate_pair_scores, shared_object_false_positives  # noqa: E402
from transforms.common.progress import NAMESPACE  # noqa: E402
from transforms.dedup.config import DedupConfig  # noqa: E402
from transforms.dedup.fingerprints import perceptual_hash  # noqa: E402
from transforms.dedup.hashed import NearDuplicates  # noqa: E402
from transforms.dedup.perceptual import pixel_digest, thumbnail_signature  # noqa: E402
from transforms.dedup.types import Fingerprint  # noqa: E402

LEVELS = {
    "exact alone": (["run.stages=[crawl,dedup]", "dedup.perceptual=false", "dedup.semantic=false"], True),
    "perceptual alone": (["run.stages=[crawl,dedup]", "dedup.exact=false", "dedup.semantic=false"], False),
    "semantic alone": (["dedup.exact=false", "dedup.perceptual=false"], False),
    "all levels": ([], False),
}


def blockings(small: int) -> dict[str, list[str]]:
    """The perceptual level's blockings compared, as config overrides."""
    return {
        "bands": ["dedup.near_blocking=bands"],
        "clusters": ["dedup.near_blocking=clusters"],
        f"clusters of {small}": ["dedup.near_blocking=clusters", f"dedup.cluster_size={small}"],
    }


def _pairs(groups: Iterable[tuple[str, str]]) -> set[frozenset[str]]:
    """(uid, group) → the pairs of uids that share a group."""
    members: dict[str, list[str]] = {}
    for uid, group in groups:
        members.setdefault(group, []).append(uid)
    return {frozenset(pair) for uids in members.values() for pair in combinations(sorted(uids), 2)}


def _row_pairs(rows: list[dict]) -> set[frozenset[str]]:
    return _pairs((row["uid"], row["dup_group"]) for row in rows if row.get("dup_group"))


def _recall(found: set[frozenset[str]], reference: set[frozenset[str]]) -> float:
    return len(found & reference) / len(reference) if reference else 1.0


def sample_web(args: argparse.Namespace) -> None:
    with served_sample_web(args.workdir, args.samples, args.seed) as (urls, truth):
        print(f"{args.samples:,} samples, seed {args.seed}")
        header = ("configuration", "precision", "recall", "shared-object FP", "pairs", "run s")
        print("{:<26} {:>9} {:>7} {:>17} {:>8} {:>6}".format(*header))
        for name, (overrides, exact_only) in LEVELS.items():
            run = run_on(urls, overrides, prefix="winnow-dedup-")
            precision, recall = duplicate_pair_scores(run.rows, truth, exact_only=exact_only)
            rate, pairs = shared_object_false_positives(run.rows, truth)
            print(
                f"{name:<26} {precision:>9.3f} {recall:>7.3f} {rate:>17.5f} {pairs:>8,} {run.seconds:>6.1f}"
            )
        alone = LEVELS["perceptual alone"][0]
        reference: set[frozenset[str]] = set()
        for name, overrides in blockings(args.small_cluster).items():
            run = run_on(urls, [*alone, *overrides], prefix="winnow-dedup-")
            precision, recall = duplicate_pair_scores(run.rows, truth)
            rate, pairs = shared_object_false_positives(run.rows, truth)
            found = _row_pairs(run.rows)
            reference = reference or found  # `bands` runs first
            against = f"  recall vs bands {_recall(found, reference):.3f}" if name != "bands" else ""
            label = f"perceptual, {name}"
            print(
                f"{label:<26} {precision:>9.3f} {recall:>7.3f} {rate:>17.5f} {pairs:>8,} {run.seconds:>6.1f}"
                f"{against}"
            )


# ---------------------------------------------------------------- scale.py's hard data


def hard_fingerprints(n: int, seed: int) -> tuple[list[tuple[str, Fingerprint]], dict[str, str]]:
    """`scale.py`'s hard data of n pairs, fingerprinted as the stage does (dHash), and each uid's group."""
    layout = plan_layout(n, "hard", seed)
    cache: dict = {}
    fingerprints, truth = [], {}
    for index in range(n):
        uid = f"h{index:07d}"
        with Image.open(io.BytesIO(sample_bytes(layout, index, "hard", seed, cache))) as opened:
            image = opened.convert("RGB")
        value, quality = perceptual_hash(image, "dhash")
        found = Fingerprint(
            uid,
            None,
            pixel_digest(image),
            value,
            thumbnail_signature(image),
            image.width * image.height,
            None,
        )
        fingerprints.append((uid, found))
        truth[uid] = f"g{int(layout.group[index])}"
    return fingerprints, truth


def near_groups(
    fingerprints: list[tuple[str, Fingerprint]], config: DedupConfig, folder: Path
) -> tuple[list, int]:
    """(uid, group) of every fingerprint `NearDuplicates` removes or keeps for a group, and its
    hash comparisons."""
    out = folder / f"near-{config.near_blocking}-{config.cluster_size}"
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create(fingerprints)
        | NearDuplicates(config)
        | beam.FlatMap(lambda d: [f"{d.uid} {d.duplicate_of}", f"{d.duplicate_of} {d.duplicate_of}"])
        | beam.Distinct()
        | beam.io.WriteToText(str(out), shard_name_template="")
    )
    result = p.run()
    result.wait_until_finish()
    found = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name("dedup/hash_comparisons")
    )
    comparisons = sum(c.committed for c in found["counters"])
    return [tuple(line.split()) for line in out.read_text().splitlines()], comparisons


def hard_data(args: argparse.Namespace) -> None:
    fingerprints, truth = hard_fingerprints(args.hard, args.seed)
    planted = _pairs(truth.items())
    folder = Path(args.workdir) / f"hard-{args.hard}-{args.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscale.py hard data: {args.hard:,} pairs, seed {args.seed}, {len(planted):,} planted pairs")
    header = ("perceptual level alone", "precision", "recall", "recall vs bands", "comparisons/sample")
    print("{:<26} {:>9} {:>7} {:>16} {:>19}".format(*header))
    reference: set[frozenset[str]] = set()
    for name, overrides in blockings(args.small_cluster).items():
        fields = dict(item.removeprefix("dedup.").split("=") for item in overrides)
        config = DedupConfig(
            near_blocking=fields["near_blocking"],  # type: ignore[arg-type]
            cluster_size=int(fields.get("cluster_size", 1000)),
        )
        groups, comparisons = near_groups(fingerprints, config, folder)
        found = _pairs(groups)
        reference = reference or found
        precision = len(found & planted) / len(found) if found else 1.0
        print(
            f"{name:<26} {precision:>9.3f} {_recall(found, planted):>7.3f} "
            f"{_recall(found, reference):>16.3f} {comparisons / args.hard:>19,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="build/bench-dedup")
    parser.add_argument("--small-cluster", type=int, default=50, help="the small blocks' cluster_size")
    parser.add_argument("--hard", type=int, default=6000, help="pairs of scale.py's hard data (0: skip)")
    parser.add_argument("--skip-web", action="store_true", help="only the hard data")
    args = parser.parse_args()
    if not args.skip_web:
        sample_web(args)
    if args.hard:
        hard_data(args)


if __name__ == "__main__":
    main()
