"""Caption and URL hygiene: pure functions, no Beam.

- `normalize_caption`: HTML entities unescaped, Unicode NFC, control and format characters
  removed, whitespace collapsed, cut at a character limit (at a word boundary when one is near).
- `count_tokens`: whitespace words for scripts that use spaces; one token per character for
  Chinese, Japanese and Korean, which do not. So `min_words` means the same in every language.
- `canonical_url`: scheme and host lower-case, default port and fragment dropped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WHITESPACE = re.compile(r"\s+")
# Replacement characters, NULs and private-use code points: what binary data decodes to.
_BINARY = re.compile("[\ufffd\x00\ue000-\uf8ff\U000f0000-\U0010ffff]")
# A whitespace-separated chunk with at least one letter or digit.
_WORD = re.compile(r"\S*[^\W_]\S*")
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
_CJK_PUNCTUATION = re.compile("[\u3000-\u303f\uff00-\uff0f\uff1a-\uff20]")


def normalize_caption(text: str, max_chars: int) -> str:
    """The cleaned caption: unescaped, NFC, no control characters, single spaces, at most `max_chars`."""
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
        text = _INVISIBLE.sub(" ", text)
    text = _WHITESPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
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
    cjk = len(_CJK.findall(text)) - len(_CJK_PUNCTUATION.findall(text))
    rest = _CJK.sub(" ", text)
    return cjk + len(_WORD.findall(rest))


def canonical_url(url: str) -> str | None:
    """A canonical form for duplicate detection, or None if the URL cannot be parsed."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def url_extension(url: str) -> str:
    """The lower-case file extension of the URL's path, without the dot ('' if none)."""
    path = urlsplit(url).path
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
