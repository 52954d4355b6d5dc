"""Writing systems of captions and the lid.176 languages written in each: pure functions, no Beam.

fastText's compressed lid.176 model is unreliable on short captions in scripts it saw little of
(a one-sentence Chinese caption may come out `sk` or `ja`), while the script itself is certain:
Han without kana is Chinese, kana is Japanese, Hangul is Korean, and Cyrillic, Greek, Arabic,
Devanagari or Thai narrow the language to those written in that script. `caption_script` names
the script a caption is mostly written in; `SCRIPT_LANGUAGES` lists the candidates of each.

A caption's script is the one with the most tokens, counting like `count_tokens`: each Han, kana
or Hangul character is a token, each whitespace-separated word of another script one token (a
word counts for the script most of its letters are in). So "iPhone 15 手机壳" is Han (three
characters against one Latin word) and "Logo of 中 Bank" Latin.
"""

from __future__ import annotations

import bisect
from collections import Counter

HAN, KANA, HANGUL, LATIN = "Han", "Kana", "Hangul", "Latin"

# (first code point, last code point, script), sorted; the blocks of each script's letters.
_RANGES = sorted(
    [
        (0x0041, 0x005A, LATIN),
        (0x0061, 0x007A, LATIN),
        (0x00C0, 0x024F, LATIN),
        (0x0250, 0x02AF, LATIN),
        (0x0370, 0x03FF, "Greek"),
        (0x0400, 0x052F, "Cyrillic"),
        (0x0531, 0x058F, "Armenian"),
        (0x0590, 0x05FF, "Hebrew"),
        (0x0600, 0x06FF, "Arabic"),
        (0x0750, 0x077F, "Arabic"),
        (0x0780, 0x07BF, "Thaana"),
        (0x08A0, 0x08FF, "Arabic"),
        (0x0900, 0x097F, "Devanagari"),
        (0x0980, 0x09FF, "Bengali"),
        (0x0A00, 0x0A7F, "Gurmukhi"),
        (0x0A80, 0x0AFF, "Gujarati"),
        (0x0B00, 0x0B7F, "Oriya"),
        (0x0B80, 0x0BFF, "Tamil"),
        (0x0C00, 0x0C7F, "Telugu"),
        (0x0C80, 0x0CFF, "Kannada"),
        (0x0D00, 0x0D7F, "Malayalam"),
        (0x0D80, 0x0DFF, "Sinhala"),
        (0x0E00, 0x0E7F, "Thai"),
        (0x0E80, 0x0EFF, "Lao"),
        (0x0F00, 0x0FFF, "Tibetan"),
        (0x1000, 0x109F, "Myanmar"),
        (0x10A0, 0x10FF, "Georgian"),
        (0x1100, 0x11FF, HANGUL),
        (0x1200, 0x139F, "Ethiopic"),
        (0x1780, 0x17FF, "Khmer"),
        (0x1C80, 0x1C8F, "Cyrillic"),
        (0x1C90, 0x1CBF, "Georgian"),
        (0x1E00, 0x1EFF, LATIN),
        (0x1F00, 0x1FFF, "Greek"),
        (0x2DE0, 0x2DFF, "Cyrillic"),
        (0x3005, 0x3007, HAN),  # 々 〆 〇
        (0x3041, 0x309F, KANA),
        (0x30A0, 0x30FF, KANA),
        (0x3130, 0x318F, HANGUL),
        (0x31F0, 0x31FF, KANA),
        (0x3400, 0x4DBF, HAN),
        (0x4E00, 0x9FFF, HAN),
        (0xA640, 0xA69F, "Cyrillic"),
        (0xAC00, 0xD7AF, HANGUL),
        (0xF900, 0xFAFF, HAN),
        (0xFB1D, 0xFB4F, "Hebrew"),
        (0xFB50, 0xFDFF, "Arabic"),
        (0xFE70, 0xFEFF, "Arabic"),
        (0xFF21, 0xFF3A, LATIN),
        (0xFF41, 0xFF5A, LATIN),
        (0xFF66, 0xFF9F, KANA),
        (0x20000, 0x2FFFF, HAN),
    ]
)
_STARTS = [start for start, _, _ in _RANGES]
#: Scripts counted per character, as `count_tokens` counts them.
_PER_CHARACTER = (HAN, KANA, HANGUL)

#: lid.176 languages by script. Latin is every label written in no other script only, plus those
#: written in both (`LATIN_ALSO`); see `languages_for`.
SCRIPT_LANGUAGES: dict[str, frozenset[str]] = {
    HAN: frozenset({"zh"}),
    KANA: frozenset({"ja"}),
    HANGUL: frozenset({"ko"}),
    "Greek": frozenset({"el"}),
    "Cyrillic": frozenset(
        [
            "ru",
            "uk",
            "bg",
            "sr",
            "sh",
            "mk",
            "be",
            "kk",
            "ky",
            "tt",
            "ba",
            "mn",
            "tg",
            "cv",
            "ce",
            "sah",
            "mhr",
            "os",
            "myv",
            "mrj",
            "kv",
            "krc",
            "av",
            "bxr",
            "lez",
            "xal",
            "tyv",
            "rue",
            "uz",
            "az",
            "tk",
        ]
    ),
    "Armenian": frozenset({"hy"}),
    "Hebrew": frozenset({"he", "yi"}),
    "Arabic": frozenset(["ar", "arz", "fa", "ur", "ps", "ckb", "azb", "pnb", "mzn", "sd", "ug", "lrc", "ku"]),
    "Thaana": frozenset({"dv"}),
    "Devanagari": frozenset(["hi", "mr", "ne", "sa", "new", "bh", "mai", "gom", "dty"]),
    "Bengali": frozenset({"bn", "as", "bpy"}),
    "Gurmukhi": frozenset({"pa"}),
    "Gujarati": frozenset({"gu"}),
    "Oriya": frozenset({"or"}),
    "Tamil": frozenset({"ta"}),
    "Telugu": frozenset({"te"}),
    "Kannada": frozenset({"kn"}),
    "Malayalam": frozenset({"ml"}),
    "Sinhala": frozenset({"si"}),
    "Thai": frozenset({"th"}),
    "Lao": frozenset({"lo"}),
    "Tibetan": frozenset({"bo"}),
    "Myanmar": frozenset({"my"}),
    "Georgian": frozenset({"ka", "xmf"}),
    "Ethiopic": frozenset({"am"}),
    "Khmer": frozenset({"km"}),
}
#: Languages lid.176 knows in another script that are also written in Latin.
LATIN_ALSO = frozenset(["sr", "sh", "uz", "az", "tk", "ku", "tt"])
_NOT_LATIN = frozenset().union(*SCRIPT_LANGUAGES.values()) - LATIN_ALSO


def languages_for(script: str, labels: list[str] | None = None) -> frozenset[str] | None:
    """The languages written in `script` (for Latin: those of `labels`, the model's languages,
    written in no other script only, plus `LATIN_ALSO`); None if the script is not known."""
    if script == LATIN:
        return frozenset(label for label in labels or () if label not in _NOT_LATIN)
    return SCRIPT_LANGUAGES.get(script)


_SEEN: dict[str, str | None] = {}


def char_script(ch: str) -> str | None:
    """The script of a letter, or None (digits, punctuation, symbols, scripts not listed)."""
    script = _SEEN.get(ch, "")
    if script == "":
        code = ord(ch)
        at = bisect.bisect_right(_STARTS, code) - 1
        script = _RANGES[at][2] if at >= 0 and code <= _RANGES[at][1] else None
        if len(_SEEN) < 1 << 16:
            _SEEN[ch] = script
    return script


def caption_script(text: str) -> str | None:
    """The script most of the caption's tokens are written in, or None (no letters). Han,
    kana and Hangul count per character; with both Han and kana the caption is Japanese (kana),
    with Hangul Korean; a tie goes to the script with per-character tokens."""
    if text.isascii():
        return LATIN if any(ch.isalpha() for ch in text) else None
    tokens: Counter[str] = Counter()
    for word in text.split():
        letters: Counter[str] = Counter()
        for ch in word:
            script = _SEEN[ch] if ch in _SEEN else char_script(ch)
            if script in _PER_CHARACTER:
                tokens[script] += 1
            elif script is not None:
                letters[script] += 1
        if letters:
            tokens[letters.most_common(1)[0][0]] += 1
    if not tokens:
        return None
    cjk = tokens[HAN] + tokens[KANA] + tokens[HANGUL]
    if cjk:
        if tokens[HANGUL] and tokens[HANGUL] >= tokens[KANA]:
            tokens[HANGUL] = cjk
        elif tokens[KANA]:
            tokens[KANA] = cjk
        else:
            tokens[HAN] = cjk
        for script in _PER_CHARACTER:
            if tokens[script] != cjk:
                del tokens[script]
    best = max(tokens.values())
    winners = [s for s, n in tokens.items() if n == best]
    return next((s for s in winners if s in _PER_CHARACTER), min(winners))
