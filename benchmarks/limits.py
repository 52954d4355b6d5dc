"""Per-stage limits: each stage's irreducible core on this machine, next to the stage through Beam.

Measured in one run, on the same data:

- crawl: the sample web served from its own process (`serve_in_subprocess`); its images fetched
  only (urllib3, a pool of `--threads` threads), decoded and resized only (the crawl's
  `process_image` on the fetched bytes: one thread, then a pool of one thread per core), both in
  a bare thread pool, and the crawl stage (`DownloadImages`) in a local Beam pipeline;
- text: fastText's batch predict on the cleaned captions against the text stage, whose time is
  read + stage − read alone (`benchmarks/text_stage.py`'s functions);
- embed: the shipped model's forward on preprocessed tensors against the embed stage
  (`benchmarks/embed_throughput.py`'s functions).

A Beam pipeline's fixed cost (start, model load) is removed by subtracting a run over a small
slice of the same input.

    .venv/bin/python benchmarks/limits.py --samples 2000
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import os
import sys
import tempfile
import time

import apache_beam as beam
import pyarrow.parquet as pq
import urllib3

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import embed_throughput  # noqa: E402
import text_stage  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import make_pipeline  # noqa: E402
from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists  # noqa: E402
from schemas.sample import Sample, make_uid  # noqa: E402
from transforms.crawl import DownloadImages  # noqa: E402
from transforms.crawl.imaging import ImageError, process_image  # noqa: E402
from transforms.embed.config import EmbedConfig  # noqa: E402
from transforms.text.langid import LanguageIdentifier  # noqa: E402
from transforms.text.normalize import normalize_caption  # noqa: E402


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _process(data: bytes, options) -> None:
    with contextlib.suppress(ImageError):  # the sample web plants broken images: crawl failures
        process_image(data, options)


def crawl_limits(urls: list[str], threads: int, config) -> list[tuple[str, float, str]]:
    http = urllib3.PoolManager(maxsize=threads)
    fetched: dict[str, bytes] = {}

    def fetch(url: str) -> bytes:
        """The body, or b"" on any failure; at most `config.deadline` seconds (the slow route)."""
        end = time.monotonic() + config.deadline
        try:
            response = http.request("GET", url, retries=False, timeout=config.timeout, preload_content=False)
            chunks = []
            while chunk := response.read1(65536):  # what has arrived: a trickle cannot block it
                chunks.append(chunk)
                if time.monotonic() > end:
                    return b""
            response.release_conn()
            return b"".join(chunks) if response.status == 200 else b""
        except urllib3.exceptions.HTTPError:
            return b""

    with cf.ThreadPoolExecutor(threads) as pool:
        fetch_s = timed(lambda: fetched.update(zip(urls, pool.map(fetch, urls), strict=True)))
    data = [d for d in fetched.values() if d]
    cores = len(os.sched_getaffinity(0))
    one_s = timed(lambda: [_process(d, config) for d in data])
    with cf.ThreadPoolExecutor(cores) as pool:
        cores_s = timed(lambda: list(pool.map(lambda d: _process(d, config), data)))
    with cf.ThreadPoolExecutor(threads) as pool:
        both_s = timed(lambda: list(pool.map(lambda u: _process(fetch(u), config), urls)))
    samples = [Sample(uid=make_uid(u, str(i)), url=u, caption=str(i)) for i, u in enumerate(urls)]

    def stage(part: list[Sample]) -> float:
        pipeline = make_pipeline("local")
        _ = pipeline | beam.Create(part) | DownloadImages(config) | beam.combiners.Count.Globally()
        return timed(lambda: pipeline.run().wait_until_finish())

    # The fixed cost: a run over a few images that answer at once (a slow one would be subtracted).
    small = [s for s in samples if fetched.get(s.url or "")][:8]
    stage_s = stage(samples) - stage(small)
    n = len(urls)
    rate = (n - len(small)) / stage_s
    return [
        ("crawl: fetch only (bare thread pool)", n / fetch_s, f"{threads} threads"),
        ("crawl: decode + resize only, one thread", n / one_s, "the same bytes"),
        (f"crawl: decode + resize only, {cores} threads", n / cores_s, ""),
        ("crawl: fetch + decode + resize, bare thread pool", n / both_s, "the limit"),
        ("crawl stage through Beam", rate, f"{rate / (n / both_s):.2f} of the limit"),
    ]  # fmt: skip


def text_limits(workdir: str, count: int) -> list[tuple[str, float, str]]:
    path, captions = text_stage.caption_list(workdir, count)
    model = LanguageIdentifier()
    cleaned = [normalize_caption(c, 1000) or " " for c in captions]
    raw_s = text_stage.time_raw(model, cleaned, 1024)
    config = load_config(overrides=["text.preset=datacomp_basic"]).text
    # The stage's rows: read + FilterText − read alone, as `text_stage.py` measures them.
    stage_s = text_stage.time_pipeline(path, config) - text_stage.time_pipeline(path, None)
    rate = count / stage_s
    return [
        ("text: fastText predict, batches of 1,024", count / raw_s, ""),
        ("text stage through Beam (datacomp_basic)", rate, f"{rate / (count / raw_s):.2f} of the limit"),
    ]


def embed_limits(count: int) -> list[tuple[str, float, str]]:
    config = EmbedConfig(device="cpu", batch_size=64)
    samples = embed_throughput.stored_pairs(count)
    raw_s = embed_throughput.time_raw(samples, config)
    stage_s = embed_throughput.time_stage(samples, config) - embed_throughput.time_stage(samples[:64], config)
    rate = (count - 64) / stage_s
    return [
        ("embed: shipped model forward, batches of 64", count / raw_s, ""),
        ("embed stage through Beam", rate, f"{rate / (count / raw_s):.2f} of the limit"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--images", type=int, default=2048)
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as work:
        web = os.path.join(work, "web")
        generate_corpus(web, args.samples, 0)
        with serve_in_subprocess(web) as base:
            listed, _ = write_url_lists(web, base)
            urls = pq.read_table(listed).column("url").to_pylist()
            options = [
                "crawl.allow_private_networks=true", "crawl.max_per_host=0",
                "crawl.resize_mode=center_crop", f"crawl.thread_count={args.threads}",
                "crawl.timeout=5", "crawl.deadline=10",
            ]  # fmt: skip
            rows += crawl_limits(urls, args.threads, load_config(overrides=options).crawl)
        rows += text_limits(work, args.captions)
        rows += embed_limits(args.images)
    print("| step | items/s | note |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:,.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
