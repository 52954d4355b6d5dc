"""Range checks for the config sections' `__post_init__`: one message shape for every key.

A setting that cannot work (a negative size, a probability of 5, a minimum above its maximum, a
header value with a line break) raises `ValueError` naming the key and its value, e.g.
`text.min_words (5) must be <= text.max_words (3)`, so a run never starts that would reject
everything. Unset (None) values are not checked: None means "off" or "the preset's".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any, NoReturn

#: The longest wait a time key may ask for, in seconds (a day); sockets refuse much longer ones.
MAX_SECONDS = 86400.0
#: Seeds are handed to FAISS (a 32-bit int) and xxhash/numpy (unsigned).
MAX_SEED = 2**31 - 1


class Check:
    """The checks of one config section (`section` prefixes every key it names)."""

    def __init__(self, section: str, config: Any):
        self._section = section
        self._config = config

    def key(self, name: str) -> str:
        return f"{self._section}.{name}"

    def _value(self, name: str) -> Any:
        return getattr(self._config, name)

    def _fail(self, name: str, rule: str) -> NoReturn:
        raise ValueError(f"{self.key(name)} ({self._value(name)!r}) must be {rule}")

    def _numbers(self, names: Iterable[str]) -> Iterable[tuple[str, float]]:
        for name in names:
            value = self._value(name)
            if value is None:
                continue
            if not math.isfinite(value):
                self._fail(name, "a finite number")
            yield name, value

    def at_least(self, low: float, *names: str) -> None:
        for name, value in self._numbers(names):
            if value < low:
                self._fail(name, f">= {_number(low)}")

    def above(self, low: float, *names: str) -> None:
        for name, value in self._numbers(names):
            if value <= low:
                self._fail(name, f"> {_number(low)}")

    def at_most(self, high: float, *names: str) -> None:
        for name, value in self._numbers(names):
            if value > high:
                self._fail(name, f"<= {_number(high)}")

    def between(self, low: float, high: float, *names: str) -> None:
        for name, value in self._numbers(names):
            if not low <= value <= high:
                self._fail(name, f"between {_number(low)} and {_number(high)}")

    def seed(self, *names: str) -> None:
        self.between(0, MAX_SEED, *names)

    def ordered(self, low_name: str, high_name: str, low: Any = None, high: Any = None) -> None:
        """`low_name` <= `high_name` (their effective values may be passed in, e.g. from a preset)."""
        low = self._value(low_name) if low is None else low
        high = self._value(high_name) if high is None else high
        if low is not None and high is not None and low > high:
            raise ValueError(f"{self.key(low_name)} ({low!r}) must be <= {self.key(high_name)} ({high!r})")

    def not_empty(self, *names: str) -> None:
        """A string that must say something, or a list (possibly empty) whose every entry must."""
        for name in names:
            value = self._value(name)
            if isinstance(value, tuple):
                if any(not str(v).strip() for v in value):
                    self._fail(name, "a list of non-empty names")
            elif value is not None and not value.strip():
                self._fail(name, "non-empty")

    def some(self, *names: str) -> None:
        """A list that must hold at least one entry."""
        for name in names:
            if not self._value(name):
                self._fail(name, "a list of at least one entry")

    def header_value(self, *names: str) -> None:
        """Sent as an HTTP header: printable ASCII only (no CR, LF or other control character)."""
        for name in names:
            value = self._value(name)
            if value is not None and not _HEADER_VALUE.fullmatch(value):
                self._fail(name, "printable ASCII (an HTTP header value: no line break or control character)")

    def token(self, *names: str) -> None:
        """A robots.txt product token (RFC 9309): letters, digits, '-' and '_'."""
        for name in names:
            value = self._value(name)
            if value is not None and not _TOKEN.fullmatch(value):
                self._fail(name, "a product token of letters, digits, '-' and '_' (RFC 9309)")


_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def control_character(text: str) -> str | None:
    """The first control character or line break of `text` (as `U+XXXX`), or None."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None
