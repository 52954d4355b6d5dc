"""PDQ blocklist lookup cost against list size: Winnow's multi-index (`transforms/safety/
hashindex.py`) against a scan of the whole list, on the same queries, in one run.

Lists of random 256-bit hashes (PDQ hashes of unrelated images lie about 128 bits apart, as
random ones do); queries are half listed hashes with 0-31 bits flipped (matches at PDQ's
threshold of 31) and half random (no match). Every query the scan answers is checked to get the
same answer from the index (recall and precision equal to the scan's).

    .venv/bin/python benchmarks/blocklist_lookup.py --sizes 10000 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.safety.hashindex import HammingIndex  # noqa: E402


def queries(listed: np.ndarray, count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for i in range(count):
        if i % 2:
            out.append(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())
            continue
        bits = np.unpackbits(listed[rng.integers(len(listed))])
        bits[rng.choice(256, size=int(rng.integers(0, 32)), replace=False)] ^= 1
        out.append(np.packbits(bits).tobytes())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--scanned", type=int, default=200, help="queries also answered by a scan")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    header = ("hashes", "build s", "index µs/query", "scan µs/query", "ratio", "agree")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (10, 8, 15, 14, 7, 7), strict=True)))
    for size in args.sizes:
        listed = rng.integers(0, 256, size=(size, 32), dtype=np.uint8)
        started = time.perf_counter()
        index = HammingIndex(listed, max_distance=31)
        build = time.perf_counter() - started
        asked = queries(listed, args.queries, rng)
        started = time.perf_counter()
        answers = [index.nearest(q) for q in asked]
        per_index = (time.perf_counter() - started) / len(asked)
        scanned = asked[: args.scanned]
        started = time.perf_counter()
        truth = [index.scan(q) for q in scanned]
        per_scan = (time.perf_counter() - started) / len(scanned)
        agree = sum(a == t for a, t in zip(answers, truth, strict=False))
        print(
            f"{size:>10,} {build:>8.2f} {per_index * 1e6:>15.0f} {per_scan * 1e6:>14.0f} "
            f"{per_scan / per_index:>6.1f}x {agree:>3}/{len(scanned)}"
        )
        matched = sum(a is not None for a in answers)
        print(f"{'':>10} {matched} of {len(asked)} queries matched (every other one was a listed hash)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
