"""Loopback HTTP/1.1 server for a generated sample-web corpus.

Contract:

* Serves ``<out_dir>/files`` under the URL layout of :mod:`sampleweb.layout`; the path alone
  decides the answer (normal image, 404, 500, slow trickle, truncated body, HTML served as
  ``image/jpeg``, ``X-Robots-Tag`` opt-out, oversize body).  ``/pages/NNNN.html`` serves the
  HTML pages ``sampleweb.pages.write_pages`` wrote.  Any other path is a 404.
* HTTP/1.1 with keep-alive: every response carries ``Content-Length`` and the format's
  ``Content-Type`` and is written with a single ``sendall`` (except the slow route and the zero
  padding of the oversize route, which are streamed); ``TCP_NODELAY`` is set.  ``GET`` and
  ``HEAD`` are supported.  Request logging is silenced.
* File bytes are cached in memory on first use (LRU bounded by ``cache_bytes``).
* The slow route sends its headers at once, then one body byte every
  :data:`~sampleweb.layout.SLOW_INTERVAL_S` seconds for :data:`~sampleweb.layout.SLOW_DURATION_S`
  seconds, then stays silent for :data:`SLOW_STALL_S` seconds before closing, so that clients with
  a read timeout and clients with a total deadline both give up.  It stops quietly when the
  client disconnects or the server stops.
* :class:`SampleWebServer` runs the server on a daemon thread of the current process (a context
  manager exposing ``base_url``); :func:`serve_in_subprocess` runs it in a separate Python
  process with its own GIL, for benchmarks, that stops when the process that started it ends (on
  any path, SIGKILL included: its stdin closes); ``python -m sampleweb.server DIR --port P`` runs it
  in the foreground and prints ``LISTENING <base_url>`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from sampleweb.layout import (
    OVERSIZE_BYTES,
    SLOW_DECLARED_BYTES,
    SLOW_DURATION_S,
    SLOW_INTERVAL_S,
    Route,
    resolve,
)

log = logging.getLogger(__name__)

SLOW_STALL_S = 60.0
DEFAULT_CACHE_BYTES = 2 * 1024**3
READY_PREFIX = "LISTENING "
_HTML_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>Image not available</title></head>\n"
    b"<body><h1>Image not available</h1><p>The image you requested has moved. "
    b'<a href="/">Back to the gallery</a></p></body></html>\n'
)
_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}
_PAD_CHUNK = memoryview(bytes(1024 * 1024))
_IDLE_TIMEOUT_S = 120.0


class _FileCache:
    """Thread-safe LRU of file bytes, bounded by total size."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(name)
            if data is not None:
                self._entries.move_to_end(name)
                return data
        try:
            data = (self._root / name).read_bytes()
        except FileNotFoundError:
            return None
        with self._lock:
            if name not in self._entries and len(data) <= self._max_bytes:
                self._entries[name] = data
                self._size += len(data)
                while self._size > self._max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._size -= len(evicted)
        return data


_PAGE = re.compile(r"^/pages/([0-9]{4}\.html)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], root: Path, cache_bytes: int) -> None:
        super().__init__(address, _Handler)
        self.files = _FileCache(root / "files", cache_bytes)
        self.pages = root / "pages"  # HTML pages, once `sampleweb.pages.write_pages` has run
        self.stopping = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up (a crawler's timeout, a closed keep-alive) are normal here."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _head(status: int, content_type: str, length: int, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
    ]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = _IDLE_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        """Request logging is silenced."""

    def do_GET(self) -> None:
        self._answer(head_only=False)

    def do_HEAD(self) -> None:
        self._answer(head_only=True)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        head_only: bool,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        headers = list(extra)
        if self.close_connection:
            headers.append(("Connection", "close"))
        head = _head(status, content_type, len(body), headers)
        self.connection.sendall(head if head_only else head + body)

    def _answer(self, head_only: bool) -> None:
        page = _PAGE.match(self.path)
        if page is not None:
            path = self.server.pages / page.group(1)
            if path.is_file():
                self._send(200, "text/html; charset=utf-8", path.read_bytes(), head_only)
                return
        route = resolve(self.path)
        if route is None or route.kind == "http_404":
            self._send(404, "text/plain", b"not found\n", head_only)
        elif route.kind == "http_500":
            self._send(500, "text/plain", b"internal server error\n", head_only)
        elif route.kind == "html":
            self._send(200, "image/jpeg", _HTML_BODY, head_only)
        elif route.kind == "slow":
            self._trickle(route, head_only)
        else:
            self._serve_file(route, head_only)

    def _serve_file(self, route: Route, head_only: bool) -> None:
        data = self.server.files.get(route.name)
        if data is None:
            self._send(404, "text/plain", b"not found\n", head_only)
        elif route.kind == "truncated":
            self._send(200, route.content_type, data[: len(data) // 2], head_only)
        elif route.kind == "noai":
            self._send(200, route.content_type, data, head_only, [("X-Robots-Tag", route.robots or "noai")])
        elif route.kind == "oversize":
            self._send_padded(route, data, head_only)
        else:
            self._send(200, route.content_type, data, head_only)

    def _send_padded(self, route: Route, data: bytes, head_only: bool) -> None:
        """The image followed by zero bytes up to :data:`OVERSIZE_BYTES` (decoders ignore the tail)."""
        total = max(OVERSIZE_BYTES, len(data))
        self.connection.sendall(_head(200, route.content_type, total) + (b"" if head_only else data))
        remaining = 0 if head_only else total - len(data)
        while remaining > 0:
            chunk = _PAD_CHUNK[: min(remaining, len(_PAD_CHUNK))]
            self.connection.sendall(chunk)
            remaining -= len(chunk)

    def _client_gone(self) -> bool:
        """True once the client has closed its end (readable with no data pending)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""

    def _trickle(self, route: Route, head_only: bool) -> None:
        """Headers now, then one byte per interval, then silence; stop when the client leaves."""
        stopping = self.server.stopping
        try:
            self.connection.sendall(_head(200, route.content_type, SLOW_DECLARED_BYTES))
            started = time.monotonic()
            while not head_only and not stopping.wait(SLOW_INTERVAL_S) and not self._client_gone():
                elapsed = time.monotonic() - started
                if elapsed >= SLOW_DURATION_S + SLOW_STALL_S:
                    break
                if elapsed < SLOW_DURATION_S:
                    self.connection.sendall(b"\0")
        except OSError:
            log.debug("slow route: client went away")
        finally:
            self.close_connection = True


class SampleWebServer:
    """The sample-web server on a background thread of this process.

    ``with SampleWebServer(out_dir) as srv: fetch(srv.base_url + path)``
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._root = Path(out_dir)
        self._host = host
        self._port = port
        self._cache_bytes = cache_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> SampleWebServer:
        if not (self._root / "files").is_dir():
            raise FileNotFoundError(f"{self._root} has no files/ directory; generate a corpus first")
        self._server = _Server((self._host, self._port), self._root, self._cache_bytes)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        log.info("sample web serving %s at %s", self._root, self.base_url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server, self._thread = None, None

    def __enter__(self) -> SampleWebServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _read_ready_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"sample-web server did not start within {timeout} s")
    line = proc.stdout.readline()
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"sample-web server failed to start (exit code {proc.poll()}): {line!r}")
    return line[len(READY_PREFIX) :].strip()


def _wait_connectable(base_url: str, timeout: float) -> None:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def serve_in_subprocess(
    out_dir: str | os.PathLike[str],
    port: int = 0,
    host: str = "127.0.0.1",
    startup_timeout: float = 30.0,
) -> Iterator[str]:
    """Run the server in a separate Python process; yields its base URL, terminates it on exit."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    command = [
        sys.executable,
        "-m",
        "sampleweb.server",
        os.fspath(out_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    # The server reads its stdin until it ends: when this process ends, on any path (SIGKILL too),
    # the pipe closes and the server stops (`--stop-at-eof`).
    command.append("--stop-at-eof")
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        base_url = _read_ready_line(proc, startup_timeout)
        _wait_connectable(base_url, startup_timeout)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _stop_at_eof(stop: threading.Event) -> None:
    """Sets `stop` once stdin ends: the process holding its other end has closed it or died. It
    reads the file descriptor itself: a daemon thread blocked inside `sys.stdin`'s buffered reader
    holds that reader's lock, which the interpreter needs at exit (a fatal error on SIGTERM)."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sampleweb.server DIR [--host H] [--port P] [--cache-mb M]``."""
    parser = argparse.ArgumentParser(description="Serve a Winnow sample-web corpus over loopback HTTP.")
    parser.add_argument("out_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache-mb", type=int, default=DEFAULT_CACHE_BYTES // 1024**2)
    parser.add_argument(
        "--stop-at-eof",
        action="store_true",
        help="stop when stdin ends (the process that started it is gone)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    if args.stop_at_eof:
        threading.Thread(target=_stop_at_eof, args=(stop,), name="stdin-watch", daemon=True).start()
    with SampleWebServer(args.out_dir, args.host, args.port, args.cache_mb * 1024**2) as server:
        sys.stdout.write(f"{READY_PREFIX}{server.base_url}\n")
        sys.stdout.flush()
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            log.info("interrupted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
