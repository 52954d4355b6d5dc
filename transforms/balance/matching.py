"""MetaCLIP's substring matching of captions against metadata entries: pure functions, no Beam.

The semantics are MetaCLIP's (`metaclip/substr_matching.py`, and Meta CLIP 2's
`metaclip/curation/substr_matching.py` for scripts written without spaces):

- the caption is padded with a space on each side, each of `, . ; : ? ! `` ` is surrounded by
  spaces, and tab, newline and carriage return become spaces (`spacing`);
- an entry is padded with a space on each side, except on a side whose character is CJK (or Thai,
  Lao, Burmese, Khmer, Tibetan) or punctuation: such scripts put no spaces between words, so
  `猫` must match inside `一只猫在睡觉` (`spaced_entry`);
- an entry matches when its padded form occurs in the spaced caption: `cat` matches "a cat." but
  not "a category"; `hot dog` matches "a hot dog, please".

Matching is case-sensitive as in MetaCLIP; `case_sensitive=False` folds both sides. All entries
of a language go into one Aho-Corasick automaton (`pyahocorasick`), so a caption is scanned once
whatever the number of entries: no loop over entries.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

import ahocorasick

_WRAPPED = (",", ".", ";", ":", "?", "!", "`")
_SPACED = ("\t", "\n", "\r")
#: Punctuation MetaCLIP 2 counts as a no-space boundary besides ASCII's.
_WIDE_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
_ASCII_PUNCTUATION = frozenset(string.punctuation)
#: Code point ranges of scripts written without spaces between words (Meta CLIP 2's list).
_NO_SPACE_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),
)  # fmt: skip


def spacing(text: str) -> str:
    """The caption as entries are looked for in it (the module docstring's rules)."""
    spaced = f" {text} "
    for mark in _WRAPPED:
        if mark in spaced:
            spaced = spaced.replace(mark, f" {mark} ")
    for char in _SPACED:
        if char in spaced:
            spaced = spaced.replace(char, " ")
    return spaced


def _joins_without_space(char: str) -> bool:
    code = ord(char)
    if char in _ASCII_PUNCTUATION or char in _WIDE_PUNCTUATION:
        return True
    return any(lo <= code <= hi for lo, hi in _NO_SPACE_RANGES)


def spaced_entry(entry: str) -> str:
    """An entry as it must occur in a spaced caption: a space on each side that is not CJK-like."""
    if not _joins_without_space(entry[0]):
        entry = f" {entry}"
    if not _joins_without_space(entry[-1]):
        entry = f"{entry} "
    return entry


class EntryMatcher:
    """The entries of each language in one automaton; `match` gives a caption's entry ids.

    `entries` are (language, entry) pairs; an entry's id is its position. The language `*` holds
    entries matched in every caption (MetaCLIP's single English list read as `metadata.json`)."""

    def __init__(self, entries: Sequence[tuple[str, str]], case_sensitive: bool = True):
        self.case_sensitive = case_sensitive
        self._automata: dict[str, ahocorasick.Automaton] = {}
        for entry_id, (lang, entry) in enumerate(entries):
            if not entry.strip():
                continue
            key = spaced_entry(entry if case_sensitive else entry.casefold())
            automaton = self._automata.get(lang)
            if automaton is None:
                automaton = self._automata[lang] = ahocorasick.Automaton()
            found = automaton.get(key, None)
            # The same entry listed twice: both ids match (each is counted and drawn for).
            automaton.add_word(key, (*found, entry_id) if found else (entry_id,))
        for automaton in self._automata.values():
            automaton.make_automaton()

    def languages(self) -> list[str]:
        return sorted(self._automata)

    def match(self, text: str | None, lang: str | None = None) -> list[int]:
        """Sorted ids of the entries of `lang` (and of `*`) that occur in `text`."""
        if not text:
            return []
        spaced = spacing(text if self.case_sensitive else text.casefold())
        found: set[int] = set()
        for name in ("*", lang) if lang != "*" else ("*",):
            automaton = self._automata.get(name or "")
            if automaton is None:
                continue
            for _, ids in automaton.iter(spaced):
                found.update(ids)
        return sorted(found)


def match_all(matcher: EntryMatcher, captions: Iterable[tuple[str | None, str | None]]) -> list[list[int]]:
    """`matcher.match` over (caption, language) pairs."""
    return [matcher.match(text, lang) for text, lang in captions]
