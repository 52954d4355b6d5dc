"""Records of text-format URL lists (CSV, TSV, JSONL, plain text): pure parsing, no Beam.

One input record gives exactly one `Record`, and two records are never merged. What a record is:

- every format: lines are numbered from 1, as an editor does (the header is line 1); a blank line
  is not a record; a line longer than `MAX_LINE_BYTES` is a `field_too_large` record;
- `txt`: each line (one URL);
- `jsonl`: each line (one JSON object);
- `tsv`: each line after the header, split on tabs with no quote processing (CC3M-style lists
  carry captions that start with `"`);
- `csv`: each line after the header, except that a properly quoted field may span lines
  (RFC 4180): the record is then those lines, numbered by its first. A quote that is not closed
  within `MAX_RECORD_LINES` lines, before the end of the file, before a line that reads as a row
  of its own (the header's field count and a URL in the url column) or before the next field,
  makes its first line an `unparseable_row` record, and parsing resumes on the next line. A row
  with another field count than the header is `unparseable_row`; a field over
  `MAX_FIELD_CHARS` is `field_too_large`.

Damage ends a file: compressed data that stops early is one `truncated_file` record, any other
read error one `unreadable_file` record, after the records read before it. A file whose header
(or, without a header, whose first line) cannot be read raises `InputError` (`UnreadableFile`
when it is damaged).

Charsets: JSONL is UTF-8 by spec. CSV, TSV and txt follow `encoding`: `auto` reads UTF-8 (a BOM
is dropped); a line that is not valid UTF-8 is decoded with the charset detected
(`charset-normalizer`) on the lines of the first `DETECT_BYTES` that are not UTF-8. Any other
value is a Python codec used for every line. A line that cannot be decoded is an
`undecodable_row` record: no replacement character is ever shipped as if it were text.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

from charset_normalizer import from_bytes

from transforms.common.errors import InputError

#: The longest physical line read; a longer one is skipped as `field_too_large`.
MAX_LINE_BYTES = 1 << 20
#: The largest CSV/TSV field (the `csv` module's default limit).
MAX_FIELD_CHARS = 128 * 1024
#: The most lines one quoted CSV field may span.
MAX_RECORD_LINES = 32
#: Bytes of the first lines looked at to pick the charset of lines that are not UTF-8.
DETECT_BYTES = 1 << 20
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError)


class Record(NamedTuple):
    """One input record: its values by column, or why it could not be read (`reason`, `message`)."""

    line: int
    values: dict[str, Any] | None = None
    reason: str | None = None
    message: str | None = None


@dataclasses.dataclass(frozen=True)
class _Trouble:
    """A line that could not be read: the reason code and what to say about it."""

    reason: str
    message: str


def physical_lines(stream: BinaryIO, path: str) -> Iterator[tuple[int, bytes | _Trouble]]:
    """(line number, bytes without the line end) of every line; damage ends the lines with one
    `_Trouble` numbered after the last line read."""
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 1)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = stream.readline(MAX_LINE_BYTES)
                number += 1
                message = f"{path}: line {number} is longer than {MAX_LINE_BYTES} bytes"
                yield number, _Trouble("field_too_large", message)
                continue
        except _READ_ERRORS as err:
            yield number + 1, _damage(path, number, err)
            return
        if not raw:
            return
        number += 1
        yield number, raw.removesuffix(b"\n").removesuffix(b"\r")


def _damage(path: str, lines: int, err: BaseException) -> _Trouble:
    where = f"after line {lines}" if lines else "at the start"
    if isinstance(err, EOFError):
        return _Trouble("truncated_file", f"{path}: the compressed data ends early {where} (truncated file)")
    return _Trouble("unreadable_file", f"{path}: cannot read on {where}: {err}")


def decoded_lines(
    lines: Iterator[tuple[int, bytes | _Trouble]], path: str, encoding: str
) -> Iterator[tuple[int, str | _Trouble]]:
    """The lines as text (see the module docstring for `encoding`); line 1 loses a BOM."""
    head: list[tuple[int, bytes | _Trouble]] = []
    size = 0
    for item in lines:
        head.append(item)
        size += len(item[1]) if isinstance(item[1], bytes) else 0
        if size >= DETECT_BYTES:
            break
    decode = _line_decoder(path, encoding, [data for _, data in head if isinstance(data, bytes)])
    for source in (head, lines):
        for number, data in source:
            if isinstance(data, _Trouble):
                yield number, data
                continue
            if number == 1 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            if number == 1 and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputError(f"{path}: UTF-16 text is not supported; save the list as UTF-8")
            text = decode(number, data)
            yield number, (text.removeprefix("\ufeff") if number == 1 and isinstance(text, str) else text)


def _line_decoder(path: str, encoding: str, sample: list[bytes]) -> Callable[[int, bytes], str | _Trouble]:
    """A function (line number, bytes) → text or `_Trouble`, for `encoding` and the first lines."""
    if encoding != "auto":

        def fixed(number: int, data: bytes) -> str | _Trouble:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as err:
                message = f"{path}: line {number} is not valid {encoding} (byte {err.start + 1})"
                return _Trouble("undecodable_row", message)

        return fixed
    fallback = detect_charset(sample)

    def auto(number: int, data: bytes) -> str | _Trouble:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            if fallback is not None:
                try:
                    return data.decode(fallback)
                except UnicodeDecodeError:
                    pass
            what = f"neither UTF-8 nor {fallback}" if fallback else "not UTF-8"
            message = f"{path}: line {number} is {what} (byte {err.start + 1}); set input.encoding"
            return _Trouble("undecodable_row", message)

    return auto


def detect_charset(lines: list[bytes]) -> str | None:
    """The charset of those `lines` that are not UTF-8 (None if all are), as `charset-normalizer`
    guesses it."""
    foreign = []
    for data in lines:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            foreign.append(data)
    if not foreign:
        return None
    matches = list(from_bytes(b"\n".join(foreign)))
    # A few non-ASCII bytes read as anything in a multi-byte charset ("Über" as GB18030): those
    # need a sample of some size.
    if sum(byte >= 0x80 for data in foreign for byte in data) < _MULTIBYTE_EVIDENCE:
        matches = [m for m in matches if not m.encoding.startswith(_MULTIBYTE)]
    if not matches:
        return None
    # Short samples often tie (cp1250 and cp1252 read "Café" alike): the tie goes to the charset
    # most lists are in.
    best = (matches[0].chaos, matches[0].coherence)
    top = [m.encoding for m in matches if (m.chaos, m.coherence) == best]
    return min(
        top, key=lambda name: (_PREFERRED.index(name) if name in _PREFERRED else len(_PREFERRED), name)
    )


#: Non-ASCII bytes needed before a multi-byte charset is believed.
_MULTIBYTE_EVIDENCE = 16
_MULTIBYTE = ("gb", "big5", "cp932", "cp949", "cp950", "shift_jis", "euc", "iso2022", "hz", "johab", "utf")
#: Tie-break order of detected charsets: the common legacy charsets of the web first.
_PREFERRED = ["cp1252", "latin_1", "iso8859_15", "cp1251", "gb18030", "cp932", "euc_jp", "euc_kr", "big5"]


def text_records(
    stream: BinaryIO, path: str, fmt: str, url_col: str, encoding: str = "auto"
) -> Iterator[Record]:
    """Every record of one CSV, TSV, JSONL or txt file (decompressed `stream`), in file order."""
    lines = physical_lines(stream, path)
    text = decoded_lines(lines, path, "utf-8" if fmt == "jsonl" else encoding)
    if fmt == "jsonl":
        return _jsonl_records(path, text)
    if fmt == "txt":
        return _txt_records(path, text, url_col)
    return _table_records(path, text, fmt, url_col)


class UnreadableFile(InputError):
    """A file damaged before its first line (or header) could be read; `reason` says how."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _unreadable(path: str, trouble: _Trouble, what: str = "input file") -> InputError:
    """The error for a file whose first line (or header) cannot be read."""
    message = f"{path}: cannot read {what}: {trouble.message.removeprefix(path + ': ')}"
    if trouble.reason in ("truncated_file", "unreadable_file"):
        return UnreadableFile(message, trouble.reason)
    return InputError(message)


def _txt_records(path: str, lines: Iterator[tuple[int, str | _Trouble]], url_col: str) -> Iterator[Record]:
    for number, text in lines:
        if isinstance(text, _Trouble):
            if number == 1 and text.reason in ("truncated_file", "unreadable_file"):
                raise _unreadable(path, text)
            yield Record(number, reason=text.reason, message=text.message)
        elif text.strip():
            yield Record(number, {url_col: text.strip()})


def _jsonl_records(path: str, lines: Iterator[tuple[int, str | _Trouble]]) -> Iterator[Record]:
    for number, text in lines:
        if isinstance(text, _Trouble):
            if number == 1 and text.reason in ("truncated_file", "unreadable_file"):
                raise _unreadable(path, text)
            yield Record(number, reason=text.reason, message=text.message)
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield Record(
                number,
                reason="unparseable_row",
                message=f"{path}: line {number} is not valid JSON: {err.msg}",
            )
            continue
        if isinstance(row, dict):
            yield Record(number, row)
        else:
            yield Record(
                number, reason="unparseable_row", message=f"{path}: line {number} is not a JSON object"
            )


class _Lines:
    """The decoded lines with look-ahead: a quoted CSV field may need the next ones."""

    def __init__(self, lines: Iterator[tuple[int, str | _Trouble]]):
        self._lines = lines
        self._ahead: list[tuple[int, str | _Trouble]] = []

    def next(self) -> tuple[int, str | _Trouble] | None:
        """The next line, taken; None after the last."""
        return self._ahead.pop(0) if self._ahead else next(self._lines, None)

    def peek(self, k: int) -> tuple[int, str | _Trouble] | None:
        """The k-th line after the current one (0: the next), or None after the last."""
        while len(self._ahead) <= k:
            item = next(self._lines, None)
            if item is None:
                return None
            self._ahead.append(item)
        return self._ahead[k]

    def take(self, n: int = 1) -> None:
        del self._ahead[:n]


def _table_records(
    path: str, decoded: Iterator[tuple[int, str | _Trouble]], fmt: str, url_col: str
) -> Iterator[Record]:
    lines = _Lines(decoded)
    header: list[str] | None = None
    width: int | None = None
    url_at: int | None = None
    while (item := lines.next()) is not None:
        number, text = item
        if isinstance(text, _Trouble):
            if header is None:
                raise _unreadable(path, text, "the header")
            yield Record(number, reason=text.reason, message=text.message)
            continue
        if not text.strip():
            continue
        if fmt == "tsv":
            fields: list[str] | _Trouble = text.split("\t")
        elif '"' not in text:
            fields = text.split(",")  # what the csv module makes of a line without quotes
        else:
            fields = _csv_record(path, number, text, lines, width, url_at)
        if (
            len(text) > MAX_FIELD_CHARS
            and not isinstance(fields, _Trouble)
            and any(len(f) > MAX_FIELD_CHARS for f in fields)
        ):
            message = f"{path}: line {number} has a field longer than {MAX_FIELD_CHARS} characters"
            fields = _Trouble("field_too_large", message)
        if header is None:
            if isinstance(fields, _Trouble):
                raise _unreadable(path, fields, "the header")
            header = [name.strip() for name in fields]
            width = len(header)
            url_at = header.index(url_col) if url_col in header else None
            continue
        if not isinstance(fields, _Trouble) and len(fields) != width:
            message = f"{path}: line {number} has {len(fields)} fields, the header has {width}"
            fields = _Trouble("unparseable_row", message)
        if isinstance(fields, _Trouble):
            yield Record(number, reason=fields.reason, message=fields.message)
        else:
            yield Record(number, dict(zip(header, fields, strict=True)))


def _csv_record(
    path: str, number: int, text: str, lines: _Lines, width: int | None, url_at: int | None
) -> list[str] | _Trouble:
    """The fields of the CSV record starting on line `number`; lines after it are taken from
    `lines` only when a quoted field properly continues there."""
    parts = [text]
    while True:
        fields = _csv_fields("\n".join(parts))
        if not isinstance(fields, _Open):
            if isinstance(fields, str):
                return _Trouble(_csv_reason(fields), f"{path}: line {number} is not valid CSV: {fields}")
            lines.take(len(parts) - 1)
            return fields
        following = lines.peek(len(parts) - 1)
        if (
            following is None
            or isinstance(following[1], _Trouble)
            or len(parts) >= MAX_RECORD_LINES
            or _reads_as_row(following[1], width, url_at)
        ):
            return _Trouble("unparseable_row", f"{path}: line {number} has a quote that is not closed")
        parts.append(following[1])


class _Open:
    """A CSV text that ends inside a quoted field."""


def _csv_fields(text: str) -> list[str] | _Open | str:
    """The fields of one CSV record, `_Open` if a quoted field is still open at the end, or the
    parser's complaint."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as err:
        return _Open() if "unexpected end of data" in str(err) else str(err)
    if len(rows) != 1:
        return "a line end outside quotes"
    return rows[0]


def _csv_reason(complaint: str) -> str:
    return "field_too_large" if "field larger than field limit" in complaint else "unparseable_row"


def _reads_as_row(text: str, width: int | None, url_at: int | None) -> bool:
    """Whether a line, alone, is a complete row: the header's field count and a URL in its url column."""
    fields = _csv_fields(text)
    if not isinstance(fields, list) or width is None or len(fields) != width:
        return False
    return url_at is None or "://" in fields[url_at]
