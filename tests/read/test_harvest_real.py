"""Harvesting from web archives as they are found: real crawls nobody on this project wrote (from
`../shared/realdata/`, Apache-2.0), pages in the legacy encodings of the web (windows-1251, GBK,
EUC-JP, ISO-8859-1) declared in every way a page can declare them, and the older archive formats
(ARC, ClueWeb09's WARC/0.18)."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import threading
import zlib
from collections import Counter
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.cli import main
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.read.charsets import decode_html, encoding_for_label, prescan_meta
from transforms.read.harvest import Page, Skipped, archive_pages
from transforms.read.lists import detect_format

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"


def real_archive(name: str) -> Path:
    path = REALDATA / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the real web archives are read from shared/realdata beside the repository"
        )
    return path


def harvest(path: Path | str, fmt: str = "warc") -> tuple[list[Page], Counter[str]]:
    with open(path, "rb") as handle:
        items = list(archive_pages(handle, fmt, 10_000_000))
    return [i for i in items if isinstance(i, Page)], Counter(
        i.reason for i in items if isinstance(i, Skipped)
    )


def run_text_stage(archive: Path, output: Path, *args: str) -> list[dict]:
    assert main(["run", "--input", str(archive), "--output", str(output), "--stages", "text", *args]) == 0
    return read_output_rows(str(output))


def test_item07_real_warc_pages_decode_as_declared_and_give_the_known_pairs(tmp_path):
    """aut-example.warc.gz: 140 HTML pages in utf-8, iso-8859-1 and windows-1252; its README's
    counts (858 <img>, 666 with alt, 99 distinct (src, alt) pairs) come from decoding each page in
    its declared charset."""
    archive = real_archive("aut-example.warc.gz")
    pages, skipped = harvest(archive)
    pairs = [pair for page in pages for pair in page.pairs]
    assert len(pages) == 140 and len(pairs) == 858
    assert sum(1 for p in pairs if p.alt) == 666
    assert len({(p.url, p.alt) for p in pairs if p.alt}) == 99
    sources = Counter((page.charset, page.charset_source) for page in pages)
    assert sources[("UTF-8", "http")] == 124  # Content-Type: text/html; charset=utf-8
    assert sources[("windows-1252", "http")] == 7  # charset=iso-8859-1, which means windows-1252
    assert sources[("windows-1252", "meta")] == 2  # <meta ... charset=windows-1252>, no HTTP charset
    assert all(page.charset_source in ("http", "meta", "detected") for page in pages)
    assert skipped == {"not_html": 159}

    # Through the CLI: the same pairs, each with the charset it was decoded with in `extra`.
    rows = run_text_stage(archive, tmp_path / "out", "--input-format", "warc")
    with open(tmp_path / "out" / "stats.json") as handle:
        stats = json.load(handle)["harvest"]
    assert (stats["pages"], stats["pairs"]) == (140, 858)
    assert {(r["url"], r["caption"]) for r in rows if r["caption"]} == {
        (p.url, p.alt) for p in pairs if p.alt
    }
    assert not [r for r in rows if r["reason"] == "caption_not_text"]
    charsets = Counter(json.loads(r["extra"])["charset"] for r in rows)
    assert charsets["UTF-8"] > 0 and charsets["windows-1252"] > 0


def test_item07_second_real_warc_wget_capture():
    """ia-web-commons' wget capture: 11 pages, 50 <img>, 46 with alt, 14 distinct pairs."""
    pages, skipped = harvest(real_archive("ia-web-commons-IAH-urls-wget.warc.gz"))
    pairs = [pair for page in pages for pair in page.pairs]
    assert (len(pages), len(pairs), sum(1 for p in pairs if p.alt)) == (11, 50, 46)
    assert len({(p.url, p.alt) for p in pairs if p.alt}) == 14
    assert skipped == {"not_html": 5}


# Hand-written pages, one language each; every caption is read back exactly.
TEXTS = {
    "windows-1251": (
        "Красная площадь зимой, вид с Васильевского спуска. Фотографии сделаны в декабре, когда выпал "
        "первый снег.",
        ["Собор Василия Блаженного под снегом", "Вечерние огни на Тверской улице"],
    ),
    "GBK": (
        "这些照片是去年十月在颐和园拍摄的。湖面上的荷叶已经枯黄，远处的佛香阁在夕阳下格外美丽。",
        ["颐和园昆明湖上的十七孔桥", "秋天的香山红叶，我們一起去看"],  # 們 is GBK, not GB2312
    ),
    "EUC-JP": (
        "清水寺から見た紅葉の景色です。秋の京都はとても美しく、多くの観光客が訪れます。",
        ["清水寺の舞台と紅葉", "伏見稲荷大社の千本鳥居"],
    ),
}
CODECS = {"windows-1251": "cp1251", "GBK": "gbk", "EUC-JP": "euc_jp", "windows-1252": "cp1252"}


def _page(
    case: str, charset: str, head: str = "", alts: list[str] | None = None
) -> tuple[str, str, list[str]]:
    text, default_alts = TEXTS.get(charset, ("", []))
    alts = alts or [f"{alt} ({case})" for alt in default_alts]
    images = "".join(f'<img src="/img/{case}-{i}.jpg" alt="{alt}">' for i, alt in enumerate(alts))
    html = f"<!DOCTYPE html><html><head>{head}<title>{case}</title></head>"
    html += f"<body><p>{text}</p>{images}</body></html>"
    return f"http://pages.example/{case}.html", html, alts


def _write_warc(path: Path, pages: list[tuple[str, str, bytes]]) -> None:
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, content_type, body in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            )


def test_item07_cp1251_gbk_eucjp_pages_decode_as_declared(tmp_path):
    pages, expected = [], {}
    for charset, label in (("windows-1251", "windows-1251"), ("GBK", "gb2312"), ("EUC-JP", "EUC-JP")):
        codec = CODECS[charset]
        for case, content_type, head, source in (
            (f"{charset}-http", f"text/html; charset={label}", "", "http"),
            (f"{charset}-meta", "text/html", f'<meta charset="{label}">', "meta"),
            (
                f"{charset}-http-equiv",
                "text/html",
                '<!-- <meta charset="utf-8"> -->'
                f'<meta http-equiv="Content-Type" content="text/html; charset={label}">',
                "meta",
            ),
            (f"{charset}-none", "text/html", "", "detected"),
            (f"{charset}-wrong", "text/html; charset=utf-8", "", "detected"),  # the server's default
        ):
            url, html, alts = _page(case, charset, head)
            pages.append((url, content_type, html.encode(codec)))
            expected.update({alt: (charset, source) for alt in alts})
    # ISO-8859-1 means windows-1252 (the em dash is 0x97 there), and a server's ISO-8859-1 default
    # in front of a UTF-8 page does not turn its captions into mojibake.
    url, html, alts = _page("latin1", "windows-1252", alts=["Café à Paris — crème brûlée"])
    pages.append((url, "text/html; charset=ISO-8859-1", html.encode("cp1252")))
    expected.update({alt: ("windows-1252", "http") for alt in alts})
    url, html, alts = _page("utf8-behind-latin1", "UTF-8", alts=["Smørrebrød på Nørrebro"])
    pages.append((url, "text/html; charset=ISO-8859-1", html.encode("utf-8")))
    expected.update({alt: ("UTF-8", "detected") for alt in alts})
    archive = tmp_path / "legacy.warc.gz"
    _write_warc(archive, pages)

    rows = run_text_stage(archive, tmp_path / "out")
    got = {r["caption"]: json.loads(r["extra"]) for r in rows}
    assert set(got) == set(expected)  # every caption exactly as written, none garbled
    assert {caption: (e["charset"], e["charset_source"]) for caption, e in got.items()} == expected
    assert not [r for r in rows if r["reason"] == "caption_not_text"]


def test_item07_charset_rules():
    assert encoding_for_label(" Latin1 ") == encoding_for_label("US-ASCII") == "windows-1252"
    assert encoding_for_label("gb2312") == "GBK" and encoding_for_label("x-sjis") == "Shift_JIS"
    assert encoding_for_label("iso-2022-kr") is None and encoding_for_label("no-such") is None
    assert prescan_meta(b"<meta http-equiv=content-type content='text/html;charset=koi8-r'>") == "KOI8-R"
    assert prescan_meta(b'<meta charset="utf-16le">') == "UTF-8"  # as the standard says
    assert prescan_meta(b"<!-- <meta charset=euc-kr> --><meta charset=euc-jp>") == "EUC-JP"
    assert prescan_meta(b" " * 1024 + b"<meta charset=euc-jp>") is None  # past the prescan
    body = "<p>Привет</p>".encode("cp1251")
    assert (
        decode_html(b"\xef\xbb\xbf" + "<p>Привет</p>".encode(), "text/html; charset=cp1251").source == "bom"
    )
    assert decode_html(body, "text/html; charset=koi8-r").charset == "KOI8-R"  # declared and plausible
    decoded = decode_html(body, 'text/html; charset="windows-1251"')
    assert (decoded.text, decoded.charset, decoded.source) == ("<p>Привет</p>", "windows-1251", "http")


def _arc_record(header: str, block: bytes) -> bytes:
    return header.encode() + b"\n" + block + b"\n"


def _http(body: str, charset: str = "utf-8") -> bytes:
    head = f"HTTP/1.0 200 OK\r\nContent-Type: text/html; charset={charset}\r\n\r\n".encode()
    return head + body.encode(charset)


def test_item07_arc_files_are_harvested(tmp_path):
    """ARC v1 (the Internet Archive's format before WARC), gzipped per record and uncompressed."""
    version = b"1 0 Winnow test\nURL IP-address Archive-date Content-type Archive-length\n"
    first = _arc_record(f"filedesc://test.arc 0.0.0.0 20050614070144 text/plain {len(version)}", version)
    page = _http('<img src="/a.jpg" alt="Фото набережной">', "windows-1251")
    image = b"\xff\xd8\xff" + bytes(50)
    records = [
        first,
        _arc_record(f"http://old.example/p.html 192.0.2.1 20050614070159 text/html {len(page)}", page),
        _arc_record(f"http://old.example/a.jpg 192.0.2.1 20050614070200 image/jpeg {len(image)}", image),
    ]
    gzipped = tmp_path / "crawl.arc.gz"
    gzipped.write_bytes(b"".join(gzip.compress(r) for r in records))
    plain = tmp_path / "crawl.arc"
    plain.write_bytes(b"".join(records))
    assert detect_format(str(gzipped)) == detect_format(str(plain)) == "arc"
    for archive in (gzipped, plain):
        pages, skipped = harvest(archive, "arc")
        assert [(p.url, p.charset) for p in pages] == [("http://old.example/p.html", "windows-1251")]
        assert [(x.url, x.caption) for x in pages[0].pairs] == [
            ("http://old.example/a.jpg", "Фото набережной")
        ]
        assert skipped == {"not_html": 1}
    rows = run_text_stage(gzipped, tmp_path / "out")  # by its suffix
    assert [(r["url"], r["caption"]) for r in rows] == [("http://old.example/a.jpg", "Фото набережной")]


def test_item07_clueweb09_warc_0_18_records_are_harvested(tmp_path):
    """ClueWeb09's records: `WARC/0.18`, LF-only lines in the WARC and the HTTP headers."""

    def record(url: str, body: str) -> bytes:
        http = f"HTTP/1.1 200 OK\nContent-Type: text/html\nDate: Tue, 13 Jan 2009 18:05:10 GMT\n\n{body}"
        block = http.encode()
        head = (
            "WARC/0.18\nWARC-Type: response\n"
            f"WARC-Target-URI: {url}\nWARC-Warcinfo-ID: 993d3969-9643-4934-b1c6-68d4dbe55b83\n"
            "WARC-Date: 2009-03-65T08:43:19-0800\n"
            "WARC-Record-ID: <urn:uuid:67f7cabd-146c-41cf-bd01-04f5fa7d5229>\n"
            "WARC-TREC-ID: clueweb09-en0000-00-00000\nContent-Type: application/http;msgtype=response\n"
            f"WARC-Identified-Payload-Type: \nContent-Length: {len(block)}\n\n"
        )
        return head.encode() + block + b"\n\n"

    info = b"isPartOf: clueweb09-en\nformat: WARC file version 0.18\n"
    warcinfo = b"WARC/0.18\nWARC-Type: warcinfo\nContent-Type: application/warc-fields\n"
    warcinfo += b"Content-Length: %d\n\n" % len(info) + info + b"\n\n"
    records = [
        warcinfo,
        record("http://a.example/", '<img src="/cat.jpg" alt="A cat asleep on a sofa">'),
        record("http://b.example/x/", '<p><img src="dog.png" alt="A dog in the snow"></p>'),
    ]
    expected = [
        ("http://a.example/cat.jpg", "A cat asleep on a sofa"),
        ("http://b.example/x/dog.png", "A dog in the snow"),
    ]
    whole = tmp_path / "00.warc.gz"  # as ClueWeb09 ships them: one gzip stream per file
    whole.write_bytes(gzip.compress(b"".join(records)))
    per_record = tmp_path / "01.warc.gz"
    per_record.write_bytes(b"".join(gzip.compress(r) for r in records))
    for archive in (whole, per_record):
        pages, skipped = harvest(archive)
        assert [(x.url, x.caption) for page in pages for x in page.pairs] == expected
        assert not skipped
    rows = run_text_stage(whole, tmp_path / "out", "--input-format", "warc")
    assert sorted((r["url"], r["caption"]) for r in rows) == expected


def test_item07_archives_not_gzipped_per_record_are_streamed_past_the_record_limit(tmp_path):
    """An uncompressed WARC or ARC, or a WARC gzipped as one stream (as ClueWeb09 ships them),
    larger than `max_record_bytes`: each record is read, only the oversized one is skipped."""
    pages = [
        (f"http://big.example/{i}.html", "text/html", _page(f"p{i}", "windows-1251")[1].encode("cp1251"))
        for i in range(30)
    ]
    huge = b"<html><body>" + b"<p>filler</p>" * 2000 + b'<img src="/huge.jpg" alt="too big"></body></html>'
    pages.insert(10, ("http://big.example/huge.html", "text/html", huge))
    plain = tmp_path / "big.warc"
    with open(plain, "wb") as out:
        writer = WARCWriter(out, gzip=False)
        for url, content_type, body in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            )
    whole = tmp_path / "big.warc.gz"
    whole.write_bytes(gzip.compress(plain.read_bytes()))
    limit = 20_000  # a page is about 1 KB, the whole file about 60 KB
    expected = [
        (f"http://big.example/img/p{i}-{j}.jpg", f"{alt} (p{i})")
        for i in range(30)
        for j, alt in enumerate(TEXTS["windows-1251"][1])
    ]
    for archive in (plain, whole):
        with open(archive, "rb") as handle:
            items = list(archive_pages(handle, "warc", limit))
        found = [(x.url, x.caption) for page in items if isinstance(page, Page) for x in page.pairs]
        assert found == expected
        assert [i.reason for i in items if isinstance(i, Skipped)] == ["record_too_large"]
    # A download cut short: the records before the cut keep their pairs.
    with open(whole, "rb") as handle:
        cut = handle.read()
    with io.BytesIO(cut[: len(cut) * 2 // 3]) as handle:
        found = [
            (x.url, x.caption)
            for p in archive_pages(handle, "warc", limit)
            if isinstance(p, Page)
            for x in p.pairs
        ]
    assert 20 <= len(found) < len(expected) and found == expected[: len(found)]
    rows = run_text_stage(whole, tmp_path / "out", "--set", f"input.max_record_bytes={limit}")
    assert sorted((r["url"], r["caption"]) for r in rows) == sorted(expected)


def test_item07_page_mode_decodes_fetched_pages_as_declared(tmp_path):
    """The same rules for a page fetched in page mode, whose HTTP header is the server's."""
    served: dict[str, tuple[str, bytes]] = {}
    expected = {}
    for charset, content_type, head in (
        ("GBK", "text/html; charset=GBK", ""),
        ("EUC-JP", "text/html", '<meta http-equiv="Content-Type" content="text/html; charset=euc-jp">'),
        ("windows-1251", "text/html", ""),
    ):
        url, html, alts = _page(f"fetched-{charset}", charset, head)
        served[url.rsplit("/", 1)[1]] = (content_type, html.encode(CODECS[charset]))
        expected.update(dict.fromkeys(alts, charset))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = served.get(self.path.lstrip("/"), ("text/plain", b""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            listing = tmp_path / "pages.txt"
            listing.write_text("".join(f"{base}/{name}\n" for name in served))
            overrides = [arg for item in TEST_OVERRIDES for arg in ("--set", item)]
            rows = run_text_stage(listing, tmp_path / "out", "--input-format", "pages", *overrides)
        finally:
            server.shutdown()
    assert {r["caption"]: json.loads(r["extra"])["charset"] for r in rows} == expected


def test_item07_compressed_and_chunked_pages_are_read_as_their_headers_say(tmp_path):
    """A crawler that stored the bytes as sent (gzip, deflate, chunked) or stored them decoded
    but kept the headers: either way the page's pairs are found."""
    html = b'<img src="/a.jpg" alt="Ein Hund im Schnee">'
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    cases = {
        "gzip": ("Content-Encoding", "gzip", gzip.compress(html)),
        "zlib": ("Content-Encoding", "deflate", zlib.compress(html)),
        "deflate": ("Content-Encoding", "deflate", deflater.compress(html) + deflater.flush()),
        "stored-decoded": ("Content-Encoding", "gzip", html),
        "chunked": ("Transfer-Encoding", "chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(html), html)),
        "unchunked": ("Transfer-Encoding", "chunked", html),
    }
    archive = tmp_path / "codings.warc.gz"
    with open(archive, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for case, (header, value, body) in cases.items():
            http = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html"), (header, value)], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                f"http://c.example/{case}/", "response", payload=io.BytesIO(body), http_headers=http
            )
            writer.write_record(record)
    pages, skipped = harvest(archive)
    assert [(p.url, [(x.url, x.caption) for x in p.pairs]) for p in pages] == [
        (f"http://c.example/{case}/", [("http://c.example/a.jpg", "Ein Hund im Schnee")]) for case in cases
    ]
    assert not skipped
