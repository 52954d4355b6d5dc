"""URL hygiene shared by the stages that judge URLs (text rules, safety blocklists): pure functions.

`canonical_url`: scheme lower-case, the host in its ASCII form (IDNA / UTS-46: `bücher.example`
and `xn--bcher-kva.example` are one host; a trailing dot dropped), default port and fragment
dropped. A URL whose host or port cannot be fetched (spaces, zero-width or control characters,
percent-encoding, an empty label, a port outside 1–65535) has no canonical form and says why.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import idna

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A URL already in canonical form (the common case): checked with one match instead of a parse.
SIMPLE_URL = re.compile(r"(https?)://([a-z0-9-]+(?:\.[a-z0-9-]+)*)(/[^#?\s]*(?:\?[^#\s]+)?)\Z")


class UrlFacts(NamedTuple):
    """What the URL rules need from one URL. `canonical` is None if the URL cannot be fetched;
    `problem` then says why."""

    scheme: str
    host: str
    extension: str
    canonical: str | None
    problem: str = ""


def url_facts(url: str) -> UrlFacts:
    """Scheme, host, file extension and canonical form of a URL, parsed once."""
    simple = SIMPLE_URL.match(url)
    if simple:
        # Already canonical: lower-case http(s) scheme and host, no port, user or fragment.
        scheme, host, path = simple.group(1, 2, 3)
        return UrlFacts(scheme, host, _extension(path.partition("?")[0]), url)
    return parsed_url_facts(url)


# Characters an ASCII host name may hold (letters, digits, hyphen, underscore, dot).
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_MAX_HOST = 253


class HostError(ValueError):
    """A host name that cannot be fetched; the message says why."""


def canonical_host(host: str) -> str:
    """The ASCII form of a host name (lower case, IDNA / UTS-46 for international names, no
    trailing dot), or `HostError` saying why it cannot be fetched (pure)."""
    odd = next((ch for ch in host if ch.isspace() or unicodedata.category(ch)[0] in "CZ"), None)
    if odd is not None:
        name = unicodedata.name(odd, "control character")
        raise HostError(f"the host contains U+{ord(odd):04X} ({name.lower()})")
    if "%" in host:
        raise HostError("the host is percent-encoded")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("[") or ":" in host:  # an IPv6 literal (urlsplit checked its brackets)
        return host
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
    return host


def parsed_url_facts(url: str) -> UrlFacts:
    """`url_facts` by a full parse, for every URL (the reference the fast path must agree with)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as err:
        return UrlFacts("", "", "", None, f"cannot be parsed: {err}")
    scheme = parts.scheme.lower()
    raw_host = parts.hostname or ""
    extension = _extension(parts.path)
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
    netloc = f"[{host}]" if ":" in host else host
    if port not in (None, _DEFAULT_PORTS.get(scheme)):
        netloc = f"{netloc}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{netloc}"
    return UrlFacts(scheme, host, extension, urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))


def canonical_url(url: str) -> str | None:
    """A canonical form for duplicate detection, or None if the URL cannot be parsed."""
    return url_facts(url).canonical


def _extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def domain_matches(host: str, domains: frozenset[str]) -> bool:
    """True if `host` is one of `domains` or a subdomain of one."""
    host = host.lower().rstrip(".")
    while host:
        if host in domains:
            return True
        _, _, host = host.partition(".")
    return False
