"""A searchable FAISS index of the kept samples' embeddings, its type chosen from size and memory.

- `choose_index`: the FAISS `index_factory` string, chosen the way autofaiss does: exact `Flat`
  for small sets, `HNSW32` while full vectors and graph links fit the memory budget, otherwise
  `IVF{nlist},PQ{m}` with nlist ~ 4 sqrt(n) (a power of two). An IVF index keeps its inverted
  lists (codes and ids) in a file of their own, memory-mapped when searched and written list by
  list when built, so what must fit the budget is what stays in memory: the coarse centroids and
  the PQ codebooks (`ivf_resident_bytes`). `m` (a divisor of d, 8 bits per sub-quantizer) is the
  largest whose codes and ids fit the budget too (the lists then stay in the page cache), and
  never less than about one byte per 8 dimensions (`_min_pq_bytes`): past the budget, the lists
  are read from disk rather than coarsened further.
- `build_index`: normalises the embeddings (inner product = cosine), trains on at most a seeded
  random sample when the index type needs training, adds every row (row i gets id i) and sets
  the search parameters (IVF `nprobe`, HNSW `efSearch`), which are saved with the index. Its
  steps are public for a build spread over workers (`pipeline/output/indexjob.py`): `new_index`,
  `training_rows` (which rows of n the sample holds, sorted) and `train_index`.
- `write_index` (atomic: a temporary file, then a rename) and `read_index` for local paths; an IVF
  index whose inverted lists live in their own file (`OnDiskInvertedLists`, as faiss's on-disk
  merge writes them) is read with that file named, and memory-mapped.
- `search`: the `k` best (cosine scores, row ids) of each normalised query; id -1 where fewer.

Only CPU indexes: searching a built index is cheap, and the CPU form is what is written.
"""

from __future__ import annotations

import math
import os

import faiss
import numpy as np

from transforms.common.clustering import normalize

FLAT_MAX_VECTORS = 10_000
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 64
# Inverted-list ids, 8 bytes per vector; PQ codes are `m` bytes per vector.
_IVF_ID_BYTES = 8
_MAX_PQ_BYTES = 256
# PQ codes of lists read from disk: at least one byte per this many dimensions.
_MIN_PQ_DIMS_PER_BYTE = 8
# Training set: enough points per coarse centroid, and at least 39 per code of each PQ codebook.
_TRAIN_PER_LIST = 40
_MIN_TRAIN = 39 * 256
# Share of the inverted lists visited per query.
_NPROBE_DIVISOR = 32
_MIN_NPROBE = 8


def _ivf_lists(n: int) -> int:
    return 2 ** round(math.log2(4 * math.sqrt(n)))


def ivf_resident_bytes(n: int, d: int) -> int:
    """What an IVF-PQ index of `n` vectors of dimension `d` keeps in memory when its lists are on
    disk: the coarse centroids and the PQ codebooks (256 centroids per sub-quantizer)."""
    return _ivf_lists(n) * d * 4 + 256 * d * 4


def choose_index(n: int, d: int, memory_budget_bytes: int) -> str:
    """The `index_factory` string for `n` vectors of dimension `d` within `memory_budget_bytes`.

    Raises ValueError when not even an IVF index's coarse centroids and codebooks fit the budget.
    """
    if n < FLAT_MAX_VECTORS:
        return "Flat"
    if n * (d * 4 + HNSW_NEIGHBOURS * 2 * 8) <= memory_budget_bytes:
        return f"HNSW{HNSW_NEIGHBOURS}"
    resident = ivf_resident_bytes(n, d)
    if resident > memory_budget_bytes:
        raise ValueError(
            f"no index of {n} vectors of dimension {d} fits in {memory_budget_bytes} bytes "
            f"(an IVF index's coarse centroids and codebooks alone take {resident})"
        )
    fitting = (
        m
        for m in range(min(d, _MAX_PQ_BYTES), 0, -1)
        if d % m == 0 and n * (m + _IVF_ID_BYTES) + resident <= memory_budget_bytes
    )
    return f"IVF{_ivf_lists(n)},PQ{max(next(fitting, 0), _min_pq_bytes(d))}"


def _min_pq_bytes(d: int) -> int:
    """The smallest PQ code size `choose_index` gives: the largest divisor of d up to d / 8."""
    return max(m for m in range(1, max(1, d // _MIN_PQ_DIMS_PER_BYTE) + 1) if d % m == 0)


def needs_training(kind: str) -> bool:
    """Whether an index of this `choose_index` type must be trained before vectors are added."""
    return kind.startswith("IVF")


def new_index(kind: str, d: int) -> faiss.Index:
    """An empty inner-product index of type `kind`, with HNSW's search parameter set."""
    index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def training_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """The sorted rows (of `n`) an index of `nlist` coarse lists is trained on: enough per list and
    per PQ code, at most all of them, chosen by a generator seeded with `seed`."""
    size = min(n, max(_TRAIN_PER_LIST * nlist, _MIN_TRAIN))
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def train_index(index: faiss.Index, points: np.ndarray, seed: int = 0) -> None:
    """Trains the empty IVF `index` on the normalised `points` (its k-means seeded) and sets `nprobe`."""
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    specific = faiss.downcast_index(ivf)
    if isinstance(specific, faiss.IndexIVFPQ):
        specific.pq.cp.seed = seed
        # Polysemous training is slow and only serves Hamming-filtered search, which is not used.
        specific.do_polysemous_training = False  # type: ignore[attr-defined]
    index.train(points)
    ivf.nprobe = min(ivf.nlist, max(_MIN_NPROBE, ivf.nlist // _NPROBE_DIVISOR))


def build_index(embeddings: np.ndarray, memory_budget_bytes: int, seed: int = 0) -> faiss.Index:
    """An inner-product index of the normalised `embeddings` (row i has id i), trained if needed."""
    points = normalize(embeddings)
    n, d = points.shape
    if n == 0:
        raise ValueError("no embeddings to index")
    kind = choose_index(n, d, memory_budget_bytes)
    index = new_index(kind, d)
    if needs_training(kind):
        train_index(index, points[training_rows(n, faiss.extract_index_ivf(index).nlist, seed)], seed)
    index.add(points)
    return index


def write_index(index: faiss.Index, path: str) -> None:
    """Write `index` to the local `path` atomically (a temporary file beside it, then a rename)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp"
    faiss.write_index(index, temporary)
    os.replace(temporary, path)


def read_index(path: str, ivfdata: str | None = None) -> faiss.Index:
    """The index stored at the local `path`, search parameters included. `ivfdata`: the local file
    of its on-disk inverted lists, memory-mapped read-only (the index names it by its base name only)."""
    if ivfdata is None:
        return faiss.read_index(path)
    index = faiss.read_index(path, faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    lists = on_disk_lists(index)
    lists.filename = ivfdata
    lists.do_mmap()
    return index


def on_disk_lists(index: faiss.Index) -> faiss.OnDiskInvertedLists:
    """The IVF `index`'s inverted lists kept in a file of their own; ValueError if it has none."""
    lists = faiss.extract_index_ivf(index).invlists
    found = faiss.downcast_InvertedLists(lists) if lists is not None else None
    if not isinstance(found, faiss.OnDiskInvertedLists):
        raise ValueError("the index does not keep its inverted lists in a file of their own")
    return found


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (len(queries), k): cosines best first and row ids, -1 past the last hit."""
    scores, ids = index.search(normalize(queries), k)
    return scores, ids
