"""Text-stage throughput: captions/s through Winnow's Beam stage against raw fastText batch predict.

Both sides see the same captions (the sample web's, repeated under distinct URLs). The raw side is
`fasttext` `predict(list, k=1)` in batches of `--batch` on already-cleaned captions: language ID
alone. The stage side is a real local Beam pipeline — read the Parquet list into row batches →
`FilterText` (cleaning, URL canonicalisation and duplicate check, boilerplate counting, fastText,
rules) → count — minus the same pipeline without `FilterText`, so reading is not charged to the
stage.

    .venv/bin/python benchmarks/text_stage.py --captions 200000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.runner import make_pipeline
from sampleweb import generate_corpus
from transforms.read.config import InputConfig
from transforms.read.lists import ReadUrlBatches
from transforms.text.config import TextConfig
from transforms.text.langid import LanguageIdentifier
from transforms.text.normalize import normalize_caption
from transforms.text.stage import FilterText

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
    batches = (pipeline | ReadUrlBatches([path], InputConfig())).rows
    if config is not None:
        batches = batches | FilterText(config)
    _ = batches | beam.Map(lambda batch: batch.num_rows) | beam.CombineGlobally(sum)
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    return time.perf_counter() - started


def time_raw(model: LanguageIdentifier, cleaned: list[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(cleaned), batch):
        model.model.predict(cleaned[i : i + batch], k=1)
    return time.perf_counter() - started


#: The stage configurations measured: DataComp's basic filter as its preset defines it (URL
#: canonicalisation and duplicate check on, as by default), and the same plus ALIGN's boilerplate
#: rule, which adds a second global count.
CONFIGS = {
    "datacomp_basic": {"preset": "datacomp_basic"},
    "datacomp_basic + boilerplate > 10 URLs": {"preset": "datacomp_basic", "boilerplate_max_urls": 10},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the timings; medians reported")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "build", "bench-text"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path, captions = caption_list(args.workdir, args.captions)
    n = len(captions)

    model = LanguageIdentifier()
    cleaned = [normalize_caption(c, 1000) or " " for c in captions]
    configs = {name: TextConfig(lid_batch_size=args.batch, **keys) for name, keys in CONFIGS.items()}  # type: ignore[arg-type]
    raws: list[float] = []
    reads: list[float] = []
    stages: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(1, args.repeats + 1):  # interleaved, so drift in the machine hits all alike
        raws.append(time_raw(model, cleaned, args.batch))
        reads.append(time_pipeline(path, None))
        line = f"round {round_}: raw {raws[-1]:.2f} s, read {reads[-1]:.2f} s"
        for name, config in configs.items():
            stages[name].append(time_pipeline(path, config) - reads[-1])
            line += f", {name} {stages[name][-1]:.2f} s"
        print(line)
    raw, read_only = statistics.median(raws), statistics.median(reads)

    print(f"\n{n:,} captions, fastText batch {args.batch}, 1 process, medians of {args.repeats} rounds")
    print("(FilterText rows: read + FilterText − read only)")
    print("| path | seconds | captions/s | stage / raw fastText |")
    print("|---|---|---|---|")
    print(f"| raw fastText predict | {raw:.2f} | {n / raw:,.0f} | |")
    print(f"| Beam: read only | {read_only:.2f} | {n / read_only:,.0f} | |")
    for name, times in stages.items():
        stage = statistics.median(times)
        row = f"| FilterText, {name} | {stage:.2f} | {n / stage:,.0f} | {raw / stage:.2f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
