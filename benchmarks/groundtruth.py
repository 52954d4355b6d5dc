"""What the ground-truth benchmarks share: the sample web generated once per (size, seed) and
served on loopback, and a pipeline run whose output rows are read back.

    with served_sample_web("build/bench-x", samples=2000, seed=7) as (urls, truth):
        run = run_on(urls, ["noise.k=20"])
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.jobs import run_job  # noqa: E402
from sampleweb import SampleWebServer, generate_corpus, write_url_lists  # noqa: E402

#: The sample web is on loopback; its slow routes fail fast with these.
CRAWL = [
    "crawl.allow_private_networks=true",
    "crawl.max_per_host=0",  # the sample web is one host
    "crawl.timeout=1",
    "crawl.deadline=2",
    "crawl.thread_count=16",
    "run.progress=false",
]


@contextmanager
def served_sample_web(workdir: str, samples: int, seed: int) -> Iterator[tuple[str, dict[str, dict]]]:
    """(URL list path, truth row by URL) of a served sample web, generated on first use."""
    web = os.path.join(workdir, f"web-{samples}-{seed}")
    if not os.path.exists(os.path.join(web, "manifest.parquet")):
        generate_corpus(web, samples=samples, seed=seed)
    with SampleWebServer(web, host="127.0.0.1", port=0) as server:
        urls, truth_path = write_url_lists(web, server.base_url)
        yield urls, {row["url"]: row for row in pq.read_table(truth_path).to_pylist()}


@dataclasses.dataclass(frozen=True)
class Run:
    rows: list[dict[str, Any]]
    stats: dict[str, Any]
    output: str
    seconds: float


def run_on(urls: str, overrides: Sequence[str], output: str | None = None, prefix: str = "winnow-") -> Run:
    """The default pipeline with `CRAWL` and `overrides` on `urls`; its Parquet rows read back."""
    output = output or tempfile.mkdtemp(prefix=prefix)
    started = time.monotonic()
    stats = run_job(load_config(overrides=[*CRAWL, *overrides]), [urls], output)
    seconds = time.monotonic() - started
    rows = [
        row
        for name in sorted(os.listdir(output))
        if name.endswith(".parquet")
        for row in pq.read_table(os.path.join(output, name)).to_pylist()
    ]
    return Run(rows, stats, output, seconds)
