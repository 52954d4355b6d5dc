"""Scoring a pipeline's duplicate groups against the sample web's planted ones.

`duplicate_pair_scores(rows, truth)`: pair precision and recall. Predicted pairs are the pairs of
output rows sharing a `dup_group`; true pairs are the pairs of rows sharing a planted `dup_group`
(with `exact_only`, only the original and its byte-identical copies). Only rows that reached the
dedup stage count: kept ones and the ones it removed.

`shared_object_false_positives(rows, truth)`: among pairs of distinct scenes (not one planted
group) that share at least one object, the share the pipeline put into one group, and how many
such pairs there were.

`noise_scores(rows, truth)`: the noise stage against the planted caption noise (mismatched and
partial captions): see `NoiseScores`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from sampleweb.captions import mentioned_concepts

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


# --------------------------------------------------------------------------- the noise stage

_CHOSEN = {"completed": "caption_completed", "generated": "caption_pseudo", "neighbour": "caption_pseudo"}


def chosen_caption(row: Mapping[str, Any]) -> str | None:
    """The caption an output row's tar holds (`Sample.chosen_caption` on a metadata row)."""
    column = _CHOSEN.get(row.get("caption_source") or "")
    if row.get("caption_source") == "bow":
        column = "caption_bow"
    if column and row.get(column) is not None:
        return row[column]
    return row["caption_clean"] if row.get("caption_clean") is not None else row.get("caption")


def roc_auc(positives: Iterable[float], negatives: Iterable[float]) -> float:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney U)."""
    pos, neg = sorted(positives), sorted(negatives)
    if not pos or not neg:
        return float("nan")
    below = ties = 0.0
    i = j = 0
    for value in pos:
        while i < len(neg) and neg[i] < value:
            i += 1
        while j < len(neg) and neg[j] <= value:
            j += 1
        below += i
        ties += j - i
    return (below + 0.5 * ties) / (len(pos) * len(neg))


def _recall_f1(found: set[str], true: set[str]) -> tuple[float, float]:
    hits = len(found & true)
    recall = hits / len(true) if true else 1.0
    precision = hits / len(found) if found else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return recall, f1


@dataclasses.dataclass(frozen=True)
class NoiseScores:
    """How the noise stage did against the planted caption noise (see `noise_scores`)."""

    auc_noise_prob: float
    auc_clip_score: float
    mismatched: int
    clean: int
    partial: int
    partial_recall_original: float
    partial_recall_chosen: float
    replaced_mismatched: int
    dropped_mismatched: int
    replacement_f1: float
    clean_unchanged: float
    #: Share of the clean captions whose shipped caption names a concept that is not in the scene.
    clean_foreign: float


def noise_scores(rows: Iterable[Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]]) -> NoiseScores:
    """Scores over the rows the noise stage judged (`noise_prob` set).

    * ROC-AUC of `noise_prob` (and of `-clip_score`) for mismatched captions against clean ones;
    * on partial captions: mean concept recall of the original caption and of the chosen one
      against the true scene (concepts named, in any language: `mentioned_concepts`);
    * on mismatched captions the stage replaced: mean concept F1 of the replacement;
    * the share of clean captions kept exactly as they were, and the share whose shipped caption
      names a concept the scene does not hold (a word added that is not in the image).
    """
    judged = [r for r in rows if r.get("noise_prob") is not None]
    by_noise: dict[str, list[Mapping[str, Any]]] = {}
    for row in judged:
        by_noise.setdefault(truth[row["url"]]["noise"], []).append(row)
    mismatched, clean, partial = (by_noise.get(n, []) for n in ("mismatched", "none", "partial"))
    scene = {url: set(truth[url]["concepts"]) for url in (r["url"] for r in judged)}
    partial_original = [
        _recall_f1(mentioned_concepts(r["caption_original"]), scene[r["url"]])[0] for r in partial
    ]
    partial_chosen = [
        _recall_f1(mentioned_concepts(chosen_caption(r)), scene[r["url"]])[0]
        for r in partial
        if r["status"] == "success"
    ]
    replaced = [r for r in mismatched if r["caption_source"] in ("neighbour", "generated", "bow")]
    f1 = [_recall_f1(mentioned_concepts(chosen_caption(r)), scene[r["url"]])[1] for r in replaced]
    unchanged = [r["caption_source"] == "original" for r in clean]
    shipped = [r for r in clean if r["status"] == "success"]
    foreign = [bool(mentioned_concepts(chosen_caption(r)) - scene[r["url"]]) for r in shipped]
    return NoiseScores(
        auc_noise_prob=roc_auc([r["noise_prob"] for r in mismatched], [r["noise_prob"] for r in clean]),
        auc_clip_score=roc_auc([-r["clip_score"] for r in mismatched], [-r["clip_score"] for r in clean]),
        mismatched=len(mismatched),
        clean=len(clean),
        partial=len(partial),
        partial_recall_original=_mean(partial_original),
        partial_recall_chosen=_mean(partial_chosen),
        replaced_mismatched=len(replaced),
        dropped_mismatched=sum(r["reason"] == "noisy_pair" for r in mismatched),
        replacement_f1=_mean(f1),
        clean_unchanged=_mean(unchanged),
        clean_foreign=_mean(foreign),
    )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
