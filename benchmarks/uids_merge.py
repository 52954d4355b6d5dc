"""The launcher's memory for `output.uids_file`: the streaming merge of the shards' parts against
the whole-array sort it replaces, at growing numbers of uids.

For each size it writes `--parts` sorted parts of random uid pairs (as the shard writers do), then
measures with `tracemalloc` the peak Python allocation of `merge_parts` (default chunk and
fan-in), and of the former way (every kept uid as a Python string in a list, then one sorted
array) up to `--reference-max` uids. Prints one line per size.

    .venv/bin/python benchmarks/uids_merge.py --sizes 100000 1000000 10000000 --parts 256
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import tracemalloc

import numpy as np

from transforms.write.uids import UID_DTYPE, merge_parts, uids_array


def _parts(folder: str, rows: int, parts: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i, n in enumerate(np.diff(np.linspace(0, rows, parts + 1).astype(int))):
        pairs = np.empty(n, UID_DTYPE)
        pairs["f0"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
        pairs["f1"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
        paths.append(os.path.join(folder, f"uids_{i:05d}.npy"))
        np.save(paths[-1], np.sort(pairs))
    return paths


def _peak(run) -> tuple[int, float]:
    tracemalloc.start()
    began = time.perf_counter()
    try:
        run()
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - began
    finally:
        tracemalloc.stop()


def _former(paths: list[str]) -> None:
    """The kept uids as Python strings in a list, sorted as one array and saved (as before)."""
    uids = [f"{a:016x}{b:016x}" for path in paths for a, b in np.load(path).tolist()]
    np.save(io.BytesIO(), uids_array(uids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--parts", type=int, default=256)
    parser.add_argument("--reference-max", type=int, default=1_000_000)
    args = parser.parse_args()
    for rows in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            paths = _parts(folder, rows, args.parts, seed=rows)
            target = os.path.join(folder, "merged.npy")
            peak, wall = _peak(lambda paths=paths, target=target: merge_parts(paths, target))
            line = f"uids={rows} parts={args.parts} merge_peak_mb={peak / 2**20:.1f} merge_wall_s={wall:.2f}"
            if rows <= args.reference_max:
                former, former_wall = _peak(lambda paths=paths: _former(paths))
                line += f" former_peak_mb={former / 2**20:.1f} former_wall_s={former_wall:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
