"""Decontamination against E evaluation images: the LSH-bucket loop (before) vs the packed eval set
and its FAISS binary index (now), side by side, per-sample query time and process memory.

Data: `tests/scale/test_scale_decontam.generated_set` (a tenth of the eval images flat, hashes a
few bits from 0 or all ones, as flat images hash; groups sharing one hash; samples that are
near-copies straddling both thresholds, flat images and unrelated ones). Hash path only: the
embedding path is the same flat inner-product search before and now.

Each (implementation, E) runs in its own process; memory is that process's resident set grown
from before the side input is decoded to after the last query (what a worker holds for the eval
set), with its peak. The eval set reaches that process as the runner hands it to the step: the
pickled list of fingerprints (before, an `AsList` side input) or the packed bytes (now). One
FAISS thread, so times are per core; CPU time is the figure to compare on a shared machine.

    PYTHONPATH=. .venv/bin/python benchmarks/decontam.py --evals 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

import faiss

from transforms.dedup.config import DedupConfig
from transforms.dedup.decontam import _DecontaminateFn, pack_eval_set

BATCH = 1024  # BatchElements' largest batch in DecontaminateEval


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _prepare(evals: int, queries: int, folder: str) -> None:
    from tests.scale.test_scale_decontam import generated_set

    eval_set, batch = generated_set(evals, queries, seed=evals, embeddings=False)
    with open(os.path.join(folder, "evals.pickle"), "wb") as handle:
        pickle.dump(eval_set, handle, protocol=pickle.HIGHEST_PROTOCOL)
    with open(os.path.join(folder, "packed.bin"), "wb") as handle:
        handle.write(pack_eval_set(eval_set))
    with open(os.path.join(folder, "queries.pickle"), "wb") as handle:
        pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _measure(kind: str, folder: str, queries: int) -> None:
    """One implementation in this process; prints `key=value` figures on one line."""
    from tests.scale.test_scale_decontam import LegacyMatcher

    faiss.omp_set_num_threads(1)
    config = DedupConfig()
    with open(os.path.join(folder, "queries.pickle"), "rb") as handle:
        batch = pickle.load(handle)[:queries]
    gc.collect()
    before = _rss_mb()
    start = time.perf_counter()
    if kind == "before":
        with open(os.path.join(folder, "evals.pickle"), "rb") as handle:
            side_input_mb = os.fstat(handle.fileno()).st_size / 2**20
            matcher = LegacyMatcher(pickle.load(handle), config)
        match = matcher.decisions
    else:
        with open(os.path.join(folder, "packed.bin"), "rb") as handle:
            packed = handle.read()
        side_input_mb = len(packed) / 2**20
        fn = _DecontaminateFn(config)
        list(fn.process(batch[:1], packed))  # builds the index, as the first batch of a process does

        def match(part: list) -> list:
            return list(fn.process(part, packed))

    build_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    flagged = sum(len(match(batch[i : i + BATCH])) for i in range(0, len(batch), BATCH))
    query_s, query_cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"build_s={build_s:.2f} cpu_us_per_sample={query_cpu / len(batch) * 1e6:.1f} "
        f"wall_us_per_sample={query_s / len(batch) * 1e6:.1f} samples={len(batch)} "
        f"flagged={flagged} side_input_mb={side_input_mb:.0f} held_mb={_rss_mb() - before:.0f} "
        f"peak_rss_mb={peak:.0f}"
    )


def _child(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=4096, help="samples matched by the new index")
    parser.add_argument(
        "--legacy-samples",
        type=int,
        default=20_000_000,
        help="eval images × samples, before: the old loop matches this many divided by E (at least 100)",
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "QUERIES"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=3, metavar=("EVALS", "QUERIES", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _measure(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.prepare:
        _prepare(int(args.prepare[0]), int(args.prepare[1]), args.prepare[2])
        return
    print(f"{'E':>9} {'impl':>6} figures")
    for evals in args.evals:
        with tempfile.TemporaryDirectory() as folder:
            _child("--prepare", str(evals), str(args.queries), folder)
            legacy = max(100, min(args.queries, args.legacy_samples // evals))
            for kind, queries in (("before", legacy), ("now", args.queries)):
                print(f"{evals:>9} {kind:>6} {_child('--child', kind, folder, str(queries))}", flush=True)


if __name__ == "__main__":
    main()
