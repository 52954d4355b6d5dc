"""HTML pages and web archives of the sample web: the input of Winnow's harvest modes.

:func:`write_pages` lays the manifest's pairs out on HTML pages for a server's ``base_url`` and
writes, under ``<out_dir>/pages/``:

- ``NNNN.html``: the pages (served at ``/pages/NNNN.html``), eight images each, in five styles:
  absolute ``src``; root-relative ``src`` with a ``title``; ``srcset`` whose largest candidate is
  the image (a smaller one is not); an empty ``alt`` inside ``<figure>`` with a
  ``<figcaption>``; and, on every third page, a ``<base href>`` with URLs relative to it. Every
  tenth pair appears on two pages. Pages also hold links, a ``data:`` image and an ``<img>``
  without ``src``, none of which is a pair;
- ``pages.warc.gz``: a WARC of those pages as HTTP responses, written with ``warcio``, plus what
  a real crawl holds that is not a page: an image response, a 50 MB page, a binary file served
  as HTML and a malformed record;
- ``pages.warc.wat.gz``: the WAT of the same pages, in Common Crawl's JSON envelope
  (``IMG@/src`` links with their raw ``url``, ``alt`` and ``title``; the page's ``Base``);
- ``pages.txt``: the page URLs, one per line (the ``pages`` input);
- ``planted.parquet``: the pairs each mode must find (``mode``, ``url``, ``caption``; a WAT
  holds only ``src`` and ``alt``).
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from sampleweb.corpus import MANIFEST_NAME

PAGES_DIR = "pages"
IMAGES_PER_PAGE = 8
#: Size of the oversized page in the WARC (beyond `input.max_record_bytes`).
HUGE_PAGE_BYTES = 50 * 1024 * 1024
#: Skipped records the WARC holds, by the reason Winnow gives them.
WARC_SKIPS = {"invalid_html": 1, "malformed_record": 1, "not_html": 1, "record_too_large": 1}


def _normalise(text: str | None) -> str | None:
    text = " ".join(text.split()) if text else None
    return text or None


def _usable(caption: str | None) -> bool:
    """Captions a page can hold as they are: no control characters or unpaired surrogates."""
    if caption is None:
        return True
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(ch) < 32 and ch not in "\t\n\r" or 0x7F <= ord(ch) < 0xA0 for ch in caption)


def _img(style: int, src: str, caption: str | None, title: str) -> tuple[str, str | None]:
    """HTML of one image in `style`, and the caption a WAT sees for it."""
    alt = html.escape(caption or "", quote=True)
    if style == 1:
        return f'<img src="{src}" alt="{alt}" title="{title}">', caption
    if style == 2:
        small = f"{src}?w=320"
        return f'<img src="{src}" srcset="{small} 320w, {src} 1024w" alt="{alt}">', caption
    if style == 3:
        body = f'<figure><img src="{src}" alt=""><figcaption>{alt}</figcaption></figure>'
        return body, None  # a WAT has no figcaption
    return f'<img src="{src}" alt="{alt}">', caption


def write_pages(out_dir: str, base_url: str) -> dict[str, str]:
    """Writes the pages, archives, page list and planted pairs for `base_url`; returns their paths."""
    base = base_url.rstrip("/")
    manifest = pq.read_table(
        os.path.join(out_dir, MANIFEST_NAME), columns=["id", "path", "caption"]
    ).to_pylist()
    rows = [r for r in manifest if _usable(r["caption"])]
    slots = list(rows) + [rows[i] for i in range(0, len(rows), 10)]  # every tenth pair twice
    folder = os.path.join(out_dir, PAGES_DIR)
    os.makedirs(folder, exist_ok=True)
    pages: list[tuple[str, str, dict]] = []  # url, html, WAT html metadata
    planted: dict[str, set[tuple[str, str | None]]] = {"warc": set(), "wat": set()}
    for number, start in enumerate(range(0, len(slots), IMAGES_PER_PAGE)):
        on_base_page = number % 3 == 2
        parts, links = [], []
        for row in slots[start : start + IMAGES_PER_PAGE]:
            style, path, title = row["id"] % 5, row["path"], f"picture {row['id']}"
            src = f"..{path}" if on_base_page else (f"{base}{path}" if style == 0 else path)
            markup, wat_caption = _img(style, src, row["caption"], title)
            parts.append(markup)
            link = {"path": "IMG@/src", "url": src}
            if wat_caption:
                link["alt"] = wat_caption
            if style == 1:
                link["title"] = title
            links.append(link)
            url = f"{base}{row['path']}"
            planted["warc"].add((url, _normalise(row["caption"])))
            planted["wat"].add((url, _normalise(wat_caption)))
        head = f'<base href="{base}/img/">' if on_base_page else ""
        page = (
            f"<!doctype html><html><head><meta charset=utf-8><title>Page {number}</title>{head}</head><body>"
            f'<h1>Gallery {number}</h1><a href="/pages/{number + 1:04d}.html">next</a>'
            '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><img alt="no source">'
            + "\n".join(parts)
            + "</body></html>"
        )
        page_url = f"{base}/{PAGES_DIR}/{number:04d}.html"
        with open(os.path.join(folder, f"{number:04d}.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
        wat_links = [{"path": "A@/href", "url": f"/pages/{number + 1:04d}.html", "text": "next"}, *links]
        metadata = {
            "Head": {"Title": f"Page {number}", **({"Base": f"{base}/img/"} if on_base_page else {})},
            "Links": wat_links,
        }
        pages.append((page_url, page, metadata))
    paths = {
        "warc": os.path.join(folder, "pages.warc.gz"),
        "wat": os.path.join(folder, "pages.warc.wat.gz"),
        "pages": os.path.join(folder, "pages.txt"),
        "planted": os.path.join(folder, "planted.parquet"),
    }
    _write_warc(paths["warc"], pages, base)
    _write_wat(paths["wat"], pages)
    with open(paths["pages"], "w", encoding="utf-8") as handle:
        handle.write("".join(f"{url}\n" for url, _, _ in pages))
    table = [
        (mode, url, caption) for mode, pairs in planted.items() for url, caption in sorted(pairs, key=str)
    ]
    pq.write_table(
        pa.table({name: [t[i] for t in table] for i, name in enumerate(("mode", "url", "caption"))}),
        paths["planted"],
    )
    return paths


def _response(writer: WARCWriter, url: str, content_type: str, body: bytes) -> None:
    http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
    writer.write_record(
        writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
    )


def _write_warc(path: str, pages: list[tuple[str, str, dict]], base: str) -> None:
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i, (url, page, _) in enumerate(pages):
            _response(writer, url, "text/html; charset=utf-8", page.encode("utf-8"))
            if i == 1:  # what a crawl holds besides pages, each skipped with its reason
                _response(writer, f"{base}/favicon.jpg", "image/jpeg", b"\xff\xd8\xff" + bytes(100))
                _response(writer, f"{base}/huge.html", "text/html", _huge_page())
                _response(writer, f"{base}/binary.html", "text/html", b"\x00\x01\x02PK\x03\x04" + bytes(4000))
                out.write(
                    gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nbroken header line\r\n\r\n<html>")
                )


def _huge_page() -> bytes:
    row = b"<p>" + b"filler text " * 80 + b"</p>\n"
    return b"<html><body>" + row * (HUGE_PAGE_BYTES // len(row) + 1) + b"</body></html>"


def _write_wat(path: str, pages: list[tuple[str, str, dict]]) -> None:
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for url, _, metadata in pages:
            envelope = {
                "Container": {"Compressed": True, "Filename": "pages.warc.gz"},
                "Envelope": {
                    "Format": "WARC",
                    "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url},
                    "Payload-Metadata": {
                        "Actual-Content-Type": "application/http; msgtype=response",
                        "HTTP-Response-Metadata": {
                            "Response-Message": {"Status": "200", "Version": "HTTP/1.1"},
                            "Headers": {"Content-Type": "text/html; charset=utf-8"},
                            "HTML-Metadata": metadata,
                        },
                    },
                },
            }
            payload = json.dumps(envelope, ensure_ascii=False).encode("utf-8")
            record = writer.create_warc_record(
                url, "metadata", payload=io.BytesIO(payload), warc_content_type="application/json"
            )
            writer.write_record(record)
