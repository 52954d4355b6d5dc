"""The live progress line of a local run: samples done, rate, rejections, failures and ETA per stage.

A stage's rate is measured over its last `window_s` seconds; its ETA (the samples the stage before
it has passed on and it has not yet done, at that rate) is shown only once the stage has been
measured for `eta_after_s`: a crawl's first second, its threads still connecting, would promise
hours. Dropped samples are counted as the summary counts them, `rejected` or `failed`.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable, Sequence
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
        window_s: float = 10.0,
        eta_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._dir = progress_dir
        self._stages = list(stages)
        self._stream = stream if stream is not None else sys.stderr  # the stderr of now, not of import
        self._interval = interval_s
        self._log_every = log_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="winnow-progress", daemon=True)
        self._history: dict[str, collections.deque[tuple[float, int]]] = {}
        self._window = window_s
        self._eta_after = eta_after_s
        self._clock = clock
        self._started: dict[str, float] = {}
        self._tty = getattr(self._stream, "isatty", lambda: False)()

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write(self.line(final=True), final=True)

    def line(self, final: bool = False) -> str:
        totals = read_progress(self._dir, self._stages)
        now = self._clock()
        parts = []
        upstream: int | None = None
        for stage in self._stages:
            done = totals[stage]["done"]
            rate = self._rate(stage, now, done)
            measured = now - self._started.get(stage, now)
            if final and stage in self._started:
                rate = done / measured if measured > 0.5 else 0.0
            text = f"{stage} {done:,}"
            if rate:
                text += f" ({rate:,.0f}/s"
                if not final and measured >= self._eta_after and upstream is not None and upstream > done:
                    text += f", ETA {format_eta((upstream - done) / rate)}"
                text += ")"
            dropped = [f"{totals[stage][s]:,} {s}" for s in ("rejected", "failed") if totals[stage][s]]
            if dropped:
                text += " " + ", ".join(dropped)
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
        last_log = self._clock()
        while not self._stop.wait(self._interval):
            text = self.line()  # polled every interval so rates are measured even between log lines
            if self._tty:
                self._write(text)
            elif self._clock() - last_log >= self._log_every:
                last_log = self._clock()
                self._write(text)

    def _write(self, text: str, final: bool = False) -> None:
        if self._tty:
            self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
