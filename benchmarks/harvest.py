"""WAT harvest throughput on one core, against cc2dataset's published ~50 s per Common Crawl WAT file.

Writes a WAT shaped like Common Crawl's (with `warcio`): per capture a request, a response and a
metadata record, the response's envelope with 40 `A@/href` links and a Poisson(8) number of
`IMG@/src` links (some relative, some `data:`, a page `Base` now and then). Then times, in this
process (one core):

1. `transforms.read.harvest.archive_pages` over the file: records/s, pages/s and pairs/s;
2. the same file through `winnow run --input-format wat` with no stage (reading, distinct
   pairs, shards), on the local runner with one worker: pairs/s end to end.

cc2dataset reads "one warc in about 50s" (its README). A Common Crawl WAT file holds about
130,000 records (the ~43,000 captures of its WARC, three records each); that figure is an
assumption of this script, not measured here: set it with `--records-per-wat`.

    .venv/bin/python benchmarks/harvest.py --captures 20000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from warcio.warcwriter import WARCWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.jobs import run_job  # noqa: E402
from transforms.read.harvest import Page, archive_pages  # noqa: E402

CC2DATASET_S_PER_WAT = 50.0


def _envelope(kind: str, url: str, links: list[dict] | None, base: str | None) -> bytes:
    payload: dict = {"Actual-Content-Type": f"application/http; msgtype={kind}"}
    if links is not None:
        head = {"Title": "A page", "Metas": [{"name": "viewport", "content": "width=device-width"}]}
        if base:
            head["Base"] = base
        payload["HTTP-Response-Metadata"] = {
            "Response-Message": {"Status": "200", "Version": "HTTP/1.1"},
            "Headers": {"Content-Type": "text/html; charset=UTF-8", "Server": "nginx"},
            "HTML-Metadata": {"Head": head, "Links": links},
        }
    envelope = {
        "Container": {"Compressed": True, "Filename": "CC-MAIN-synthetic.warc.gz"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": kind, "WARC-Target-URI": url},
            "Payload-Metadata": payload,
        },
    }
    return json.dumps(envelope).encode()


def write_wat(path: str, captures: int, seed: int) -> int:
    """Writes the synthetic WAT; returns its record count."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i in range(captures):
            host = f"site{rng.integers(0, captures // 10 + 1)}.example"
            url = f"https://{host}/articles/{i}.html"
            links = [
                {"path": "A@/href", "url": f"/articles/{i + j}.html", "text": f"link {j}"} for j in range(40)
            ]
            for j in range(rng.poisson(8)):
                kind = rng.integers(0, 10)
                src = (
                    f"https://cdn.{host}/img/{i}-{j}.jpg"
                    if kind < 5
                    else (f"/media/{i}-{j}.png" if kind < 9 else "data:image/gif;base64,R0lGODlhAQABAAAAACw=")
                )
                links.append(
                    {"path": "IMG@/src", "url": src, "alt": f"photo {j} of article {i} about things"}
                )
            base = f"https://{host}/" if i % 7 == 0 else None
            for kind, body in (
                ("request", _envelope("request", url, None, None)),
                ("response", _envelope("response", url, links, base)),
                ("metadata", _envelope("metadata", url, None, None)),
            ):
                record = writer.create_warc_record(
                    url, "metadata", payload=io.BytesIO(body), warc_content_type="application/json"
                )
                record.rec_headers.add_header("WARC-Refers-To-Type", kind)
                writer.write_record(record)
    return captures * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records-per-wat", type=int, default=130_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wat = os.path.join(tmp, "synthetic.warc.wat.gz")
        started = time.perf_counter()
        records = write_wat(wat, args.captures, args.seed)
        size = os.path.getsize(wat)
        took = time.perf_counter() - started
        print(f"wrote {records:,} WAT records ({size / 1e6:.1f} MB gzipped) in {took:.1f}s")

        started = time.perf_counter()
        pages = pairs = 0
        with open(wat, "rb") as handle:
            for item in archive_pages(handle, "wat", 10_000_000):
                if isinstance(item, Page):
                    pages += 1
                    pairs += len(item.pairs)
        seconds = time.perf_counter() - started
        rate = records / seconds
        print(
            f"archive_pages, one core: {seconds:.2f}s — {rate:,.0f} records/s, "
            f"{pages / seconds:,.0f} pages/s, {pairs / seconds:,.0f} pairs/s ({pairs:,} pairs), "
            f"{size / 1e6 / seconds:.1f} MB/s gzipped"
        )
        config = load_config(overrides=["run.stages=[]", "input.input_format=wat", "run.progress=false"])
        started = time.perf_counter()
        stats = run_job(config, [wat], os.path.join(tmp, "out"))
        end_to_end = time.perf_counter() - started
        print(
            f"winnow run --input-format wat (no stage, local runner): {end_to_end:.2f}s — "
            f"{stats['harvest']['pairs'] / end_to_end:,.0f} pairs/s, "
            f"{stats['samples']:,} distinct pairs written"
        )
        ours = args.records_per_wat / rate
        print(
            f"one Common Crawl WAT (~{args.records_per_wat:,} records, assumed): {ours:.1f}s of one core "
            f"here against cc2dataset's ~{CC2DATASET_S_PER_WAT:.0f}s → {CC2DATASET_S_PER_WAT / ours:.1f}x"
        )


if __name__ == "__main__":
    main()
