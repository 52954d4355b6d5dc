"""HTTP fetching against a real loopback server: opt-out headers, redirects, limits, transport errors."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from tests.hostile import ReplyingHandler, gzip_bomb
from transforms.crawl.config import FetchOptions
from transforms.crawl.fetch import Fetcher, FetchError
from transforms.crawl.optouts import x_robots_tag_disallows

BODY = b"\xff\xd8" + b"x" * 5000


class _Handler(ReplyingHandler):
    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{hops - 1}" if hops > 1 else "/ok"
            self.reply(302, b"", [("Location", target)])
        elif path == "/loop":
            self.reply(302, b"", [("Location", "/loop")])
        elif path.startswith("/robots/"):
            self.reply(
                200, BODY, [("X-Robots-Tag", v) for v in path.split("/", 2)[2].replace("%20", " ").split("|")]
            )
        elif path == "/big-declared":
            self.reply(200, BODY, [], length=10**9)
        elif path == "/big-streamed":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/retry-after/"):  # 429 with Retry-After the first time, then the image
            times = self.server.times.setdefault(path, [])  # type: ignore[attr-defined]
            times.append(time.monotonic())
            if len(times) == 1:
                self.reply(429, b"slow down", [("Retry-After", path.split("/")[2])])
            else:
                self.reply(200, BODY, [])
        elif path.startswith("/not-found/"):
            self.server.times.setdefault(path, []).append(time.monotonic())  # type: ignore[attr-defined]
            self.reply(404, b"gone", [])
        elif path.startswith("/to-scheme/"):
            target = {
                "file": "file:///etc/passwd",
                "ftp": "ftp://127.0.0.1/x.jpg",
                "data": "data:image/png;base64,AA==",
            }
            self.reply(302, b"", [("Location", target[path.split("/")[2]])])
        elif path == "/gzip-bomb":  # 1 MB on the wire, 1 GiB once decoded
            self.reply(200, gzip_bomb(), [("Content-Encoding", "gzip"), ("Content-Type", "image/jpeg")])
        elif path.startswith("/flaky/"):  # the first request for each path fails with 503
            seen = self.server.seen  # type: ignore[attr-defined]
            status = 200 if path in seen else 503
            seen.add(path)
            self.reply(status, BODY if status == 200 else b"busy", [])
        elif path in ("/robots.txt", "/.well-known/tdmrep.json"):
            self.reply(404, b"no such file", [])
        else:
            self.reply(200, BODY, [("Content-Type", "image/jpeg")])


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading (a cut body) is what several tests want


@pytest.fixture(scope="module")
def httpd() -> Iterator[ThreadingHTTPServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.seen = set()  # type: ignore[attr-defined]
    httpd.times = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


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
    assert x_robots_tag_disallows(values, token, directives) is opted_out


def test_body_and_headers(server):
    result = Fetcher(FetchOptions(allow_private_networks=True)).fetch(f"{server}/image.jpg")
    assert result.data == BODY and result.http_status == 200 and result.content_type == "image/jpeg"


def test_opt_out_through_the_server(server):
    fetcher = Fetcher(FetchOptions(allow_private_networks=True))
    assert reason(fetcher, f"{server}/robots/noai") == "opted_out_x_robots_tag"
    assert reason(fetcher, f"{server}/robots/winnow:%20noimageai") == "opted_out_x_robots_tag"
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
    assert reason(fetcher, f"{server}/loop") == "redirect_loop"
    assert reason(fetcher, f"{server}/redirect/6") == "too_many_redirects"  # max_redirects 5
    assert Fetcher(FetchOptions(max_redirects=6, allow_private_networks=True)).fetch(f"{server}/redirect/6")
    with pytest.raises(ValueError, match="max_redirects"):
        FetchOptions(max_redirects=11)


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


def test_retry_after_is_honoured_and_capped(server, httpd):
    fetcher = Fetcher(FetchOptions(retries=1, retry_backoff=0, allow_private_networks=True))
    assert fetcher.fetch(f"{server}/retry-after/2").data == BODY
    first, second = httpd.times["/retry-after/2"]
    assert second - first >= 2.0  # the server saw the retry no sooner than it asked
    # A day's Retry-After is beyond crawl.max_retry_after: the sample fails at once, no retry.
    started = time.monotonic()
    with pytest.raises(FetchError, match="exceeds crawl.max_retry_after") as caught:
        fetcher.fetch(f"{server}/retry-after/86400")
    assert caught.value.reason == "http_429" and caught.value.retry_after == 86400
    assert len(httpd.times["/retry-after/86400"]) == 1 and time.monotonic() - started < 5


def test_404_is_never_retried(server, httpd):
    fetcher = Fetcher(FetchOptions(retries=3, retry_backoff=0, allow_private_networks=True))
    assert reason(fetcher, f"{server}/not-found/a") == "http_404"
    assert len(httpd.times["/not-found/a"]) == 1


@pytest.mark.parametrize("scheme", ["file", "ftp", "data"])
def test_redirects_to_other_schemes_are_refused(server, scheme):
    fetcher = Fetcher(FetchOptions(allow_private_networks=True))
    with pytest.raises(FetchError, match="non-http") as caught:
        fetcher.fetch(f"{server}/to-scheme/{scheme}")
    assert caught.value.reason == "invalid_url"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.org/a.jpg", "data:image/png;base64,AA=="]
)
def test_other_schemes_are_refused_before_any_connection(url):
    assert reason(Fetcher(FetchOptions()), url) == "invalid_url"


def test_a_gzip_bomb_is_cut_at_the_byte_cap_in_bounded_memory(server):
    fetcher = Fetcher(FetchOptions(max_image_bytes=10_000_000, allow_private_networks=True))
    gzip_bomb()  # built before measuring
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="body exceeds 10000000 bytes") as caught:
            fetcher.fetch(f"{server}/gzip-bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_large"
    # Decoded as it streams, a chunk at a time: far below the 1 GiB the body would inflate to.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
