"""Caption and URL hygiene: pure functions, no Beam.

- `normalize_caption`: HTML entities unescaped, Unicode NFC, control and format characters
  removed, whitespace collapsed, cut at a character limit (at a word boundary when one is near).
- `count_tokens`: whitespace words for scripts that use spaces; one token per character for
  Chinese, Japanese and Korean, which do not. So `min_words` means the same in every language.
- URLs: `canonical_url` and its kin live in `transforms/common/urls.py` (the safety stage's URL
  blocklist reads them too) and are re-exported here.
"""

from __future__ import annotations

import html
import re
import unicodedata

from transforms.common.urls import (  # noqa: F401 - the URL rules' names, re-exported
    HostEntry,
    HostError,
    HostList,
    UrlFacts,
    canonical_host,
    canonical_url,
    parse_host_entry,
    parsed_url_facts,
    simple_canonical,
    url_facts,
)

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
