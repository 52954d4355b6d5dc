"""Opt-out signals a site sends with an image, and the TDMRep file of an origin: pure parsers.

Each signal has its own switch in the `crawl` config and its own reason code (`transforms/crawl/fetch.py`):

- `X-Robots-Tag` (response header, may repeat; `opted_out_x_robots_tag`): a directive of
  `disallowed_header_directives` (`noai`, `noimageai`, `noindex`, `noimageindex`), for every agent
  or in the `<token>: ...` form for ours; case-insensitive.
- TDMRep, the W3C TDM Reservation Protocol (`opted_out_tdmrep`): a `tdm-reservation: 1` response
  header, or a reservation in the first rule of `/.well-known/tdmrep.json` whose `location`
  pattern matches the path.
- `Content-Usage`, IETF AI Preferences (`opted_out_content_usage`): a category of
  `content_usage_categories` (`train-ai`) set to `n`.

robots.txt is parsed by `protego` in `transforms/crawl/robots.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable


def x_robots_tag_disallows(
    header_values: Iterable[str], agent_token: str | None, directives: Iterable[str]
) -> bool:
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


def tdm_header_reserves(header_values: Iterable[str]) -> bool:
    """True if a `tdm-reservation` response header reserves text and data mining rights (value 1)."""
    return any(value.strip() == "1" for value in header_values)


def content_usage_disallows(header_values: Iterable[str], categories: Iterable[str]) -> bool:
    """True if a `Content-Usage` header sets one of `categories` to `n`.

    The header is a Structured Fields dictionary (`train-ai=n, search=y`); parameters after `;`
    are ignored, as are unknown keys and values other than the tokens `y` and `n`.
    """
    wanted = {c.strip().lower() for c in categories}
    for value in header_values:
        for member in value.split(","):
            key, sep, preference = member.split(";", 1)[0].partition("=")
            if sep and key.strip().lower() in wanted and preference.strip().lower() == "n":
                return True
    return False


@dataclasses.dataclass(frozen=True)
class TdmRule:
    """One entry of a `tdmrep.json` file: a path pattern and its reservation."""

    location: str
    reserved: bool
    policy: str | None = None

    def matches(self, path: str) -> bool:
        return _robots_pattern(self.location).match(path) is not None


def parse_tdmrep(body: bytes) -> tuple[TdmRule, ...]:
    """The rules of a `/.well-known/tdmrep.json` file; raises ValueError naming what is wrong."""
    try:
        entries = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"tdmrep.json is not JSON: {err}") from err
    if not isinstance(entries, list):
        raise ValueError("tdmrep.json must be a JSON array of rules")
    rules = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            raise ValueError(f"tdmrep.json rule {i} has no string 'location'")
        reservation = entry.get("tdm-reservation")
        if reservation not in (0, 1):
            raise ValueError(f"tdmrep.json rule {i}: tdm-reservation must be 0 or 1, got {reservation!r}")
        location = entry["location"]
        if not location.startswith("/"):
            location = "/" + location
        policy = entry.get("tdm-policy")
        rules.append(TdmRule(location, reservation == 1, policy if isinstance(policy, str) else None))
    return tuple(rules)


def tdm_rules_reserve(rules: Iterable[TdmRule], path: str) -> bool:
    """The reservation of the first rule whose location matches `path` (none matching: not reserved)."""
    return next((rule.reserved for rule in rules if rule.matches(path)), False)


@functools.lru_cache(maxsize=4096)
def _robots_pattern(location: str) -> re.Pattern[str]:
    """A robots.txt-style path pattern: `*` matches any run of characters, a final `$` anchors."""
    anchored = location.endswith("$")
    body = location[:-1] if anchored else location
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))
