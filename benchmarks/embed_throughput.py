"""Embedding throughput: images/s through Winnow's embed stage against the raw model forward.

Both sides see the same pairs: sample-web scenes stored as the crawl stores them (256 px JPEG,
quality 95) with their captions. The raw side is the loaded open_clip model's `encode_image` +
`encode_text` on already-preprocessed tensors, `--batch` at a time, with torch's default thread
count. The stage side is a real local Beam pipeline: `EmbedImages` (decode, resize/normalise,
tokenize, `RunInference` with `OpenClipModelHandler`, score) over the stored JPEGs, to a count;
its fixed cost (pipeline start, model load) is removed by subtracting a run of one batch. The
pipeline reads the pairs from pickled files (`time_through`), as a stage reads its input.

    .venv/bin/python benchmarks/embed_throughput.py --models ViT-B-32 winnow-tiny-clip

ViT-B-32 runs with random weights (nothing can be downloaded here), which does not change its
speed.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import statistics
import sys
import tempfile
import time

import apache_beam as beam
import numpy as np
import torch
from PIL import Image

from pipeline.runner import make_pipeline
from sampleweb.captions import describe
from sampleweb.scenes import random_scene, render
from schemas.sample import Sample, Status, make_uid
from transforms.embed.clip import load_clip, preprocessing
from transforms.embed.config import EmbedConfig
from transforms.embed.stage import EmbedImages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stored_pairs(count: int, seed: int = 5) -> list[Sample]:
    """`count` pairs as the crawl leaves them: a 256 px JPEG and a caption."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        scene = random_scene(rng)
        buffer = io.BytesIO()
        render(scene, 256, 256, grain=0.03, grain_seed=index).save(buffer, format="JPEG", quality=95)
        caption = describe(scene, "en", rng)
        url = f"http://bench.example/{index}.jpg"
        samples.append(
            Sample(
                uid=make_uid(url, caption),
                url=url,
                caption=caption,
                caption_clean=caption,
                status=Status.SUCCESS,
                image=buffer.getvalue(),
                image_ext="jpg",
            )
        )
    return samples


def _load(path: str) -> list[Sample]:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def time_through(samples: list[Sample], stage: beam.PTransform, chunk: int = 64) -> float:
    """Seconds for a local pipeline that reads the samples from pickled files of `chunk` samples
    and runs them through `stage` to a count. The samples come from files, not from
    `beam.Create(samples)`: `Create` pickles and bz2-compresses its elements into the pipeline
    proto, which for images costs more than most stages (0.25 of the model's rate was measured for
    the embed stage that way; it was the benchmark's own `Create`)."""
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for start in range(0, len(samples), chunk):
            paths.append(os.path.join(folder, f"{start:08d}.pickle"))
            with open(paths[-1], "wb") as handle:
                pickle.dump(samples[start : start + chunk], handle, protocol=pickle.HIGHEST_PROTOCOL)
        pipeline = make_pipeline("local")
        read = pipeline | "Paths" >> beam.Create(paths) | "Read" >> beam.FlatMap(_load)
        out = read | "Stage" >> stage
        _ = getattr(out, "rows", out) | "Count" >> beam.combiners.Count.Globally()  # a `WithSummary`'s rows
        started = time.perf_counter()
        pipeline.run().wait_until_finish()
        return time.perf_counter() - started


def time_stage(samples: list[Sample], config: EmbedConfig) -> float:
    return time_through(samples, EmbedImages(config))


def time_raw(samples: list[Sample], config: EmbedConfig) -> float:
    model, transform, _ = load_clip(config)
    tokenizer = preprocessing(config).tokenizer
    images, tokens = [], []
    for sample in samples:
        with Image.open(io.BytesIO(sample.image or b"")) as image:
            images.append(transform(image.convert("RGB")))  # open_clip's own transform, done up front
        tokens.append(tokenizer([sample.caption_clean or ""])[0])
    image_batch, token_batch = torch.stack(images), torch.stack(tokens)
    size = config.batch_size
    with torch.inference_mode():  # warm-up: the first call sets up the kernels
        model.encode_image(image_batch[:size], normalize=True)
        model.encode_text(token_batch[:size], normalize=True)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(samples), size):
            model.encode_image(image_batch[start : start + size], normalize=True)
            model.encode_text(token_batch[start : start + size], normalize=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "winnow-tiny-clip"])
    parser.add_argument("--images", type=int, nargs="+", default=[512, 4096], help="per model, in order")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are printed")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, CPU")
    print("| model | images | raw forward images/s | stage images/s | stage / raw |")
    print("|---|---|---|---|---|")
    for name, count in zip(args.models, args.images + args.images[-1:] * len(args.models), strict=False):
        config = EmbedConfig(model=name, device="cpu", batch_size=args.batch)
        samples = stored_pairs(count)
        raw_rates, stage_rates = [], []
        for _ in range(args.repeats):  # raw and stage alternate, so a slower minute hits both
            raw_rates.append(count / time_raw(samples, config))
            fixed = time_stage(samples[: args.batch], config)
            stage_rates.append((count - args.batch) / (time_stage(samples, config) - fixed))
        raw_rate, stage_rate = statistics.median(raw_rates), statistics.median(stage_rates)
        ratios = ", ".join(f"{s / r:.2f}" for s, r in zip(stage_rates, raw_rates, strict=True))
        print(
            f"| {name} | {count:,} | {raw_rate:,.1f} | {stage_rate:,.1f} | {stage_rate / raw_rate:.2f} "
            f"(rounds: {ratios}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
