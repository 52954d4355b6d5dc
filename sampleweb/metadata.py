"""Metadata entries for MetaCLIP balancing on the sample web: its concepts' names per language.

The sample web draws ten shapes in ten colours and captions them in seven languages; its
"metadata" are the words those captions use for them, as `lang<TAB>entry` lines (the format of
`balance.entries`): English, French, Spanish, Italian, Portuguese and German shape nouns, the
colour adjectives of the languages that do not inflect them by case (German does), and the
Chinese names, matched without spaces as Meta CLIP 2 matches CJK entries.
"""

from __future__ import annotations

import os

from sampleweb.captions import _DE_NOUNS, _ROMANCE, _ZH_COLORS, _ZH_SHAPES
from sampleweb.scenes import COLORS, SHAPES
from transforms.common.manifest import record_files

METADATA_NAME = "metadata.tsv"


def metadata_entries() -> list[tuple[str, str]]:
    """(language, entry) pairs, each once, in a fixed order."""
    entries: list[tuple[str, str]] = [("en", shape) for shape in SHAPES] + [("en", color) for color in COLORS]
    for lang, vocabulary in _ROMANCE.items():
        entries += [(lang, noun) for noun, _ in vocabulary.nouns.values()]
        entries += [(lang, form) for forms in vocabulary.colors.values() for form in forms]
    entries += [("de", noun) for noun, _ in _DE_NOUNS.values()]
    entries += [("zh", name) for name in _ZH_SHAPES.values()] + [("zh", name) for name in _ZH_COLORS.values()]
    return list(dict.fromkeys(entries))


def write_metadata(out_dir: str) -> str:
    """Writes `metadata.tsv` into the sample web's folder; returns its path."""
    path = os.path.join(out_dir, METADATA_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            "# The sample web's concept names: lang<TAB>entry (winnow run --set balance.entries=...)\n"
        )
        handle.writelines(f"{lang}\t{entry}\n" for lang, entry in metadata_entries())
    record_files(out_dir, [METADATA_NAME])
    return path
