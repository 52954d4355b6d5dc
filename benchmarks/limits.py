"""Per-stage limits: each stage's irreducible core on this machine, next to the stage through Beam.

Measured in one run, on the same data:

- crawl: the sample web served from its own process (`serve_in_subprocess`); its images fetched
  only (urllib3, a pool of `--threads` threads), decoded and resized only (the crawl's
  `process_image` on the fetched bytes: one thread, then a pool of one thread per core), both in
  a bare thread pool, and the crawl stage (`DownloadImages`) in a local Beam pipeline;
- text: fastText's batch predict on the cleaned captions against the text stage, whose time is
  read + stage − read alone (`benchmarks/text_stage.py`'s functions);
- embed: the shipped model's forward on preprocessed tensors against the embed stage
  (`benchmarks/embed_throughput.py`'s functions);
- dedup: what no implementation can skip (each stored image decoded once and hashed: SHA-256 of
  the pixels, the 64-bit dHash and the thumbnail signature; the exact and perceptual keys grouped
  in a dict; spherical k-means with FAISS on the image embeddings, each embedding assigned, and
  every cluster's pairs compared against `1 - epsilon`) against `DeduplicateImages`;
- noise: the two k-nearest-neighbour searches with FAISS and the agreements, the three
  two-component mixtures, and the zero-shot concept scores against a vocabulary of the configured
  size, against `RepairCaptions` (which also builds that vocabulary from the captions and runs the
  text tower over it: a fixed cost, subtracted with the small run);
- write: the WebDataset tar and the Parquet metadata encoded in memory for the same samples
  (`tar_bytes`, `parquet_bytes`), against `WriteShards` (the shard grouping and the files).

The dedup, noise and write stages read crawled-and-embedded pairs (the embed stage's samples with
the shipped model's embeddings) from pickled files (`embed_throughput.time_through`).

A Beam pipeline's fixed cost (start, model load) is removed by subtracting a run over a small
slice of the same input.

    .venv/bin/python benchmarks/limits.py --samples 2000
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
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
import numpy as np  # noqa: E402
import text_stage  # noqa: E402
import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import make_pipeline  # noqa: E402
from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists  # noqa: E402
from schemas.sample import Sample, make_uid  # noqa: E402
from transforms.common.clustering import assign, cluster_count, normalize, train_centroids  # noqa: E402
from transforms.crawl import DownloadImages  # noqa: E402
from transforms.crawl.config import ImageOptions  # noqa: E402
from transforms.crawl.imaging import ImageError, process_image  # noqa: E402
from transforms.dedup import DedupConfig, DeduplicateImages  # noqa: E402
from transforms.dedup.fingerprints import fingerprint  # noqa: E402
from transforms.dedup.perceptual import hash_bands  # noqa: E402
from transforms.embed.clip import load_clip, model_pixels, preprocessing  # noqa: E402
from transforms.embed.config import EmbedConfig  # noqa: E402
from transforms.noise import NoiseConfig, RepairCaptions  # noqa: E402
from transforms.noise.mixture import fit_mixture  # noqa: E402
from transforms.noise.neighbours import knn_agreement  # noqa: E402
from transforms.text.langid import LanguageIdentifier  # noqa: E402
from transforms.text.normalize import normalize_caption  # noqa: E402
from transforms.write import WriteShards  # noqa: E402
from transforms.write.config import OutputConfig  # noqa: E402
from transforms.write.shards import parquet_bytes, tar_bytes, tar_members  # noqa: E402


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


def embedded_pairs(count: int, config: EmbedConfig) -> list[Sample]:
    """`count` pairs as the embed stage leaves them: stored JPEG, SHA-256, the shipped model's
    normalised float16 embeddings and the CLIP score."""
    samples = embed_throughput.stored_pairs(count)
    model, _, _ = load_clip(config)
    prep = preprocessing(config)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    out = []
    for start in range(0, count, 256):
        part = samples[start : start + 256]
        pixels = np.stack([model_pixels(s.image or b"", prep.geometry) for s in part])
        images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            image = model.encode_image(images, normalize=True).numpy()
            text = model.encode_text(prep.tokenizer([s.caption or "" for s in part]), normalize=True).numpy()
        for sample, i, t in zip(part, image, text, strict=True):
            out.append(
                sample.evolve(
                    sha256=hashlib.sha256(sample.image or b"").hexdigest(),
                    original_width=256, original_height=256, lang="en",
                    clip_score=float(i @ t), clip_model="bench",
                    image_embedding=i.astype(np.float16), text_embedding=t.astype(np.float16),
                )
            )  # fmt: skip
    return out


def _f32(embeddings: list) -> np.ndarray:
    return normalize(np.stack(embeddings).astype(np.float32))


def dedup_core(samples: list[Sample], config: DedupConfig, options: ImageOptions) -> None:
    prints = [fingerprint(s, config.hash, options) for s in samples]
    exact: dict = {}
    near: dict = {}
    for f in prints:
        exact.setdefault(f.sha256, []).append(f.uid)
        exact.setdefault(f.pixels, []).append(f.uid)
        for key in hash_bands(f.hash64, config.bands):  # the stage's own bands of the perceptual hash
            near.setdefault(key, []).append(f.uid)
    vectors = _f32([s.image_embedding for s in samples])
    k = cluster_count(len(vectors), len(vectors), config.cluster_size, config.clusters)
    ids, _ = assign(vectors, train_centroids(vectors, k, seed=config.seed, niter=config.kmeans_iterations))
    for cluster in range(k):
        members = vectors[ids == cluster]
        np.nonzero(np.triu(members @ members.T >= 1 - config.epsilon, 1))


def noise_core(samples: list[Sample], config: NoiseConfig) -> None:
    uids = [s.uid for s in samples]
    images, texts = _f32([s.image_embedding for s in samples]), _f32([s.text_embedding for s in samples])
    by_image = knn_agreement(uids, images, texts, config.k)
    by_text = knn_agreement(uids, texts, images, config.k)
    fit_mixture([s.clip_score for s in samples])
    fit_mixture([a for _, a, _ in by_image if a is not None])
    fit_mixture([a for _, a, _ in by_text if a is not None])
    bank = normalize(np.random.default_rng(0).normal(size=(config.vocabulary_size, images.shape[1])))
    scores = images @ bank.T
    np.argpartition(-scores, config.concepts_k, axis=1)[:, : config.concepts_k]


def judged_limits(count: int, workdir: str) -> list[tuple[str, float, str]]:
    """dedup, noise and write: each core, then the stage through Beam (minus a run of 64 pairs)."""
    embed = EmbedConfig(device="cpu", batch_size=64)
    samples = embedded_pairs(count, embed)
    small = samples[:64]
    dedup, noise, options = DedupConfig(), NoiseConfig(), ImageOptions()
    output = OutputConfig(samples_per_shard=1000)

    # name: (what its core does, the core, a new stage transform per run)
    parts = {
        "dedup": (
            "hashing + FAISS",
            lambda: dedup_core(samples, dedup, options),
            lambda: DeduplicateImages(dedup, options, embed),
        ),
        "noise": (
            "neighbours + mixtures + concepts",
            lambda: noise_core(samples, noise),
            lambda: RepairCaptions(noise, embed),
        ),
        "write": (
            "tar + Parquet",
            lambda: (tar_bytes(tar_members(samples)), parquet_bytes(samples, "zstd")),
            lambda: WriteShards(tempfile.mkdtemp(dir=workdir), output),
        ),
    }
    rows = []
    for name, (what, core, stage) in parts.items():
        core_rate = count / timed(core)
        took = embed_throughput.time_through(samples, stage())
        rate = (count - len(small)) / (took - embed_throughput.time_through(small, stage()))
        rows.append((f"{name}: {what} only, one process", core_rate, ""))
        rows.append((f"{name} stage through Beam", rate, f"{rate / core_rate:.2f} of the limit"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--images", type=int, default=2048)
    parts = ("crawl", "text", "embed", "judged")
    parser.add_argument(
        "--parts", nargs="+", choices=parts, default=parts, help="judged: dedup, noise, write"
    )
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as work:
        if "crawl" in args.parts:
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
        if "text" in args.parts:
            rows += text_limits(work, args.captions)
        if "embed" in args.parts:
            rows += embed_limits(args.images)
        if "judged" in args.parts:
            rows += judged_limits(args.images, work)
    print("| step | items/s | note |")
    print("|---|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:,.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
