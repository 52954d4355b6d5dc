"""Decontamination at scale: the packed eval set and its FAISS indexes give the same decisions as
the per-candidate LSH loop they replace, on hard generated data (flat images sharing hashes,
near-copies straddling both thresholds, eval images with equal hashes, embedding-only copies).

`legacy_decisions` is the matcher as it was before the index, kept verbatim as the reference;
`benchmarks/decontam.py` times both with it."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.common.clustering import normalize
from transforms.dedup.config import DedupConfig
from transforms.dedup.decontam import _DecontaminateFn, pack_eval_set
from transforms.dedup.perceptual import hamming, hash_bands, signature_similarity
from transforms.dedup.types import EVAL, Decision, Fingerprint

DIM = 16


class LegacyMatcher:
    """The matcher before the FAISS binary index, kept as the reference answer: the eval set's LSH
    buckets, then a Python loop over the candidates of each sample's bands."""

    def __init__(self, evals: Sequence[Fingerprint], config: DedupConfig):
        self.config = config
        self.evals = sorted(evals, key=lambda f: f.uid)
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for position, found in enumerate(self.evals):
            for key in hash_bands(found.hash64, config.bands):
                self.buckets.setdefault(key, []).append(position)
        self.embedded = [i for i, f in enumerate(self.evals) if f.embedding is not None]
        self.points = None
        if self.embedded:
            self.points = normalize(np.stack([self.evals[i].embedding for i in self.embedded]))

    def hash_match(self, found: Fingerprint) -> str | None:
        config = self.config
        seen: set[int] = set()
        for key in hash_bands(found.hash64, config.bands):
            for candidate in self.buckets.get(key, ()):
                if candidate in seen:
                    continue
                seen.add(candidate)
                other = self.evals[candidate]
                distance = hamming(found.hash64, other.hash64)
                if distance > config.max_hash_distance:
                    continue
                similarity = signature_similarity(found.signature, other.signature)
                if similarity >= config.min_thumbnail_similarity:
                    return f"{other.uid}\0hash distance {distance}, thumbnail cosine {similarity:.3f}"
        return None

    def decisions(self, batch: Sequence[tuple[str, Fingerprint]]) -> list[Decision]:
        matches: dict[str, str] = {}
        for uid, found in batch:
            match = self.hash_match(found)
            if match:
                matches[uid] = match
        rest = [(uid, f) for uid, f in batch if f.embedding is not None and uid not in matches]
        if rest and self.points is not None:
            cosines = normalize(np.stack([f.embedding for _, f in rest])) @ self.points.T
            for (uid, _), row in zip(rest, cosines, strict=True):
                best = int(np.argmax(row))
                if row[best] >= self.config.eval_min_cosine:
                    name = self.evals[self.embedded[best]].uid
                    matches[uid] = f"{name}\0embedding cosine {float(row[best]):.4f}"
        decisions = []
        for uid in sorted(matches):
            name, evidence = matches[uid].split("\0")
            decisions.append(Decision(uid, EVAL, name, f"copy of evaluation image {name}; {evidence}"))
        return decisions


def legacy_decisions(
    batch: Sequence[tuple[str, Fingerprint]], evals: Sequence[Fingerprint], config: DedupConfig
) -> list[Decision]:
    """The reference decisions for one batch."""
    return LegacyMatcher(evals, config).decisions(batch)


def _flip(rng: np.random.Generator, value: int, bits: int) -> int:
    for bit in rng.choice(64, size=bits, replace=False):
        value ^= 1 << int(bit)
    return value


def _fp(uid: str, hash64: int, signature: np.ndarray, embedding: np.ndarray | None = None) -> Fingerprint:
    vector = None if embedding is None else embedding.astype(np.float16)
    return Fingerprint(uid, None, uid, hash64, signature.astype(np.int8).tobytes(), 1, None, vector)


def generated_set(
    evals: int, queries: int, seed: int, embeddings: bool = True
) -> tuple[list[Fingerprint], list[tuple[str, Fingerprint]]]:
    """`evals` eval fingerprints and `queries` sample fingerprints, a quarter of them copies.

    Eval side: textured images (random thumbnails and hashes), flat ones (zero thumbnails, hashes a
    few bits from 0 or all ones, as flat images hash), groups with one hash, a fifth with embeddings.
    Sample side: near-copies 0-13 bits and thumbnail cosine ~0.8-1.0 from an eval image (both
    thresholds straddled), flat images, embedding-only copies (hash far, embedding close), others.
    """
    rng = np.random.default_rng(seed)
    names = [
        f"eval-{value:08x}.jpg" for value in rng.permutation(evals * 4)[:evals]
    ]  # uid order ≠ build order
    hashes = [int(h) for h in rng.integers(0, 2**64, evals, dtype=np.uint64)]
    thumbs = rng.integers(-127, 128, (evals, 768), dtype=np.int8)
    for i in range(0, evals, 10):  # flat images
        hashes[i] = _flip(rng, [0, 2**64 - 1][int(rng.integers(0, 2))], int(rng.integers(0, 4)))
        thumbs[i] = 0
    for i in range(1, evals, 25):  # a few eval images share a hash
        hashes[i] = hashes[i - 1 if i % 2 else i + 2 if i + 2 < evals else 0]
    vectors = rng.standard_normal((evals, DIM)).astype(np.float32)
    eval_set = [
        _fp(names[i], hashes[i], thumbs[i], vectors[i] if embeddings and i % 5 == 0 else None)
        for i in range(evals)
    ]
    batch = []
    for q in range(queries):
        uid = f"sample-{q:06d}"
        kind, source = q % 8, int(rng.integers(0, evals))
        if kind in (0, 1):  # a near-copy of an eval image
            noise = rng.normal(0, float(rng.uniform(0, 90)), 768)
            thumb = np.clip(thumbs[source].astype(np.float64) + noise, -127, 127).round()
            found = _fp(uid, _flip(rng, hashes[source], int(rng.integers(0, 14))), thumb)
        elif kind == 2:  # a flat image
            found = _fp(
                uid,
                _flip(rng, [0, 2**64 - 1][int(rng.integers(0, 2))], int(rng.integers(0, 8))),
                thumbs[0] * 0,
            )
        elif kind == 3:  # an embedding-only copy: every hash bit differs
            close = vectors[source - source % 5] + rng.normal(0, 0.03, DIM)
            found = _fp(uid, hashes[source] ^ (2**64 - 1), rng.integers(-127, 128, 768), close)
        else:
            found = _fp(
                uid,
                int(rng.integers(0, 2**64, dtype=np.uint64)),
                rng.integers(-127, 128, 768),
                rng.standard_normal(DIM),
            )
        batch.append((uid, found))
    return eval_set, batch


CONFIGS = (
    DedupConfig(),
    DedupConfig(hash_bands=4),  # fewer bands than the distance: LSH misses pairs, as before
    DedupConfig(max_hash_distance=6, min_thumbnail_similarity=0.95, eval_min_cosine=0.995),
)


def test_scale_item6_decontamination_gives_the_old_answers():
    evals, batch = generated_set(3000, 2000, seed=37)
    packed = pack_eval_set(evals)
    for config in CONFIGS:
        expected = legacy_decisions(batch, evals, config)
        decisions = []
        for start in range(0, len(batch), 500):  # in batches, as BatchElements hands them over
            decisions.extend(_DecontaminateFn(config).process(batch[start : start + 500], packed))
        assert sorted(decisions, key=lambda d: d.uid) == expected, config
        details = " ".join(d.detail for d in expected)
        # The data exercises every path: hash matches, flat-image crowds, embedding-only copies.
        assert len(expected) > 300 and "hash distance" in details and "embedding cosine" in details
    # Against the candidates the old loop visited: flat samples meet hundreds of eval images each.
    flat = [f for _, f in batch if not any(f.signature)]
    crowd = sum(hamming(f.hash64, e.hash64) <= 10 for f in flat[:20] for e in evals) / 20
    assert crowd > 100
    # The side input is the packed set: bounded bytes per eval image, smaller than the old list.
    assert len(packed) < len(evals) * (768 + 8 + 8 + len(evals[0].uid)) + 5000 + 1000 * DIM * 2
    assert len(packed) < len(pickle.dumps(evals))
    assert not list(_DecontaminateFn(DedupConfig()).process(batch[:10], pack_eval_set([])))


def test_scale_item6_decontamination_in_a_beam_pipeline():
    """The eval set packed by the transform's own steps, through Beam's coders, one index per
    process (`Shared`), matched a BatchElements batch at a time."""
    evals, batch = generated_set(600, 400, seed=7)
    config = DedupConfig()
    expected = legacy_decisions(batch, evals, config)
    assert len(expected) > 40
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:  # the local runner: no Prism download
        packed = (
            p
            | "Evals" >> beam.Create(evals)
            | "EvalSet" >> beam.combiners.ToList()
            | "Pack" >> beam.Map(pack_eval_set)
        )
        decisions = (
            p
            | "Samples" >> beam.Create(batch)
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=128)
            | "Match" >> beam.ParDo(_DecontaminateFn(config), packed=beam.pvalue.AsSingleton(packed))
        )
        assert_that(decisions, equal_to(expected))
