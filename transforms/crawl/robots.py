"""Per-origin site rules: robots.txt (RFC 9309, parsed by `protego`) and TDMRep's `tdmrep.json`.

`OriginCache.get(origin)` returns what one origin's (`scheme://host[:port]`) file says, loading
it once: the first thread to ask fetches the file while the others wait for its answer, and the
answer is kept for `ttl` seconds (RFC 9309 allows at most 24 hours). The fetcher keeps one cache
for robots.txt and one for tdmrep.json, and asks in that order: robots.txt first, and tdmrep.json
only once robots.txt has allowed a path the crawl is about to request. An origin whose robots.txt
disallows every path the crawl asks for gets no request but that for its robots.txt.

How a robots.txt fetch is read (RFC 9309 section 2.3.1):

| outcome | rules |
|---|---|
| 2xx | the first 500 KiB parsed; an HTML page or other junk has no rules, so it allows all |
| 4xx (429 excepted), or more than 5 redirects | "unavailable": everything allowed |
| 5xx, 429, timeout, DNS or connection failure | "unreachable": everything disallowed |

A host whose robots.txt cannot be fetched at all fails its samples with the transport's reason
(`dns_error`, `connection_error`, `timeout`, `forbidden_address`); a 5xx or 429 robots.txt with
`robots_unreachable`. Either way the image is not requested.

A `tdmrep.json` that is missing, unreadable or malformed reserves nothing (it is optional, and
many sites answer unknown paths with errors); a malformed one is logged.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from protego import Protego

from transforms.crawl.optouts import TdmRule, parse_tdmrep

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
#: The most of a robots.txt (or tdmrep.json) that is read and parsed (RFC 9309: at least 500 KiB).
SITE_FILE_MAX_BYTES = 500 * 1024
#: Redirects followed for a robots.txt (RFC 9309: at least five).
SITE_FILE_MAX_REDIRECTS = 5
#: Longest time site rules are cached (RFC 9309: no longer than 24 hours).
MAX_TTL_S = 86400.0


@dataclasses.dataclass(frozen=True)
class SiteFile:
    """What fetching one site file gave: a final HTTP status and body, or a transport error."""

    status: int | None
    body: bytes = b""
    error: str | None = None
    #: The transport failure's reason code (`dns_error`, `timeout`, ...) when there is no status.
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class SiteRules:
    """The robots.txt verdict of one origin."""

    robots: Literal["parsed", "allow_all", "disallow_all"]
    #: Why the robots.txt was read as it was, for the sample's error message.
    robots_detail: str
    parser: Protego | None = None
    #: When the robots.txt could not be fetched at all: why (`dns_error`, `timeout`, ...).
    transport_failure: str | None = None

    def robots_allows(self, url: str, token: str) -> bool:
        if self.robots == "parsed":
            assert self.parser is not None
            return bool(self.parser.can_fetch(url, token))
        return self.robots == "allow_all"

    def crawl_delay(self, token: str) -> float | None:
        """The robots.txt Crawl-delay for `token` (its own group, else `*`), in seconds."""
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(token)
        return float(delay) if delay is not None else None


ALLOW_ALL = SiteRules("allow_all", "robots.txt not consulted")
#: The rules of an origin whose files could not be loaded (an unexpected error): nothing is fetched.
UNLOADABLE = SiteRules("disallow_all", "site rules could not be loaded: all disallowed")
RESERVE_ALL: tuple[TdmRule, ...] = (TdmRule("/", reserved=True),)


def robots_rules(fetched: SiteFile) -> SiteRules:
    """Reads a robots.txt fetch by RFC 9309's rules (the module docstring's table)."""
    status = fetched.status
    if status is None:
        return SiteRules(
            "disallow_all",
            f"robots.txt unreachable ({fetched.error}): all disallowed",
            transport_failure=fetched.reason,
        )
    if 200 <= status < 300:
        text = fetched.body[:SITE_FILE_MAX_BYTES].decode("utf-8", errors="replace")
        return SiteRules("parsed", "robots.txt disallows this path", Protego.parse(text))
    if status == 429 or status >= 500:
        return SiteRules("disallow_all", f"robots.txt answered HTTP {status}: all disallowed")
    return SiteRules("allow_all", f"robots.txt unavailable (HTTP {status}): all allowed")


def tdm_rules(origin: str, fetched: SiteFile) -> tuple[TdmRule, ...]:
    """The rules of a `tdmrep.json` fetch; anything but a well-formed 2xx answer gives none."""
    if fetched.status is None or not 200 <= fetched.status < 300:
        return ()
    try:
        return parse_tdmrep(fetched.body[:SITE_FILE_MAX_BYTES])
    except ValueError as err:
        LOG.warning("%s%s ignored: %s", origin, TDMREP_PATH, err)
        return ()


class OriginCache(Generic[_T]):
    """Thread-safe cache of one site file's rules by origin, each loaded once per `ttl`.

    `load(origin)` fetches and parses the origin's file; should it raise, the origin gets
    `fallback` (which should forbid, not allow). Concurrent requests for an origin being loaded
    wait for that load instead of fetching again. At most `max_entries` origins are kept; the
    least recently loaded is forgotten first.
    """

    def __init__(
        self,
        load: Callable[[str], _T],
        fallback: _T,
        ttl: float = MAX_TTL_S,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._load = load
        self._fallback = fallback
        self._ttl = min(ttl, MAX_TTL_S)
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[float, _T]] = collections.OrderedDict()
        self._loading: dict[str, threading.Event] = {}

    def get(self, origin: str) -> _T:
        while True:
            with self._lock:
                entry = self._entries.get(origin)
                if entry is not None and self._clock() - entry[0] < self._ttl:
                    return entry[1]
                pending = self._loading.get(origin)
                if pending is None:
                    pending = self._loading[origin] = threading.Event()
                    break
            pending.wait()
        try:
            rules = self._load(origin)
        except Exception:
            LOG.exception("loading the site rules of %s failed; all disallowed", origin)
            rules = self._fallback
        with self._lock:
            self._entries[origin] = (self._clock(), rules)
            self._entries.move_to_end(origin)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            del self._loading[origin]
        pending.set()
        return rules
