"""Connected components of links, each keeping one member by rank: the union-find step every
dedup level ends with (as DataTrove's MinHash cluster step does).

- `resolve_ranked`: positions linked in pairs → (removed uid, kept uid, group id = kept uid) rows;
  each component keeps its lowest (rank, uid).
- `Link` and `resolve_links`: the same over uid links that carry each side's rank and the evidence
  that linked them, with a readable `detail` for every removed uid.
- `ConnectedComponents` (Beam): `resolve_links` over links spread across workers, by min-label
  propagation; only the links of components the rounds did not finish are ever gathered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam


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


def _detail(kept: str, evidence: str, partner: str, where: str) -> str:
    return f"duplicate of {kept}; {evidence} to {partner}{where}"


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
        resolved.append(Resolved(removed, kept, _detail(kept, found, partner, where)))
    return resolved


# ---------------------------------------------------------------- in Beam, without one worker

#: A link on the wire: plain tuples keep Beam's coders deterministic and off pickle.
_Edge = tuple[str, str, str, Any, Any]  # (a, b, evidence, rank_a, rank_b)
#: A node's label: the (rank, uid) of the best member of its component found so far.
_Label = tuple[Any, str]


def _edge(link: Link) -> _Edge:
    return (link.a, link.b, link.evidence, link.rank_a, link.rank_b)


def _labels(edge: _Edge) -> Iterator[tuple[str, _Label]]:
    a, b, _, rank_a, rank_b = edge
    yield a, (rank_a, a)
    yield b, (rank_b, b)


def _neighbours(edge: _Edge) -> Iterator[tuple[str, str]]:
    yield edge[0], edge[1]
    yield edge[1], edge[0]


def _incident(edge: _Edge) -> Iterator[tuple[str, tuple[str, str, str]]]:
    a, b, evidence = edge[0], edge[1], edge[2]
    yield a, (a, b, evidence)
    yield b, (a, b, evidence)


def _send(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, _Label]]:
    """One round of min-label propagation: a node's label to itself and to each neighbour."""
    uid, joined = element
    for label in joined["label"]:
        yield uid, label
        for neighbours in joined["adjacent"]:
            for other in neighbours:
                yield other, label


def _label_pair(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, tuple[str, _Label]]]:
    """Each edge keyed by its second end, carrying its first end's label."""
    _, joined = element
    for label in joined["label"]:
        for b in joined["edges"]:
            yield b, (b, label)


def _differing(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[_Label, _Label]]:
    _, joined = element
    for label in joined["label"]:
        for _, other in joined["from"]:
            if other != label:
                yield (min(label, other), max(label, other))


def _merge_labels(pairs: Iterable[tuple[_Label, _Label]]) -> dict[_Label, _Label]:
    """The few edges still joining two labels after the rounds: each label → its component's least."""
    parent: dict[_Label, _Label] = {}

    def find(label: _Label) -> _Label:
        parent.setdefault(label, label)
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    for x, y in pairs:
        root_x, root_y = find(x), find(y)
        if root_x != root_y:
            parent[max(root_x, root_y)] = min(root_x, root_y)
    return {label: find(label) for label in parent}


def _resolved(element: tuple[str, dict[str, list[Any]]], where: str) -> Iterator[Resolved]:
    uid, joined = element
    for (_, kept), (a, b, evidence) in zip(joined["label"], joined["first"], strict=True):
        if kept != uid:
            partner = b if a == uid else a
            yield Resolved(uid, kept, _detail(kept, evidence, partner, where))


class ConnectedComponents(beam.PTransform):
    """`Link`s → `Resolved` rows, the same as `resolve_links` gives, with no step holding them all.

    Min-label propagation: every node starts with its own (rank, uid) and, for `rounds` rounds,
    takes the least label among itself and its neighbours (a join per round, keyed by uid). Near
    duplicates form small, shallow groups, so almost every component has its final label by then;
    the edges whose two ends still disagree (a chain longer than the rounds) are the only thing
    gathered, and a union-find over their labels finishes those components. Each removed uid gets
    its first link (by uid pair, then evidence) as the evidence, as `resolve_links` does.
    """

    def __init__(self, where: str = "", rounds: int = 6):
        super().__init__()
        self._where = where
        self._rounds = rounds

    def expand(self, links: beam.PCollection) -> beam.PCollection:
        edges = links | "Edges" >> beam.Map(_edge) | "DistinctEdges" >> beam.Distinct()
        labels = edges | "Ends" >> beam.FlatMap(_labels) | "Own" >> beam.CombinePerKey(min)
        adjacent = edges | "Neighbours" >> beam.FlatMap(_neighbours) | "Adjacent" >> beam.GroupByKey()
        for round_ in range(self._rounds):
            labels = (
                {"label": labels, "adjacent": adjacent}
                | f"Join{round_}" >> beam.CoGroupByKey()
                | f"Send{round_}" >> beam.FlatMap(_send)
                | f"Least{round_}" >> beam.CombinePerKey(min)
            )
        by_first = edges | "ByFirst" >> beam.Map(lambda edge: (edge[0], edge[1]))
        from_first = (
            {"label": labels, "edges": by_first}
            | "JoinFirst" >> beam.CoGroupByKey()
            | "FirstLabels" >> beam.FlatMap(_label_pair)
        )
        merged = (
            {"label": labels, "from": from_first}
            | "JoinSecond" >> beam.CoGroupByKey()
            | "Differing" >> beam.FlatMap(_differing)
            | "Remainder" >> beam.combiners.ToList()
            | "MergeLabels" >> beam.Map(_merge_labels)
        )
        final = labels | "Finish" >> beam.Map(
            lambda kv, remap: (kv[0], remap.get(kv[1], kv[1])), remap=beam.pvalue.AsSingleton(merged)
        )
        first = edges | "Incident" >> beam.FlatMap(_incident) | "FirstLink" >> beam.CombinePerKey(min)
        return (
            {"label": final, "first": first}
            | "JoinEvidence" >> beam.CoGroupByKey()
            | "Resolved" >> beam.FlatMap(_resolved, where=self._where)
        )
