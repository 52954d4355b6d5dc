"""The live progress line of a local run: samples done, rate, failures and ETA per stage."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from transforms.progress import read_progress


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressPrinter:
    """Polls the workers' progress files and prints one segment per stage.

    On a terminal the line is redrawn in place every `interval_s`; otherwise a line is written
    every `log_every_s`, so logs stay readable.
    """

    def __init__(
        self,
        progress_dir: str,
        stages: Sequence[str],
        stream: TextIO = sys.stderr,
        interval_s: float = 1.0,
        log_every_s: float = 10.0,
    ):
        self._dir = progress_dir
        self._stages = list(stages)
        self._stream = stream
        self._interval = interval_s
        self._log_every = log_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="winnow-progress", daemon=True)
        self._first_seen: dict[str, tuple[float, int]] = {}
        self._tty = getattr(stream, "isatty", lambda: False)()

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._print(final=True)

    def line(self) -> str:
        totals = read_progress(self._dir, self._stages)
        now = time.monotonic()
        parts = []
        upstream: int | None = None
        for stage in self._stages:
            done, failed = totals[stage]["done"], totals[stage]["failed"]
            start = self._first_seen.setdefault(stage, (now, done)) if done else None
            rate = (done - start[1]) / (now - start[0]) if start and now - start[0] > 0.5 else 0.0
            text = f"{stage} {done:,}"
            if rate:
                text += f" ({rate:,.0f}/s"
                if upstream is not None and upstream > done:
                    text += f", ETA {format_eta((upstream - done) / rate)}"
                text += ")"
            if failed:
                text += f" {failed:,} failed"
            parts.append(text)
            upstream = done
        return " | ".join(parts)

    def _loop(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(self._interval):
            if self._tty:
                self._print()
            elif time.monotonic() - last_log >= self._log_every:
                last_log = time.monotonic()
                self._print()

    def _print(self, final: bool = False) -> None:
        text = self.line()
        if self._tty:
            self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
