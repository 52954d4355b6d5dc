"""A hostile web on loopback: one site per robots.txt behaviour, every path a way to hurt a crawler.

`HostileSite(robots=...)` serves, on its own port (so its own origin):

- `/robots.txt` as chosen: `rules` (disallows `/private/` for all and `/no-winnow/` for us, with
  an optional Crawl-delay), `deny` (`Disallow: /` for every agent), `error` (503), `missing`
  (404), `huge` (10 MB, the disallow rule past 500 KiB), `redirect` (three redirects to the
  rules), `html` (a web page), or `rules` with `tdmrep` rules in `/.well-known/tdmrep.json`;
- `/img/<kind>`: images, honest and hostile (`IMAGES`);
- `/hostile/<case>`: servers that misbehave (`serve_case`);
- `/outage/…`: 503 while `site.outage`, else an image; `/gone/…`: 404.

Every request path is logged in `site.requests`, so a test can prove what was never asked for.
"""

from __future__ import annotations

import functools
import io
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

# Our own group replaces `*` for us (RFC 9309 2.2.1), so it repeats /private/.
ROBOTS_RULES = (
    "User-agent: *\nDisallow: /private/\n\nUser-agent: winnow\nDisallow: /private/\nDisallow: /no-winnow/\n"
)
TDMREP_RULES = [
    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/policy"},
    {"location": "/*", "tdm-reservation": 0},
]


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _scene(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` and carries one empty IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _many_frame_gif(frames: int) -> bytes:
    """A 1x1 GIF of `frames` frames written by hand (Pillow would take minutes to write 100k)."""
    head = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    )
    return head + frame * frames + b"\x3b"


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored 96x64, shown 64x96
    return _encode(_scene(), "JPEG", exif=exif.tobytes())


@functools.cache
def images() -> dict[str, bytes]:
    """Image bodies by kind; `/img/<kind>` serves them."""
    scene = _scene()
    palette = scene.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    sixteen = Image.new("I;16", (96, 64))
    sixteen.frombytes((np.arange(96 * 64, dtype="<u2") * 10).tobytes())
    jpeg = _encode(scene, "JPEG")
    return {
        "ok.jpg": jpeg,
        "exif-rotated.jpg": _exif_rotated(),
        "cmyk.jpg": _encode(scene.convert("CMYK"), "JPEG"),
        "16bit.png": _encode(sixteen, "PNG"),
        "palette-alpha.png": _encode(palette, "PNG"),
        "1x1.png": _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "1x100000.png": _encode(Image.new("L", (1, 100_000), 128), "PNG"),
        "bomb-50000.png": _png_header(50_000, 50_000),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "random.bin": np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
        "frames-100k.gif": _many_frame_gif(100_000),
        "image.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000">'
        b'<rect width="4000" height="4000" fill="red"/></svg>',
    }


@functools.cache
def huge_robots_txt() -> bytes:
    """10 MB: a rule, comments, then a rule only a parser reading past 500 KiB would see."""
    padding = b"# " + b"x" * 998 + b"\n"
    return b"User-agent: *\nDisallow: /private/\n" + padding * 10_000 + b"Disallow: /\n"


@functools.cache
def gzip_bomb() -> bytes:
    """1 MiB on the wire, 1 GiB once decoded."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(1024)), packer.flush()])


class ReplyingHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler with quiet logs, `reply` and `client_gone`; tests' servers build on it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(
        self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = (), length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def client_gone(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class _Handler(ReplyingHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        site = self.server.site
        with site.lock:
            site.requests.append(self.path)
            site.times.setdefault(self.path, []).append(time.monotonic())
            site.active += 1
            site.max_active = max(site.max_active, site.active)
        try:
            self._route(site)
        finally:
            with site.lock:
                site.active -= 1

    def _route(self, site: HostileSite) -> None:
        path = self.path
        if path == "/robots.txt" or path.startswith("/robots-hop/"):
            site.serve_robots(self)
        elif path == "/.well-known/tdmrep.json":
            body = json.dumps(site.tdmrep).encode() if site.tdmrep is not None else b"missing"
            self.reply(200 if site.tdmrep is not None else 404, body, [("Content-Type", "application/json")])
        elif path.startswith("/img/"):
            self.reply(200, images()[path.rsplit("/", 1)[1]], [("Content-Type", "image/jpeg")])
        elif path.startswith("/hostile/"):
            serve_case(self, site, path.removeprefix("/hostile/"))
        elif path.startswith("/outage/") and site.outage:
            self.reply(503, b"service unavailable")
        elif path.startswith("/gone/"):
            self.reply(404, b"not found")
        else:  # /private/…, /no-winnow/…, /reserved/…, /free/…, /slow/…, /outage/…: an honest image
            if path.startswith("/slow/"):
                time.sleep(0.3)  # holds the connection so that concurrency shows on the server
            self.reply(200, images()["ok.jpg"], [("Content-Type", "image/jpeg")])


def _endless(handler: _Handler, site: HostileSite) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    block = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    while not handler.client_gone():
        handler.wfile.write(block)


def _trickle(handler: _Handler, byte: bytes, interval: float) -> None:
    """Sends `byte` every `interval` seconds until the client hangs up (at most 600 times)."""
    for _ in range(600):
        if handler.client_gone():
            return
        handler.wfile.write(byte)
        handler.wfile.flush()
        time.sleep(interval)


def _drip(handler: _Handler, site: HostileSite) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    _trickle(handler, b"x", 2.0)  # a body byte every 2 s: each read is quick, the whole never ends


def _drip_headers(handler: _Handler, site: HostileSite) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    _trickle(handler, b"X", 0.5)  # a header byte every 0.5 s: the headers never end


def _silent(handler: _Handler, site: HostileSite) -> None:
    for _ in range(600):  # reads the request, never answers
        if handler.client_gone():
            return
        time.sleep(0.1)


def _short(handler: _Handler, site: HostileSite) -> None:
    """Promises the whole image, sends 100 bytes and hangs up."""
    handler.close_connection = True
    handler.reply(200, images()["ok.jpg"][:100], length=len(images()["ok.jpg"]))


def _flaky(handler: _Handler, site: HostileSite) -> None:
    first = len(site.times[handler.path]) == 1
    handler.reply(503 if first else 200, b"busy" if first else images()["ok.jpg"])


def _redirect(target: Callable[[_Handler], str]) -> Callable[[_Handler, HostileSite], None]:
    def serve(handler: _Handler, _: HostileSite) -> None:
        handler.reply(302, b"", [("Location", target(handler))])

    return serve


def _chain(handler: _Handler) -> str:
    hops = int(handler.path.rsplit("/", 1)[1])
    return f"/hostile/chain/{hops - 1}" if hops > 1 else "/img/ok.jpg"


CASES: dict[str, Callable[[_Handler, HostileSite], None]] = {
    "chain": _redirect(_chain),
    "loop-a": _redirect(lambda h: "/hostile/loop-b"),
    "loop-b": _redirect(lambda h: "/hostile/loop-a"),
    "to-private": _redirect(lambda h: "/private/a.jpg"),
    "to-canary": _redirect(lambda h: h.server.site.canary),  # a URL the test sets: an inner address
    "to-metadata": _redirect(lambda h: "http://169.254.169.254/latest/meta-data/"),
    "to-file": _redirect(lambda h: "file:///etc/passwd"),
    "to-ftp": _redirect(lambda h: "ftp://127.0.0.1/a.jpg"),
    "to-data": _redirect(lambda h: "data:image/png;base64,AA=="),
    "huge-declared": lambda h, s: h.reply(200, b"", [("Content-Type", "image/jpeg")], length=10 * 10**9),
    "endless": _endless,
    "drip": _drip,
    "silent": _silent,
    "drip-headers": _drip_headers,
    "short": _short,
    "gzip-bomb": lambda h, s: h.reply(200, gzip_bomb(), [("Content-Encoding", "gzip")]),
    "retry-after-2": lambda h, s: _retry_after(h, s, "2"),
    "retry-after-86400": lambda h, s: _retry_after(h, s, "86400"),
    "flaky": _flaky,
    "tdm-header": lambda h, s: h.reply(200, images()["ok.jpg"], [("tdm-reservation", "1")]),
    "tdm-header-0": lambda h, s: h.reply(200, images()["ok.jpg"], [("tdm-reservation", "0")]),
    "content-usage": lambda h, s: h.reply(200, images()["ok.jpg"], [("Content-Usage", "train-ai=n")]),
    "content-usage-other": lambda h, s: h.reply(
        200, images()["ok.jpg"], [("Content-Usage", "search=n, train-ai=y")]
    ),
    "x-robots-noai": lambda h, s: h.reply(200, images()["ok.jpg"], [("X-Robots-Tag", "NoAI")]),
    "x-robots-ours": lambda h, s: h.reply(
        200,
        images()["ok.jpg"],
        [("X-Robots-Tag", "otherbot: noindex"), ("X-Robots-Tag", "winnow: noimageai")],
    ),
    "x-robots-theirs": lambda h, s: h.reply(200, images()["ok.jpg"], [("X-Robots-Tag", "otherbot: noai")]),
}


def _retry_after(handler: _Handler, site: HostileSite, seconds: str) -> None:
    if len(site.times[handler.path]) == 1:
        handler.reply(429, b"slow down", [("Retry-After", seconds)])
    else:
        handler.reply(200, images()["ok.jpg"], [("Content-Type", "image/jpeg")])


def serve_case(handler: _Handler, site: HostileSite, case: str) -> None:
    name = case.split("/", 1)[0]
    if name not in CASES:
        handler.reply(404, b"no such case")
        return
    CASES[name](handler, site)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: HostileSite

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up on an endless body is the point


class HostileSite:
    """One loopback origin; `robots` picks how its robots.txt answers (the module docstring)."""

    def __init__(
        self,
        robots: str = "rules",
        crawl_delay: float | None = None,
        tdmrep: list | None = None,
        host: str = "127.0.0.1",
    ):
        self.robots = robots
        self.crawl_delay = crawl_delay
        self.tdmrep = tdmrep
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.times: dict[str, list[float]] = {}
        self.active = 0
        self.max_active = 0
        #: While true, `/outage/…` answers 503.
        self.outage = False
        #: Where `/hostile/to-canary` redirects.
        self.canary = "http://127.0.0.1:9/"
        self._server = _Server((host, 0), _Handler)
        self._server.site = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base = f"http://{host}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve_robots(self, handler: _Handler) -> None:
        rules = ROBOTS_RULES + (f"Crawl-delay: {self.crawl_delay:g}\n" if self.crawl_delay else "")
        text = {"Content-Type": "text/plain"}
        if self.robots == "rules" or (self.robots == "redirect" and handler.path == "/robots-hop/0"):
            handler.reply(200, rules.encode(), list(text.items()))
        elif self.robots == "redirect":
            hop = 3 if handler.path == "/robots.txt" else int(handler.path.rsplit("/", 1)[1])
            handler.reply(301, b"", [("Location", f"/robots-hop/{hop - 1}")])
        elif self.robots == "deny":
            handler.reply(200, b"User-agent: *\nDisallow: /\n", list(text.items()))
        elif self.robots == "error":
            handler.reply(503, b"down for maintenance")
        elif self.robots == "missing":
            handler.reply(404, b"not found")
        elif self.robots == "huge":
            handler.reply(200, huge_robots_txt(), list(text.items()))
        elif self.robots == "html":
            page = b"<!doctype html><html><body><h1>Welcome</h1><p>Disallow: /</p></body></html>"
            handler.reply(200, page, [("Content-Type", "text/html")])
        else:
            raise ValueError(f"unknown robots behaviour {self.robots!r}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
