"""The metadata entries of a run, read from a file (local, s3://, gs://).

Two formats: MetaCLIP's `metadata.json` (a JSON list of strings, matched in every caption: the
language `*`) and lines of `lang<TAB>entry` (Meta CLIP 2's per-language lists; `#` starts a
comment line). A file that is neither, or holds no entry, raises `EntriesError` naming the file
and line.
"""

from __future__ import annotations

import json

from transforms.common.files import read_text_file

#: The language of entries matched in every caption.
ANY = "*"


class EntriesError(ValueError):
    """An entries file that cannot be read (the message names the file and line)."""


def parse_entries(text: str, where: str) -> list[tuple[str, str]]:
    """(language, entry) pairs in file order: ids are positions in this list."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except ValueError as err:
            raise EntriesError(f"{where}: not a JSON list of strings: {err}") from None
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            raise EntriesError(f"{where}: entry {bad} is not a non-empty string: {values[bad]!r}")
        if not values:
            raise EntriesError(f"{where}: no entries (an empty list matches no caption)")
        return [(ANY, value) for value in values]
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lang, tab, entry = line.partition("\t")
        if not tab or not lang.strip() or not entry.strip():
            raise EntriesError(f"{where}:{number}: expected `lang<TAB>entry`, got {line[:80]!r}")
        entries.append((lang.strip(), entry.strip("\r")))
    if not entries:
        raise EntriesError(f"{where}: no entries")
    return entries


def read_entries(path: str) -> list[tuple[str, str]]:
    """The entries of `path`; `EntriesError` names the key, the file and the line."""
    try:
        return parse_entries(read_text_file(path), path)
    except ValueError as err:
        raise EntriesError(f"balance.entries: {err}") from None
