"""Fetch one image over HTTP(S), politely and safely: pure helpers, no Beam.

`Fetcher.fetch(url)` returns the body bytes or raises `FetchError` whose `reason` is the status
reason code recorded for the sample:

| reason | when |
|---|---|
| `invalid_url` | not an absolute http(s) URL, or a redirect to another scheme (`file:`, `ftp:`, `data:`) |
| `http_<code>` | the final response is not 2xx; 429 and 5xx are retried with backoff, never a 404 |
| `too_many_redirects` | more than `max_redirects` hops |
| `redirect_loop` | a redirect back to a URL already visited |
| `timeout` | connect or read timeout (`timeout`), or the whole fetch outlived `deadline` |
| `too_large` | Content-Length or the streamed (decompressed) body exceeds `max_image_bytes` |
| `forbidden_address` | the host, or a redirect's, resolves only to non-public addresses |
| `connection_error`, `dns_error`, `ssl_error` | the transport failed |
| `bad_response` | not HTTP: a header line over 64 KiB, over 100 headers, a garbled status line |
| `decode_error` | the body is not encoded as its `Content-Encoding` says (gzip, deflate, br, zstd) |
| `opted_out_robots_txt` | the origin's robots.txt disallows the path for `user_agent_token` |
| `robots_unreachable` | the robots.txt answered 5xx or 429: RFC 9309 disallows the whole origin |
| `opted_out_x_robots_tag` | an `X-Robots-Tag` directive of `disallowed_header_directives` for us |
| `opted_out_tdmrep` | a `tdm-reservation: 1` header, or the origin's `tdmrep.json` reserves the path |
| `opted_out_content_usage` | a `Content-Usage` header sets a category of `content_usage_categories` to `n` |

`bad_response` and `decode_error` are the server's lasting fault, not the network's: neither is
retried nor counted as a transient failure (`schemas/reasons.py`).

robots.txt and tdmrep.json are checked before the image is requested, on every redirect hop, so a
disallowed path is never fetched; the response headers are checked before the body is read.
robots.txt comes first: an origin's tdmrep.json is requested only once its robots.txt has allowed
a path about to be fetched, so an origin that disallows the crawl gets no other request.
Requests to one host go through `transforms/crawl/politeness.py` (concurrency cap, minimum delay, the
robots.txt Crawl-delay). The fetcher keeps one keep-alive connection pool per host, shared by all
threads of a worker. Unless `allow_private_networks`, every connection it opens goes through the
SSRF guard (`transforms/crawl/netguard.py`), which checks the address it connects to.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http.client
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

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

from schemas.reasons import RETRYABLE_IN_RUN
from transforms.common.urls import canonical_url
from transforms.crawl.config import FetchOptions
from transforms.crawl.netguard import ForbiddenAddress
from transforms.crawl.optouts import (
    TdmRule,
    content_usage_disallows,
    tdm_header_reserves,
    tdm_rules_reserve,
    x_robots_tag_disallows,
)
from transforms.crawl.politeness import HostThrottle
from transforms.crawl.robots import (
    ALLOW_ALL,
    RESERVE_ALL,
    ROBOTS_PATH,
    SITE_FILE_MAX_BYTES,
    SITE_FILE_MAX_REDIRECTS,
    TDMREP_PATH,
    UNLOADABLE,
    OriginCache,
    SiteFile,
    SiteRules,
    robots_rules,
    tdm_rules,
)
from transforms.crawl.watchdog import deadline_scope, watched_pool_classes

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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


class _Deadline:
    """Seconds left of a fetch's wall-clock budget; time spent waiting for a host's turn is given back."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def extend(self, seconds: float) -> None:
        self._end += seconds

    def left(self) -> float:
        return self._end - time.monotonic()

    def check(self, status: int | None = None) -> None:
        if self.left() <= 0:
            raise FetchError("timeout", f"deadline of {self.seconds:g}s exceeded", status)


class Fetcher:
    """Thread-safe image fetcher over a shared urllib3 pool, with per-origin rules and per-host turns."""

    #: What the crawl asks for; a page fetcher (`transforms/read/pages.py`) asks for HTML.
    IMAGES = "image/avif,image/webp,image/*;q=0.9,*/*;q=0.5"
    PAGES = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"

    def __init__(self, options: FetchOptions, pool_size: int = 64, accept: str = IMAGES):
        self._options = options
        self._pool = urllib3.PoolManager(num_pools=256, maxsize=pool_size, block=False)
        # Every connection, redirects included, to public addresses only (unless allowed), and
        # none waits for its response headers past the fetch's deadline.
        self._pool.pool_classes_by_scheme = watched_pool_classes(guarded=not options.allow_private_networks)
        self._headers = {
            "User-Agent": options.user_agent_header,
            "Accept": accept,
        }
        self._throttle = HostThrottle(options.max_per_host)
        self._robots = OriginCache(self._load_robots, UNLOADABLE, options.robots_cache_ttl)
        self._tdmrep = OriginCache(self._load_tdmrep, RESERVE_ALL, options.robots_cache_ttl)

    def fetch(self, url: str) -> FetchResult:
        """Fetches `url` in its canonical form (`transforms/common/urls.py`: the form the text and
        safety stages judged it in), retrying transient failures `retries` times."""
        try:
            parts = urlsplit(url)
        except ValueError as err:  # an unbalanced IPv6 bracket, ...
            raise FetchError("invalid_url", f"{err}: {url[:200]!r}") from err
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FetchError("invalid_url", f"not an absolute http(s) URL: {url[:200]!r}")
        url = canonical_url(url) or url
        options = self._options
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except FetchError as err:
                if attempt >= options.retries or err.reason not in RETRYABLE_IN_RUN:
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
        """One attempt: every hop checked against its origin's rules, then fetched in the host's turn."""
        return self._get(
            url,
            self._options.max_redirects,
            lambda hop, parts: self._delay(self._check_site_rules(hop, parts)),
            self._read,
        )

    def _get(
        self,
        url: str,
        max_redirects: int,
        admit: Callable[[str, SplitResult], float],
        read: Callable[[urllib3.BaseHTTPResponse, _Deadline], _T],
    ) -> _T:
        """GETs `url`, following redirects hop by hop under one deadline.

        Before each hop `admit(url, parts)` may refuse it (by raising `FetchError`) and gives the
        delay its host asks for; the request is made in the host's turn, and `read` reads the
        final response. A redirect's body is never read: it could be endless."""
        deadline = _Deadline(self._options.deadline)
        visited = {url}
        for _ in range(max_redirects + 1):
            parts = _split(url)
            delay = admit(url, parts)
            with self._throttle.slot(parts.hostname or "", delay) as waited:
                deadline.extend(waited)
                response = self._request(url, deadline)
                try:
                    location = response.headers.get("Location") if response.status in _REDIRECTS else None
                    if location is None:
                        return read(response, deadline)
                    response.close()
                finally:
                    response.release_conn()
            url = _follow(url, location, visited)
        raise FetchError("too_many_redirects", f"more than {max_redirects} redirects")

    def _request(self, url: str, deadline: _Deadline) -> urllib3.BaseHTTPResponse:
        deadline.check()
        wait = min(self._options.timeout, deadline.left())
        try:
            with deadline_scope(time.monotonic() + deadline.left()):
                return self._pool.request(
                    "GET",
                    url,
                    headers=self._headers,
                    timeout=urllib3.Timeout(connect=wait, read=wait),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                )
        except (HTTPError, ValueError) as err:
            if deadline.left() <= 0:  # the watchdog cut a server still sending its headers
                raise FetchError(
                    "timeout", f"deadline of {deadline.seconds:g}s exceeded before the headers"
                ) from err
            raise _transport_error(err.reason or err if isinstance(err, MaxRetryError) else err) from err

    def _check_site_rules(self, url: str, parts: SplitResult) -> SiteRules:
        """Raises the opt-out (or `robots_unreachable`) failure of `url`'s origin rules, if any.

        robots.txt is asked first; the origin's tdmrep.json is fetched only for a path robots.txt
        allows, so an origin that disallows the crawl is asked for nothing but its robots.txt."""
        options = self._options
        origin = _origin(parts)
        rules = self._robots.get(origin) if options.respect_robots_txt else ALLOW_ALL
        if not rules.robots_allows(url, options.user_agent_token):
            if rules.robots == "parsed":
                raise FetchError("opted_out_robots_txt", rules.robots_detail)
            raise FetchError(rules.transport_failure or "robots_unreachable", rules.robots_detail)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if options.respect_tdmrep and tdm_rules_reserve(self._tdmrep.get(origin), path):
            raise FetchError(
                "opted_out_tdmrep", f"{TDMREP_PATH} reserves text and data mining rights for {path}"
            )
        return rules

    def _delay(self, rules: SiteRules) -> float:
        crawl_delay = rules.crawl_delay(self._options.user_agent_token) or 0.0
        return max(self._options.min_host_delay, min(crawl_delay, self._options.max_crawl_delay))

    def _load_robots(self, origin: str) -> SiteRules:
        return robots_rules(self._site_file(origin + ROBOTS_PATH))

    def _load_tdmrep(self, origin: str) -> tuple[TdmRule, ...]:
        return tdm_rules(origin, self._site_file(origin + TDMREP_PATH))

    def _site_file(self, url: str) -> SiteFile:
        """GETs a robots.txt or tdmrep.json: at most 5 redirects and the first 500 KiB of the body."""
        try:
            return self._get(
                url,
                SITE_FILE_MAX_REDIRECTS,
                lambda hop, parts: self._options.min_host_delay,
                lambda response, deadline: SiteFile(
                    response.status, self._read_body(response, deadline, SITE_FILE_MAX_BYTES, truncate=True)
                ),
            )
        except FetchError as err:
            if err.reason in ("too_many_redirects", "redirect_loop", "invalid_url"):
                return SiteFile(310, error=str(err))  # RFC 9309: may be taken as unavailable
            return SiteFile(None, error=f"{err.reason}: {err}", reason=err.reason)

    def _read(self, response: urllib3.BaseHTTPResponse, deadline: _Deadline) -> FetchResult:
        options = self._options
        status = response.status
        if not 200 <= status < 300:
            retry_after = _retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            response.close()
            raise FetchError(f"http_{status}", f"HTTP {status}", status, retry_after)
        headers = response.headers
        opt_out = self._header_opt_out(headers)
        if opt_out is not None:
            response.close()
            raise FetchError(opt_out[0], opt_out[1], status)
        length = headers.get("Content-Length")
        if length and length.isdigit() and int(length) > options.max_image_bytes:
            response.close()
            raise FetchError(
                "too_large", f"Content-Length {length} exceeds {options.max_image_bytes}", status
            )
        data = self._read_body(response, deadline, options.max_image_bytes, truncate=False)
        return FetchResult(data, status, headers.get("Content-Type"))

    def _header_opt_out(self, headers: urllib3.HTTPHeaderDict) -> tuple[str, str] | None:
        """The reason and message of the first opt-out header among the signals obeyed, if any."""
        options = self._options
        if (
            options.respect_x_robots_tag
            and options.disallowed_header_directives
            and x_robots_tag_disallows(
                headers.getlist("X-Robots-Tag"),
                options.user_agent_token,
                options.disallowed_header_directives,
            )
        ):
            return "opted_out_x_robots_tag", "X-Robots-Tag disallows use of this image"
        if options.respect_tdmrep and tdm_header_reserves(headers.getlist("tdm-reservation")):
            return "opted_out_tdmrep", "tdm-reservation: 1 reserves text and data mining rights"
        if options.respect_content_usage and content_usage_disallows(
            headers.getlist("Content-Usage"), options.content_usage_categories
        ):
            return (
                "opted_out_content_usage",
                f"Content-Usage disallows {', '.join(options.content_usage_categories)}",
            )
        return None

    @staticmethod
    def _read_body(
        response: urllib3.BaseHTTPResponse, deadline: _Deadline, max_bytes: int, truncate: bool
    ) -> bytes:
        """Streams the (decoded) body: never more than `max_bytes` kept, never past the deadline.

        Past `max_bytes` the body is cut there if `truncate`, else the fetch fails as `too_large`.
        """
        status = response.status
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if deadline.left() <= 0:
                    response.close()
                    deadline.check(status)
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    response.close()
                    if truncate:
                        chunks.append(chunk[: len(chunk) - (size - max_bytes)])
                        break
                    raise FetchError("too_large", f"body exceeds {max_bytes} bytes", status)
                chunks.append(chunk)
        except HTTPError as err:
            response.close()
            failure = _transport_error(err)
            failure.http_status = status
            raise failure from err
        return b"".join(chunks)


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as err:
        raise FetchError("invalid_url", f"bad port in {url[:200]!r}: {err}") from err
    if not parts.hostname:
        raise FetchError("invalid_url", f"no host in {url[:200]!r}")
    return parts


def _origin(parts: SplitResult) -> str:
    """`scheme://host[:port]`, the unit robots.txt and tdmrep.json apply to (RFC 9309 section 2.3)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port is not None else "")


def _follow(url: str, location: str, visited: set[str]) -> str:
    """The next hop of a redirect; refuses other schemes and loops."""
    try:
        target = urlunsplit(urlsplit(urljoin(url, location.strip()))._replace(fragment=""))
        target = canonical_url(target) or target
        parts = urlsplit(target)
    except ValueError as err:  # a Location with an unbalanced IPv6 bracket, ...
        raise FetchError("invalid_url", f"redirect to an unparseable URL {location[:200]!r}: {err}") from err
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(
            "invalid_url", f"redirect to a non-http(s) URL or one without a host: {target[:200]!r}"
        )
    if target in visited:
        raise FetchError("redirect_loop", f"redirect loop back to {target[:200]!r}")
    visited.add(target)
    return target


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


_POOL_REPR = re.compile(r"\b\w+\(host='([^']*)', port=(\d+)\): ")
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>(: )?")
_NOISE = re.compile(r"\[Errno -?\d+\] | \(_ssl\.c:\d+\)")
_INCOMPLETE = re.compile(r"IncompleteRead\(([^)]*)\)")


def describe_transport_error(err: BaseException) -> str:
    """A transport failure in a user's words: the host and what went wrong, without the HTTP
    library's class names, object addresses and errno numbers."""
    cause = err.args[0] if isinstance(err, ProtocolError) and err.args else err
    text = _POOL_REPR.sub(r"\1:\2: ", str(cause))
    text = _INCOMPLETE.sub(r"\1", _NOISE.sub("", _OBJECT_REPR.sub("", text)))
    return text.strip()[:500] or "the connection failed"


#: http.client's errors for a response that is not HTTP (as opposed to one cut short:
#: `IncompleteRead`, `RemoteDisconnected`), raised while reading the status line and headers.
_NOT_HTTP = (http.client.LineTooLong, http.client.UnknownProtocol, http.client.UnknownTransferEncoding)


def _bad_response(err: BaseException) -> str | None:
    """What is wrong with a response that is not HTTP (a header line over 64 KiB, over 100
    headers, a garbled status line), or None for a failure of the transport."""
    cause = err.args[1] if isinstance(err, ProtocolError) and len(err.args) > 1 else err
    if isinstance(cause, http.client.RemoteDisconnected) or not isinstance(cause, http.client.HTTPException):
        return None
    if isinstance(cause, http.client.BadStatusLine):
        return f"the response is not HTTP: status line {str(cause).strip()[:200]!r}"
    if isinstance(cause, _NOT_HTTP) or type(cause) is http.client.HTTPException:
        return f"the response is not valid HTTP: {str(cause)[:300]}"
    return None


def _decode_failure(err: urllib3.exceptions.DecodeError) -> str:
    """A body that its Content-Encoding does not decode, in words."""
    said = str(err.args[0]) if err.args else "the body cannot be decoded"
    detail = f": {err.args[1]}" if len(err.args) > 1 else ""
    return f"{said.rstrip('.')}{detail}"[:500]


def _transport_error(err: BaseException) -> FetchError:
    message = describe_transport_error(err)
    if isinstance(err, ForbiddenAddress):
        return FetchError("forbidden_address", str(err)[:500])
    exceptions = urllib3.exceptions
    if isinstance(err, exceptions.DecodeError):  # a lying Content-Encoding: retrying gets the same
        return FetchError("decode_error", _decode_failure(err))
    bad = _bad_response(err)
    if bad is not None:
        return FetchError("bad_response", bad)
    if isinstance(err, exceptions.URLSchemeUnknown) or (
        isinstance(err, exceptions.LocationValueError) and not isinstance(err, exceptions.LocationParseError)
    ):
        return FetchError("invalid_url", message)
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
    if isinstance(err, urllib3.exceptions.LocationParseError | ValueError):
        return FetchError("invalid_url", message)
    return FetchError("connection_error", message)
