"""A surprise in any stage becomes the sample's own `failed` row, never a crash or a lost row.

Each test plants one element a step cannot handle (stored image bytes that are not an image, as a
damaged tar of a previous output would give) among good ones, runs the real stage in a real Beam
pipeline, and reads every row back.
"""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from PIL import Image

from schemas import Sample, Status, make_uid
from tests.noise.test_noise import _tiny_coca
from transforms.crawl import CrawlConfig
from transforms.dedup import DedupConfig, DeduplicateImages
from transforms.embed import EmbedConfig, EmbedImages
from transforms.noise.captions import GENERATED, GenerateCaptions

DAMAGED = b"\xff\xd8\xff\xe0 a JPEG header, then nothing an image decoder can read"


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _sample(name: str, image: bytes, **fields) -> Sample:
    url = f"http://example.com/{name}.jpg"
    return Sample(
        uid=make_uid(url, name),
        url=url,
        caption=f"a photo of {name}",
        status=Status.SUCCESS,
        image=image,
        image_ext="jpg",
        **fields,
    )


def _run(samples: list[Sample], stage: beam.PTransform, check) -> None:
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        rows = p | beam.Create(samples) | stage | beam.combiners.ToList()
        assert_that(rows, lambda lists: check({row.url.rsplit("/", 1)[-1]: row for row in lists[0]}))


def _check_failed(rows: dict[str, Sample], stage: str, step: str, good: list[str]) -> None:
    assert sorted(rows) == sorted(["broken.jpg", *(f"{name}.jpg" for name in good)])  # every row kept
    broken = rows["broken.jpg"]
    assert (broken.status, broken.reason, broken.stage) == (Status.FAILED, "internal_error", stage)
    assert broken.error.startswith(f"{step}: ") and "Error" in broken.error, broken.error
    for name in good:
        assert rows[f"{name}.jpg"].status == Status.SUCCESS, rows[f"{name}.jpg"]


def test_a_damaged_image_fails_its_own_row_in_the_embed_stage():
    samples = [_sample("broken", DAMAGED), _sample("red", _jpeg(1)), _sample("blue", _jpeg(2))]

    def check(rows: dict[str, Sample]) -> None:
        _check_failed(rows, "embed", "preprocess", ["red", "blue"])
        assert rows["red.jpg"].clip_score is not None and rows["broken.jpg"].clip_score is None

    _run(samples, EmbedImages(EmbedConfig()), check)


def test_a_damaged_image_fails_its_own_row_in_the_dedup_stage():
    same = _jpeg(3)
    samples = [_sample("broken", DAMAGED), _sample("first", same), _sample("copy", same)]
    config = DedupConfig(semantic=False)

    def check(rows: dict[str, Sample]) -> None:
        assert sorted(rows) == ["broken.jpg", "copy.jpg", "first.jpg"]
        broken = rows["broken.jpg"]
        assert (broken.status, broken.reason, broken.stage) == (Status.FAILED, "internal_error", "dedup")
        assert broken.error.startswith("fingerprint: "), broken.error
        # The other two were still compared: one is the exact duplicate of the other.
        assert sorted(r.status for name, r in rows.items() if name != "broken.jpg") == ["rejected", "success"]

    _run(samples, DeduplicateImages(config, CrawlConfig(), None), check)


def test_a_damaged_image_fails_its_own_row_in_caption_generation(tmp_path):
    folder = tmp_path / "tiny-coca"
    _tiny_coca(folder)
    embed = EmbedConfig(model=str(folder), batch_size=1)  # one image per decoder call
    marked = {"caption_source": GENERATED}
    samples = [
        _sample("broken", DAMAGED, **marked),
        _sample("red", _jpeg(4), **marked),
        _sample("kept", _jpeg(5), caption_source="original"),
    ]

    def check(rows: dict[str, Sample]) -> None:
        _check_failed(rows, "noise", "decode", ["red", "kept"])
        assert rows["red.jpg"].caption_pseudo  # the good image got its caption
        assert rows["kept.jpg"].caption_pseudo is None  # not marked: passed through untouched

    _run(samples, GenerateCaptions(embed), check)


def test_a_sample_the_crawl_cannot_even_start_on_fails_its_own_row():
    """No URL at all on a pending row (no reader writes one): the crawl records it, it does not crash."""
    from transforms.crawl import DownloadImages

    planted = Sample(uid=make_uid("", "no url"), url=None, caption="no url")
    settled = _sample("settled", _jpeg(6))  # decided upstream: passes through untouched

    def check(rows: list[Sample]) -> None:
        by_caption = {row.caption: row for row in rows}
        assert sorted(by_caption) == ["a photo of settled", "no url"]
        broken = by_caption["no url"]
        assert (broken.status, broken.reason, broken.stage) == (Status.FAILED, "internal_error", "crawl")
        assert "Error" in broken.error, broken.error
        assert by_caption["a photo of settled"] == settled

    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        rows = p | beam.Create([planted, settled]) | DownloadImages(CrawlConfig()) | beam.combiners.ToList()
        assert_that(rows, lambda lists: check(lists[0]))
