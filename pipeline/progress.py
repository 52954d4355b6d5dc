"""The live progress line of a local run: samples done, rate, failures and ETA per stage."""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from transforms.common.progress import read_progress


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
        stream: TextIO | None = None,
        interval_s: float = 1.0,
        log_every_s: float = 10.0,
    ):
        self._dir = progress_dir
        self._stages = list(stages)
        self._stream = stream if stream is not None else sys.stderr  # the stderr of now, not of import
        self._interval = interval_s
        self._log_every = log_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="winnow-progress", daemon=True)
        self._history: dict[str, collections.deque[tuple[float, int]]] = {}
        self._window = 10.0
        self._started: dict[str, float] = {}
        self._tty = getattr(stream, "isatty", lambda: False)()

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write(self.line(final=True), final=True)

    def line(self, final: bool = False) -> str:
        totals = read_progress(self._dir, self._stages)
        now = time.monotonic()
        parts = []
        upstream: int | None = None
        for stage in self._stages:
            done, failed = totals[stage]["done"], totals[stage]["failed"]
            rate = self._rate(stage, now, done)
            if final and stage in self._started:
                start = self._started[stage]
                rate = done / (now - start) if now - start > 0.5 else 0.0
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

    def _rate(self, stage: str, now: float, done: int) -> float:
        """Samples per second over the last `window_s` seconds."""
        if done and stage not in self._started:
            self._started[stage] = now
        history = self._history.setdefault(stage, collections.deque())
        history.append((now, done))
        while len(history) > 2 and now - history[1][0] >= self._window:
            history.popleft()
        (start, first), (end, last) = history[0], history[-1]
        return (last - first) / (end - start) if end - start > 0.5 else 0.0

    def _loop(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(self._interval):
            text = self.line()  # polled every interval so rates are measured even between log lines
            if self._tty:
                self._write(text)
            elif time.monotonic() - last_log >= self._log_every:
                last_log = time.monotonic()
                self._write(text)

    def _write(self, text: str, final: bool = False) -> None:
        if self._tty:
            self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
