"""Download stage: fetch, decode, resize and re-encode every pending sample's image.

In: `Sample`s; those with status `pending` are fetched, others pass through untouched.
Out: the same samples, each now `success` (with `image`, sizes, `sha256`) or `failed` with a
reason from `transforms.fetch` (HTTP and transport failures, `opted_out`, `too_large`,
`timeout`) or `transforms.imaging` (`not_an_image`, `decode_error`, `image_too_small`, ...).
Nothing is dropped: a failed sample keeps its row.

Each worker runs a bounded thread pool (`thread_count`) over one keep-alive connection pool;
decoding and resizing run in the same threads (Pillow releases the GIL), so network waits and
CPU work overlap. At most 2 × `thread_count` samples are in flight per DoFn instance.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from schemas.sample import Sample, Status
from transforms.fetch import Fetcher, FetchError, FetchOptions
from transforms.imaging import ImageError, ImageOptions, process_image
from transforms.progress import StageCounter

LOG = logging.getLogger(__name__)
STAGE = "crawl"
_EXTENSIONS = {"jpg": "jpg", "png": "png", "webp": "webp"}


@dataclasses.dataclass(frozen=True)
class CrawlConfig(FetchOptions, ImageOptions):
    """The `crawl` section: HTTP keys (`FetchOptions`) and image keys (`ImageOptions`)."""

    #: Concurrent downloads per worker process.
    thread_count: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.thread_count < 1:
            raise ValueError("crawl.thread_count must be >= 1")
        if self.image_size < 1:
            raise ValueError("crawl.image_size must be >= 1")
        valid_quality = range(10) if self.encode_format == "png" else range(101)
        if self.encode_quality not in valid_quality:
            raise ValueError(
                f"crawl.encode_quality {self.encode_quality} is out of range for {self.encode_format} "
                f"({valid_quality.start}..{valid_quality.stop - 1})"
            )


def download_sample(sample: Sample, fetcher: Fetcher, config: CrawlConfig) -> Sample:
    """Fetches and processes one sample's image; every failure becomes a status and reason."""
    assert sample.url is not None
    try:
        fetched = fetcher.fetch(sample.url)
    except FetchError as err:
        failed = dataclasses.replace(sample, http_status=err.http_status)
        return failed.decided(Status.FAILED, err.reason, STAGE, str(err))
    fetched_sample = dataclasses.replace(
        sample,
        http_status=fetched.http_status,
        content_type=fetched.content_type,
        sha256=hashlib.sha256(fetched.data).hexdigest(),
    )
    try:
        image = process_image(fetched.data, config)
    except ImageError as err:
        return fetched_sample.decided(Status.FAILED, err.reason, STAGE, str(err))
    return dataclasses.replace(
        fetched_sample,
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
        image_ext=_EXTENSIONS[config.encode_format],
    )


class _DownloadFn(beam.DoFn):
    """Keeps up to 2 × thread_count downloads in flight and emits each as soon as it is done."""

    def __init__(self, config: CrawlConfig, progress_dir: str | None):
        self._config = config
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._fetcher = Fetcher(self._config, pool_size=self._config.thread_count)
        self._pool = cf.ThreadPoolExecutor(self._config.thread_count, thread_name_prefix="winnow-crawl")
        self._counter = StageCounter(STAGE, self._progress_dir)
        self._limit = 2 * self._config.thread_count

    def start_bundle(self) -> None:
        self._inflight: set[cf.Future[Sample]] = set()

    def process(self, sample: Sample) -> Iterator[Sample]:
        if sample.status != Status.PENDING:
            yield sample
            return
        self._inflight.add(self._pool.submit(self._download, sample))
        if len(self._inflight) >= self._limit:
            done, self._inflight = cf.wait(self._inflight, return_when=cf.FIRST_COMPLETED)
            yield from self._collect(done)
        else:
            done = {f for f in self._inflight if f.done()}
            self._inflight -= done
            yield from self._collect(done)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        done, self._inflight = cf.wait(self._inflight), set()
        for sample in self._collect(done.done):
            yield WindowedValue(sample, GlobalWindow().max_timestamp(), (GlobalWindow(),))
        self._counter.flush()

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _download(self, sample: Sample) -> Sample:
        try:
            return download_sample(sample, self._fetcher, self._config)
        except Exception as err:  # recorded as data: one bad image must not fail a bundle of thousands
            LOG.exception("unexpected error while downloading %s", sample.url)
            return sample.decided(Status.FAILED, "internal_error", STAGE, f"{type(err).__name__}: {err}")

    def _collect(self, done: set[cf.Future[Sample]]) -> Iterator[Sample]:
        for future in done:
            result = future.result()
            self._counter.add(kept=result.status == Status.SUCCESS, reason=result.reason)
            yield result


class DownloadImages(beam.PTransform):
    """Downloads, decodes, resizes and re-encodes the image of every pending sample."""

    def __init__(self, config: CrawlConfig, progress_dir: str | None = None):
        super().__init__()
        self._config = config
        self._progress_dir = progress_dir

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return samples | "Download" >> beam.ParDo(_DownloadFn(self._config, self._progress_dir))
