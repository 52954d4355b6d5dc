"""Download stage: fetch, decode, resize and re-encode every pending sample's image.

In: `Sample`s; those with status `pending` are fetched, others pass through untouched.
Out: the same samples, each now `success` (with `image`, sizes, `sha256`) or `failed` with a
reason from `transforms.crawl.fetch` (HTTP and transport failures, `opted_out`, `too_large`,
`timeout`) or `transforms.crawl.imaging` (`not_an_image`, `decode_error`, `image_too_small`, ...).
Nothing is dropped: a failed sample keeps its row.

Each worker process runs one bounded thread pool (`thread_count`) over one keep-alive connection
pool, shared by all its DoFn instances (`Crawler`, through `apache_beam.utils.shared`).
Decoding and resizing run in the same threads, which release the GIL while in Pillow or OpenCV,
but at most `decode_threads` at once (cores + 1 by default): many threads can wait on slow
servers while only about one per core competes for the CPU. At most 2 × `thread_count` samples
are in flight per DoFn instance, and each is emitted as soon as it is done.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.windowed_value import WindowedValue

from schemas.reasons import is_retryable_failure
from schemas.sample import Sample, Status
from transforms.common.progress import StageCounter
from transforms.common.routing import SplitByStatus
from transforms.crawl.config import CrawlConfig
from transforms.crawl.fetch import Fetcher, FetchError
from transforms.crawl.imaging import ImageError, ImageProbe, process_image
from transforms.crawl.metadata import JoinPoolMetadata, PoolMetadata
from transforms.crawl.pool import LoadPoolImages, in_pool

LOG = logging.getLogger(__name__)
STAGE = "crawl"


def download_sample(
    sample: Sample,
    fetcher: Fetcher,
    config: CrawlConfig,
    cpu_slots: AbstractContextManager[object] | None = None,
    probe: ImageProbe | None = None,
) -> Sample:
    """Fetches and processes one sample's image; every failure becomes a status and reason.

    `cpu_slots` (a semaphore) bounds how many threads decode at once, so that many threads can
    wait on the network while only about one per core competes for the CPU. A `probe` measures
    the image for a later stage while it is decoded (`Sample.probes`).
    """
    assert sample.url is not None
    try:
        fetched = fetcher.fetch(sample.url)
    except FetchError as err:
        failed = sample.evolve(http_status=err.http_status)
        return failed.decided(Status.FAILED, err.reason, STAGE, str(err))
    fetched_sample = sample.evolve(
        http_status=fetched.http_status,
        content_type=fetched.content_type,
        sha256=hashlib.sha256(fetched.data).hexdigest(),
    )
    try:
        with cpu_slots or contextlib.nullcontext():
            image = process_image(fetched.data, config, probe, sample.extra)
    except ImageError as err:
        return fetched_sample.decided(Status.FAILED, err.reason, STAGE, str(err))
    return fetched_sample.evolve(
        status=Status.SUCCESS,
        reason=None,
        stage=None,
        error=None,
        source_format=image.source_format,
        original_width=image.original_width,
        original_height=image.original_height,
        width=image.width,
        height=image.height,
        image=image.data,
        image_bytes=len(image.data),
        image_ext=config.encode_format,
        probes=image.probed or None,
    )


def failure_alarm(stats: dict[str, Any], max_failure_rate: float) -> str | None:
    """The alarm of a run whose pages (page mode) or images failed transiently too often (a DNS or
    network outage, a blocked crawler), from its stats; None when each share is within
    `max_failure_rate`."""
    alarms = []
    harvest = stats.get("harvest") or {}
    skipped = harvest.get("skipped_records") or {}
    pages = harvest.get("pages", 0) + sum(skipped.values())
    alarm = _transient_alarm("pages the reader fetched", pages, skipped, max_failure_rate)
    if alarm:  # the failed pages are rows of the read stage, which --retry-failed does not fetch again
        alarms.append(f"{alarm} Rerun the page list once they recover.")
    crawl = stats.get("stages", {}).get(STAGE)
    if crawl:
        # The crawl stage's input: every sample the stages before it kept.
        attempted = crawl["total"]
        alarm = _transient_alarm("samples the crawl attempted", attempted, crawl["dropped"], max_failure_rate)
        if alarm:
            alarms.append(f"{alarm} Rerun with `--retry-failed` on this output once they recover.")
    return " ".join(alarms) or None


def _transient_alarm(
    what: str, attempted: int, failures: dict[str, int], max_failure_rate: float
) -> str | None:
    """Why `attempted` fetches with these `failures` (reason → count) are too many to trust, or None."""
    transient = {r: n for r, n in failures.items() if is_retryable_failure(r)}
    if not attempted:
        return None
    rate = sum(transient.values()) / attempted
    if rate <= max_failure_rate:
        return None
    worst = ", ".join(f"{reason} {n:,}" for reason, n in sorted(transient.items(), key=lambda kv: -kv[1])[:4])
    return (
        f"{rate:.0%} of the {attempted:,} {what} failed transiently ({worst}), above "
        f"crawl.max_failure_rate {max_failure_rate:.0%}: the network, DNS or the sites were failing, not "
        "the data."
    )


def _cpu_count() -> int:
    """Cores this process may run on (the affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class Crawler:
    """What one worker process crawls with, shared by all its DoFn instances (`Shared`): the fetcher
    (connection pools, per-host turns, robots.txt and tdmrep.json caches), the download threads and
    the decode slots, so that `thread_count`, `decode_threads` and `max_per_host` hold per process."""

    def __init__(self, config: CrawlConfig, accept: str = Fetcher.IMAGES, name: str = "winnow-crawl"):
        self.fetcher = Fetcher(config, pool_size=config.thread_count, accept=accept)
        self.pool = cf.ThreadPoolExecutor(config.thread_count, thread_name_prefix=name)
        self.cpu_slots = threading.BoundedSemaphore(config.decode_threads or _cpu_count() + 1)


class _DownloadFn(beam.DoFn):
    """Keeps up to 2 × thread_count downloads in flight and emits each as soon as it is done."""

    def __init__(self, config: CrawlConfig, progress_dir: str | None, probe: ImageProbe | None):
        self._config = config
        self._progress_dir = progress_dir
        self._probe = probe
        self._shared = Shared()  # one Crawler per process, whatever the number of DoFn instances

    def setup(self) -> None:
        self._crawler = self._shared.acquire(lambda: Crawler(self._config))
        self._counter = StageCounter(STAGE, self._progress_dir)
        self._limit = 2 * self._config.thread_count

    def start_bundle(self) -> None:
        self._inflight = 0
        self._done: queue.SimpleQueue[Sample] = queue.SimpleQueue()

    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.status != Status.PENDING:
            self._counter.add_passed()
            yield sample
            return
        self._crawler.pool.submit(self._download, sample)
        self._inflight += 1
        if self._inflight >= self._limit:
            yield from self._collect(block=True)
        yield from self._collect(block=False)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self._inflight:
            for sample in self._collect(block=True):
                yield WindowedValue(sample, GlobalWindow().max_timestamp(), (GlobalWindow(),))
        self._counter.flush()

    def _download(self, sample: Sample) -> None:
        try:
            crawler = self._crawler
            result = download_sample(sample, crawler.fetcher, self._config, crawler.cpu_slots, self._probe)
        except Exception as err:  # recorded as data: one bad image must not fail a bundle of thousands
            LOG.exception("unexpected error while downloading %s", sample.url)
            result = sample.decided(Status.FAILED, "internal_error", STAGE, f"{type(err).__name__}: {err}")
        self._done.put(result)

    def _collect(self, block: bool) -> Iterator[Sample]:
        """Emits finished downloads: at least one if `block`, else only those already done."""
        while self._inflight:
            try:
                result = self._done.get(block=block)
            except queue.Empty:
                return
            block = False
            self._inflight -= 1
            self._counter.add(
                kept=result.status == Status.SUCCESS, reason=result.reason, status=result.status
            )
            yield result


class DownloadImages(beam.PTransform):
    """Downloads, decodes, resizes and re-encodes the image of every pending sample.

    With `pool` (the run reads a pool of downloaded shards), samples read from the pool take their
    image from its tars instead (`transforms/crawl/pool.py`), with the pool's `embeddings` made by
    that model identity when given (from `clip_retrieval`, a clip-retrieval output folder, or
    from `metadata`, the pool's metadata files joined by uid, when given); the others are
    fetched. A `probe` measures each image for a later stage (the safety stage's hashes and
    faces) while the crawl holds its pixels."""

    def __init__(
        self,
        config: CrawlConfig,
        progress_dir: str | None = None,
        pool: bool = False,
        embeddings: str | None = None,
        clip_retrieval: str | None = None,
        probe: ImageProbe | None = None,
        metadata: PoolMetadata | None = None,
    ):
        super().__init__()
        self._config = config
        self._probe = probe
        self._progress_dir = progress_dir
        self._pool = pool
        self._embeddings = embeddings
        self._clip_retrieval = clip_retrieval
        self._metadata = metadata

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        download = beam.ParDo(_DownloadFn(self._config, self._progress_dir, self._probe))
        if not self._pool:
            return samples | "Download" >> download
        pooled, web = samples | "FromPool" >> SplitByStatus(in_pool)
        embeddings = self._embeddings
        if self._metadata is not None:  # the scores and embeddings come from the metadata only
            join = JoinPoolMetadata(self._metadata.pattern, embeddings, self._metadata.carried)
            pooled, embeddings = pooled | "PoolMetadata" >> join, None
        load = LoadPoolImages(self._config, embeddings, self._progress_dir, self._clip_retrieval, self._probe)
        loaded = pooled | "LoadFromPool" >> load
        return (loaded, web | "Download" >> download) | "Images" >> beam.Flatten()
