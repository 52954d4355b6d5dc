"""A stage package's lazy exports: its config at once, its transforms when first asked for.

Reading a config (`winnow config`, `--help`, the config checks) then never imports Beam's model
libraries, torch or FAISS; `from transforms.embed import EmbedImages` still works as usual.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `name` from `package.<modules[name]>`."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
