"""Decoding web pages as they declare: WHATWG encoding labels and the HTML encoding sniffing order.

`decode_html(body, content_type)` turns the bytes of an HTML page into text the way a browser
would, in the order of the HTML standard's encoding sniffing algorithm:

1. a byte order mark (UTF-8, UTF-16LE, UTF-16BE) wins over any declaration;
2. the `charset` parameter of the HTTP `Content-Type` header;
3. a `<meta charset>` or `<meta http-equiv="Content-Type" content="...; charset=...">` found by
   the standard's prescan of the page's first bytes (a UTF-16 label there means UTF-8);
4. nothing usable declared: UTF-8 if the bytes are valid UTF-8, else detection
   (`charset-normalizer`).

Labels map to encodings as the WHATWG Encoding standard says (`iso-8859-1`, `latin1` and `ascii`
mean windows-1252; `gb2312` means GBK, decoded as GB18030), and each encoding is decoded by the
Python codec closest to the standard's decoder (GBK by `gb18030`, Shift_JIS by `cp932`, EUC-KR by
`cp949`, Big5 by `big5hkscs`). A declaration is wrong when most of the page's non-ASCII bytes
are not valid in it, or when a legacy encoding is declared for bytes that are valid, non-ASCII
UTF-8 (a server default such as `charset=ISO-8859-1` in front of a UTF-8 page); then the next
declaration is tried, and the encoding is detected when none is left.
The result names the encoding used and where it came from, so a caption can be traced to it.
"""

from __future__ import annotations

import codecs
import dataclasses
import re

from charset_normalizer import from_bytes

#: WHATWG encoding name -> (Python codec, labels). The labels are the Encoding standard's.
_ENCODINGS: dict[str, tuple[str, str]] = {
    "UTF-8": ("utf_8", "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8"),
    "IBM866": ("cp866", "866 cp866 csibm866 ibm866"),
    "ISO-8859-2": (
        "iso8859_2",
        "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    ),
    "ISO-8859-3": (
        "iso8859_3",
        "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    ),
    "ISO-8859-4": (
        "iso8859_4",
        "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    ),
    "ISO-8859-5": (
        "iso8859_5",
        "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988",
    ),
    "ISO-8859-6": (
        "iso8859_6",
        "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e"
        " iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    ),
    "ISO-8859-7": (
        "iso8859_7",
        "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597"
        " iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    ),
    "ISO-8859-8": (
        "iso8859_8",
        "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598"
        " iso_8859-8 iso_8859-8:1988 visual",
    ),
    "ISO-8859-8-I": ("iso8859_8", "csiso88598i iso-8859-8-i logical"),
    "ISO-8859-10": ("iso8859_10", "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6"),
    "ISO-8859-13": ("iso8859_13", "iso-8859-13 iso8859-13 iso885913"),
    "ISO-8859-14": ("iso8859_14", "iso-8859-14 iso8859-14 iso885914"),
    "ISO-8859-15": ("iso8859_15", "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9"),
    "ISO-8859-16": ("iso8859_16", "iso-8859-16"),
    "KOI8-R": ("koi8_r", "cskoi8r koi koi8 koi8-r koi8_r"),
    "KOI8-U": ("koi8_u", "koi8-ru koi8-u"),
    "macintosh": ("mac_roman", "csmacintosh mac macintosh x-mac-roman"),
    "windows-874": ("cp874", "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874"),
    "windows-1250": ("cp1250", "cp1250 windows-1250 x-cp1250"),
    "windows-1251": ("cp1251", "cp1251 windows-1251 x-cp1251"),
    "windows-1252": (
        "cp1252",
        "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591"
        " iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252",
    ),
    "windows-1253": ("cp1253", "cp1253 windows-1253 x-cp1253"),
    "windows-1254": (
        "cp1254",
        "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5"
        " latin5 windows-1254 x-cp1254",
    ),
    "windows-1255": ("cp1255", "cp1255 windows-1255 x-cp1255"),
    "windows-1256": ("cp1256", "cp1256 windows-1256 x-cp1256"),
    "windows-1257": ("cp1257", "cp1257 windows-1257 x-cp1257"),
    "windows-1258": ("cp1258", "cp1258 windows-1258 x-cp1258"),
    "x-mac-cyrillic": ("mac_cyrillic", "x-mac-cyrillic x-mac-ukrainian"),
    "GBK": ("gb18030", "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk"),
    "gb18030": ("gb18030", "gb18030"),
    "Big5": ("big5hkscs", "big5 big5-hkscs cn-big5 csbig5 x-x-big5"),
    "EUC-JP": ("euc_jp", "cseucpkdfmtjapanese euc-jp x-euc-jp"),
    "ISO-2022-JP": ("iso2022_jp", "csiso2022jp iso-2022-jp"),
    "Shift_JIS": ("cp932", "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis"),
    "EUC-KR": (
        "cp949",
        "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601"
        " ksc_5601 windows-949",
    ),
    "UTF-16BE": ("utf_16_be", "unicodefffe utf-16be"),
    "UTF-16LE": ("utf_16_le", "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le"),
    # The standard decodes x-user-defined's high bytes to private-use characters, and its prescan
    # reads it as windows-1252; Python has no such codec, so it is windows-1252 here too.
    "x-user-defined": ("cp1252", "x-user-defined"),
}
_LABELS = {label: name for name, (_, labels) in _ENCODINGS.items() for label in labels.split()}
#: Python codec name -> WHATWG name, to name what detection found as the standard does.
_BY_CODEC = {codecs.lookup(codec).name: name for name, (codec, _) in reversed(_ENCODINGS.items())}
#: Codecs detection may name whose WHATWG encoding is decoded by another (usually wider) codec.
_BY_CODEC.update(
    {
        "gbk": "GBK",
        "gb2312": "GBK",
        "big5": "Big5",
        "euc_jis_2004": "EUC-JP",
        "euc_jisx0213": "EUC-JP",
        "shift_jis": "Shift_JIS",
        "shift_jis_2004": "Shift_JIS",
        "shift_jisx0213": "Shift_JIS",
        "euc_kr": "EUC-KR",
        "iso8859-1": "windows-1252",
        "ascii": "windows-1252",
    }
)
_BOMS = ((codecs.BOM_UTF8, "UTF-8"), (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE"))
#: How far the prescan looks for a `<meta>` (the standard's 1024 bytes).
PRESCAN_BYTES = 1024
_TAG_END = (b" ", b"/", b"\t", b"\n", b"\f", b"\r")
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*(?:\"([^\"]*)\"?|'([^']*)'?|([^\s;\"']+))", re.I)
_ATTRIBUTE = re.compile(rb"""\s*([^\s=/>][^\s=/>]*)(?:\s*=\s*(?:"([^"]*)"?|'([^']*)'?|([^\s>]*)))?""")


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A page's text, the WHATWG name of the encoding it was decoded with, and where that came
    from: `bom`, `http`, `meta`, or `detected` (nothing usable declared, or a declaration the
    bytes contradict)."""

    text: str
    charset: str
    source: str


def encoding_for_label(label: str | bytes | None) -> str | None:
    """The WHATWG name of the encoding an encoding label means (`latin1` -> `windows-1252`), or
    None for an unknown label or one of the standard's `replacement` labels."""
    if label is None:
        return None
    if isinstance(label, bytes):
        label = label.decode("ascii", "replace")
    return _LABELS.get(label.strip("\t\n\f\r ").lower())


def charset_from_content_type(content_type: str | bytes | None) -> str | None:
    """The encoding named by the `charset` parameter of a Content-Type value, if any and known."""
    if not content_type:
        return None
    raw = content_type.encode("latin-1", "replace") if isinstance(content_type, str) else content_type
    match = _CHARSET_PARAM.search(raw)
    return encoding_for_label(next(g for g in match.groups() if g is not None)) if match else None


def bom_encoding(body: bytes) -> str | None:
    """The encoding a byte order mark at the start of `body` names, if there is one."""
    return next((name for bom, name in _BOMS if body.startswith(bom)), None)


def prescan_meta(body: bytes, limit: int = PRESCAN_BYTES) -> str | None:
    """The encoding a `<meta>` in the first `limit` bytes declares, as the HTML standard's prescan
    finds it: comments are skipped, the first `<meta>` with `charset` (or `http-equiv=content-type`
    and a `content` naming a charset) and a known label wins; a UTF-16 label there means UTF-8."""
    data, pos = body[:limit], 0
    while pos < len(data):
        if data.startswith(b"<!--", pos):
            end = data.find(b"-->", pos + 2)
            pos = len(data) if end < 0 else end + 3
            continue
        if data[pos : pos + 5].lower() == b"<meta" and data[pos + 5 : pos + 6] in _TAG_END:
            found, pos = _meta_encoding(data, pos + 5)
            if found is not None:
                return "UTF-8" if found.startswith("UTF-16") else found
            continue
        following = data.find(b"<", pos + 1)
        pos = following if following >= 0 else len(data)
    return None


def _meta_encoding(data: bytes, pos: int) -> tuple[str | None, int]:
    """The encoding one `<meta>` tag (attributes from `pos`) declares, and where the tag ends."""
    attributes: dict[bytes, bytes] = {}
    while True:
        match = _ATTRIBUTE.match(data, pos)
        if match is None or match.end() == pos:
            break
        name = match.group(1).lower()
        value = next((g for g in match.groups()[1:] if g is not None), b"")
        attributes.setdefault(name, value)
        pos = match.end()
    end = data.find(b">", pos)
    end = len(data) if end < 0 else end + 1
    if b"charset" in attributes:
        return encoding_for_label(attributes[b"charset"]), end
    if attributes.get(b"http-equiv", b"").strip().lower() == b"content-type" and b"content" in attributes:
        return charset_from_content_type(attributes[b"content"]), end
    return None, end


def _strict(body: bytes, charset: str) -> str | None:
    try:
        return body.decode(_ENCODINGS[charset][0])
    except UnicodeDecodeError:
        return None


def _as_declared(body: bytes, charset: str) -> str | None:
    """`body` decoded in its declared `charset`, or None when its bytes say the declaration is
    wrong: more of its non-ASCII text fails to decode than decodes (a page in the declared
    encoding with a stray byte keeps it, as U+FFFD, which the text rules then reject), or a legacy
    encoding is declared for bytes that are valid, non-ASCII UTF-8."""
    text = _strict(body, charset)
    if text is None:
        text = body.decode(_ENCODINGS[charset][0], "replace")
        bad = text.count("\ufffd")
        if bad > sum(1 for ch in text if ch > "\x7f") - bad:
            return None
    if charset != "UTF-8" and not body.isascii() and _strict(body, "UTF-8") is not None:
        return None
    return text


def _detect(body: bytes) -> Decoded:
    """The text of a page whose declaration is missing or wrong: UTF-8 if its bytes are, else what
    `charset-normalizer` finds; bytes nothing fits are decoded as UTF-8 with U+FFFD for errors."""
    text = _strict(body, "UTF-8")
    if text is not None:
        return Decoded(text, "UTF-8", "detected")
    best = from_bytes(body[: 1 << 18]).best()  # a page's first 256 KiB decide
    if best is not None:
        name = _BY_CODEC.get(codecs.lookup(best.encoding).name)
        if name is not None and (text := _strict(body, name)) is not None:
            return Decoded(text, name, "detected")
        try:  # the codec detection found, where the WHATWG one does not fit all the bytes
            return Decoded(body.decode(best.encoding), best.encoding, "detected")
        except UnicodeDecodeError:
            pass
    return Decoded(body.decode("utf-8", "replace"), "UTF-8", "detected")


def decode_html(body: bytes, content_type: str | None = None) -> Decoded:
    """`body`, an HTML page served with `content_type`, decoded as it declares (see the module)."""
    for bom, named in _BOMS:
        if body.startswith(bom):
            return Decoded(body[len(bom) :].decode(_ENCODINGS[named][0], "replace"), named, "bom")
    declarations = (
        ("http", lambda: charset_from_content_type(content_type)),
        ("meta", lambda: prescan_meta(body)),
    )
    for source, declared in declarations:  # the prescan only runs when the header gives nothing usable
        charset = declared()
        text = _as_declared(body, charset) if charset is not None else None
        if charset is not None and text is not None:
            return Decoded(text, charset, source)
    return _detect(body)
