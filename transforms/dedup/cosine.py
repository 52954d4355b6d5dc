"""SemDeDup inside one cluster: pairs above a cosine, and one sample kept per group (pure, no Beam).

Semantic deduplication (Abbas et al., 2023) clusters the image embeddings
(`transforms/common/clustering.py`), then compares samples only within a cluster: the work is the
sum of the squared cluster sizes instead of n².

- `similar_pairs` / `similar_pair_arrays`: the pairs of one tile above the threshold, by FAISS
  range search (as sorted tuples, or as two index arrays).
- `cluster_duplicates`: inside one cluster, every pair with cosine >= 1 - epsilon is a duplicate
  link; duplicate groups are the connected components of those links, and each group keeps one
  sample by a policy (`KeepPolicy`). Returns (removed uid, kept uid, group id) rows, the group id
  being the kept uid, and the number of pairwise comparisons made.

Huge clusters (salting): `split_cluster(n, max_size)` cuts the upper triangle of a cluster's pair
matrix into tiles of chunks of at most `max_size` rows, each unordered pair in exactly one tile.
Each tile is an independent unit of work (`similar_pairs` on the two chunks' embeddings), so a
cluster of millions can be fanned out on the tile key; the links of all tiles of a cluster, which
are few, are then brought together for `resolve_duplicates` (union-find and the keep policy). The
result is the same as one `cluster_duplicates` call, which runs the same tiles in a loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import faiss
import numpy as np

from transforms.common.clustering import normalize
from transforms.common.tiling import split_cluster
from transforms.common.unionfind import resolve_ranked
from transforms.dedup.config import KeepPolicy

# Rows per chunk in `cluster_duplicates`: a tile of the pair matrix is at most 2048² float32 (16 MiB).
DEFAULT_BLOCK = 2048


@dataclasses.dataclass(frozen=True)
class ClusterDedup:
    """Duplicates found in one cluster: (removed uid, kept uid, group id) rows and the comparisons made."""

    removed: list[tuple[str, str, str]]
    comparisons: int


def similar_pairs(
    row_embeddings: np.ndarray, col_embeddings: np.ndarray, rows: range, cols: range, epsilon: float
) -> tuple[list[tuple[int, int]], int]:
    """Links (i, j), i < j (cluster positions), with cosine >= 1 - epsilon in one tile; and the comparisons.

    The embeddings are the normalised rows of the tile's two chunks (the same array twice for a
    diagonal tile, where `rows == cols` and only pairs above the diagonal count). The pairs come
    from a FAISS range search over an exact inner-product index of the columns (blocked, so the
    tile's full similarity matrix is never held), sorted.
    """
    found_rows, found_cols, comparisons = similar_pair_arrays(
        row_embeddings, col_embeddings, rows == cols, epsilon
    )
    links = sorted((rows[i], cols[j]) for i, j in zip(found_rows.tolist(), found_cols.tolist(), strict=True))
    return links, comparisons


def similar_pair_arrays(
    row_embeddings: np.ndarray, col_embeddings: np.ndarray, diagonal: bool, epsilon: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """`similar_pairs` as two arrays of (row, col) indices into the two blocks, sorted by row then
    col, and the comparisons: no Python object per pair, for tiles of many copies."""
    threshold = np.float32(1.0 - epsilon)
    index = faiss.IndexFlatIP(col_embeddings.shape[1])
    index.add(np.ascontiguousarray(col_embeddings, dtype=np.float32))
    # FAISS keeps inner products above the radius; the next float down keeps those equal to it.
    radius = float(np.nextafter(threshold, np.float32(-np.inf)))
    limits, similarities, ids = index.range_search(
        np.ascontiguousarray(row_embeddings, dtype=np.float32), radius
    )
    found_rows = np.repeat(np.arange(len(row_embeddings)), np.diff(limits).astype(np.int64))
    keep = similarities >= threshold
    found_rows, found_cols = found_rows[keep], ids[keep]
    n_rows, n_cols = len(row_embeddings), len(col_embeddings)
    if diagonal:
        above = found_cols > found_rows
        found_rows, found_cols = found_rows[above], found_cols[above]
        comparisons = n_rows * (n_rows - 1) // 2
    else:
        comparisons = n_rows * n_cols
    order = np.lexsort((found_cols, found_rows))
    return found_rows[order].astype(np.int64), found_cols[order].astype(np.int64), comparisons


def _keep_ranks(
    n: int, keep: KeepPolicy, clip_scores: Sequence[float | None] | None, centroid_cosines: np.ndarray | None
) -> list[float]:
    """Per position, the value the keep policy minimises (before the uid tie-break)."""
    if keep == "first_uid":
        return [0.0] * n
    if keep == "clip_score":
        if clip_scores is None or len(clip_scores) != n:
            raise ValueError("keep='clip_score' needs one clip score per uid")
        return [math.inf if score is None or math.isnan(score) else -float(score) for score in clip_scores]
    if keep == "farthest":
        if centroid_cosines is None or len(centroid_cosines) != n:
            raise ValueError("keep='farthest' needs one centroid cosine per uid")
        return [float(cosine) for cosine in centroid_cosines]
    raise ValueError(f"unknown keep policy {keep!r}")


def resolve_duplicates(
    uids: Sequence[str],
    links: Sequence[tuple[int, int]],
    keep: KeepPolicy,
    clip_scores: Sequence[float | None] | None = None,
    centroid_cosines: np.ndarray | None = None,
) -> list[tuple[str, str, str]]:
    """Groups the linked positions (connected components) and keeps one sample per group.

    `clip_score` keeps the highest score (a missing or NaN score counts as lowest), `farthest` the lowest
    cosine to the centroid, `first_uid` the smallest uid; ties go to the smallest uid. Rows are
    (removed uid, kept uid, group id = kept uid), sorted.
    """
    return resolve_ranked(uids, links, _keep_ranks(len(uids), keep, clip_scores, centroid_cosines))


def cluster_duplicates(
    uids: Sequence[str],
    embeddings: np.ndarray,
    epsilon: float,
    keep: KeepPolicy,
    clip_scores: Sequence[float | None] | None = None,
    centroid: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK,
) -> ClusterDedup:
    """The duplicates of one cluster: samples with cosine >= 1 - epsilon, chained, one kept per group.

    `clip_scores` is needed for `keep="clip_score"`. For `keep="farthest"` the cosine to `centroid`
    ranks the samples; without a centroid the normalised mean of the cluster's embeddings is used.
    Comparisons are n(n - 1)/2, computed `block_size` rows at a time.
    """
    if len(set(uids)) != len(uids):
        raise ValueError("uids must be distinct")
    if len(embeddings) != len(uids):
        raise ValueError(f"{len(uids)} uids but {len(embeddings)} embeddings")
    if not uids:
        return ClusterDedup(removed=[], comparisons=0)
    if keep == "clip_score" and (clip_scores is None or len(clip_scores) != len(uids)):
        raise ValueError("keep='clip_score' needs one clip score per uid")
    points = normalize(embeddings)
    links: list[tuple[int, int]] = []
    comparisons = 0
    for rows, cols in split_cluster(len(uids), block_size):
        tile_links, tile_comparisons = similar_pairs(
            points[rows.start : rows.stop], points[cols.start : cols.stop], rows, cols, epsilon
        )
        links += tile_links
        comparisons += tile_comparisons
    centroid_cosines = None
    if keep == "farthest":
        center = normalize(points.mean(axis=0) if centroid is None else centroid)[0]
        centroid_cosines = points @ center
    removed = resolve_duplicates(uids, links, keep, clip_scores, centroid_cosines)
    return ClusterDedup(removed=removed, comparisons=comparisons)
