"""Per-host politeness: at most `max_per_host` requests at once and `delay` seconds between starts.

`HostThrottle.slot(host, delay)` is a context manager held for the whole of one request (headers
and body). It waits until the host has a free slot and its last request started at least `delay`
seconds ago, and returns how long it waited, so that waiting is not charged to the request's own
deadline. The crawl passes `max(crawl.min_host_delay, min(Crawl-delay, crawl.max_crawl_delay))`.

The limits hold per worker process: every DoFn instance of a process shares one throttle. A job
on N workers may send a host N times as much; a crawl of one large site should run with few
workers or a larger delay.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_PRUNE_ABOVE = 10_000


@dataclasses.dataclass
class _Host:
    active: int = 0
    waiting: int = 0
    next_start: float = 0.0


class HostThrottle:
    """Thread-safe per-host concurrency cap and minimum interval between request starts."""

    def __init__(self, max_per_host: int, clock: Callable[[], float] = time.monotonic):
        self._max_per_host = max_per_host or None  # 0: no cap
        self._clock = clock
        self._cond = threading.Condition()
        self._hosts: dict[str, _Host] = {}

    @contextmanager
    def slot(self, host: str, delay: float = 0.0) -> Iterator[float]:
        started = self._clock()
        with self._cond:
            state = self._hosts.setdefault(host, _Host())
            while True:
                now = self._clock()
                free = self._max_per_host is None or state.active < self._max_per_host
                if free and now >= state.next_start:
                    break
                state.waiting += 1
                self._cond.wait(state.next_start - now if free else None)
                state.waiting -= 1
            state.active += 1
            state.next_start = now + delay
        try:
            yield now - started
        finally:
            with self._cond:
                state.active -= 1
                if len(self._hosts) > _PRUNE_ABOVE:
                    self._prune(now)
                self._cond.notify_all()

    def _prune(self, now: float) -> None:
        """Forgets hosts nobody uses or waits for whose delay has passed (as good as a fresh state)."""
        for host in [
            h for h, s in self._hosts.items() if not (s.active or s.waiting) and s.next_start <= now
        ]:
            del self._hosts[host]
