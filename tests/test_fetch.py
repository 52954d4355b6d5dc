"""HTTP fetching against a real loopback server: opt-out headers, redirects, limits, transport errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from transforms.fetch import Fetcher, FetchError, FetchOptions, is_opted_out

BODY = b"\xff\xd8" + b"x" * 5000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{hops - 1}" if hops > 1 else "/ok"
            self._reply(302, b"", [("Location", target)])
        elif path == "/loop":
            self._reply(302, b"", [("Location", "/loop")])
        elif path.startswith("/robots/"):
            self._reply(
                200, BODY, [("X-Robots-Tag", v) for v in path.split("/", 2)[2].replace("%20", " ").split("|")]
            )
        elif path == "/big-declared":
            self._reply(200, BODY, [], length=10**9)
        elif path == "/big-streamed":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/flaky/"):  # the first request for each path fails with 503
            seen = self.server.seen  # type: ignore[attr-defined]
            status = 200 if path in seen else 503
            seen.add(path)
            self._reply(status, BODY if status == 200 else b"busy", [])
        else:
            self._reply(200, BODY, [("Content-Type", "image/jpeg")])

    def _reply(
        self, status: int, body: bytes, headers: list[tuple[str, str]], length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if length is None:
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.seen = set()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def reason(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as err:
        fetcher.fetch(url)
    return err.value.reason


@pytest.mark.parametrize(
    ("values", "token", "opted_out"),
    [
        (["noai"], "winnow", True),
        (["noindex, nofollow"], "winnow", True),
        (["NoImageAI"], "winnow", True),
        (["winnow: noai"], "winnow", True),
        (["img2dataset: noai"], "winnow", False),  # addressed to another agent
        (["otherbot: noindex", "nofollow"], "winnow", False),
        (["nofollow", "winnow: noimageindex"], "winnow", True),
        (["unavailable_after: 25 Jun 2030 15:00:00 PST"], "winnow", False),
        ([], "winnow", False),
    ],
)
def test_x_robots_tag(values, token, opted_out):
    directives = FetchOptions().disallowed_header_directives
    assert is_opted_out(values, token, directives) is opted_out


def test_body_and_headers(server):
    result = Fetcher(FetchOptions(allow_private_networks=True)).fetch(f"{server}/image.jpg")
    assert result.data == BODY and result.http_status == 200 and result.content_type == "image/jpeg"


def test_opt_out_through_the_server(server):
    fetcher = Fetcher(FetchOptions(allow_private_networks=True))
    assert reason(fetcher, f"{server}/robots/noai") == "opted_out"
    assert reason(fetcher, f"{server}/robots/winnow:%20noimageai") == "opted_out"
    assert fetcher.fetch(f"{server}/robots/googlebot:%20noindex").data == BODY
    assert (
        Fetcher(FetchOptions(disallowed_header_directives=(), allow_private_networks=True))
        .fetch(f"{server}/robots/noai")
        .data
        == BODY
    )


def test_redirects(server):
    fetcher = Fetcher(FetchOptions(allow_private_networks=True))
    assert fetcher.fetch(f"{server}/redirect/3").data == BODY
    assert reason(fetcher, f"{server}/loop") == "too_many_redirects"


def test_size_cap(server):
    fetcher = Fetcher(FetchOptions(max_image_bytes=100_000, allow_private_networks=True))
    assert reason(fetcher, f"{server}/big-declared") == "too_large"
    assert reason(fetcher, f"{server}/big-streamed") == "too_large"


def test_retries_recover_from_a_5xx(server):
    assert (
        reason(Fetcher(FetchOptions(retries=0, allow_private_networks=True)), f"{server}/flaky/a")
        == "http_503"
    )
    assert (
        Fetcher(FetchOptions(retries=1, allow_private_networks=True)).fetch(f"{server}/flaky/b").data == BODY
    )


def test_transport_failures():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fetcher = Fetcher(FetchOptions(timeout=2, allow_private_networks=True))
    assert reason(fetcher, f"http://127.0.0.1:{port}/x.jpg") == "connection_error"
    assert reason(fetcher, "ftp://example.org/x.jpg") == "invalid_url"
    assert reason(fetcher, "not a url") == "invalid_url"
