"""Scoring a pipeline's duplicate groups against the sample web's planted ones.

`duplicate_pair_scores(rows, truth)`: pair precision and recall. Predicted pairs are the pairs of
output rows sharing a `dup_group`; true pairs are the pairs of rows sharing a planted `dup_group`
(with `exact_only`, only the original and its byte-identical copies). Only rows that reached the
dedup stage count: kept ones and the ones it removed.

`shared_object_false_positives(rows, truth)`: among pairs of distinct scenes (not one planted
group) that share at least one object, the share the pipeline put into one group, and how many
such pairs there were.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

EXACT_VARIANTS = ("original", "exact")


def _reached(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["status"] == "success" or r["stage"] == "dedup"]


def _pairs(groups: Mapping[Any, list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for urls in groups.values() for p in itertools.combinations(sorted(urls), 2)}


def duplicate_pair_scores(
    rows: Iterable[Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]], exact_only: bool = False
) -> tuple[float, float]:
    """(precision, recall) of the output's duplicate pairs against the planted ones."""
    predicted: dict[str, list[str]] = {}
    planted: dict[int, list[str]] = {}
    for row in _reached(rows):
        if row["dup_group"]:
            predicted.setdefault(row["dup_group"], []).append(row["url"])
        fact = truth[row["url"]]
        if fact["dup_group"] != -1 and (not exact_only or fact["dup_variant"] in EXACT_VARIANTS):
            planted.setdefault(fact["dup_group"], []).append(row["url"])
    found, true = _pairs(predicted), _pairs(planted)
    return len(found & true) / max(1, len(found)), len(found & true) / max(1, len(true))


def shared_object_false_positives(
    rows: Iterable[Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]]
) -> tuple[float, int]:
    """(share merged, number of pairs) over pairs of distinct scenes sharing an object."""
    reached = _reached(rows)
    pairs = merged = 0
    for a, b in itertools.combinations(reached, 2):
        fa, fb = truth[a["url"]], truth[b["url"]]
        if fa["dup_group"] != -1 and fa["dup_group"] == fb["dup_group"]:
            continue
        objects = {c for c in fa["concepts"] if not c.endswith("background")}
        if objects & set(fb["concepts"]):
            pairs += 1
            merged += bool(a["dup_group"]) and a["dup_group"] == b["dup_group"]
    return merged / max(1, pairs), pairs
