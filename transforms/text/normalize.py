"""Caption and URL hygiene: pure functions, no Beam.

- `normalize_caption`: HTML entities unescaped, Unicode NFC, control and format characters
  removed, whitespace collapsed, cut at a character limit (at a word boundary when one is near).
- `count_tokens`: whitespace words for scripts that use spaces; one token per character for
  Chinese, Japanese and Korean, which do not. So `min_words` means the same in every language.
- `canonical_url`: scheme lower-case, the host in its ASCII form (IDNA / UTS-46: `bücher.example`
  and `xn--bcher-kva.example` are one host; a trailing dot dropped), default port and fragment
  dropped. A URL whose host or port cannot be fetched (spaces, zero-width or control characters,
  percent-encoding, an empty label, a port outside 1–65535) has no canonical form and says why.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import idna

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WHITESPACE = re.compile(r"\s+")
# Replacement characters, NULs and private-use code points: what binary data decodes to.
_BINARY = re.compile("[\ufffd\x00\ue000-\uf8ff\U000f0000-\U0010ffff]")
# A whitespace-separated chunk with at least one letter or digit.
_WORD = re.compile(r"\S*[^\W_]\S*")
_ALNUM = re.compile(r"[^\W_]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Unicode format characters (category Cf: zero-width spaces, bidi marks, BOM) and line separators.
_INVISIBLE = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)
# Han, Hiragana, Katakana, Hangul syllables and jamo, CJK punctuation and full-width forms.
_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_ASCII_PUNCTUATION = bytes(c for c in range(128) if not chr(c).isalnum() and not chr(c).isspace())
_ASCII_CLASSES = bytes(
    ord("a") if chr(c).isalnum() else ord(" ") if chr(c).isspace() else ord("p") for c in range(256)
)
# A URL already in canonical form (the common case): checked with one match instead of a parse.
SIMPLE_URL = re.compile(r"(https?)://([a-z0-9-]+(?:\.[a-z0-9-]+)*)(/[^#?\s]*(?:\?[^#\s]+)?)\Z")
# The same less CJK punctuation (U+3000–303F, U+FF00–FF0F, U+FF1A–FF20): one token each.
_CJK_LETTER = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff10-\uff19\uff21-\uffef]"
)


def normalize_caption(text: str, max_chars: int) -> str:
    """The cleaned caption: unescaped, NFC, no control characters, single spaces, at most `max_chars`."""
    if "&" in text:
        text = html.unescape(text)
    if text.isprintable():
        # Fast path, most alt-text: no control, format or separator character but the plain space.
        if not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if "  " in text or text[:1] == " " or text[-1:] == " ":
            text = " ".join(text.split())
    else:
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
            text = _INVISIBLE.sub(" ", text)
        text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = (cut[:space] if space > max_chars * 0.8 else cut).rstrip()
    return text


def looks_binary(text: str) -> bool:
    """True for 'captions' that are really binary data or a broken decoding."""
    if not text or (text.isascii() and "\x00" not in text):
        return False
    return len(_BINARY.findall(text)) / len(text) > 0.1


def count_tokens(text: str) -> int:
    """Words for space-separated scripts, characters for Chinese, Japanese and Korean."""
    if text.isascii():
        classes = text.encode().translate(_ASCII_CLASSES)  # letters/digits → a, punctuation → p
        if not (classes.startswith(b"p") or b" p" in classes):
            return classes.count(b" ") + 1 if classes.strip() else 0  # every chunk starts with a letter
        # Punctuation deleted, a chunk without a letter or digit vanishes from the split.
        return len(text.encode().translate(None, _ASCII_PUNCTUATION).split())
    rest, cjk = _CJK_LETTER.subn(" ", text)
    return cjk + _count_words(rest)


def _count_words(text: str) -> int:
    """Whitespace-separated chunks holding at least one letter or digit."""
    chunks = text.split()
    plain = sum(map(str.isalnum, chunks))
    if plain == len(chunks):
        return plain
    return plain + sum(1 for chunk in chunks if not chunk.isalnum() and _ALNUM.search(chunk))


def caption_words(text: str) -> list[str]:
    """The tokens `count_tokens` counts, case-folded, in order: words, and single CJK characters."""
    text = text.casefold()
    if not text.isascii() and _CJK.search(text):
        text = _CJK.sub(r" \g<0> ", text)
    return _WORD.findall(text)


class UrlFacts(NamedTuple):
    """What the URL rules need from one URL. `canonical` is None if the URL cannot be fetched;
    `problem` then says why."""

    scheme: str
    host: str
    extension: str
    canonical: str | None
    problem: str = ""


def url_facts(url: str) -> UrlFacts:
    """Scheme, host, file extension and canonical form of a URL, parsed once."""
    simple = SIMPLE_URL.match(url)
    if simple:
        # Already canonical: lower-case http(s) scheme and host, no port, user or fragment.
        scheme, host, path = simple.group(1, 2, 3)
        return UrlFacts(scheme, host, _extension(path.partition("?")[0]), url)
    return parsed_url_facts(url)


# Characters an ASCII host name may hold (letters, digits, hyphen, underscore, dot).
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_HOST = 253


class HostError(ValueError):
    """A host name that cannot be fetched; the message says why."""


def canonical_host(host: str) -> str:
    """The ASCII form of a host name (lower case, IDNA / UTS-46 for international names, no
    trailing dot), or `HostError` saying why it cannot be fetched (pure)."""
    odd = next((ch for ch in host if ch.isspace() or unicodedata.category(ch)[0] in "CZ"), None)
    if odd is not None:
        name = unicodedata.name(odd, "control character")
        raise HostError(f"the host contains U+{ord(odd):04X} ({name.lower()})")
    if "%" in host:
        raise HostError("the host is percent-encoded")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("[") or ":" in host:  # an IPv6 literal (urlsplit checked its brackets)
        return host
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as err:
            raise HostError(f"not a valid international host name: {err}") from None
    if not _ASCII_HOST.fullmatch(host):
        bad = next((ch for ch in host if not (ch.isalnum() or ch in "._-")), None)
        raise HostError(f"the host has the character {bad!r}" if bad else "the host has an empty label")
    if len(host) > _MAX_HOST or any(len(label) > 63 for label in host.split(".")):
        raise HostError("the host name is too long")
    return host


def parsed_url_facts(url: str) -> UrlFacts:
    """`url_facts` by a full parse, for every URL (the reference the fast path must agree with)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        return UrlFacts("", "", "", None, f"cannot be parsed: {err}")
    scheme = parts.scheme.lower()
    raw_host = parts.hostname or ""
    extension = _extension(parts.path)
    if not scheme:
        return UrlFacts(scheme, raw_host.lower(), extension, None, "not an absolute URL (no scheme)")
    if not raw_host:
        return UrlFacts(scheme, raw_host, extension, None, "no host")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        return UrlFacts(scheme, raw_host.lower(), extension, None, f"port {port_text!r} is not in 1-65535")
    if port == 0:
        return UrlFacts(scheme, raw_host.lower(), extension, None, "port 0 is not in 1-65535")
    try:
        host = canonical_host(raw_host)
    except HostError as err:
        return UrlFacts(scheme, raw_host.lower(), extension, None, str(err))
    netloc = f"[{host}]" if ":" in host else host
    if port not in (None, _DEFAULT_PORTS.get(scheme)):
        netloc = f"{netloc}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{netloc}"
    return UrlFacts(scheme, host, extension, urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))


def canonical_url(url: str) -> str | None:
    """A canonical form for duplicate detection, or None if the URL cannot be parsed."""
    return url_facts(url).canonical


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def domain_matches(host: str, domains: frozenset[str]) -> bool:
    """True if `host` is one of `domains` or a subdomain of one."""
    host = host.lower().rstrip(".")
    while host:
        if host in domains:
            return True
        _, _, host = host.partition(".")
    return False
