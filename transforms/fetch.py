"""Fetch one image over HTTP(S): pure helpers, no Beam.

`Fetcher.fetch(url)` returns the body bytes or raises `FetchError` whose `reason` is the status
reason code recorded for the sample:

| reason | when |
|---|---|
| `invalid_url` | not an absolute http(s) URL |
| `http_<code>` | the final response is not 2xx (after at most 5 redirects) |
| `too_many_redirects` | more than 5 redirects |
| `timeout` | connect or read timeout (`timeout`), or the whole fetch outlived `deadline` |
| `too_large` | Content-Length or the streamed body exceeds `max_image_bytes` |
| `opted_out` | an `X-Robots-Tag` directive in `disallowed_header_directives`, for all agents or ours |
| `forbidden_address` | the host, or a redirect's, resolves only to non-public addresses |
| `connection_error`, `dns_error`, `ssl_error` | the transport failed |

The fetcher keeps one keep-alive connection pool per host, shared by all threads of a worker.
Unless `allow_private_networks`, every connection it opens, on every redirect hop, goes through
the SSRF guard (`transforms/netguard.py`), which checks the address it connects to.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import logging
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as Urllib3Timeout,
)

from transforms.netguard import ForbiddenAddress, guard_pool_manager

LOG = logging.getLogger(__name__)
_MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_RETRYABLE = {"timeout", "connection_error", "http_500", "http_502", "http_503", "http_504", "http_429"}


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """The HTTP keys of the `crawl` config section (img2dataset's names where it has them)."""

    #: Connect and per-read timeout in seconds.
    timeout: float = 10.0
    #: Total seconds one image may take, redirects and body included.
    deadline: float = 30.0
    #: Extra attempts after a timeout, connection error, 429 or 5xx (never after a 404 or other 4xx).
    retries: int = 0
    #: Wait before retry n (from 0): `retry_backoff * 2**n` seconds, or the server's Retry-After
    #: when that is longer.
    retry_backoff: float = 1.0
    #: Longest Retry-After honoured, in seconds; a server asking for longer fails the sample
    #: (its reason stays `http_429` / `http_503`) instead of holding a download thread.
    max_retry_after: float = 60.0
    #: Largest body accepted, in bytes.
    max_image_bytes: int = 10_000_000
    #: Our token in the User-Agent and in `X-Robots-Tag: <token>: <directives>` matching.
    user_agent_token: str = "winnow"
    #: X-Robots-Tag directives that opt an image out (img2dataset's defaults).
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    #: Let the crawl connect to loopback, private, link-local and other non-public addresses
    #: (`transforms/netguard.py`); only for crawling one's own network or the loopback sample web.
    allow_private_networks: bool = False

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.deadline <= 0:
            raise ValueError("crawl.timeout and crawl.deadline must be positive")
        if self.retries < 0 or self.max_image_bytes <= 0:
            raise ValueError("crawl.retries must be >= 0 and crawl.max_image_bytes > 0")
        if self.retry_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("crawl.retry_backoff and crawl.max_retry_after must be >= 0")


class FetchError(Exception):
    """A fetch that failed; `reason` is the status reason code."""

    def __init__(
        self, reason: str, message: str, http_status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status
        #: Seconds the server asked us to wait (Retry-After of a 429 or 503), if it said.
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class FetchResult:
    data: bytes
    http_status: int
    content_type: str | None


def is_opted_out(header_values: Iterable[str], agent_token: str | None, directives: Iterable[str]) -> bool:
    """True if an X-Robots-Tag value disallows use, for every agent or for `agent_token`.

    Accepts both `noai, noimageai` and the `agent: noai` form, as img2dataset does.
    """
    disallowed = {d.strip().lower() for d in directives}
    token = agent_token.strip().lower() if agent_token else None
    for value in header_values:
        agent, sep, rest = value.partition(":")
        named = agent.strip().lower() if sep else None
        listed = {d.strip().lower() for d in (rest if sep else value).split(",")}
        if (named is None or named == token) and listed & disallowed:
            return True
    return False


class Fetcher:
    """Thread-safe image fetcher over a shared urllib3 pool."""

    def __init__(self, options: FetchOptions, pool_size: int = 64):
        self._options = options
        self._pool = urllib3.PoolManager(num_pools=256, maxsize=pool_size, block=False)
        if not options.allow_private_networks:
            guard_pool_manager(self._pool)  # every connection, redirects included, to public addresses only
        self._headers = {
            "User-Agent": f"Mozilla/5.0 (compatible; {options.user_agent_token}; image-text dataset crawler)",
            "Accept": "image/avif,image/webp,image/*;q=0.9,*/*;q=0.5",
        }
        self._retry = urllib3.Retry(
            total=None, connect=0, read=0, status=0, other=0, redirect=_MAX_REDIRECTS, raise_on_redirect=True
        )

    def fetch(self, url: str) -> FetchResult:
        """Fetches `url`, retrying transient failures `retries` times."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FetchError("invalid_url", f"not an absolute http(s) URL: {url[:200]!r}")
        options = self._options
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except FetchError as err:
                if attempt >= options.retries or err.reason not in _RETRYABLE:
                    raise
                wait = options.retry_backoff * 2**attempt
                if err.retry_after is not None:
                    if err.retry_after > options.max_retry_after:
                        raise FetchError(
                            err.reason,
                            f"{err}; Retry-After {err.retry_after:g} s exceeds crawl.max_retry_after "
                            f"{options.max_retry_after:g} s",
                            err.http_status,
                            err.retry_after,
                        ) from err
                    wait = max(wait, err.retry_after)
                time.sleep(wait)  # exponential backoff: a struggling server is not hammered
                attempt += 1

    def _fetch_once(self, url: str) -> FetchResult:
        options = self._options
        deadline = time.monotonic() + options.deadline
        timeout = urllib3.Timeout(connect=options.timeout, read=options.timeout)
        try:
            response = self._pool.request(
                "GET", url, headers=self._headers, timeout=timeout, retries=self._retry, preload_content=False
            )
        except MaxRetryError as err:
            raise _transport_error(err.reason or err) from err
        except (HTTPError, ValueError) as err:
            raise _transport_error(err) from err
        try:
            return self._read(response, deadline)
        finally:
            response.release_conn()

    def _read(self, response: urllib3.BaseHTTPResponse, deadline: float) -> FetchResult:
        options = self._options
        status = response.status
        if not 200 <= status < 300:
            retry_after = _retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            response.close()
            raise FetchError(f"http_{status}", f"HTTP {status}", status, retry_after)
        headers = response.headers
        if options.disallowed_header_directives and is_opted_out(
            headers.getlist("X-Robots-Tag"), options.user_agent_token, options.disallowed_header_directives
        ):
            response.close()
            raise FetchError("opted_out", "X-Robots-Tag disallows use of this image", status)
        length = headers.get("Content-Length")
        if length and length.isdigit() and int(length) > options.max_image_bytes:
            response.close()
            raise FetchError(
                "too_large", f"Content-Length {length} exceeds {options.max_image_bytes}", status
            )
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    response.close()
                    raise FetchError("timeout", f"deadline of {options.deadline}s exceeded", status)
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > options.max_image_bytes:
                    response.close()
                    raise FetchError("too_large", f"body exceeds {options.max_image_bytes} bytes", status)
                chunks.append(chunk)
        except HTTPError as err:
            response.close()
            failure = _transport_error(err)
            failure.http_status = status
            raise failure from err
        return FetchResult(b"".join(chunks), status, headers.get("Content-Type"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _transport_error(err: BaseException) -> FetchError:
    message = f"{type(err).__name__}: {err}"[:500]
    if isinstance(err, ForbiddenAddress):
        return FetchError("forbidden_address", str(err)[:500])
    # The first URL is checked before any request; these come from a redirect's Location.
    exceptions = urllib3.exceptions
    if isinstance(err, exceptions.URLSchemeUnknown) or (
        isinstance(err, exceptions.LocationValueError) and not isinstance(err, exceptions.LocationParseError)
    ):
        return FetchError("invalid_url", f"redirect to a non-http(s) URL or one without a host: {message}")
    # Order matters: urllib3's NewConnectionError subclasses ConnectTimeoutError.
    if isinstance(err, NameResolutionError):
        return FetchError("dns_error", message)
    if isinstance(err, NewConnectionError) and not isinstance(err.__cause__, TimeoutError):
        return FetchError("connection_error", message)
    if isinstance(err, ConnectTimeoutError | ReadTimeoutError | Urllib3Timeout | TimeoutError):
        return FetchError("timeout", message)
    if isinstance(err, SSLError):
        return FetchError("ssl_error", message)
    if isinstance(err, ProtocolError | ConnectionError):
        return FetchError("connection_error", message)
    if isinstance(err, urllib3.exceptions.ResponseError) and "redirect" in str(err):
        return FetchError("too_many_redirects", message)
    if isinstance(err, urllib3.exceptions.LocationParseError | ValueError):
        return FetchError("invalid_url", message)
    return FetchError("connection_error", message)
