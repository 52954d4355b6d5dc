"""URL hygiene shared by every stage that judges or fetches a URL (text rules, safety blocklists,
the crawl's fetcher): pure functions.

`canonical_url` is the one form a URL is judged and fetched in, so that a URL spelled another way
is still the URL a list names (RFC 3986 section 6.2.2 syntax-based normalisation):

- the scheme and host in lower case; the host in its ASCII form (IDNA / UTS-46: `bücher.example`
  and `xn--bcher-kva.example` are one host; a trailing dot dropped); an IPv4 address in dotted
  quad form however the resolver would read it (`127.1`, `0x7f.0.0.1`, `2130706433` are all
  `127.0.0.1`); an IPv6 address compressed (`[::FFFF:7F00:1]` is `[::ffff:7f00:1]`);
- the default port, the user name and password (never sent) and the fragment dropped;
- an empty path is `/`; dot segments removed (`/img/../img/./a.jpg` is `/img/a.jpg`, section
  5.2.4); in path and query a percent-encoded unreserved character decoded (`%7E` is `~`), other
  escapes in upper case (`%2f` is `%2F`), and every other character the HTTP client would escape
  (a space, non-ASCII, `"`, `<`, `\\`, a `%` that starts no escape, ...) escaped as it escapes it,
  so the request the server gets is exactly the canonical URL's path and query.

A URL whose host or port cannot be fetched (spaces, zero-width or control characters,
percent-encoding, an empty label, a port outside 1–65535) has no canonical form and says why.

`parse_host_entry` reads one entry of a host block list (`text.blocked_domains`, a bare line of
`safety.url_blocklist`) and `HostList` matches hosts against them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import string
import typing
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import urlsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}
# A URL that may be canonical already (the common case): checked with one match instead of a parse.
# The host's last label starts with a letter (a numeric one may be an IPv4 address in another
# spelling); path and query hold only characters sent as they are, and `%`.
_SIMPLE_URL = re.compile(
    r"(https?)://((?:[a-z0-9-]+\.)*[a-z][a-z0-9-]*)"
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]+)?)\Z"
)
# What keeps a URL matching `_SIMPLE_URL` from being canonical: a dot segment, a `%` that is not
# an upper-case escape, or an escape of an unreserved character.
_NOT_CANONICAL = re.compile(
    r"/\.\.?(?=[/?]|\Z)|%(?![0-9A-F]{2})|%(?:2[DE]|3[0-9]|[46][1-9A-F]|[57][0-9A]|5F|7E)"
)


def simple_canonical(url: str) -> bool:
    """True if `url` is an http(s) URL in canonical form with a plain host, found without a parse."""
    if _SIMPLE_URL.match(url) is None:
        return False
    return ("/." not in url and "%" not in url) or _NOT_CANONICAL.search(url) is None


class UrlFacts(NamedTuple):
    """What the URL rules need from one URL. `canonical` is None if the URL cannot be fetched;
    `problem` then says why. `port` is the port connected to (the scheme's default if none is
    given; 0 if unknown)."""

    scheme: str
    host: str
    extension: str
    canonical: str | None
    problem: str = ""
    port: int = 0


def url_facts(url: str) -> UrlFacts:
    """Scheme, host, file extension, port and canonical form of a URL, parsed once."""
    simple = _SIMPLE_URL.match(url)
    if simple and (("/." not in url and "%" not in url) or _NOT_CANONICAL.search(url) is None):
        # Already canonical: lower-case http(s) scheme and host, no port, user or fragment.
        scheme, host, path = simple.group(1, 2, 3)
        return UrlFacts(scheme, host, _extension(path.partition("?")[0]), url, "", DEFAULT_PORTS[scheme])
    return parsed_url_facts(url)


# Characters an ASCII host name may hold (letters, digits, hyphen, underscore, dot).
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_HOST = 253
# One part of an IPv4 address as inet_aton reads it: hexadecimal, octal or decimal.
_IPV4_PART = re.compile(r"0x([0-9a-f]+)|0([0-7]*)|([1-9][0-9]*)")


class HostError(ValueError):
    """A host name that cannot be fetched; the message says why."""


def canonical_host(host: str) -> str:
    """The ASCII form of a host name (lower case, IDNA / UTS-46 for international names, no
    trailing dot; an IP address in its standard form), or `HostError` saying why it cannot be
    fetched (pure)."""
    odd = next((ch for ch in host if ch.isspace() or unicodedata.category(ch)[0] in "CZ"), None)
    if odd is not None:
        name = unicodedata.name(odd, "control character")
        raise HostError(f"the host contains U+{ord(odd):04X} ({name.lower()})")
    if "%" in host:
        raise HostError("the host is percent-encoded")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("[") or ":" in host:  # an IPv6 literal
        try:
            return ipaddress.IPv6Address(host.strip("[]")).compressed
        except ValueError:
            raise HostError("not a valid IPv6 address") from None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as err:
            raise HostError(f"not a valid international host name: {err}") from None
    if not _ASCII_HOST.fullmatch(host):
        bad = next((ch for ch in host if not (ch.isalnum() or ch in "._-")), None)
        raise HostError(f"the host has the character {bad!r}" if bad else "the host has an empty label")
    if len(host) > _MAX_HOST or any(len(label) > 63 for label in host.split(".")):
        raise HostError("the host name is too long")
    return _ipv4(host) or host


def _ipv4(host: str) -> str | None:
    """The dotted quad of a host that the resolver reads as an IPv4 address (inet_aton: one to
    four parts, each decimal, `0x` hexadecimal or `0` octal, the last filling the bytes left)."""
    parts = host.split(".")
    if len(parts) > 4 or not parts[-1][:1].isdigit():
        return None
    numbers = [_ipv4_part(part) for part in parts]
    if None in numbers:
        return None
    *leading, last = typing.cast(list[int], numbers)
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        return None
    value = last
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _ipv4_part(part: str) -> int | None:
    found = _IPV4_PART.fullmatch(part)
    if found is None:
        return None
    hexadecimal, octal, decimal = found.groups()
    if hexadecimal:
        return int(hexadecimal, 16)
    return int(octal or "0", 8) if octal is not None else int(decimal)


_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | {"?"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def normalize_escapes(text: str, safe: frozenset[str]) -> str:
    """`text` (a path or query) with its percent-encoding normalised (RFC 3986 6.2.2.1–2): an
    escaped unreserved character decoded, other escapes in upper case, and every byte outside
    `safe` escaped (UTF-8), a `%` that starts no escape included."""
    if "%" not in text and all(ch in safe for ch in text):
        return text
    data = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x25 and i + 2 < n and data[i + 1] in _HEX and data[i + 2] in _HEX:
            value = int(data[i + 1 : i + 3], 16)
            out += bytes([value]) if chr(value) in _UNRESERVED else b"%" + data[i + 1 : i + 3].upper()
            i += 3
            continue
        out += bytes([byte]) if byte < 128 and chr(byte) in safe else b"%%%02X" % byte
        i += 1
    return out.decode("ascii")


def remove_dot_segments(path: str) -> str:
    """An absolute path without `.` and `..` segments (RFC 3986 section 5.2.4)."""
    if "/." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = "/" if segments[-1] in (".", "..") and out else ""
    return "/" + "/".join(out) + trailing


def parsed_url_facts(url: str) -> UrlFacts:
    """`url_facts` by a full parse, for every URL (the reference the fast path must agree with)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        return UrlFacts("", "", "", None, f"cannot be parsed: {err}")
    scheme = parts.scheme.lower()
    raw_host = parts.hostname or ""
    path = remove_dot_segments(normalize_escapes(parts.path or "/", _PATH_SAFE))
    extension = _extension(path)
    if not scheme:
        return UrlFacts(scheme, raw_host.lower(), extension, None, "not an absolute URL (no scheme)")
    if not raw_host:
        return UrlFacts(scheme, raw_host, extension, None, "no host")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        return UrlFacts(scheme, raw_host.lower(), extension, None, f"port {port_text!r} is not in 1-65535")
    if port == 0:
        return UrlFacts(scheme, raw_host.lower(), extension, None, "port 0 is not in 1-65535")
    try:
        host = canonical_host(raw_host)
    except HostError as err:
        return UrlFacts(scheme, raw_host.lower(), extension, None, str(err))
    default = DEFAULT_PORTS.get(scheme)
    netloc = f"[{host}]" if ":" in host else host
    if port not in (None, default):
        netloc = f"{netloc}:{port}"
    query = normalize_escapes(parts.query, _QUERY_SAFE)
    canonical = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
    return UrlFacts(scheme, host, extension, canonical, port=port or default or 0)


def canonical_url(url: str) -> str | None:
    """The canonical form a URL is judged, deduplicated and fetched in, or None if it has none."""
    return url_facts(url).canonical


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


class HostEntry(NamedTuple):
    """One entry of a host block list: a host (canonical) and the one port it is limited to."""

    host: str
    port: int | None


def parse_host_entry(entry: str) -> HostEntry:
    """Reads a host block-list entry, or raises `HostError` saying why it could never match.

    `example.com` is the domain and every subdomain; `*.example.com` and `.example.com` the same;
    `example.com:8080` the same on port 8080 only (a URL without a port is on its scheme's
    default, 80 or 443); an IP address (`192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:8080`) that
    address only. A URL, a path or another wildcard is refused, with the entry to write instead
    where there is one."""
    text = entry.strip()
    if text.endswith("/") and "://" not in text:
        text = text[:-1]
    if "://" in text:
        facts = url_facts(text)
        hint = f"; write {facts.host!r} to block the host" if facts.canonical else ""
        raise HostError(f"a URL, not a host name{hint}")
    if "/" in text:
        raise HostError(f"a host name has no path; write {text.split('/', 1)[0]!r} to block the host")
    wildcard = text.startswith(("*.", "."))
    if wildcard:
        text = text[text.index(".") + 1 :]
    if "*" in text:
        raise HostError("a wildcard may only lead the entry, as in '*.example.com'")
    host, port = _host_and_port(text)
    if not host:
        raise HostError("no host name")
    host = canonical_host(host)
    if wildcard and _is_ip(host):
        raise HostError(
            f"a wildcard names subdomains, and {text!r} is an IP address ({host}), which has none"
        )
    return HostEntry(host, port)


def _host_and_port(text: str) -> tuple[str, int | None]:
    """(host, port) of `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise HostError("an IPv6 address in brackets needs its closing ']', then at most ':port'")
        return host, _port(rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None  # a name, or an IPv6 address without brackets


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise HostError(f"port {text!r} is not in 1-65535")
    return int(text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class HostList:
    """Hosts blocked with their subdomains, on any port or on one port (`parse_host_entry`)."""

    anywhere: frozenset[str] = frozenset()
    on_port: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[HostEntry]) -> HostList:
        entries = list(entries)
        return cls(
            frozenset(e.host for e in entries if e.port is None),
            frozenset((e.host, e.port) for e in entries if e.port is not None),
        )

    def __bool__(self) -> bool:
        return bool(self.anywhere or self.on_port)

    def matches(self, host: str, port: int) -> bool:
        """True if canonical `host` on `port`, or a parent domain of it, is listed."""
        if ":" in host:  # an IPv6 address: itself only
            return host in self.anywhere or (host, port) in self.on_port
        while host:
            if host in self.anywhere or (host, port) in self.on_port:
                return True
            _, _, host = host.partition(".")
        return False
