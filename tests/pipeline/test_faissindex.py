"""The FAISS index of an output: its type chosen by size and memory, exact and approximate search."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from pipeline.output.faissindex import build_index, choose_index, read_index, search, write_index
from transforms.common.clustering import normalize


def test_choose_index_thresholds() -> None:
    assert choose_index(9_999, 512, 0) == "Flat"
    hnsw_bytes = 10_000 * (512 * 4 + 32 * 2 * 8)
    assert choose_index(10_000, 512, hnsw_bytes) == "HNSW32"
    assert choose_index(10_000, 512, hnsw_bytes - 1).startswith("IVF512,PQ")
    assert choose_index(12_000, 32, 2**20) == "IVF512,PQ32"
    assert choose_index(1_000_000, 512, 100 * 2**20) == "IVF4096,PQ64"
    assert choose_index(1_000_000, 768, 40 * 2**20) == "IVF4096,PQ96"  # codes past the budget: on disk
    with pytest.raises(ValueError):
        choose_index(1_000_000, 512, 2**20)


def _easy_set(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random unit vectors, and queries that are near-copies (cosine ~0.98) of known rows."""
    rng = np.random.default_rng(seed)
    data = normalize(rng.normal(size=(n, d)))
    targets = rng.choice(n, size=200, replace=False)
    queries = data[targets] + rng.normal(scale=0.2 / math.sqrt(d), size=(200, d)).astype(np.float32)
    return data, queries, targets


def test_flat_index_is_exact() -> None:
    data, queries, _ = _easy_set(2_000, 32, 1)
    index = build_index(data, memory_budget_bytes=2**30)
    assert index.ntotal == 2_000
    scores, ids = search(index, queries, 5)
    exact = normalize(queries) @ data.T
    assert np.array_equal(ids[:, 0], exact.argmax(axis=1))
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("budget", "kind"),
    [(2**30, "HNSW32"), (250_000, "IVF512,PQ4")],
)
def test_approximate_index_finds_the_planted_neighbour(budget: int, kind: str, tmp_path) -> None:
    data, queries, targets = _easy_set(12_000, 32, 2)
    assert choose_index(len(data), 32, budget) == kind
    index = build_index(data, memory_budget_bytes=budget, seed=0)
    assert index.ntotal == len(data)
    scores, ids = search(index, queries, 1)
    assert np.mean(ids[:, 0] == targets) >= 0.95
    path = str(tmp_path / "kept" / "index.faiss")
    write_index(index, path)
    stored = read_index(path)
    again = search(stored, queries, 1)
    assert np.array_equal(again[1], ids) and np.allclose(again[0], scores)
    # The search parameters travel with the index.
    if isinstance(index, faiss.IndexIVFPQ):
        assert faiss.extract_index_ivf(stored).nprobe == 16
        assert not index.do_polysemous_training  # type: ignore[attr-defined]
    else:
        assert isinstance(stored, faiss.IndexHNSW) and stored.hnsw.efSearch == 64
