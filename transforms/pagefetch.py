"""Page mode (`--input-format pages`): fetch each listed web page and harvest its image/alt-text pairs.

In: row batches whose `url` is a page. Out: row batches of the pairs found on those pages, as
`transforms.harvest.html_pairs` finds them (the same rules as for WARC records), with `page_url`
in `extra`; and, under the tagged output `HARVEST_COUNTS`, each bundle's counts.

Pages are fetched by the crawl's own `Fetcher`, so the same politeness, robots.txt, opt-outs and
SSRF guard apply to them as to images; a page may be at most `input.max_record_bytes`. A page that
cannot be used counts under its reason (`http_404`, `opted_out_robots_txt`, `not_html`, ...) and
is logged; the run goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from transforms.crawl import CrawlConfig
from transforms.fetch import Fetcher, FetchError
from transforms.harvest import HARVEST_COUNTS, Page, Skipped, html_page, pairs_batch, tally

LOG = logging.getLogger(__name__)


def fetch_page(fetcher: Fetcher, url: str) -> Page | Skipped:
    """The pairs of one page, or why it gave none."""
    try:
        fetched = fetcher.fetch(url)
    except FetchError as err:
        return Skipped(err.reason, f"{url}: {err}")
    return html_page(url, 0, fetched.content_type or "", fetched.data, url)


class _HarvestPagesFn(beam.DoFn):
    def __init__(self, config: CrawlConfig, max_page_bytes: int):
        self._config = dataclasses.replace(config, max_image_bytes=max_page_bytes)

    def setup(self) -> None:
        self._fetcher = Fetcher(self._config, pool_size=self._config.thread_count, accept=Fetcher.PAGES)
        self._pool = cf.ThreadPoolExecutor(self._config.thread_count, thread_name_prefix="winnow-pages")

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        urls = [u.strip() for u in batch.column("url").to_pylist() if u and u.strip()]
        counts: Counter[str] = Counter()
        pages = []
        for result in self._pool.map(lambda url: fetch_page(self._fetcher, url), urls):
            tally(counts, result)
            if isinstance(result, Skipped):
                LOG.warning("page skipped (%s): %s", result.reason, result.detail)
            else:
                pages.append(result)
        if pages:
            yield pairs_batch(pages)
        yield beam.pvalue.TaggedOutput(HARVEST_COUNTS, dict(counts))

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class HarvestPages(beam.PTransform):
    """Fetches the pages of page-list row batches and gives the row batches of their pairs."""

    def __init__(self, config: CrawlConfig, max_page_bytes: int):
        super().__init__()
        self._config = config
        self._max_page_bytes = max_page_bytes

    def expand(self, batches: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return batches | "FetchPages" >> beam.ParDo(
            _HarvestPagesFn(self._config, self._max_page_bytes)
        ).with_outputs(HARVEST_COUNTS, main="rows")
