"""Trust in what a run reports: page mode accounts for every page and raises the alarm on an outage,
the crawl asks an origin that refuses it for nothing but its robots.txt, and the audit report says
what was shipped, in words a user can check."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

from tests.conftest import free_port, read_output_rows
from tests.hostile import TDMREP_RULES, HostileSite, ReplyingHandler
from tests.test_cli import overrides, winnow

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
