"""Cross-modal neighbour agreement: does a caption agree with the captions of similar images?

For a clean pair, the k nearest images carry captions close to its own caption, and the k
nearest captions belong to images close to its own image; a mismatched caption disagrees with
both. Winnow measures the two agreements in Beam, without a global index:

1. `ClusterMembers` (`transforms/common/partition.py`, shared with the semantic dedup level):
   spherical k-means (FAISS) on a deterministic sample of one modality's embeddings, refined per
   oversized cell on the workers, so clusters stay near `cluster_size` at any n; each member
   goes to its nearest centroid.
2. `Assign`: a cluster expected to exceed `max_group_size` is cut into chunks by uid hash, and
   a member's neighbours are then looked up in its chunk (the neighbours of an oversized
   cluster's member are still members of its cluster).
3. `GroupByKey` by (cluster, chunk), then `Neighbours`: the k nearest members by cosine in the
   searched modality (exact inner product, FAISS flat index), and the agreement: the mean cosine of
   the member's *other* modality to theirs.

`NeighbourAgreement("image")` gives the caption agreement (neighbours by image, captions
compared) and each member's image neighbours with their cosines (the candidates for a transferred
caption); `NeighbourAgreement("text")` gives the image agreement.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np

from transforms.common.clustering import normalize, vectors
from transforms.common.partition import ClusterMembers, Placed
from transforms.common.progress import NAMESPACE
from transforms.common.tiling import chunk_of, chunks_for

#: A member: (uid, float16 image embedding bytes, float16 text embedding bytes).
Member = tuple[str, bytes, bytes]
#: What one search gives a member: (uid, agreement, ((neighbour uid, cosine), ...)).
Agreement = tuple[str, "float | None", tuple[tuple[str, float], ...]]
Space = Literal["image", "text"]


def _column(members: Iterable[Member], column: int) -> list[bytes]:
    """Column 1 (image) or 2 (text) of the members: their float16 embedding bytes."""
    return [m[1] if column == 1 else m[2] for m in members]


def knn_agreement(uids: Sequence[str], searched: np.ndarray, other: np.ndarray, k: int) -> list[Agreement]:
    """For each row: its `k` nearest other rows by cosine of `searched`, and the mean cosine of its
    `other` embedding to theirs. Ties are broken by uid, so the result is deterministic."""
    import faiss

    n = len(uids)
    if n < 2 or k < 1:
        return [(uid, None, ()) for uid in uids]
    searched, other = normalize(searched), normalize(other)
    index = faiss.IndexFlatIP(searched.shape[1])
    index.add(searched)
    wanted = min(n, k + 1)
    sims, ids = index.search(searched, wanted)
    out: list[Agreement] = []
    for row in range(n):
        found = [(float(s), int(j)) for s, j in zip(sims[row], ids[row], strict=True) if j >= 0 and j != row]
        found.sort(key=lambda item: (-round(item[0], 6), uids[item[1]]))
        found = found[:k]
        if not found:
            out.append((uids[row], None, ()))
            continue
        cols = np.array([j for _, j in found])
        agreement = float(np.mean(other[cols] @ other[row]))
        out.append((uids[row], agreement, tuple((uids[j], round(s, 6)) for s, j in found)))
    return out


class _ChunkFn(beam.DoFn):
    """Members placed in their clusters → keyed by (cluster, chunk), a batch's members of a key together."""

    def __init__(self, max_group_size: int):
        self._max = max_group_size

    def process(self, batch: list[Placed]) -> Iterator[tuple[tuple[int, int], list[Member]]]:
        groups: dict[tuple[int, int], list[Member]] = {}
        for cluster, expected_size, _, item in batch:
            chunks = chunks_for(expected_size, self._max)
            groups.setdefault((cluster, chunk_of(item[0], chunks)), []).append(item)
        yield from groups.items()


class _NeighboursFn(beam.DoFn):
    def __init__(self, column: int, k: int, keep_neighbours: bool):
        self._column = column
        self._k = k
        self._keep = keep_neighbours

    def setup(self) -> None:
        self._comparisons = beam.metrics.Metrics.counter(NAMESPACE, "noise/neighbour_comparisons")

    def process(self, element: tuple[Any, Iterable[list[Member]]]) -> Iterator[Agreement]:
        _, parts = element
        members = sorted({m[0]: m for part in parts for m in part}.values())
        uids = [m[0] for m in members]
        searched = vectors(_column(members, self._column))
        other = vectors(_column(members, 3 - self._column))
        self._comparisons.inc(len(members) ** 2)
        for uid, agreement, neighbours in knn_agreement(uids, searched, other, self._k):
            yield uid, agreement, neighbours if self._keep else ()


class NeighbourAgreement(beam.PTransform):
    """`Member`s → `Agreement`s: neighbours searched in `space`, the other modality compared."""

    def __init__(
        self,
        space: Space,
        k: int,
        cluster_size: int,
        max_group_size: int,
        kmeans_sample: int,
        seed: int = 0,
        iterations: int = 20,
    ):
        super().__init__()
        self._column = 1 if space == "image" else 2
        self._space = space
        self._k = k
        self._cluster_size = cluster_size
        self._max = max_group_size
        self._sample = kmeans_sample
        self._seed = seed
        self._iterations = iterations

    def expand(self, members: beam.PCollection) -> beam.PCollection:
        return (
            members
            | "Cluster"
            >> ClusterMembers(
                embedding=operator.itemgetter(self._column),
                sample_size=self._sample,
                cluster_size=self._cluster_size,
                seed=self._seed,
                iterations=self._iterations,
            )
            | "Assign" >> beam.ParDo(_ChunkFn(self._max))
            | "GroupClusters" >> beam.GroupByKey()
            | "Neighbours" >> beam.ParDo(_NeighboursFn(self._column, self._k, self._space == "image"))
        )
