"""The blocklists of the `safety` section, read once per worker: URLs and hosts, file digests, PDQ.

- URL list: one entry per line, `#` comments. An entry with a scheme (`https://host/path`) is an
  exact URL, compared in canonical form (`transforms/common/urls.py`: case of scheme and host,
  IDNA, IP address spelling, default port, dot segments, percent-encoding and fragment do not
  matter; the crawl fetches that same form); a bare host (`example.com`, `*.example.com`) blocks
  the host and every subdomain, `example.com:8080` the same on that port only, an IP address that
  address (`parse_host_entry`). The list's name for a match is `url` or `domain`.
- Digest list: hex digests of known-bad files, one per line; MD5, SHA-1 and SHA-256 are told apart
  by their length (32, 40, 64 digits), as hash-sharing programmes distribute them. A match is named
  after the digest (`md5`, `sha1`, `sha256`).
- PDQ list: 64-hex-digit PDQ hashes; an image within `pdq_max_distance` bits matches (`pdq`),
  found through the multi-index of `hashindex.py`.

A line that is none of these stops the run with a `BlocklistError` naming the file and line.
Hashes are shown truncated (`short`) wherever they are logged or recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from transforms.common.files import read_text_file
from transforms.common.urls import HostError, HostList, parse_host_entry, url_facts
from transforms.safety.config import SafetyConfig
from transforms.safety.hashindex import HammingIndex, HashListError, parse_hash_lines

#: Digest kinds by the number of hex digits.
DIGEST_KINDS = {32: "md5", 40: "sha1", 64: "sha256"}


class BlocklistError(ValueError):
    """A blocklist that cannot be read or parsed (the message names the file and line)."""


def short(digest: str) -> str:
    """A hash as logs and error columns show it: its first 8 hex digits."""
    return f"{digest[:8]}…"


def digests(data: bytes, kinds: frozenset[str]) -> dict[str, str]:
    """The hex digests of `data` of the given kinds (`md5`, `sha1`, `sha256`)."""
    return {kind: hashlib.new(kind, data).hexdigest() for kind in sorted(kinds)}


def _lines(path: str) -> list[str]:
    try:
        return read_text_file(path).splitlines()
    except ValueError as err:
        raise BlocklistError(f"blocklist: {err}") from None


def _entries(path: str) -> list[tuple[int, str]]:
    """(line number, entry) of every line that is not blank or a comment."""
    entries = []
    for number, line in enumerate(_lines(path), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            entries.append((number, text))
    return entries


@dataclasses.dataclass(frozen=True)
class UrlList:
    urls: frozenset[str]
    hosts: HostList

    def match(self, url: str | None) -> str | None:
        """`url` or `domain` when the URL is listed or its host (or a parent) is; else None."""
        if not url:
            return None
        facts = url_facts(url)
        if facts.canonical is None:
            return None
        if facts.canonical in self.urls:
            return "url"
        return "domain" if self.hosts.matches(facts.host, facts.port) else None


def read_url_list(path: str) -> UrlList:
    urls, hosts = set(), []
    for number, text in _entries(path):
        if "://" in text:
            facts = url_facts(text)
            if facts.canonical is None:
                raise BlocklistError(
                    f"{path}:{number}: not a URL that can be fetched: {text[:80]!r} ({facts.problem})"
                )
            urls.add(facts.canonical)
            continue
        try:
            hosts.append(parse_host_entry(text))
        except HostError as err:
            raise BlocklistError(f"{path}:{number}: not a host name: {text[:80]!r} ({err})") from None
    return UrlList(frozenset(urls), HostList.of(hosts))


def read_digest_list(path: str) -> dict[str, frozenset[str]]:
    """kind → the listed hex digests (lower case)."""
    found: dict[str, set[str]] = {kind: set() for kind in DIGEST_KINDS.values()}
    for number, text in _entries(path):
        kind = DIGEST_KINDS.get(len(text))
        try:
            bytes.fromhex(text)
        except ValueError:
            kind = None
        if kind is None:
            raise BlocklistError(
                f"{path}:{number}: not an MD5, SHA-1 or SHA-256 hex digest "
                f"(32, 40 or 64 hex digits): {text[:16]!r}…"
            )
        found[kind].add(text.lower())
    return {kind: frozenset(values) for kind, values in found.items() if values}


def read_pdq_list(path: str) -> np.ndarray:
    try:
        return parse_hash_lines(_lines(path), path)
    except HashListError as err:
        raise BlocklistError(str(err)) from None


@dataclasses.dataclass(frozen=True)
class Blocklists:
    """Every configured list of one run, ready to match."""

    urls: UrlList | None
    digests: dict[str, frozenset[str]]
    pdq: HammingIndex | None
    #: (n, 32) uint8: the listed PDQ hashes, in the index's row order.
    pdq_hashes: np.ndarray | None = None

    @property
    def digest_kinds(self) -> frozenset[str]:
        return frozenset(self.digests)

    def match_digests(self, measured: dict[str, str]) -> tuple[str, str] | None:
        """(kind, detail) of the first listed digest among `measured` (kind → hex), or None."""
        for kind in ("sha256", "sha1", "md5"):
            value = measured.get(kind)
            if value is not None and value in self.digests.get(kind, ()):
                return kind, f"{kind} {short(value)} is on the hash blocklist"
        return None

    def match_pdq(self, pdq_hex: str | None) -> tuple[str, str] | None:
        """("pdq", detail) when the image's PDQ hash lies within the threshold of a listed one."""
        if self.pdq is None or pdq_hex is None:
            return None
        found = self.pdq.nearest(bytes.fromhex(pdq_hex))
        if found is None:
            return None
        row, distance = found
        listed = self.pdq_hashes[row].tobytes().hex() if self.pdq_hashes is not None else "?"
        return "pdq", (
            f"PDQ {short(pdq_hex)} is {distance} bits from listed {short(listed)} "
            f"(threshold {self.pdq.max_distance})"
        )


def read_blocklists(config: SafetyConfig) -> Blocklists:
    """Reads every list the config names; `BlocklistError` names the file and line of a bad entry."""
    urls = read_url_list(config.url_blocklist) if config.url_blocklist else None
    listed = read_digest_list(config.hash_blocklist) if config.hash_blocklist else {}
    pdq = hashes = None
    if config.pdq_blocklist:
        hashes = read_pdq_list(config.pdq_blocklist)
        pdq = HammingIndex(hashes, config.pdq_max_distance)
    return Blocklists(urls, listed, pdq, hashes)
