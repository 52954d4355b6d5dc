"""A pool already downloaded: Winnow's webdataset path against reading the same shards with
`webdataset` alone.

The same DataComp-shaped pool (`sampleweb/pool.py`: tars, Parquet, `.npz` embeddings) is read
three ways, each a fresh command timed from start to exit, so start-up counts:

- `webdataset`: `WebDataset(shards).decode("pil")`, every image decoded to a PIL image and its
  caption read, nothing written: the floor of any reader of these tars in Python;
- `winnow crawl`: `winnow run --stages crawl`: every image decoded, resized and re-encoded as a
  download would be, and the Parquet and tar shards written;
- `winnow dedup`: `--stages text,crawl,embed,dedup` with the pool's ViT-L/14 embeddings reused (no
  model runs): language ID, decoding, exact, perceptual and semantic dedup;
- `winnow noise`: `--stages text,crawl,embed,dedup,noise` with `embed.recompute: true` and the
  shipped model on CPU: the noise stage encodes its concept prompts with the run's model, whose
  weights (ViT-L/14 here) a machine without network access does not have.

    .venv/bin/python benchmarks/pool_read.py --samples 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sampleweb import generate_corpus  # noqa: E402
from sampleweb.pool import write_datacomp_pool  # noqa: E402

WEBDATASET_ONLY = """
import sys, glob, webdataset
from PIL import Image
shards = sorted(glob.glob(sys.argv[1] + "/*.tar"))
n = 0
for sample in webdataset.WebDataset(shards, shardshuffle=False).decode("pil"):
    images = [v for v in sample.values() if isinstance(v, Image.Image)]
    assert len(images) == 1 and isinstance(sample["txt"], str), sorted(sample)
    images[0].load()
    n += 1
print(n)
"""


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    python = sys.executable
    winnow = os.path.join(os.path.dirname(python), "winnow")
    with tempfile.TemporaryDirectory() as tmp:
        web, pool = os.path.join(tmp, "web"), os.path.join(tmp, "pool")
        generate_corpus(web, samples=args.samples, seed=0)
        counts = write_datacomp_pool(web, pool, shards=args.shards, seed=0, max_side=None)
        size = sum(os.path.getsize(os.path.join(pool, f)) for f in os.listdir(pool) if f.endswith(".tar"))
        print(f"pool: {counts['samples']} rows, {counts['downloaded']} images, {size / 1e6:.0f} MB of tars")
        base = [winnow, "run", "--input", f"{pool}/*.tar", "--set", "output.index=false"]
        model = ["--set", "embed.model=ViT-L-14", "--set", "embed.pretrained=openai"]
        commands = {
            "webdataset": [python, "-c", WEBDATASET_ONLY, pool],
            "winnow crawl": [*base, "--stages", "crawl"],
            "winnow dedup": [*base, "--stages", "text,crawl,embed,dedup", *model],
            "winnow noise": [
                *base,
                "--stages",
                "text,crawl,embed,dedup,noise",
                "--set",
                "embed.recompute=true",
            ],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                out = os.path.join(tmp, "out")
                shutil.rmtree(out, ignore_errors=True)
                elapsed, _ = timed([*command, "--output", out] if name != "webdataset" else command)
                seconds[name].append(elapsed)
        images = counts["downloaded"]
        rates = {name: images / statistics.median(values) for name, values in seconds.items()}
        for name, values in seconds.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            print(f"{name:14s} {rates[name]:8.1f} images/s  (median of {runs} s)")
        for name in ("winnow crawl", "winnow dedup", "winnow noise"):
            print(f"ratio {name} / webdataset: {rates[name] / rates['webdataset']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
