"""The `dedup` section, and the keep rule of a duplicate group."""

from __future__ import annotations

import dataclasses
from typing import Literal

from transforms.common.checks import Check

KeepPolicy = Literal["clip_score", "farthest", "first_uid"]
#: `max_hash_distance` when unset: imagehash's customary 10 of 64 bits, Meta's 31 of 256 for PDQ.
DEFAULT_HASH_DISTANCE = {"dhash": 10, "phash": 10, "pdq": 31}


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """The `dedup` section."""

    #: Remove samples whose decoded pixels equal another's (`exact_duplicate`).
    exact: bool = True
    #: Remove samples whose perceptual hash and thumbnail match another's (`near_duplicate`).
    perceptual: bool = True
    #: Remove samples whose image embedding is within `epsilon` of another's (`semantic_duplicate`).
    semantic: bool = True
    #: The perceptual hash: `dhash` (gradients) or `phash` (DCT), 64 bits as `imagehash` computes
    #: them, or `pdq` (Meta's PDQ, 256 bits; hashes of quality <= 49 are not compared).
    hash: Literal["dhash", "phash", "pdq"] = "dhash"
    #: Most differing hash bits between near-duplicates (0 to `hash_bits` - 1); None: the hash's
    #: default, 10 for dhash/phash and 31 for pdq (Meta's documented match threshold). Read it
    #: through `max_distance`.
    max_hash_distance: int | None = None
    #: How the perceptual level finds the pairs it compares. `clusters`: only inside blocks of
    #: about `cluster_size` samples, a k-means of the thumbnail signatures (the semantic level's
    #: cluster settings), each sample in its two nearest clusters; work per sample stays flat as
    #: n grows, and a pair whose thumbnails fall in two clusters apart is missed.
    #: `bands`: every pair sharing one of `hash_bands` LSH bands (exhaustive, but the buckets
    #: grow with n; 64-bit hashes only).
    near_blocking: Literal["clusters", "bands"] = "clusters"
    #: LSH bands of the hash (`near_blocking: bands`); 0: `max_hash_distance + 1`, which finds
    #: every pair within the distance. Fewer, wider bands make smaller buckets and may miss pairs
    #: near the distance.
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
        check.between(0, self.hash_bits - 1, "max_hash_distance")
        if self.max_hash_distance is None:  # the hash's own default, recorded as such
            object.__setattr__(self, "max_hash_distance", DEFAULT_HASH_DISTANCE[self.hash])
        check.between(0, self.max_distance + 1, "hash_bands")
        if self.hash_bands and self.hash_bits != 64:
            raise ValueError(
                f"dedup.hash_bands ({self.hash_bands}) applies to 64-bit hashes only; dedup.hash "
                f"({self.hash}) has {self.hash_bits} bits: leave hash_bands at 0"
            )
        if self.near_blocking == "bands" and self.hash_bits != 64:
            raise ValueError(
                f"dedup.near_blocking (bands) needs a 64-bit hash; dedup.hash ({self.hash}) has "
                f"{self.hash_bits} bits: use near_blocking: clusters"
            )
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
    def max_distance(self) -> int:
        """The effective `max_hash_distance`: the one set, or the hash's default."""
        distance = self.max_hash_distance
        return DEFAULT_HASH_DISTANCE[self.hash] if distance is None else distance

    @property
    def bands(self) -> int:
        return self.hash_bands or self.max_distance + 1
