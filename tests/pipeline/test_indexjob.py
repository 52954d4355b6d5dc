"""The output's index built by a Beam job, shard by shard: the same index as one built in memory from
every embedding at once (the oracle here: the bytes for Flat and HNSW, the same lists and search
results for IVF-PQ), the same bytes on any number of workers, and a launcher that never holds the
embeddings."""

from __future__ import annotations

import io
import json
import os
import pathlib
import tracemalloc

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.output import faissindex
from pipeline.output.errors import IndexBudgetError, SearchError
from pipeline.output.index import INDEX_DIR, build_output_index, index_files
from pipeline.output.indexfiles import IDS_SCHEMA, part_path, read_faiss
from pipeline.runner import related_job_args
from schemas import Status
from transforms.common.manifest import is_output_name, is_temp


def synthetic_output(folder: pathlib.Path, vectors: np.ndarray, shards: int) -> None:
    """An output folder of `shards` shards of embedding files; every 7th row is rejected."""
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    (folder / "img_emb").mkdir(exist_ok=True)
    for shard, rows in enumerate(np.array_split(np.arange(len(vectors)), shards)):
        uids = [f"{i:032x}" for i in rows]
        status = [Status.REJECTED if i % 7 == 0 else Status.SUCCESS for i in rows]
        table = pa.table({"uid": uids, "url": uids, "caption": uids, "clip_score": [0.5] * len(rows)})
        table = table.append_column("status", pa.array(status))
        pq.write_table(table, folder / f"metadata/metadata_{shard:05d}.parquet")
        np.save(folder / f"img_emb/img_emb_{shard:05d}.npy", vectors[rows].astype(np.float16))


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, d))
    return (centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def in_memory_build(folder: pathlib.Path, budget: int) -> tuple[faiss.Index, dict[str, bytes]]:
    """The index as it was built before the job: every kept embedding loaded, concatenated in shard
    order and indexed at once (HNSW on one thread), and its ids.parquet and index.json bytes."""
    chunks, ids = [], []
    for meta_path in sorted((folder / "metadata").iterdir()):
        shard = meta_path.stem.removeprefix("metadata_")
        meta = pq.read_table(meta_path)
        kept = np.array(meta.column("status").to_pylist()) == Status.SUCCESS
        chunks.append(np.load(folder / f"img_emb/img_emb_{shard}.npy")[kept])
        rows = meta.select(["uid", "url", "caption", "clip_score"]).filter(pa.array(kept))
        ids.append(rows.append_column("shard", pa.array([shard] * rows.num_rows, pa.string())))
    embeddings = np.concatenate(chunks)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = faissindex.build_index(embeddings, budget)
    finally:
        faiss.omp_set_num_threads(threads)
    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(ids).cast(IDS_SCHEMA), buffer, compression="zstd")
    kind = faissindex.choose_index(len(embeddings), embeddings.shape[1], budget)
    info = {"type": kind, "count": len(embeddings), "dim": embeddings.shape[1], "model": None}
    info |= {"memory_budget_bytes": budget, "metric": "cosine"}
    files = {
        "image.index": faiss.serialize_index(index).tobytes(),
        "ids.parquet": buffer.getvalue(),
        "index.json": json.dumps(info, indent=2, sort_keys=True).encode(),
    }
    return index, files


def written(folder: pathlib.Path) -> dict[str, bytes]:
    """The index folder's files; it holds nothing else (no part, no plan)."""
    names = sorted(os.listdir(folder / INDEX_DIR))
    kind = json.loads((folder / INDEX_DIR / "index.json").read_text())["type"]
    assert names == sorted(index_files(kind))
    return {name: (folder / INDEX_DIR / name).read_bytes() for name in names}


@pytest.mark.parametrize(("n", "d", "shards", "budget"), [(6_000, 32, 3, 4 << 30), (12_000, 16, 4, 12 << 20)])
def test_flat_and_hnsw_are_the_bytes_of_an_in_memory_build(tmp_path, n, d, shards, budget):
    synthetic_output(tmp_path, clustered(n, d), shards)
    _, expected = in_memory_build(tmp_path, budget)
    summary = build_output_index(str(tmp_path), budget)
    assert summary is not None and summary.type == ("Flat" if n < 10_000 else "HNSW32")
    assert written(tmp_path) == expected


def test_ivfpq_holds_the_lists_of_an_in_memory_build_on_any_number_of_workers(tmp_path):
    vectors = clustered(11_800, 16)
    synthetic_output(tmp_path, vectors, 4)
    budget = 200_000
    expected_index, expected = in_memory_build(tmp_path, budget)
    summary = build_output_index(str(tmp_path), budget)
    assert summary is not None and summary.type == "IVF512,PQ4" and summary.count == 10_114
    files = written(tmp_path)
    assert (files["ids.parquet"], files["index.json"]) == (expected["ids.parquet"], expected["index.json"])

    # The lists were merged on disk; they hold the same ids and codes, in the same order.
    index = read_faiss(str(tmp_path))
    assert isinstance(faissindex.on_disk_lists(index), faiss.OnDiskInvertedLists)
    ours, theirs = faiss.extract_index_ivf(index), faiss.extract_index_ivf(expected_index)
    assert (ours.nprobe, ours.ntotal) == (theirs.nprobe, theirs.ntotal) == (16, 10_114)
    for j in range(ours.nlist):
        size = theirs.invlists.list_size(j)
        assert ours.invlists.list_size(j) == size
        ids = (faiss.rev_swig_ptr(lists.get_ids(j), size) for lists in (ours.invlists, theirs.invlists))
        assert np.array_equal(*ids), j
        codes = (
            faiss.rev_swig_ptr(lists.get_codes(j), size * ours.code_size)
            for lists in (ours.invlists, theirs.invlists)
        )
        assert np.array_equal(*codes), j
    queries = faissindex.normalize(vectors[::50])
    found, expected_found = (
        faissindex.search(index, queries, 10),
        faissindex.search(expected_index, queries, 10),
    )
    assert np.array_equal(found[1], expected_found[1]) and np.array_equal(found[0], expected_found[0])
    del index  # unmaps image.ivfdata before it is rewritten

    assert build_output_index(str(tmp_path), budget, workers=2) == summary
    assert written(tmp_path) == files


def test_the_launcher_never_holds_the_embeddings(tmp_path):
    """With worker processes, the launcher's Python allocations peak far below the embeddings'
    size (the fixed cost is Beam's: its bz2 compressor of pickled steps, ~7 MiB); an in-memory
    build holds all of them at once, and twice as float32."""
    synthetic_output(tmp_path, clustered(9_000, 2_304), 4)
    total = sum(path.stat().st_size for path in (tmp_path / "img_emb").iterdir())
    assert total > 40_000_000
    tracemalloc.start()
    try:
        summary = build_output_index(str(tmp_path), 4 << 30, workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary is not None and (summary.type, summary.count) == ("Flat", 7_714)
    assert peak < total / 3, (peak, total)
    assert written(tmp_path) == in_memory_build(tmp_path, 4 << 30)[1]  # two worker processes: the same bytes


def test_no_index_type_fits_the_budget(tmp_path):
    synthetic_output(tmp_path, clustered(12_000, 8), 2)
    with pytest.raises(IndexBudgetError, match="fits in 1000 bytes"):
        build_output_index(str(tmp_path), 1_000)
    assert not (tmp_path / INDEX_DIR).exists()  # no index, no part, no plan left


def test_an_embedding_file_that_does_not_match_its_metadata_fails_the_job(tmp_path):
    synthetic_output(tmp_path, clustered(300, 8), 2)
    np.save(tmp_path / "img_emb/img_emb_00001.npy", np.zeros((3, 8), np.float16))
    with pytest.raises(
        SearchError, match=r"img_emb_00001.npy holds \(3, 8\) embeddings for 150 metadata rows"
    ):
        build_output_index(str(tmp_path), 4 << 30)


def test_the_build_files_are_temporary_writes_to_the_manifest(tmp_path):
    """A crashed build's parts are never taken for foreign files, and the next run clears them."""
    relative = part_path("out", "0123abcd" * 4, "part_00007.index").removeprefix("out/")
    assert relative == f"index/parts/_tmp-{'0123abcd' * 4}-part_00007.index"
    assert is_temp(relative) and is_output_name(relative)
    assert is_output_name("index/image.ivfdata")


def test_the_index_job_of_a_named_job_gets_its_own_name():
    assert related_job_args(["--job_name=run-1", "--region=x"], "index") == [
        "--job_name=run-1-index",
        "--region=x",
    ]
    assert related_job_args(["--job_name", "run-1"], "index") == ["--job_name", "run-1-index"]
    assert related_job_args(["--region=x"], "index") == ["--region=x"]
