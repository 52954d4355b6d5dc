"""Page mode (`--input-format pages`): fetch each listed web page and harvest its image/alt-text pairs.

In: row batches whose `url` is a page. Out: row batches of the pairs found on those pages, as
`transforms.read.harvest.html_pairs` finds them (the same rules as for WARC records), with `page_url`
in `extra`; and, under the tagged output `HARVEST_COUNTS`, each bundle's counts.

Every listed page is accounted for. A row the reader already failed (`missing_url`,
`unparseable_row`) passes through as it is. A page that cannot be used (`http_404`, `timeout`,
`opted_out_robots_txt`, `not_html`, ...) becomes a row of its own: the page URL, no caption,
status `failed` at stage `read` with that reason and the detail in `error`. A page fetched well
that holds no image pair becomes a `rejected` row with reason `no_image_pairs`. The pages' counts
(in stats.json's `harvest`) feed the run's failure alarm (`transforms.crawl.stage.failure_alarm`), so
an outage of the listed sites ends the run with an alarm, not with quietly empty results.

Pages are fetched by the crawl's own `Fetcher`, so the same politeness, robots.txt, opt-outs and
SSRF guard apply to them as to images; a page may be at most `input.max_record_bytes`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.shared import Shared

from schemas.sample import Sample, Status, batch_from_samples, make_uid
from transforms.crawl.config import CrawlConfig
from transforms.crawl.fetch import Fetcher, FetchError
from transforms.crawl.stage import Crawler
from transforms.read.harvest import HARVEST_COUNTS, Page, Skipped, html_page, pairs_batch, tally

LOG = logging.getLogger(__name__)
STAGE = "read"
#: The reason of a page fetched well that holds no image with a usable URL.
NO_PAIRS = "no_image_pairs"


def fetch_page(fetcher: Fetcher, url: str) -> Page | Skipped:
    """The pairs of one page, or why it gave none."""
    try:
        fetched = fetcher.fetch(url)
    except FetchError as err:
        return Skipped(err.reason, f"{url}: {err}")
    return html_page(url, 0, fetched.content_type or "", fetched.data, url)


def page_row(url: str, result: Page | Skipped) -> Sample | None:
    """The row that stands for a page that gave no pair: failed with the reason it could not be
    used, or rejected as holding no image pair; None for a page whose pairs are its rows."""
    if isinstance(result, Page) and result.pairs:
        return None
    row = Sample(uid=make_uid(url, None), url=url, caption=None, extra={"page_url": url})
    if isinstance(result, Skipped):
        return row.decided(Status.FAILED, result.reason, STAGE, result.detail)
    return row.decided(Status.REJECTED, NO_PAIRS, STAGE, f"{url}: no <img> with an http(s) URL")


class _HarvestPagesFn(beam.DoFn):
    def __init__(self, config: CrawlConfig, max_page_bytes: int):
        self._config = dataclasses.replace(config, max_image_bytes=max_page_bytes)
        self._shared = Shared()  # one page crawler per process

    def setup(self) -> None:
        crawler = self._shared.acquire(lambda: Crawler(self._config, Fetcher.PAGES, "winnow-pages"))
        self._crawler = crawler
        self._fetcher, self._pool = crawler.fetcher, crawler.pool

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        pending = pc.equal(batch.column("status"), Status.PENDING)
        settled = batch.filter(pc.invert(pending))
        if settled.num_rows:  # rows the reader already failed (`missing_url`, ...) keep their rows
            yield settled
        urls = batch.filter(pending).column("url").to_pylist()
        counts: Counter[str] = Counter()
        pages, rows = [], []
        results = self._pool.map(lambda url: fetch_page(self._fetcher, url), urls)
        for url, result in zip(urls, results, strict=True):
            tally(counts, result)
            if isinstance(result, Skipped):
                LOG.warning("page failed (%s): %s", result.reason, result.detail)
            else:
                pages.append(result)
            row = page_row(url, result)
            if row is not None:
                rows.append(row)
        if any(page.pairs for page in pages):
            yield pairs_batch(pages)
        if rows:
            yield batch_from_samples(rows)
        yield beam.pvalue.TaggedOutput(HARVEST_COUNTS, dict(counts))


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
