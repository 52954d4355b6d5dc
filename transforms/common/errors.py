"""Errors every stage may raise about what it was given, and how they are shown."""

from __future__ import annotations


class InputError(ValueError):
    """An input that cannot be read; the message names the file (and row or column).

    The CLI turns it into exit status 2 and one line naming what was wrong.
    """


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
