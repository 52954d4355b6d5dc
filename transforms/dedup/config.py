"""The `dedup` section, and the keep rule of a duplicate group."""

from __future__ import annotations

import dataclasses
from typing import Literal

from transforms.common.checks import Check

KeepPolicy = Literal["clip_score", "farthest", "first_uid"]


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """The `dedup` section."""

    #: Remove samples whose decoded pixels equal another's (`exact_duplicate`).
    exact: bool = True
    #: Remove samples whose perceptual hash and thumbnail match another's (`near_duplicate`).
    perceptual: bool = True
    #: Remove samples whose image embedding is within `epsilon` of another's (`semantic_duplicate`).
    semantic: bool = True
    #: The 64-bit perceptual hash (as `imagehash` computes it): `dhash` (gradients) or `phash` (DCT).
    hash: Literal["dhash", "phash"] = "dhash"
    #: Most differing hash bits between near-duplicates.
    max_hash_distance: int = 10
    #: LSH bands of the hash; 0: `max_hash_distance + 1`, which finds every pair within the distance.
    #: Fewer, wider bands make smaller buckets and may miss pairs near the distance.
    hash_bands: int = 0
    #: Least cosine of the two 16x16 mean-removed colour thumbnails that confirms a hash match.
    min_thumbnail_similarity: float = 0.9
    #: Semantic duplicates have image-embedding cosine >= 1 - epsilon (depends on the model).
    epsilon: float = 0.001
    #: k-means clusters; 0: one per `cluster_size` samples (past `kmeans_sample // 39`, a second
    #: k-means per oversized cell on the workers; see `transforms/common/partition.py`).
    clusters: int = 0
    #: Average cluster size aimed at when `clusters` is 0.
    cluster_size: int = 1000
    #: Embeddings the k-means is trained on (a deterministic sample by uid hash).
    kmeans_sample: int = 100_000
    #: k-means iterations.
    kmeans_iterations: int = 20
    #: Clusters and hash buckets larger than this are compared in tiles of this many samples.
    max_group_size: int = 5000
    #: Which sample a semantic group keeps: `clip_score` (highest), `farthest` (from the cluster
    #: centroid, as SemDeDup does) or `first_uid`.
    keep: KeepPolicy = "clip_score"
    #: Seed of the k-means and of the training sample.
    seed: int = 0
    #: Evaluation images to decontaminate against: a folder or glob of image files, WebDataset
    #: tars or Parquet files with an image column (local, s3://, gs://). None: no decontamination.
    eval_images: str | None = None
    #: Least image-embedding cosine that marks a sample as a copy of an evaluation image.
    eval_min_cosine: float = 0.999

    def __post_init__(self) -> None:
        check = Check("dedup", self)
        check.between(0, 63, "max_hash_distance")
        check.between(0, self.max_hash_distance + 1, "hash_bands")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"dedup.epsilon ({self.epsilon!r}) must be in [0, 1)")
        check.at_least(1, "cluster_size", "kmeans_sample", "kmeans_iterations", "max_group_size")
        check.at_least(0, "clusters")
        check.between(-1, 1, "min_thumbnail_similarity", "eval_min_cosine")  # cosines
        check.seed("seed")
        check.not_empty("eval_images")

    @property
    def hash_bits(self) -> int:
        """Bits of the perceptual hash `hash` names (`perceptual.hash_words` takes them)."""
        return 256 if self.hash == "pdq" else 64

    @property
    def bands(self) -> int:
        return self.hash_bands or self.max_hash_distance + 1
