"""Connected components of links, each keeping one member by rank: the union-find step every
dedup level ends with (as DataTrove's MinHash cluster step does).

- `resolve_ranked`: positions linked in pairs → (removed uid, kept uid, group id = kept uid) rows;
  each component keeps its lowest (rank, uid).
- `Link` and `resolve_links`: the same over uid links that carry each side's rank and the evidence
  that linked them, with a readable `detail` for every removed uid.
- `spanning_pairs` / `forest_pairs`: the links a unit of work (a tile, a bucket) needs to emit: a
  spanning forest of its pairs, not every pair, so its output grows linearly in a group's size.
- `ConnectedComponents` (Beam): `resolve_links` over links spread across workers, by alternating
  large-star and small-star steps; nothing is gathered onto one worker, and no key groups more
  than about `PART_ELEMENTS` elements, whatever a component's size (`PartedGroups`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import apache_beam as beam
import numpy as np
import xxhash


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

_T = TypeVar("_T", bound=Hashable)

#: A node of the components graph: (order, uid, rank). The order is a hash of the uid (ties by
#: uid), so the label of a component is a pseudo-random member, whatever the ranks along a chain.
_Node = tuple[int, str, Any]
#: An edge, its two nodes in order: (smaller, larger).
_Edge = tuple[_Node, _Node]

#: Large-star/small-star alternations `ConnectedComponents` runs by default. Random node orders
#: settle a path of 10^5 nodes in 13 alternations and of 10^3 in 9 (two more per factor of 10);
#: near-duplicate groups, nearly cliques, settle in two or three.
ALTERNATIONS = 16


class ComponentsNotSettledError(RuntimeError):
    """The alternations ran out before every component was a star: the answer would be wrong."""


def node_order(uid: str) -> tuple[int, str]:
    """Where a uid sorts among the nodes of `ConnectedComponents` (a hash, then the uid)."""
    return xxhash.xxh3_64_intdigest(uid.encode()), uid


def spanning_pairs(
    pairs: Iterable[tuple[_T, _T]], joined: Iterable[tuple[_T, _T]] = ()
) -> list[tuple[_T, _T]]:
    """The pairs, in their order, that join two groups not yet joined: a spanning forest of `pairs`.

    `joined` are pairs already known to be connected elsewhere (found by another unit of work);
    they are united first and never returned. The union of `joined` and the result connects
    exactly what `joined` and `pairs` connect, with at most one returned pair per item joined.
    """
    parent: dict[_T, _T] = {}

    def find(item: _T) -> _T:
        parent.setdefault(item, item)
        root = item
        while parent[root] != root:
            root = parent[root]
        while parent[item] != root:
            parent[item], item = root, parent[item]
        return root

    for x, y in joined:
        parent[find(x)] = find(y)
    forest = []
    for x, y in pairs:
        root_x, root_y = find(x), find(y)
        if root_x != root_y:
            parent[root_x] = root_y
            forest.append((x, y))
    return forest


def forest_pairs(
    uids: Sequence[str], pairs: Iterable[tuple[int, int]], joined: Iterable[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The pairs of positions (into `uids`) a unit of work emits instead of all its `pairs`.

    `spanning_pairs` over the pairs taken least end first (by `node_order` of the uids): a
    clique-like group becomes a star around its least member, the shape `ConnectedComponents`
    ends in, so it settles without further rounds. Returned in that order.
    """
    order = [node_order(uid) for uid in uids]

    def key(pair: tuple[int, int]) -> tuple[tuple[int, str], tuple[int, str]]:
        first, second = sorted((order[pair[0]], order[pair[1]]))
        return first, second

    return spanning_pairs(sorted(pairs, key=key), joined)


class ForestOfBlocks:
    """`spanning_pairs` over positions 0..n-1 fed blocks of pairs as index arrays (numpy), for
    tiles of many copies: a block's pairs whose ends are already joined are dropped in one
    vectorised step, so a clique costs array work, not a Python step per pair. Feed the pairs in
    the order `forest_pairs` takes them (positions sorted by `node_order`, then row-major)."""

    def __init__(self, n: int):
        self._parent = np.arange(n, dtype=np.int64)

    def _roots(self, items: np.ndarray) -> np.ndarray:
        parent = self._parent
        roots = parent[items]
        while True:
            up = parent[roots]
            if np.array_equal(up, roots):
                parent[items] = roots  # path compression
                return roots
            roots = up

    def _find(self, item: int) -> int:
        parent = self._parent
        root = item
        while parent[root] != root:
            root = int(parent[root])
        while parent[item] != root:
            parent[item], item = root, int(parent[item])
        return root

    def add(self, first: np.ndarray, second: np.ndarray, emit: bool = True) -> list[tuple[int, int]]:
        """Joins the pairs (first[k], second[k]) in order; returns those that joined two groups
        (none when `emit` is false: pairs another unit of work connects)."""
        joined = []
        # One row at a time: the row's pairs already joined by the rows before it are dropped at once.
        starts = np.flatnonzero(np.diff(first, prepend=-1)).tolist() + [len(first)]
        for start, stop in zip(starts, starts[1:], strict=False):
            row, cols = first[start:stop], second[start:stop]
            open_ = self._roots(row) != self._roots(cols)
            for x, y in zip(row[open_].tolist(), cols[open_].tolist(), strict=True):
                root_x, root_y = self._find(x), self._find(y)
                if root_x != root_y:
                    self._parent[root_y] = root_x  # under the row's group: stars stay flat
                    if emit:
                        joined.append((x, y))
        return joined


def _node_edge(link: Link) -> _Edge:
    a = (*node_order(link.a), link.rank_a)
    b = (*node_order(link.b), link.rank_b)
    return (a, b) if a[:2] < b[:2] else (b, a)


def _ordered(x: _Node, y: _Node) -> _Edge:
    return (x, y) if x[:2] < y[:2] else (y, x)


def _both_ends(edge: _Edge) -> Iterator[tuple[_Node, _Node]]:
    yield edge[0], edge[1]
    yield edge[1], edge[0]


#: The most elements `PartedGroups` puts under one key: a key with more is cut into parts of about
#: half this many (hashed), each joined with the key's summary. A star's centre holds its whole
#: component, so without parts the largest key would grow with the largest duplicate group.
PART_ELEMENTS = 2048


def _parts(count: int, limit: int) -> int:
    """The parts a key of `count` elements is cut into: 1 up to `limit`, else about `limit // 2`
    elements each (a hashed part then exceeds `limit` with probability under 1e-50)."""
    return 1 if count <= limit else -(-2 * count // limit)


class _CountAnd(beam.CombineFn):  # type: ignore[misc]
    """(count, inner's result) of the values: one combine gives both a key's size and summary."""

    def __init__(self, inner: beam.CombineFn):
        super().__init__()
        self._inner = inner

    def create_accumulator(self) -> tuple[int, Any]:
        return 0, self._inner.create_accumulator()

    def add_input(self, accumulator: tuple[int, Any], value: Any) -> tuple[int, Any]:
        return accumulator[0] + 1, self._inner.add_input(accumulator[1], value)

    def merge_accumulators(self, accumulators: Iterable[tuple[int, Any]]) -> tuple[int, Any]:
        counts, inner = zip(*accumulators, strict=True)
        return sum(counts), self._inner.merge_accumulators(inner)

    def extract_output(self, accumulator: tuple[int, Any]) -> tuple[int, Any]:
        return accumulator[0], self._inner.extract_output(accumulator[1])


def _split_key(element: tuple[Any, Any], hot: dict[Any, int], spread: Any) -> tuple[tuple[Any, int], Any]:
    key, value = element
    parts = hot.get(key, 1)
    return (key, spread(value) % parts if parts > 1 else 0), value


def _heads(element: tuple[Any, tuple[int, Any]], limit: int) -> Iterator[tuple[tuple[Any, int], Any]]:
    key, (count, summary) = element
    for part in range(_parts(count, limit)):
        yield (key, part), summary


def _hot(element: tuple[Any, tuple[int, Any]], limit: int) -> Iterator[tuple[Any, int]]:
    key, (count, _) = element
    if count > limit:
        yield key, _parts(count, limit)


def _parted(
    element: tuple[tuple[Any, int], dict[str, list[Any]]],
) -> Iterator[tuple[Any, Any, int, list[Any]]]:
    (key, part), joined = element
    for summary in joined["head"]:
        yield key, summary, part, joined["values"]


class PartedGroups(beam.PTransform):
    """(key, value) pairs → (key, summary, part, values): each key's values grouped, with the
    key's summary (`summary`, a CombineFn over all its values) beside them, as `GroupByKey` then a
    combine over each group would give, except that a key of more than `limit` values comes as
    several parts of about `limit // 2` values each (by `spread(value)`, a hash), every part with
    the same summary and its number (0 for every key; a key's once-only work goes in part 0).

    A skew join (as Spark's and Flink's): the sizes come from a combine, the few large keys reach
    every worker as a side input (at most 2·pairs/`limit` entries), and no key groups more than
    about `limit` values, however large it is."""

    def __init__(self, summary: beam.CombineFn, spread: Any, limit: int | None = None):
        super().__init__()
        self._summary = summary
        self._spread = spread
        self._limit = limit

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        limit = self._limit or PART_ELEMENTS
        stats = pairs | "Summary" >> beam.CombinePerKey(_CountAnd(self._summary))
        hot = beam.pvalue.AsDict(stats | "LargeKeys" >> beam.FlatMap(_hot, limit=limit))
        values = pairs | "Split" >> beam.Map(_split_key, hot=hot, spread=self._spread)
        heads = stats | "PerPart" >> beam.FlatMap(_heads, limit=limit)
        return (
            {"head": heads, "values": values}
            | "Parts" >> beam.CoGroupByKey()
            | "WithSummary" >> beam.FlatMap(_parted)
        )


def _least(nodes: Iterable[_Node]) -> _Node:
    return min(nodes, key=lambda n: n[:2])


def _order(node: _Node) -> tuple[int, str]:
    """Where a node sorts: its `node_order` (the rank never decides)."""
    return node[0], node[1]


class Least(beam.CombineFn):  # type: ignore[misc]
    """The least of the values (`min`, by `key` if given); None for none."""

    def __init__(self, key: Callable[[Any], Any] | None = None):
        super().__init__()
        self._key = key

    def create_accumulator(self) -> Any:
        return None

    def add_input(self, accumulator: Any, value: Any) -> Any:
        return self.merge_accumulators([accumulator, value])

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        found = [a for a in accumulators if a is not None]
        if not found:
            return None
        return min(found, key=self._key) if self._key else min(found)

    def extract_output(self, accumulator: Any) -> Any:
        return accumulator


class _Extremes(beam.CombineFn):  # type: ignore[misc]
    """(least, greatest) node of the values."""

    def create_accumulator(self) -> tuple[_Node, _Node] | None:
        return None

    def add_input(self, accumulator: tuple[_Node, _Node] | None, node: _Node) -> tuple[_Node, _Node] | None:
        return self.merge_accumulators([accumulator, (node, node)])

    def merge_accumulators(
        self, accumulators: Iterable[tuple[_Node, _Node] | None]
    ) -> tuple[_Node, _Node] | None:
        found = [a for a in accumulators if a is not None]
        if not found:
            return None
        return _least(a[0] for a in found), max((a[1] for a in found), key=lambda n: n[:2])

    def extract_output(self, accumulator: tuple[_Node, _Node] | None) -> tuple[_Node, _Node] | None:
        return accumulator


def _node_spread(node: _Node) -> int:
    return node[0]


def _large_star(element: tuple[_Node, _Node, int, list[_Node]]) -> Iterator[_Edge]:
    """Kiveris et al.'s large-star: each larger neighbour of a node → the least of its neighbourhood
    (the node's least neighbour is the part's summary; the node itself may be less)."""
    node, least_neighbour, _, neighbours = element
    least = _least((least_neighbour, node))
    for other in set(neighbours):
        if other[:2] > node[:2]:
            yield _ordered(other, least)


def _small_star(element: tuple[_Node, _Node, int, list[_Node]]) -> Iterator[_Edge]:
    """Kiveris et al.'s small-star: a node and its smaller neighbours → the least of them (the
    part's summary); the node's own edge comes from its part 0 only."""
    node, least, part, smaller = element
    for other in set(smaller):
        if other != least:
            yield _ordered(other, least)
    if part == 0:
        yield _ordered(node, least)


def _settle(element: tuple[_Node, tuple[_Node, _Node]]) -> Iterator[Any]:
    """A node and its least and greatest neighbour, once the graph is stars → (centre uid, (rank,
    uid)) for the node (a centre names itself). A node that is not yet a star's centre or leaf (a
    smaller neighbour and another one) is `unsettled`."""
    node, (least, greatest) = element
    member = (node[2], node[1])
    if least[:2] > node[:2]:
        yield node[1], member
    elif greatest == least:
        yield least[1], member
    else:
        yield beam.pvalue.TaggedOutput("unsettled", node[1])


def _check_settled(unsettled: int, alternations: int) -> None:
    if unsettled:
        raise ComponentsNotSettledError(
            f"connected components: {unsettled} nodes still not in a star after {alternations} "
            "large-star/small-star alternations; the links hold a chain longer than they settle"
        )


def _kept_of_members(
    element: tuple[str, tuple[Any, str], int, list[tuple[Any, str]]],
) -> Iterator[tuple[str, str]]:
    _, (_, kept), _, members = element
    for _, uid in members:
        yield uid, kept


def _member_spread(member: tuple[Any, str]) -> int:
    return xxhash.xxh3_64_intdigest(member[1].encode())


def _evidence(link: Link) -> Iterator[tuple[str, tuple[str, str, str]]]:
    yield link.a, (link.a, link.b, link.evidence)
    yield link.b, (link.a, link.b, link.evidence)


def _resolved(element: tuple[str, dict[str, list[Any]]], where: str) -> Iterator[Resolved]:
    uid, joined = element
    for kept, (a, b, evidence) in zip(joined["kept"], joined["first"], strict=True):
        if kept != uid:
            partner = b if a == uid else a
            yield Resolved(uid, kept, _detail(kept, evidence, partner, where))


class ConnectedComponents(beam.PTransform):
    """`Link`s → `Resolved` rows, the same as `resolve_links` gives, with no step holding them all.

    Alternating large-star and small-star (Kiveris et al., "Connected Components in MapReduce and
    Beyond", 2014) over the links, one keyed shuffle per step and nothing gathered: the edge count
    never grows, and each component ends as a star around its least node (by `node_order`). A
    fixed number of alternations is built into the job; the check after them fails the job
    (`ComponentsNotSettledError`) rather than return a wrong group if some component did not
    settle. Each star keeps its lowest (rank, uid); each removed uid gets its first link (by uid
    pair, then evidence) as the evidence, as `resolve_links` does. Every grouping by node is a
    `PartedGroups`: a node's neighbours (a star's centre has its whole component) come in parts of
    at most about `limit` (`PART_ELEMENTS`), so no key grows with a duplicate group.
    """

    def __init__(self, where: str = "", alternations: int = ALTERNATIONS, limit: int | None = None):
        super().__init__()
        self._where = where
        self._alternations = alternations
        self._limit = limit

    def expand(self, links: beam.PCollection) -> beam.PCollection:
        edges = links | "Edges" >> beam.Map(_node_edge)
        for step in range(self._alternations):
            edges = (
                edges
                | f"Ends{step}" >> beam.FlatMap(_both_ends)
                | f"Neighbours{step}" >> PartedGroups(Least(_order), _node_spread, self._limit)
                | f"LargeStar{step}" >> beam.FlatMap(_large_star)
                | f"LargerEnd{step}" >> beam.Map(lambda edge: (edge[1], edge[0]))
                | f"Smaller{step}" >> PartedGroups(Least(_order), _node_spread, self._limit)
                | f"SmallStar{step}" >> beam.FlatMap(_small_star)
            )
        settled = (
            edges
            | "FinalEnds" >> beam.FlatMap(_both_ends)
            | "FinalNeighbours" >> beam.CombinePerKey(_Extremes())
            | "Settle" >> beam.FlatMap(_settle).with_outputs("unsettled", main="members")
        )
        _ = (
            settled.unsettled
            | "CountUnsettled" >> beam.combiners.Count.Globally()
            | "CheckSettled" >> beam.Map(_check_settled, alternations=self._alternations)
        )
        kept = (
            settled.members
            | "JoinStars" >> PartedGroups(Least(), _member_spread, self._limit)
            | "KeptOfMembers" >> beam.FlatMap(_kept_of_members)
        )
        first = links | "Incident" >> beam.FlatMap(_evidence) | "FirstLink" >> beam.CombinePerKey(min)
        return (
            {"kept": kept, "first": first}
            | "JoinEvidence" >> beam.CoGroupByKey()
            | "Resolved" >> beam.FlatMap(_resolved, where=self._where)
        )
