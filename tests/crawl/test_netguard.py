"""The SSRF guard: which addresses the crawl refuses, and that it refuses them on the socket."""

from __future__ import annotations

import http.server
import ipaddress
import threading

import pytest
import urllib3

from transforms.crawl.config import FetchOptions
from transforms.crawl.fetch import Fetcher, FetchError
from transforms.crawl.netguard import ForbiddenAddress, forbidden_reason
from transforms.crawl.watchdog import watched_pool_classes

FORBIDDEN = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata services
    "100.64.0.1": "shared address space (CGNAT)",
    "224.0.0.1": "multicast",
    "0.0.0.0": "unspecified",
    "240.0.0.1": "private",  # reserved; Python files 240/4 under is_private
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:169.254.169.254": "link-local",
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    "::127.0.0.1": "loopback",  # IPv4-compatible
}
PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "::ffff:8.8.8.8", "2002:808:808::", "2001:4860:4860::8888"]


@pytest.mark.parametrize(("address", "reason"), sorted(FORBIDDEN.items()))
def test_forbidden_addresses(address, reason):
    found = forbidden_reason(ipaddress.ip_address(address))
    assert found is not None and found.startswith(reason)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


class _Counting(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counting.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def loopback_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


# The same loopback address, spelled as crawled URLs spell it to slip past a check of the host name.
SPELLINGS = ["127.0.0.1", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "localhost"]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_loopback_is_refused_before_a_request(loopback_server, host):
    manager = urllib3.PoolManager()
    manager.pool_classes_by_scheme = watched_pool_classes(guarded=True)
    before = len(_Counting.seen)
    with pytest.raises(ForbiddenAddress, match="loopback"):
        manager.request("GET", f"http://{host}:{loopback_server}/{host}", retries=False)
    assert len(_Counting.seen) == before  # the server never saw the request


def test_without_the_guard_the_same_server_answers(loopback_server):
    response = urllib3.PoolManager().request(
        "GET", f"http://2130706433:{loopback_server}/open", retries=False
    )
    assert response.status == 200 and _Counting.seen[-1] == "/open"


class _Redirecting(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Redirecting.seen.append(self.path)
        target = {"/to-loopback": "http://127.0.0.1:{port}/inner", "/to-metadata": "http://169.254.169.254/"}
        if self.path not in target:  # robots.txt, tdmrep.json
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(302)
        self.send_header("Location", target[self.path].format(port=self.server.inner_port))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path", ["/to-loopback", "/to-metadata"])
def test_a_redirect_hop_is_checked_like_the_first(loopback_server, monkeypatch, path):
    # No public address exists here: 127.0.0.2 stands in for a public server that redirects inward.
    import transforms.crawl.netguard as netguard

    real = netguard.forbidden_reason
    monkeypatch.setattr(netguard, "forbidden_reason", lambda ip: None if str(ip) == "127.0.0.2" else real(ip))
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Redirecting)
    server.inner_port = loopback_server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetcher = Fetcher(FetchOptions(timeout=2, deadline=4))
        before = len(_Counting.seen)
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(f"http://127.0.0.2:{server.server_address[1]}{path}")
        assert caught.value.reason == "forbidden_address"
        assert _Redirecting.seen[-1] == path  # the first hop was made, the second refused
        assert len(_Counting.seen) == before
    finally:
        server.shutdown()
        server.server_close()


def test_the_crawl_refuses_loopback_unless_allowed(loopback_server):
    url = f"http://127.0.0.1:{loopback_server}/image"
    with pytest.raises(FetchError) as caught:
        Fetcher(FetchOptions()).fetch(url)
    assert caught.value.reason == "forbidden_address" and "127.0.0.1 is loopback" in str(caught.value)
    assert Fetcher(FetchOptions(allow_private_networks=True)).fetch(url).data == b"ok"
