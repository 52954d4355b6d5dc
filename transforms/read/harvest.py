"""Harvest image/alt-text pairs from web archives: pure helpers, no Beam.

- **WAT** (Common Crawl's metadata archives): each `metadata` record holds a JSON envelope; the
  `IMG@/src` links of its `HTML-Metadata` give the pairs, with their `alt` and `title`, resolved
  against the page URL or the page's `<base href>`.
- **WARC** (any version, ClueWeb09's `WARC/0.18` too) and **ARC** (the Internet Archive's format
  before WARC): each `response` record whose HTTP Content-Type is HTML is decoded as it declares
  (`transforms.read.charsets`) and parsed with `selectolax` (lexbor): every `<img>` with its `src` or
  the largest `srcset` candidate, `alt`, `title`, and the text of the `<figcaption>` of its
  `<figure>`, which is the caption when `alt` is empty.

Only http(s) image URLs are kept. Archives are read one record at a time: a gzipped archive is
split into its gzip members (one record each, as WARC files are written), so a record that is
malformed, too large or not HTML is skipped with a reason (`Skipped`) and the next one is read;
an uncompressed archive or one gzipped as a single stream is streamed record by record
(`ManyRecords`). Nothing holds more than one record, and no record more than `max_record_bytes`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType
from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator as WarcioIterator
from warcio.exceptions import ArchiveLoadFailed

from schemas.sample import BATCH_SCHEMA, Status, make_uid
from transforms.read.charsets import bom_encoding, charset_from_content_type, decode_html

#: Tagged output of the readers that harvest: per-file or per-bundle page and pair counts.
HARVEST_COUNTS = "harvest_counts"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_DESCRIPTOR = re.compile(r"([\d.]+)([wx])")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image/alt-text pair found on a page."""

    url: str
    caption: str | None
    page_url: str
    alt: str | None = None
    title: str | None = None
    figcaption: str | None = None

    @property
    def caption_source(self) -> str | None:
        if self.alt:
            return "alt"
        return "figcaption" if self.figcaption else None


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An archive record that gave no pairs for a reason worth counting (and naming in the log)."""

    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class ManyRecords:
    """From byte `offset` on, the archive is not one record per gzip member (an uncompressed file,
    or a whole file gzipped as one stream, as ClueWeb09's are) and holds more than
    `max_record_bytes`: its records are read by streaming from there."""

    offset: int


@dataclasses.dataclass(frozen=True)
class Page:
    """The pairs of one archive record (a page); `offset` is the record's byte offset in its file,
    `charset` the encoding its HTML was decoded with and `charset_source` where that came from
    (`transforms.read.charsets.Decoded`); a WAT envelope, already text, has neither."""

    url: str
    offset: int
    pairs: list[Pair]
    charset: str | None = None
    charset_source: str | None = None


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text or None


def _absolute(base: str, link: str | None) -> str | None:
    """`link` resolved against `base`, if it is an http(s) URL with a host."""
    if not link or link.startswith(("data:", "javascript:", "blob:")):
        return None
    try:
        url = urljoin(base, link.strip())
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def srcset_candidates(srcset: str) -> Iterator[tuple[str, str]]:
    """(url, descriptor) of each `srcset` candidate, split as the HTML standard says: a URL runs
    to the next whitespace (commas inside it are part of it), its descriptor to the next comma."""
    pos, end = 0, len(srcset)
    while pos < end:
        while pos < end and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < end and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        if not url:
            return
        if url.endswith(","):
            yield url.rstrip(","), ""
            continue
        start = pos
        while pos < end and srcset[pos] != ",":
            pos += 1
        yield url, srcset[start:pos].strip()


def largest_srcset_candidate(srcset: str) -> str | None:
    """The URL of the widest (`w`) or densest (`x`) candidate of a `srcset`; ties keep the first."""
    best: tuple[float, str] | None = None
    for url, descriptor in srcset_candidates(srcset):
        match = _DESCRIPTOR.fullmatch(descriptor)
        size, unit = (float(match.group(1)), match.group(2)) if match else (1.0, "x")
        score = size * 1e6 if unit == "w" else size  # widths are what responsive images list
        if best is None or score > best[0]:
            best = (score, url)
    return best[1] if best else None


def html_pairs(html: bytes | str, page_url: str) -> list[Pair]:
    """The image/alt-text pairs of an HTML page, in document order; bytes are decoded as the page
    declares (`transforms.read.charsets.decode_html`)."""
    tree = LexborHTMLParser(decode_html(html).text if isinstance(html, bytes) else html)
    base_node = tree.css_first("base[href]")
    base = urljoin(page_url, base_node.attributes.get("href") or "") if base_node else page_url
    pairs = []
    for img in tree.css("img"):
        attributes = img.attributes
        srcset = attributes.get("srcset")
        link = (largest_srcset_candidate(srcset) if srcset else None) or attributes.get("src")
        url = _absolute(base, link)
        if url is None:
            continue
        alt, title = _clean(attributes.get("alt")), _clean(attributes.get("title"))
        figcaption = None
        parent = img.parent
        while parent is not None and parent.tag not in ("figure", "body", "html"):
            parent = parent.parent
        if parent is not None and parent.tag == "figure":
            caption_node = parent.css_first("figcaption")
            figcaption = _clean(caption_node.text(deep=True)) if caption_node else None
        pairs.append(Pair(url, alt or figcaption, page_url, alt, title, figcaption))
    return pairs


def _has_html(envelope: dict[str, Any]) -> bool:
    payload = envelope.get("Envelope", {}).get("Payload-Metadata", {})
    return isinstance(payload.get("HTTP-Response-Metadata", {}).get("HTML-Metadata"), dict)


def wat_pairs(envelope: dict[str, Any]) -> tuple[str | None, list[Pair]]:
    """The page URL and the `IMG@/src` pairs of one WAT JSON envelope (no HTML metadata: none)."""
    header = envelope.get("Envelope", {}).get("WARC-Header-Metadata", {})
    page_url = header.get("WARC-Target-URI")
    html = (
        envelope.get("Envelope", {})
        .get("Payload-Metadata", {})
        .get("HTTP-Response-Metadata", {})
        .get("HTML-Metadata")
    )
    if not page_url or not isinstance(html, dict):
        return page_url, []
    head = html.get("Head") or {}
    base = urljoin(page_url, head["Base"]) if isinstance(head.get("Base"), str) else page_url
    pairs = []
    for link in html.get("Links") or []:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        url = _absolute(base, link.get("url"))
        if url is not None:
            alt, title = _clean(link.get("alt")), _clean(link.get("title"))
            pairs.append(Pair(url, alt, page_url, alt, title))
    return page_url, pairs


def records(stream: BinaryIO, max_record_bytes: int) -> Iterator[tuple[int, bytes] | Skipped | ManyRecords]:
    """The records of a WARC/WAT/ARC file as (byte offset, record bytes), one at a time.

    A gzipped file is split into its gzip members, one record each as WARC files are written; a
    member over `max_record_bytes` once decompressed is `Skipped` (drained, never held) and
    reading goes on with the next. Bytes that are not gzip end the file with a `Skipped`. An
    uncompressed file of at most `max_record_bytes` is one item; a larger one, or a member that
    holds several records and is over the limit, truncated or damaged, ends the items with
    `ManyRecords`: the caller streams its records from there, up to any damage.
    """
    data = stream.read(_CHUNK)
    if not data.startswith(_GZIP_MAGIC):
        body = data + stream.read(max(0, max_record_bytes + 1 - len(data)))
        if len(body) > max_record_bytes:
            yield ManyRecords(0)
        elif body:
            yield 0, body
        return
    offset = 0
    while data:
        decoder = zlib.decompressobj(31)
        kept: list[bytes] | None = []
        head = b""
        size = fed = 0
        try:
            while True:
                chunk = decoder.decompress(data, _CHUNK)  # at most 1 MiB out per call
                fed += len(data) - len(decoder.unconsumed_tail) - len(decoder.unused_data)
                size += len(chunk)
                head = head or chunk
                if kept is not None and size <= max_record_bytes:
                    kept.append(chunk)
                else:
                    kept = None  # too large: drained to the member's end, not kept
                if decoder.eof:
                    data = decoder.unused_data
                    break
                data = decoder.unconsumed_tail or stream.read(_CHUNK)
                if not data:
                    if _holds_more_records(head, size):  # its whole records are read, by streaming
                        yield ManyRecords(offset)
                    else:
                        yield Skipped("malformed_record", f"byte {offset}: the archive ends inside a record")
                    return
        except zlib.error as err:
            if _holds_more_records(head, size):
                yield ManyRecords(offset)
            else:
                yield Skipped(
                    "malformed_record", f"byte {offset}: not gzip ({err}); the rest of the file is skipped"
                )
            return
        if kept is None:
            if _holds_more_records(head, size):
                yield ManyRecords(offset)
                return
            yield Skipped("record_too_large", f"byte {offset}: a record over {max_record_bytes} bytes")
        else:
            yield offset, b"".join(kept)
        offset += fed
        data = data or stream.read(_CHUNK)


#: Fewer bytes than any record (a WARC record's own header is longer): past a record's declared
#: end, a member holding fewer is that record's trailing newlines, not another record.
_MIN_RECORD = 16
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)


def _holds_more_records(head: bytes, size: int) -> bool:
    """Whether a gzip member that starts with `head` and of which `size` bytes were decompressed
    holds more than its first record (and that record's trailing newlines)."""
    first = first_record_size(head)
    return first is not None and size - first > _MIN_RECORD


def first_record_size(head: bytes) -> int | None:
    """The size of the WARC or ARC record `head` starts with (its header and the length it
    declares), or None if `head` does not say."""
    if head.lstrip()[:5] == b"WARC/":
        end = min((i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0), default=-1)
        match = _CONTENT_LENGTH.search(head, 0, end) if end >= 0 else None
        return end + int(match.group(1)) if match else None
    line_end = head.find(b"\n")
    fields = head[:line_end].split() if line_end > 0 else []
    return line_end + 1 + int(fields[-1]) if len(fields) >= 5 and fields[-1].isdigit() else None


def archive_pages(stream: BinaryIO, fmt: str, max_record_bytes: int) -> Iterator[Page | Skipped]:
    """The pages of a WAT (`fmt="wat"`), WARC (`"warc"`) or ARC (`"arc"`) archive, with what was
    skipped and why. WARC records of any version (ClueWeb09's `WARC/0.18`, LF-only headers) are
    read by `fastwarc`; ARC records (the Internet Archive's format before WARC, v1 and v2) by
    `warcio`, which turns them into WARC records. Each gzip member is read as what it starts with,
    so `--input-format warc` reads ARC files too."""
    for item in records(stream, max_record_bytes):
        if isinstance(item, ManyRecords):
            yield from _streamed_pages(stream, item.offset, fmt, max_record_bytes)
            return
        if isinstance(item, Skipped):
            yield item
        elif fmt == "wat" or item[1][:64].lstrip().startswith(b"WARC/"):
            yield from _warc_pages(item[1], fmt, item[0])
        else:
            yield from _arc_pages(item[1], item[0])


def _warc_pages(data: bytes, fmt: str, offset: int) -> list[Page | Skipped]:
    kinds = WarcRecordType.metadata if fmt == "wat" else WarcRecordType.response
    quirks = _needs_quirks(data)
    found: list[Page | Skipped] = []
    iterator = ArchiveIterator(
        io.BytesIO(data), record_types=kinds, parse_http=fmt != "wat", quirks_mode=quirks
    )
    try:  # a record is read while the iterator stands on it
        for record in iterator:
            found.append(_page(record, fmt, offset))
    except OSError as err:
        if len(found) <= 1:  # a gzip member is one record: what was read of a broken one is dropped
            found = []
        found.append(Skipped("malformed_record", f"byte {offset}: {err}"))
    return found


def _needs_quirks(head: bytes) -> bool:
    """WARC/1.x with CRLF lines is read strictly (a broken record is malformed); older versions and
    LF-only lines (ClueWeb09's WARC/0.18) in fastwarc's quirks mode, which reads what they are."""
    return not head.lstrip().startswith((b"WARC/1.0\r\n", b"WARC/1.1\r\n"))


def _arc_pages(data: bytes, offset: int) -> list[Page | Skipped]:
    found: list[Page | Skipped] = []
    try:
        for record in WarcioIterator(io.BytesIO(data), arc2warc=True):
            if record.rec_type == "response":
                found.append(_arc_page(record, offset))
    except (ArchiveLoadFailed, OSError, ValueError) as err:
        if len(found) <= 1:
            found = []
        found.append(Skipped("malformed_record", f"byte {offset}: not an ARC or WARC record: {err}"))
    return found


def _arc_page(record: Any, offset: int) -> Page | Skipped:
    """The page of an ARC record (as `warcio` turns it into a WARC response record)."""
    target = record.rec_headers.get_header("WARC-Target-URI") or ""
    content_type = record.http_headers.get_header("Content-Type") if record.http_headers else None
    body = record.content_stream().read()
    return html_page(target, offset, content_type or "", body, f"byte {offset} ({target})")


def _streamed_pages(
    stream: BinaryIO, offset: int, fmt: str, max_record_bytes: int
) -> Iterator[Page | Skipped]:
    """The pages of an archive read as one stream from byte `offset` (`ManyRecords`), one record
    at a time; a record over `max_record_bytes` is skipped unread, and a malformed one ends the
    file (nothing marks where the next one starts)."""
    if not stream.seekable():
        yield Skipped("record_too_large", f"byte {offset}: a stream over {max_record_bytes} bytes")
        return
    stream.seek(offset)
    head = stream.read(_CHUNK)
    stream.seek(offset)
    if head.startswith(_GZIP_MAGIC):
        head = zlib.decompressobj(31).decompress(head, 4096)
    try:
        if fmt == "wat" or head.lstrip()[:5] == b"WARC/":
            quirks = _needs_quirks(head)
            kinds = WarcRecordType.metadata if fmt == "wat" else WarcRecordType.response
            iterator = ArchiveIterator(
                stream, record_types=kinds, parse_http=fmt != "wat", quirks_mode=quirks
            )
            for record in iterator:
                if record.content_length > max_record_bytes:
                    yield Skipped(
                        "record_too_large",
                        f"byte {record.stream_pos}: a record over {max_record_bytes} bytes",
                    )
                else:
                    yield _page(record, fmt, record.stream_pos)
            return
        arc = WarcioIterator(stream, arc2warc=True)
        for arc_record in arc:
            at = offset + arc.get_record_offset()
            if arc_record.rec_type != "response":
                continue
            if int(arc_record.rec_headers.get_header("Content-Length") or 0) > max_record_bytes:
                yield Skipped("record_too_large", f"byte {at}: a record over {max_record_bytes} bytes")
            else:
                yield _arc_page(arc_record, at)
    except (ArchiveLoadFailed, OSError, ValueError) as err:
        yield Skipped("malformed_record", f"after byte {offset}: {err}; the rest of the file is skipped")


def _page(record: Any, fmt: str, offset: int) -> Page | Skipped:
    target = record.headers.get("WARC-Target-URI") or ""
    if fmt == "wat":
        try:
            envelope = json.loads(record.reader.read())
        except (ValueError, UnicodeDecodeError) as err:
            return Skipped("malformed_record", f"byte {offset} ({target}): WAT payload is not JSON: {err}")
        if not isinstance(envelope, dict) or not _has_html(envelope):
            return Skipped("not_html", f"byte {offset} ({target}): no HTML metadata")
        page_url, pairs = wat_pairs(envelope)
        return Page(page_url or target, offset, pairs)
    headers = record.http_headers
    content_type = (headers.get("Content-Type") or "") if headers else ""
    body = record.reader.read()
    if headers:
        body = http_body(body, headers.get("Transfer-Encoding"), headers.get("Content-Encoding"))
    return html_page(target, offset, content_type, body, f"byte {offset} ({target})")


#: The most a compressed page is inflated to; what is past it is cut (a page is parsed as far as it goes).
_MAX_INFLATED = 32 << 20


def http_body(body: bytes, transfer_encoding: str | None, content_encoding: str | None) -> bytes:
    """A response body with its chunked transfer coding and gzip/deflate content coding undone, as
    its headers say; a body that is not what its headers say (archives often store it decoded
    and keep the headers) is taken as it is."""
    if transfer_encoding and "chunked" in transfer_encoding.lower():
        body = _unchunked(body) or body
    coding = (content_encoding or "").strip().lower()
    if coding in ("gzip", "x-gzip", "deflate"):
        for wbits in (47, -15):  # gzip or zlib header (47 detects which), or raw deflate
            try:
                return zlib.decompressobj(wbits).decompress(body, _MAX_INFLATED)
            except zlib.error:
                continue
    return body


def _unchunked(body: bytes) -> bytes | None:
    """The data of a chunked body, or None if `body` is not one."""
    parts: list[bytes] = []
    pos = 0
    while True:
        line_end = body.find(b"\n", pos)
        size_text = body[pos:line_end].split(b";")[0].strip() if line_end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size < 0:
            return None
        if size == 0:
            return b"".join(parts)
        parts.append(body[line_end + 1 : line_end + 1 + size])
        pos = line_end + 1 + size
        pos += 2 if body.startswith(b"\r\n", pos) else 1 if body.startswith(b"\n", pos) else 0
        if pos >= len(body):
            return b"".join(parts)  # cut short after a whole chunk: what was sent


def html_page(url: str, offset: int, content_type: str, body: bytes, where: str) -> Page | Skipped:
    """The pairs of a response served as `content_type`, or why it is no HTML page; `where` names
    it in the reason's message. A WARC record and a fetched page are judged alike."""
    if "html" not in content_type.lower():
        return Skipped("not_html", f"{where}: Content-Type {content_type or 'missing'!r}")
    declared = bom_encoding(body) or charset_from_content_type(content_type) or ""
    if b"\x00" in body[:1024] and not declared.startswith("UTF-16"):
        return Skipped("invalid_html", f"{where}: binary content served as {content_type!r}")
    try:
        decoded = decode_html(body, content_type)
        return Page(url, offset, html_pairs(decoded.text, url), decoded.charset, decoded.source)
    except (ValueError, UnicodeDecodeError) as err:
        return Skipped("invalid_html", f"{where}: {err}")


def tally(counts: Counter[str], item: Page | Skipped) -> None:
    """Adds a page (pages, pages with pairs, pairs) or a skipped record (by reason) to `counts`."""
    if isinstance(item, Skipped):
        counts[f"skipped/{item.reason}"] += 1
        return
    counts["pages"] += 1
    counts["pages_with_pairs"] += bool(item.pairs)
    counts["pairs"] += len(item.pairs)


def pairs_batch(pages: list[Page], archive: str | None = None) -> pa.RecordBatch:
    """The row batch (`BATCH_SCHEMA`) of the pairs of `pages`, pending; `extra` says where each
    was found: `page_url`, `position` on the page and, from an archive, `warc_file`, `warc_offset`."""
    rows = []
    for page in pages:
        for position, pair in enumerate(page.pairs):
            extra: dict[str, Any] = {"page_url": page.url, "position": position}
            if archive is not None:
                extra.update(warc_file=archive, warc_offset=page.offset)
            extra.update(charset=page.charset, charset_source=page.charset_source)
            extra.update(
                alt=pair.alt, title=pair.title, figcaption=pair.figcaption, caption_source=pair.caption_source
            )
            rows.append((pair.url, pair.caption, {k: v for k, v in extra.items() if v is not None}))
    n = len(rows)
    columns: dict[str, list[Any]] = {
        "uid": [make_uid(url, caption) for url, caption, _ in rows],
        "url": [url for url, _, _ in rows],
        "caption": [caption for _, caption, _ in rows],
        "extra": [json.dumps(extra, sort_keys=True, ensure_ascii=False) for _, _, extra in rows],
        "status": [Status.PENDING] * n,
    }
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in BATCH_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=BATCH_SCHEMA)
