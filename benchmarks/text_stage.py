"""Text-stage throughput: captions/s through Winnow's Beam stage against raw fastText batch predict.

Both sides see the same captions (the sample web's, repeated under distinct URLs). The raw side is
`fasttext` `predict(list, k=1)` in batches of `--batch` on already-cleaned captions: language ID
alone. The stage side is a real local Beam pipeline — read the Parquet list → `FilterText`
(cleaning, URL canonicalisation and duplicate check, boilerplate counting, fastText, rules) →
count — minus the same pipeline without `FilterText`, so reading is not charged to the stage.

    .venv/bin/python benchmarks/text_stage.py --captions 200000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runner import make_pipeline
from sampleweb import generate_corpus
from transforms.langid import LanguageIdentifier
from transforms.readers import InputConfig, ReadUrlList
from transforms.text import FilterText, TextConfig
from transforms.textnorm import normalize_caption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def caption_list(workdir: str, count: int) -> tuple[str, list[str]]:
    web = os.path.join(workdir, "web-2000-3")
    if not os.path.exists(os.path.join(web, "manifest.parquet")):
        generate_corpus(web, 2000, 3)
    captions = [
        c or "" for c in pq.read_table(os.path.join(web, "manifest.parquet")).column("caption").to_pylist()
    ]
    repeated = [captions[i % len(captions)] for i in range(count)]
    urls = [f"http://img{i % 97}.example/{i}.jpg" for i in range(count)]
    path = os.path.join(workdir, f"captions-{count}.parquet")
    pq.write_table(pa.table({"url": urls, "caption": repeated}), path)
    return path, repeated


def time_pipeline(path: str, config: TextConfig | None) -> float:
    pipeline = make_pipeline("local")
    samples = pipeline | ReadUrlList([path], InputConfig())
    if config is not None:
        samples = samples | FilterText(config)
    _ = samples | beam.combiners.Count.Globally()
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "build", "bench-text"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path, captions = caption_list(args.workdir, args.captions)
    n = len(captions)

    model = LanguageIdentifier()
    cleaned = [normalize_caption(c, 1000) for c in captions]
    started = time.perf_counter()
    for i in range(0, n, args.batch):
        model.predict(cleaned[i : i + args.batch])
    raw = time.perf_counter() - started

    config = TextConfig(preset="datacomp_basic", boilerplate_max_urls=10, lid_batch_size=args.batch)
    with_stage = time_pipeline(path, config)
    read_only = time_pipeline(path, None)
    stage = with_stage - read_only

    print(f"{n:,} captions, fastText batch {args.batch}, 1 process")
    print("| path | seconds | captions/s |")
    print("|---|---|---|")
    print(f"| raw fastText predict | {raw:.2f} | {n / raw:,.0f} |")
    print(f"| Beam: read only | {read_only:.2f} | {n / read_only:,.0f} |")
    print(f"| Beam: read + FilterText | {with_stage:.2f} | {n / with_stage:,.0f} |")
    print(f"| FilterText alone (difference) | {stage:.2f} | {n / stage:,.0f} |")
    print(f"\nstage / raw fastText: {raw / stage:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
