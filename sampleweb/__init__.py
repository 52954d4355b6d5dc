"""Winnow's offline sample web: image/alt-text pairs with ground truth, served over loopback HTTP.

Contract: :func:`generate_corpus` writes a deterministic corpus (image files and a truth
manifest) for a seed; :class:`SampleWebServer` and :func:`serve_in_subprocess` serve it;
:func:`write_url_lists` writes the URL list a downloader consumes and the truth it is scored
against.  See ``sampleweb/README.md`` for the truth columns and the noise, duplicate and fault
types.

The names are imported lazily so that ``python -m sampleweb.server`` and
``python -m sampleweb.corpus`` run their module exactly once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sampleweb.corpus import CorpusConfig, CorpusSummary, generate_corpus
    from sampleweb.server import SampleWebServer, serve_in_subprocess
    from sampleweb.urllists import write_url_lists

_EXPORTS = {
    "CorpusConfig": "sampleweb.corpus",
    "CorpusSummary": "sampleweb.corpus",
    "generate_corpus": "sampleweb.corpus",
    "SampleWebServer": "sampleweb.server",
    "serve_in_subprocess": "sampleweb.server",
    "write_url_lists": "sampleweb.urllists",
}

__all__ = [
    "CorpusConfig",
    "CorpusSummary",
    "SampleWebServer",
    "generate_corpus",
    "serve_in_subprocess",
    "write_url_lists",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sampleweb' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
