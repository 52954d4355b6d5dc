"""Trust in what a run reports: page mode accounts for every page and raises the alarm on an outage,
the crawl asks an origin that refuses it for nothing but its robots.txt, and the audit report says
what was shipped, in words a user can check."""

from __future__ import annotations

import glob
import html
import json
import re
import tarfile
import threading
from http.server import ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.output.report import CJK_FONTS
from schemas.sample import Sample
from tests.conftest import free_port, read_output_rows
from tests.hostile import TDMREP_RULES, HostileSite, ReplyingHandler, images
from tests.pipeline.test_audit import CHROMIUM, visit
from tests.pipeline.test_cli import overrides, winnow
from transforms.write.shards import parquet_bytes, tar_bytes, tar_members

PAGE_WITH_IMAGE = b'<html><body><img src="/img/a.jpg" alt="a red kite over a hill"></body></html>'
PAGE_WITHOUT_IMAGE = b"<html><body><p>Only words here.</p></body></html>"


class _PagesHandler(ReplyingHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        pages = {"/with-image.html": PAGE_WITH_IMAGE, "/without-image.html": PAGE_WITHOUT_IMAGE}
        if self.path in pages:
            self.reply(200, pages[self.path], [("Content-Type", "text/html; charset=utf-8")])
        else:
            self.reply(404, b"not found", [("Content-Type", "text/plain")])


def _page_run(tmp_path, pages: list[str]):
    listed = tmp_path / "pages.txt"
    listed.write_text("".join(f"{url}\n" for url in pages))
    output = tmp_path / "out"
    result = winnow(
        "run", "--input", str(listed), "--input-format", "pages", "--output", str(output),
        *overrides(), "--set", "run.stages=[]",
    )  # fmt: skip
    return result, read_output_rows(str(output))


def test_item11_page_mode_outage_raises_the_alarm_and_keeps_a_row_per_page(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every page fails to connect
    pages = [f"{dead}/news/{i}.html" for i in range(4)]
    result, rows = _page_run(tmp_path, pages)
    assert result.returncode == 3, result.stderr
    assert "ALARM" in result.stderr and "100% of the 4 pages" in result.stderr
    assert sorted(r["url"] for r in rows) == sorted(pages)
    for row in rows:
        assert (row["status"], row["stage"], row["reason"]) == ("failed", "read", "connection_error")
        assert row["caption"] is None and row["error"]
        assert json.loads(row["extra"])["page_url"] == row["url"]
    with open(tmp_path / "out" / "stats.json") as handle:
        stats = json.load(handle)
    assert stats["alarm"] and stats["harvest"]["skipped_records"] == {"connection_error": 4}


def test_default_stages_run_to_the_end_when_no_image_downloads(tmp_path):
    """Dedup and noise train their k-means on no members at all: every row still comes out."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every image fails to connect
    listed = tmp_path / "list.csv"
    captions = ["a red kite over a green hill", "two brown dogs on a sandy beach", "an old blue boat"]
    listed.write_text("url,caption\n" + "".join(f"{dead}/{i}.jpg,{c}\n" for i, c in enumerate(captions)))
    output = tmp_path / "out"
    result = winnow("run", "--input", str(listed), "--output", str(output), *overrides())
    assert result.returncode == 3, result.stderr  # an outage: the alarm, and the rows
    rows = read_output_rows(str(output))
    assert sorted(r["caption"] for r in rows) == sorted(captions)
    assert {(r["status"], r["stage"], r["reason"]) for r in rows} == {("failed", "crawl", "connection_error")}


def test_item11_every_listed_page_has_a_row(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PagesHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        pages = [f"{base}/with-image.html", f"{base}/without-image.html", f"{base}/gone.html"]
        result, rows = _page_run(tmp_path, pages)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr  # one page of three gone for good is no outage
    found = {json.loads(r["extra"])["page_url"]: r for r in rows}
    assert sorted(found) == sorted(pages) and len(rows) == 3
    pair = found[pages[0]]
    assert (pair["url"], pair["caption"]) == (f"{base}/img/a.jpg", "a red kite over a hill")
    empty, gone = found[pages[1]], found[pages[2]]
    assert (empty["url"], empty["status"], empty["stage"], empty["reason"]) == (
        pages[1],
        "rejected",
        "read",
        "no_image_pairs",
    )
    assert (gone["url"], gone["status"], gone["stage"], gone["reason"]) == (
        pages[2], "failed", "read", "http_404"
    )  # fmt: skip
    assert gone["caption"] is None and pair["status"] == "pending"


def test_item20_an_origin_whose_robots_txt_disallows_all_gets_no_other_request(tmp_path):
    with (
        HostileSite("deny", tdmrep=TDMREP_RULES) as closed,
        HostileSite("rules", tdmrep=TDMREP_RULES) as partly,
    ):
        urls = [closed.url("/img/ok.jpg"), closed.url("/free/a.jpg"), partly.url("/private/a.jpg")]
        listed = tmp_path / "list.csv"
        listed.write_text("url,caption\n" + "".join(f"{u},a picture {i}\n" for i, u in enumerate(urls)))
        output = tmp_path / "out"
        result = winnow(
            "run", "--input", str(listed), "--output", str(output), "--stages", "crawl", *overrides()
        )
        assert result.returncode == 0, result.stderr
        assert closed.requests == ["/robots.txt"]  # no tdmrep.json, no image
        # A path robots.txt disallows: no tdmrep.json asked for it either.
        assert partly.requests == ["/robots.txt"]
        # A path robots.txt allows: then, and only then, tdmrep.json, then the image.
        allowed = partly.url("/free/b.jpg")
        listed.write_text(f"url,caption\n{allowed},a picture\n")
        again = winnow(
            "run", "--input", str(listed), "--output", str(tmp_path / "again"), "--stages", "crawl",
            *overrides(),
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert partly.requests == ["/robots.txt", "/robots.txt", "/.well-known/tdmrep.json", "/free/b.jpg"]
    rows = read_output_rows(str(output))
    assert {r["reason"] for r in rows} == {"opted_out_robots_txt"}


# --------------------------------------------------------------------------- the audit report

CJK_CAPTION = "厨房桌子上放着一碗新鲜的草莓"
HIDDEN_HOST = "exa\u200bmple.com"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two real runs of one small list, with the report each writes: A crawls and deduplicates it,
    B only reads it (every row pending); and `winnow audit A --compare B`."""
    root = tmp_path_factory.mktemp("report")
    with HostileSite("rules") as site:
        rows = [
            (site.url("/img/exif-rotated.jpg"), CJK_CAPTION),
            (site.url("/free/a.jpg"), "a noisy picture of coloured dots"),
            (site.url("/free/b.jpg"), "coloured dots, the same picture again"),  # an exact duplicate
            (site.url("/gone/c.jpg"), "a picture that is gone"),
            (f"http://127.0.0.1:{free_port()}/d.jpg", "a picture on a host that is down"),
            (f"http://{HIDDEN_HOST}/e.jpg", "a picture on a host with a hidden character"),
        ]
        listed = root / "list.parquet"
        pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), listed)
        runs = {}
        for name, stages in (("a", "crawl,dedup"), ("b", "")):
            output = str(root / name)
            command = ["run", "--input", str(listed), "--output", output, *overrides()]
            assert main([*command, "--set", f"run.stages=[{stages}]", "--set", "dedup.semantic=false"]) == 0
            runs[name] = output
            runs[f"{name}.html"] = (root / name / "report.html").read_text(encoding="utf-8")
    compare = str(root / "compare.html")
    assert main(["audit", runs["a"], "--compare", runs["b"], "--out", compare]) == 0
    runs["compare.html"] = (root / "compare.html").read_text(encoding="utf-8")
    return runs


def _text(fragment: str) -> str:
    """What a reader sees of an HTML fragment: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_item19_report_pluralises_cites_only_rows_it_shows_and_names_errors_plainly(outputs):
    page = outputs["a.html"]
    assert "1 shard, " in page and "1 shards" not in page
    rows = read_output_rows(outputs["a"])
    removed = next(r for r in rows if r["reason"] == "exact_duplicate")
    kept = next(r for r in rows if r["uid"] == removed["duplicate_of"])
    card = re.search(
        rf'<div class="rej" data-uid="{removed["uid"]}">.*?<div class="cited">(.*?)</div></div></div>', page
    )
    assert card, "the removed copy's card shows the rows it cites"
    assert "kept copy" in card.group(1) and kept["url"] in card.group(1)
    assert 'src="data:image/jpeg;base64,' in card.group(1)  # the kept copy's thumbnail
    # Every uid an error on the page cites is a row the page shows (its card, tile or cited block).
    for error in re.findall(r'<div class="err">(.*?)</div>', page):
        for uid in re.findall(r'title="([0-9a-f]{32})"', error):
            assert page.count(f'title="{uid}"') > 1 or f'data-uid="{uid}"' in page
    # The exact rule compares decoded pixels, and says so.
    assert "same bytes" not in page and "the same decoded pixels as" in _text(page)
    errors = " ".join(_text(e) for e in re.findall(r'<div class="err">(.*?)</div>', page))
    assert "Connection refused" in errors
    assert not re.search(r"\w+Error\b|ConnectionPool|object at 0x|\[Errno", errors), errors


def test_item19_an_invisible_character_in_a_host_is_marked(outputs):
    page = outputs["a.html"]
    assert 'exa<span class="inv" title="ZERO WIDTH SPACE">U+200B</span>mple.com' in page
    domains = page[page.index("<h2>Domains</h2>") : page.index("<h2>Kept samples</h2>")]
    shown = [_text(cell) for cell in re.findall(r'<td class="url nowrap">(.*?)</td>', domains)]
    assert "exaU+200Bmple.com" in shown and "example.com" not in shown


def test_item19_pending_rows_are_not_listed_as_rejected(outputs):
    page = outputs["b.html"]
    rejected = page[
        page.index("<h2>Rejected and failed samples</h2>") : page.index(
            "</section>", page.index("<h2>Rejected and failed samples</h2>")
        )
    ]
    assert "pending" not in rejected and "none was rejected or failed" in rejected
    assert "<h2>Pending samples (not decided)</h2>" in page
    assert 'data-key="pending" data-count="6"' in page
    assert "6 samples pending" in _text(page)  # at the end of the funnel: passed, but not kept
    assert 'data-key="b/reason::"' not in outputs["compare.html"]  # nor a nameless reason in the counts


def test_item19_compare_funnel_rows_align_by_stage(outputs):
    page = outputs["compare.html"]
    funnel = page[page.index("<h2>Funnel</h2>") : page.index("<h2>Distributions")]
    rows = re.findall(r'<tr class="[^"]*" data-stage="([^"]*)">(.*?)</tr>', funnel)
    assert rows[0][0] == "read" and {"crawl", "dedup", "write"} <= {s for s, _ in rows}
    for stage, cells in rows:  # each row names one stage on both sides
        keys = re.findall(r'data-key="([ab])/(?:stage|reason):([^:"]+):', cells)
        assert keys and {s for _, s in keys} == {stage}, (stage, cells)
    crawl = next(cells for stage, cells in rows if stage == "crawl")
    assert "a/stage:crawl:kept" in crawl and "b/stage:" not in crawl and "not run" in crawl
    write = next(cells for stage, cells in rows if stage == "write")
    assert "a/stage:write:kept" in write and "b/stage:write:kept" in write


def test_item05_report_shows_the_caption_that_was_shipped(outputs, tmp_path):
    # A's gallery: each tile's caption is the one in its tar's .txt.
    page = outputs["a.html"]
    texts = {name: data.decode() for name, data in _tar_members(outputs["a"]) if name.endswith(".txt")}
    tiles = re.findall(
        r'<div class="tile" data-uid="([0-9a-f]+)">.*?<div class="cap shipped">(.*?)</div>', page
    )
    assert tiles and all(_text(shown) == texts[f"{uid}.txt"] for uid, shown in tiles)
    # An output whose noise stage completed a caption, written by the shard writer.
    image = images()["ok.jpg"]
    completed = Sample(uid="a" * 32, url="http://h/a.jpg", caption="a dog", caption_clean="a dog")
    completed = completed.evolve(
        status="success", image=image, image_ext="jpg", caption_source="completed",
        caption_original="a dog", caption_completed="a dog, red ball, green grass",
    )  # fmt: skip
    untouched = Sample(uid="b" * 32, url="http://h/b.jpg", caption="a cat", caption_clean="a cat")
    untouched = untouched.evolve(status="success", image=image, image_ext="jpg", caption_source="original")
    output = tmp_path / "noise"
    output.mkdir()
    (output / "00000.tar").write_bytes(tar_bytes(tar_members([completed, untouched])))
    (output / "00000.parquet").write_bytes(parquet_bytes([completed, untouched], "zstd"))
    assert main(["audit", str(output)]) == 0
    page = (output / "report.html").read_text(encoding="utf-8")
    tile = re.search(r'<div class="tile" data-uid="a{32}">(.*?)</div></div>', page).group(1)
    assert '<div class="cap shipped">a dog, red ball, green grass</div>' in tile
    assert '<div class="cap orig">caption completed from: a dog</div>' in tile
    tile = re.search(r'<div class="tile" data-uid="b{32}">(.*?)</div></div>', page).group(1)
    assert '<div class="cap shipped">a cat</div>' in tile and "cap orig" not in tile


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_item19_cjk_captions_render_with_a_cjk_font(outputs, tmp_path):
    uid = next(r["uid"] for r in read_output_rows(outputs["a"]) if r["caption"] == CJK_CAPTION)
    path = str(tmp_path / "a.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(outputs["a.html"])
    errors, _, _, text, fonts = visit(path, str(tmp_path / "profile"), f'.tile[data-uid="{uid}"] .shipped')
    assert errors == [] and CJK_CAPTION in text
    # Every glyph of the caption came from a CJK font the page's font stack names, none from a
    # font without them (which draws boxes).
    assert fonts and {f["familyName"] for f in fonts} <= set(CJK_FONTS), fonts
    assert sum(f["glyphCount"] for f in fonts) == len(CJK_CAPTION)


def _tar_members(output: str) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(glob.glob(f"{output}/*.tar")):
        with tarfile.open(path) as tar:
            found += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    return found
