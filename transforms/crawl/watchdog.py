"""Deadline watchdog: a server that drips its response headers cannot hold a crawl thread.

A read timeout bounds each wait for bytes, not the whole: a server that sends one header byte every
few seconds keeps `http.client` reading its status line and headers for hours, and a run that
waits for that thread never ends (img2dataset's hangs at the end of runs). The fetcher bounds the
body itself, between reads; the headers are read inside urllib3, so the connection classes here
hand their socket to a `Watchdog` while they wait for the response. Past the fetch's deadline the
watchdog shuts the socket down, the blocked read returns at once, and the fetch fails as a timeout.

`deadline_scope(t)` sets the deadline (a `time.monotonic()` instant) for the calling thread's
requests; the pool classes (`watched_pool_classes`) do the rest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from transforms.crawl.netguard import GuardedHTTPConnection, GuardedHTTPSConnection

_local = threading.local()


class Watchdog:
    """One daemon thread that shuts down sockets whose deadline has passed."""

    def __init__(self, tick: float = 0.25):
        self._tick = tick
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, sock: socket.socket, deadline: float) -> Iterator[None]:
        key = id(sock)
        with self._lock:
            self._watched[key] = (deadline, sock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="winnow-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                expired = [key for key, (deadline, _) in self._watched.items() if deadline <= now]
                socks = [self._watched.pop(key)[1] for key in expired]
            for sock in socks:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Requests made by this thread inside the block are cut at `deadline` (monotonic seconds)."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        yield
    finally:
        _local.deadline = previous


class _Watched:
    """`getresponse` of urllib3's connections, under the watchdog while the headers arrive."""

    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_local, "deadline", None)
        if deadline is None or self.sock is None:
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]
        with WATCHDOG.watch(self.sock, deadline):
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTP(_Watched, HTTPConnection):
    pass


class _HTTPS(_Watched, HTTPSConnection):
    pass


class _GuardedHTTP(_Watched, GuardedHTTPConnection):
    pass


class _GuardedHTTPS(_Watched, GuardedHTTPSConnection):
    pass


def _pool_classes(http: type, https: type) -> dict[str, type]:
    return {
        "http": type("WatchedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("WatchedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }


_POOLS = {True: _pool_classes(_GuardedHTTP, _GuardedHTTPS), False: _pool_classes(_HTTP, _HTTPS)}


def watched_pool_classes(guarded: bool) -> dict[str, type]:
    """`PoolManager.pool_classes_by_scheme` whose connections are watched (and SSRF-guarded)."""
    return dict(_POOLS[guarded])
