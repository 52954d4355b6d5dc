"""Harvesting pairs from web archives: the extraction rules, then WAT and WARC runs end to end on
the sample web's own archives (what is extracted equals what was planted: no loss, no invention)."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.jobs import run_job
from sampleweb.pages import WARC_SKIPS, write_pages
from tests.conftest import TEST_OVERRIDES, read_output_rows, shard_bytes
from transforms.read.harvest import Skipped, html_pairs, largest_srcset_candidate, records, wat_pairs
from transforms.read.lists import detect_format

PAGE = "http://site.example/gallery/page.html"


def test_img_tags_give_pairs_resolved_against_the_page_or_its_base():
    html = b"""<html><head><base href="/media/"></head><body>
      <img src="a.jpg" alt="  A   red\n square " title="t">
      <img src="//cdn.example/b.png" alt="B">
      <img src="small.jpg" srcset="small.jpg 320w, big.jpg 1600w, mid.jpg 800w" alt="C">
      <img srcset="x1.jpg, x3.jpg 3x, x2.jpg 2x" alt="D">
      <figure><img src="e.jpg" alt=""><figcaption>A <b>blue</b> circle</figcaption></figure>
      <figure><img src="f.jpg" alt="F alt"><figcaption>F caption</figcaption></figure>
      <img src="data:image/gif;base64,R0lGOD=" alt="inline"><img alt="no source">
      <img src="ftp://x.example/g.jpg" alt="G"><img src="javascript:alert(1)" alt="H">
      <div><p><img src="unclosed.jpg" alt="I">
    """
    got = [(p.url, p.caption, p.caption_source) for p in html_pairs(html, PAGE)]
    assert got == [
        ("http://site.example/media/a.jpg", "A red square", "alt"),
        ("http://cdn.example/b.png", "B", "alt"),
        ("http://site.example/media/big.jpg", "C", "alt"),
        ("http://site.example/media/x3.jpg", "D", "alt"),
        ("http://site.example/media/e.jpg", "A blue circle", "figcaption"),
        ("http://site.example/media/f.jpg", "F alt", "alt"),
        ("http://site.example/media/unclosed.jpg", "I", "alt"),
    ]
    assert html_pairs(html, PAGE)[0].title == "t" and html_pairs(html, PAGE)[5].figcaption == "F caption"


def test_srcset_candidates():
    assert largest_srcset_candidate("a.jpg 100w, b.jpg 300w, c.jpg 200w") == "b.jpg"
    assert largest_srcset_candidate("a.jpg, b.jpg 2x") == "b.jpg"
    assert largest_srcset_candidate("img.php?x=1,2 640w, other.jpg 320w") == "img.php?x=1,2"
    assert largest_srcset_candidate("  ") is None
    assert largest_srcset_candidate("a.jpg,b.jpg 2x") == "a.jpg,b.jpg"  # one URL, as browsers read it


def test_wat_envelopes():
    envelope = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": PAGE},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {
                    "HTML-Metadata": {
                        "Head": {"Base": "https://static.example/i/"},
                        "Links": [
                            {"path": "A@/href", "url": "/next", "text": "next"},
                            {"path": "IMG@/src", "url": "a.jpg", "alt": "An apple", "title": "fruit"},
                            {"path": "IMG@/src", "url": "data:image/png;base64,AA"},
                            {"path": "IMG@/src", "url": "/b.jpg"},
                        ],
                    }
                }
            },
        }
    }
    page, pairs = wat_pairs(envelope)
    assert page == PAGE
    assert [(p.url, p.caption, p.title) for p in pairs] == [
        ("https://static.example/i/a.jpg", "An apple", "fruit"),
        ("https://static.example/b.jpg", None, None),
    ]
    assert wat_pairs({"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": PAGE}}}) == (PAGE, [])


def test_records_are_read_one_gzip_member_at_a_time():
    members = [gzip.compress(b"first"), gzip.compress(b"x" * 5000), gzip.compress(b"third")]
    got = list(records(io.BytesIO(b"".join(members)), max_record_bytes=1000))
    assert got[0] == (0, b"first")
    assert isinstance(got[1], Skipped) and got[1].reason == "record_too_large"
    assert got[2] == (len(members[0]) + len(members[1]), b"third")  # offsets are the members' own
    cut = list(records(io.BytesIO(members[0] + members[2][:10]), max_record_bytes=1000))
    assert cut[0] == (0, b"first") and cut[1].reason == "malformed_record"


def test_archive_suffixes_pick_the_format():
    assert detect_format("s3://cc/x.warc.wat.gz") == "wat"
    assert detect_format("/data/x.warc.gz") == "warc"
    assert detect_format("x.warc") == "warc"


@pytest.fixture(scope="module")
def archives(sample_web):
    return write_pages(sample_web.dir, sample_web.base_url)


@pytest.mark.parametrize("mode", ["wat", "warc"])
def test_archive_mode_end_to_end(sample_web, archives, mode, tmp_path):
    output = tmp_path / "out"
    overrides = [arg for o in [*TEST_OVERRIDES, "run.stages=[crawl]"] for arg in ("--set", o)]
    command = ["run", "--input", archives[mode], "--input-format", mode, "--output", str(output)]
    command += overrides
    assert main(command) == 0
    with open(output / "stats.json") as handle:
        stats = json.load(handle)
    planted = {
        (r["url"], r["caption"]) for r in pq.read_table(archives["planted"]).to_pylist() if r["mode"] == mode
    }
    rows = read_output_rows(str(output))
    assert sorted((r["url"], r["caption"]) for r in rows) == sorted(planted)  # no loss, no invention, no copy
    harvest = stats["harvest"]
    assert harvest["unique_pairs"] == len(planted) < harvest["pairs"]  # pairs on two pages were merged
    with open(archives["pages"]) as handle:
        page_count = len(handle.read().split())
    assert harvest["pages"] == harvest["pages_with_pairs"] == page_count
    assert harvest["skipped_records"] == (WARC_SKIPS if mode == "warc" else {})
    # Then the crawl as for any list: each image ends as the sample web says it should.
    truth = {r["url"]: r for r in sample_web.truth_rows()}
    assert all(r["status"] == truth[r["url"]]["expected_status"] for r in rows)
    extra = json.loads(rows[0]["extra"])
    assert extra["page_url"].startswith(f"{sample_web.base_url}/pages/")
    assert extra["warc_file"].startswith("pages.")
    if mode == "wat":  # the same archive gives the same shards, byte for byte
        config = load_config(overrides=[*TEST_OVERRIDES, "run.stages=[crawl]", "input.input_format=wat"])
        run_job(config, [archives[mode]], str(tmp_path / "again"))
        assert shard_bytes(str(tmp_path / "again")) == shard_bytes(str(output))


def test_page_mode_fetches_each_page_and_harvests_it(sample_web, archives, tmp_path):
    pages = tmp_path / "pages.txt"
    with open(archives["pages"]) as handle:
        listed = handle.read()
    # The listed pages, one that is gone and one that is an image, not a page.
    image = next(r["url"] for r in sample_web.truth_rows() if r["expected_status"] == "success")
    pages.write_text(listed + f"{sample_web.base_url}/pages/9999.html\n{image}\n")
    config = load_config(overrides=[*TEST_OVERRIDES, "run.stages=[]", "input.input_format=pages"])
    stats = run_job(config, [str(pages)], str(tmp_path / "out"))
    planted = {
        (r["url"], r["caption"])
        for r in pq.read_table(archives["planted"]).to_pylist()
        if r["mode"] == "warc"
    }
    rows = read_output_rows(str(tmp_path / "out"))
    # Each page that could not be used keeps a row of its own, with its reason.
    failed = {(r["url"], r["reason"]) for r in rows if r["status"] == "failed"}
    assert failed == {(f"{sample_web.base_url}/pages/9999.html", "http_404"), (image, "not_html")}
    pairs = [r for r in rows if r["status"] != "failed"]
    assert sorted((r["url"], r["caption"]) for r in pairs) == sorted(planted)
    harvest = stats["harvest"]
    assert harvest["pages"] == harvest["pages_with_pairs"] == len(listed.split())
    assert harvest["skipped_records"] == {"http_404": 1, "not_html": 1}
    assert json.loads(rows[0]["extra"])["page_url"].startswith(f"{sample_web.base_url}/pages/")


def test_an_archive_is_streamed_one_record_at_a_time():
    import tracemalloc

    member = gzip.compress(b"<html>" + b"x" * 200_000 + b"</html>")
    archive = io.BytesIO(member * 200)  # 40 MB of records once decompressed
    tracemalloc.start()
    try:
        count = sum(
            1 for item in records(archive, max_record_bytes=1_000_000) if not isinstance(item, Skipped)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # about one record and one read chunk
