"""Connected components of links, each keeping one member by rank: the union-find step every
dedup level ends with (as DataTrove's MinHash cluster step does).

- `resolve_ranked`: positions linked in pairs → (removed uid, kept uid, group id = kept uid) rows;
  each component keeps its lowest (rank, uid).
- `Link` and `resolve_links`: the same over uid links that carry each side's rank and the evidence
  that linked them, with a readable `detail` for every removed uid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Link(NamedTuple):
    """Two uids found to be copies, a < b: their ranks (lower is kept) and what linked them."""

    a: str
    rank_a: Any
    b: str
    rank_b: Any
    evidence: str


class Resolved(NamedTuple):
    """A uid its component does not keep: the uid kept, and why they are linked."""

    removed: str
    kept: str
    detail: str


def _find(parent: list[int], item: int) -> int:
    while parent[item] != item:
        parent[item] = parent[parent[item]]
        item = parent[item]
    return item


def resolve_ranked(
    uids: Sequence[str], links: Iterable[tuple[int, int]], primary: Sequence[Any]
) -> list[tuple[str, str, str]]:
    """Groups the linked positions (connected components); each group keeps its lowest (rank, uid).

    Rows are (removed uid, kept uid, group id = kept uid), sorted by group, then removed uid.
    """
    parent = list(range(len(uids)))
    for a, b in links:
        root_a, root_b = _find(parent, a), _find(parent, b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    groups: dict[int, list[int]] = {}
    for item in range(len(uids)):
        groups.setdefault(_find(parent, item), []).append(item)

    def rank(item: int) -> tuple[Any, str]:
        return (primary[item], uids[item])

    removed = []
    for members in groups.values():
        if len(members) > 1:
            kept = uids[min(members, key=rank)]
            removed += [(uids[item], kept, kept) for item in members if uids[item] != kept]
    return sorted(removed, key=lambda row: (row[2], row[0]))


def resolve_links(links: Iterable[Link], where: str = "") -> list[Resolved]:
    """The components of `links`; each keeps its lowest (rank, uid), the others are removed.

    A removed uid's detail names the uid kept and the first link (by uid pair) that joined it:
    "duplicate of K; <evidence> to P<where>".
    """
    ordered = sorted(set(links), key=lambda link: (link.a, link.b, link.evidence))
    uids = sorted({link.a for link in ordered} | {link.b for link in ordered})
    position = {uid: index for index, uid in enumerate(uids)}
    ranks: list[Any] = [None] * len(uids)
    evidence: dict[str, tuple[str, str]] = {}
    for link in ordered:
        ranks[position[link.a]], ranks[position[link.b]] = link.rank_a, link.rank_b
        evidence.setdefault(link.a, (link.b, link.evidence))
        evidence.setdefault(link.b, (link.a, link.evidence))
    pairs = [(position[link.a], position[link.b]) for link in ordered]
    resolved = []
    for removed, kept, _ in resolve_ranked(uids, pairs, ranks):
        partner, found = evidence[removed]
        resolved.append(Resolved(removed, kept, f"duplicate of {kept}; {found} to {partner}{where}"))
    return resolved
