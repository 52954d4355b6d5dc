"""Download throughput: Winnow's crawl stage against img2dataset on the same URL list.

Both tools fetch the same realistic images from the same sample-web server (a separate process),
with the same resize settings (256 px center_crop, jpg q95), the same number of worker
processes and threads, and write WebDataset shards. Each tool runs as its own command, timed
wall-clock from start to exit, so start-up counts for both. Prints images/s for each and the ratio.

    make bench-setup   # img2dataset in its own environment (.venv-bench)
    .venv/bin/python benchmarks/crawl_vs_img2dataset.py --samples 5000 --repeats 2

`--large-jpegs` generates the web with JPEG photos only, long side 1,024-3,000 px (median 1,600),
the size of the photos a web crawl mostly meets, where decoding dominates the work.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists
from sampleweb.corpus import CorpusConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clean_url_list(web: str, base_url: str) -> tuple[str, int]:
    """The sample web's URLs without fault routes: every one is a real image both tools can fetch."""
    _, truth = write_url_lists(web, base_url)
    rows = pq.read_table(truth).to_pylist()
    captions = {r["url"]: r for r in pq.read_table(os.path.join(web, "urls.parquet")).to_pylist()}
    keep = [captions[r["url"]] for r in rows if r["fault"] is None]
    path = os.path.join(web, "bench_urls.parquet")
    pq.write_table(pa.Table.from_pylist(keep), path)
    return path, len(keep)


def count_tar_images(folder: str) -> int:
    total = 0
    for path in glob.glob(os.path.join(folder, "*.tar")):
        with tarfile.open(path) as archive:
            total += sum(1 for name in archive.getnames() if name.endswith(".jpg"))
    return total


def timed(command: list[str], output: str) -> tuple[float, int]:
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    return elapsed, count_tar_images(output)


def img2dataset_command(exe: str, urls: str, output: str, args: argparse.Namespace) -> list[str]:
    return [
        exe,
        f"--url_list={urls}",
        "--input_format=parquet",
        "--url_col=url",
        "--caption_col=caption",
        "--output_format=webdataset",
        f"--output_folder={output}",
        f"--processes_count={args.processes}",
        f"--thread_count={args.threads}",
        f"--image_size={args.image_size}",
        "--resize_mode=center_crop",
        "--encode_format=jpg",
        "--encode_quality=95",
        "--number_sample_per_shard=1000",
        "--distributor=multiprocessing",
        "--timeout=10",
        "--retries=0",
    ]


def winnow_command(exe: str, urls: str, output: str, args: argparse.Namespace) -> list[str]:
    """Winnow as a plain downloader (`--stages crawl`) on its default local runner: one process,
    threads over every core."""
    return [
        exe,
        "run",
        f"--input={urls}",
        f"--output={output}",
        "--stages=crawl",
        "--set=crawl.allow_private_networks=true",  # the sample web is on loopback
        "--set=crawl.max_per_host=0",  # one host; img2dataset has no per-host cap either
        f"--set=crawl.thread_count={args.threads}",
        f"--set=crawl.image_size={args.image_size}",
        "--set=crawl.resize_mode=center_crop",
        "--set=crawl.encode_format=jpg",
        "--set=crawl.encode_quality=95",
        "--set=crawl.timeout=10",
        "--set=output.samples_per_shard=1000",
        "--set=run.progress=false",
    ]


def winnow_processes_command(exe: str, urls: str, output: str, args: argparse.Namespace) -> list[str]:
    """Winnow with the local runner in multi-processing mode, one worker process per core."""
    return [*winnow_command(exe, urls, output, args), f"--workers={args.processes}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--large-jpegs", action="store_true", help="JPEG only, long side 1,024-3,000 px")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "build", "bench-crawl"))
    parser.add_argument("--img2dataset", default=os.path.join(ROOT, ".venv-bench", "bin", "img2dataset"))
    parser.add_argument("--winnow", default=os.path.join(ROOT, ".venv", "bin", "winnow"))
    args = parser.parse_args()
    if not os.path.exists(args.img2dataset):
        print(f"img2dataset not found at {args.img2dataset}; run `make bench-setup`", file=sys.stderr)
        return 2

    kind = "large-jpegs" if args.large_jpegs else "mixed"
    web = os.path.join(args.workdir, f"web-{kind}-{args.samples}-{args.seed}")
    if not os.path.exists(os.path.join(web, "manifest.parquet")):
        large = CorpusConfig(
            formats=(("jpeg", 1.0),), median_long_side=1600, min_long_side=1024, max_long_side=3000
        )
        generate_corpus(web, args.samples, args.seed, large if args.large_jpegs else None)
    commands = {
        "img2dataset": lambda out: img2dataset_command(args.img2dataset, urls, out, args),
        "winnow": lambda out: winnow_command(args.winnow, urls, out, args),
        "winnow --workers": lambda out: winnow_processes_command(args.winnow, urls, out, args),
    }
    results: dict[str, list[tuple[float, int]]] = {tool: [] for tool in commands}
    with serve_in_subprocess(web) as base_url:
        urls, n = clean_url_list(web, base_url)
        print(f"{n} image URLs, {args.processes} processes × {args.threads} threads, "
              f"{args.image_size}px center_crop jpg q95")  # fmt: skip
        for repeat in range(args.repeats):
            # Rotate the order so no tool always runs first, on a colder or warmer machine.
            order = list(commands)[repeat % len(commands) :] + list(commands)[: repeat % len(commands)]
            for tool in order:
                out = os.path.join(args.workdir, "out-" + tool.replace(" --", "-"))
                elapsed, images = timed(commands[tool](out), out)
                results[tool].append((elapsed, images))
                rate = images / elapsed
                print(f"  run {repeat + 1} {tool:<17} {elapsed:7.2f} s {images:6d} images {rate:7.1f} img/s")

    rates = {
        tool: statistics.median(images / elapsed for elapsed, images in runs)
        for tool, runs in results.items()
    }
    print()
    print("| tool | images | median wall s | images/s |")
    print("|---|---|---|---|")
    for tool, runs in results.items():
        wall = statistics.median(e for e, _ in runs)
        print(f"| {tool} | {runs[-1][1]} | {wall:.2f} | {rates[tool]:.1f} |")
    print()
    for tool in ("winnow", "winnow --workers"):
        print(f"ratio {tool} / img2dataset: {rates[tool] / rates['img2dataset']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
