"""Builds an output's FAISS index as a Beam job, shard by shard on the workers, so that the
launcher never holds an embedding (autofaiss's distributed build: train, add per shard, merge).

In: a finished output folder: per shard, `metadata/metadata_NNNNN.parquet` and the row-aligned
`img_emb/img_emb_NNNNN.npy` (kept rows: status `success`), and `NNNNN.parquet` for the model
identity. Out: `OUTPUT/index/` as `pipeline/output/indexfiles.py` describes it. The steps:

1. Count: the metadata files are matched when the job runs; a worker counts each shard's kept rows
   and reads its embedding dimension from the `.npy` header.
2. Plan (one small element): the index type from the total (`faissindex.choose_index`), each
   shard's first row number (rows follow shard name order) and the model. It is also written to
   the parts folder for the launcher (`read_outcome`), which learns from it alone whether there
   was nothing to index or no index type fits the memory budget.
3. Train, IVF-PQ only: the rows `faissindex.training_rows` picks from the total (a seeded sample,
   bounded by the number of lists: the rows an in-memory build trains on, in the same order) are
   gathered from the shards holding them, and one worker trains the empty index. It travels to
   the workers as bytes (`faiss.serialize_index`), a singleton side input. Flat and HNSW need no
   training: their empty index is a Flat one.
4. Add: each shard's kept, normalised embeddings go into a copy of that index (IVF: ids = their
   row numbers), written as a part file.
5. Merge, on one worker: IVF parts with faiss's on-disk merge (as `merge_ondisk`: the parts are
   memory-mapped and copied list by list into `image.ivfdata`, never held in memory); Flat parts,
   fewer than 10,000 vectors by definition, are concatenated in shard order (the same bytes as an
   in-memory build). Then `ids.parquet`, streamed shard by shard from the metadata; then
   `index.json`, last; then the parts are deleted.

HNSW is built in one step on the merge worker: faiss cannot merge HNSW graphs, and the order of
insertion decides the graph. `choose_index` picks HNSW only while all vectors and links fit the
memory budget, which also bounds what a search loads, so that worker reads the Flat parts into one
array and inserts it on one thread, as an in-memory build does (the same bytes). Past the budget
`choose_index` picks IVF-PQ, whose build never holds every vector anywhere.

One merged index rather than per-shard parts searched together: a search would otherwise open
every part (hundreds of thousands at 10^9 pairs, each a download from an object store), and a
Flat index keeps the bytes an in-memory build gives it.

Determinism: every part depends only on its shard and the plan, the merge reads the parts in
shard order and the on-disk index names its lists file by base name: the same output gives the
same bytes on any number of workers. With the local runner in one process, the workers are that
process; with `--workers N` or a remote runner the launcher holds only the job's small elements.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import apache_beam as beam
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.output import faissindex
from pipeline.output.errors import IndexBudgetError, SearchError
from pipeline.output.indexfiles import (
    IDS_FILE,
    IDS_SCHEMA,
    INDEX_DIR,
    INDEX_FILE,
    INFO_FILE,
    IVFDATA_FILE,
    IndexSummary,
    fetch,
    is_local,
    part_path,
    publish,
    read_bytes,
    staging,
)
from schemas.sample import Status
from transforms.common.clustering import normalize
from transforms.common.files import write_atomically

LOG = logging.getLogger(__name__)
SEED = 0
_PLAN_FILE = "plan.json"
_METADATA_FILE = re.compile(r"/metadata_(\d{5,})\.parquet$")
_IDS_COLUMNS = ["uid", "url", "caption", "clip_score"]
# pyarrow's default row group, so that ids.parquet is cut as `pq.write_table` cuts it.
_ROW_GROUP = 1 << 20
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


@dataclasses.dataclass(frozen=True)
class IndexJob:
    """One build: the output folder, the memory budget of the index and the build's token (32 hex
    digits naming its temporary files)."""

    output_dir: str
    memory_budget_bytes: int
    token: str


@dataclasses.dataclass(frozen=True)
class ShardCount:
    shard: str
    kept: int
    dim: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the workers share: the index type (None: nothing to index, or `error`), the totals,
    the model, and (first row, kept rows) of each shard with kept rows, in shard order."""

    kind: str | None
    count: int
    dim: int
    model: str | None
    shards: dict[str, tuple[int, int]]
    error: str | None = None


class BuildOutputIndex(beam.PTransform):
    """Writes `job.output_dir/index/` from the output's shards (see the module docstring)."""

    def __init__(self, job: IndexJob):
        super().__init__()
        self._job = job

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        job = self._job
        shards = (
            pbegin
            | "Match" >> fileio.MatchFiles(f"{job.output_dir}/metadata/metadata_*.parquet", "ALLOW")
            | "Shards" >> beam.FlatMap(_shard_of)
            | "Spread" >> beam.Reshuffle()
        )
        plan = beam.pvalue.AsSingleton(
            shards
            | "Count" >> beam.Map(count_shard, job.output_dir)
            | "AllCounts" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(make_plan, job)
        )
        rows = beam.pvalue.AsSingleton(
            pbegin | "One" >> beam.Create([None]) | "TrainingRows" >> beam.Map(_sample_rows, plan)
        )
        trained = beam.pvalue.AsSingleton(
            shards
            | "Sample" >> beam.FlatMap(sample_shard, job.output_dir, plan, rows)
            | "AllSamples" >> beam.combiners.ToList()
            | "Train" >> beam.Map(train, plan)
        )
        return (
            shards
            | "Add" >> beam.FlatMap(add_shard, job, plan, trained)
            | "AllParts" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(merge, job, plan, trained)
        )


def read_outcome(job: IndexJob) -> IndexSummary | None:
    """After the job: the written index's summary, None when there was nothing to index; raises
    `IndexBudgetError` when no index type fits the budget. Deletes the plan file."""
    path = part_path(job.output_dir, job.token, _PLAN_FILE)
    plan = json.loads(read_bytes(path, known=True))
    FileSystems.delete([path])
    if plan["error"]:
        raise IndexBudgetError(plan["error"])
    if plan["type"] is None:
        return None
    info = json.loads(read_bytes(f"{job.output_dir}/{INDEX_DIR}/{INFO_FILE}"))
    fields = {field.name for field in dataclasses.fields(IndexSummary)}
    return IndexSummary(**{key: value for key, value in info.items() if key in fields})


# ---------------------------------------------------------------- count and plan


def _shard_of(matched: Any) -> Iterator[str]:
    found = _METADATA_FILE.search(matched.path)
    if found:
        yield found.group(1)


def count_shard(shard: str, output_dir: str) -> ShardCount:
    """The shard's kept rows and embedding dimension; `SearchError` when its embedding file is
    missing or does not match the metadata."""
    statuses = _metadata(output_dir, shard, ["status"]).column("status")
    shape = _embedding_shape(_embedding_path(output_dir, shard))
    _check_shape(output_dir, shard, shape, len(statuses))
    kept = int(pc.sum(pc.equal(statuses, Status.SUCCESS)).as_py() or 0)
    return ShardCount(shard, kept, int(shape[1]))


def make_plan(counts: list[ShardCount], job: IndexJob) -> Plan:
    """The plan from every shard's count; written to the parts folder for `read_outcome`."""
    ordered = sorted(counts, key=lambda c: c.shard)
    kept = [c for c in ordered if c.kept]
    dims = sorted({c.dim for c in kept})
    if len(dims) > 1:
        raise SearchError(f"the output's image embeddings have different dimensions: {dims}")
    shards, total = {}, 0
    for count in kept:
        shards[count.shard] = (total, count.kept)
        total += count.kept
    kind, error = None, None
    if total:
        try:
            kind = faissindex.choose_index(total, dims[0], job.memory_budget_bytes)
        except ValueError as err:
            error = str(err)
    model = next(filter(None, (_model_of(job.output_dir, c.shard) for c in ordered)), None)
    plan = Plan(kind, total, dims[0] if dims else 0, model, shards, error)
    body = {"type": kind, "count": total, "dim": plan.dim, "error": error}
    write_atomically(part_path(job.output_dir, job.token, _PLAN_FILE), json.dumps(body).encode())
    LOG.info("index plan: %s of %d vectors from %d shards", kind or error or "nothing", total, len(shards))
    return plan


# ---------------------------------------------------------------- train


def _sample_rows(_: None, plan: Plan) -> np.ndarray:
    """The sorted row numbers the index is trained on (none when it needs no training)."""
    if plan.kind is None or not faissindex.needs_training(plan.kind):
        return np.empty(0, dtype=np.int64)
    nlist = faiss.extract_index_ivf(faissindex.new_index(plan.kind, plan.dim)).nlist
    return faissindex.training_rows(plan.count, nlist, SEED)


def sample_shard(
    shard: str, output_dir: str, plan: Plan, rows: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, points) of the training rows this shard holds."""
    if shard not in plan.shards or not len(rows):
        return
    first, kept = plan.shards[shard]
    low, high = np.searchsorted(rows, [first, first + kept])
    if low < high:
        yield first, kept_points(output_dir, shard)[rows[low:high] - first]


def train(samples: list[tuple[int, np.ndarray]], plan: Plan) -> bytes:
    """The empty (trained) index every part starts from, serialised; b"" when nothing is indexed."""
    if plan.kind is None:
        return b""
    index = faissindex.new_index(_part_kind(plan.kind), plan.dim)
    if faissindex.needs_training(plan.kind):
        points = np.concatenate([p for _, p in sorted(samples, key=lambda sample: sample[0])])
        LOG.info("training %s on %d vectors", plan.kind, len(points))
        faissindex.train_index(index, points, SEED)
    return _serialize(index)


# ---------------------------------------------------------------- add


def add_shard(shard: str, job: IndexJob, plan: Plan, trained: bytes) -> Iterator[str]:
    """Writes the shard's part: its kept points added to a copy of the trained index."""
    if plan.kind is None or shard not in plan.shards:
        return
    first, kept = plan.shards[shard]
    points = kept_points(job.output_dir, shard)
    part = _deserialize(trained)
    if faissindex.needs_training(plan.kind):
        part.add_with_ids(points, np.arange(first, first + kept, dtype=np.int64))
    else:
        part.add(points)
    write_atomically(part_path(job.output_dir, job.token, _part_name(shard)), _serialize(part))
    yield shard


# ---------------------------------------------------------------- merge


def merge(written: list[str], job: IndexJob, plan: Plan, trained: bytes) -> None:
    """Merges the parts into `index/` (index file(s), ids.parquet, then index.json) and deletes them."""
    if plan.kind is None:
        return
    if sorted(written) != list(plan.shards):
        raise SearchError(f"index parts missing for shards {sorted(set(plan.shards) - set(written))[:5]}")
    parts = [part_path(job.output_dir, job.token, _part_name(shard)) for shard in plan.shards]
    folder = f"{job.output_dir}/{INDEX_DIR}"
    with staging(job.output_dir, job.token) as prefix:
        if faissindex.needs_training(plan.kind):
            staged = _merge_ivf(parts, trained, prefix)
        else:
            staged = _merge_vectors(parts, plan, trained, prefix)
        staged.append(_write_ids(job.output_dir, plan, prefix + IDS_FILE))
        for local in staged:
            publish(local, f"{folder}/{local.removeprefix(prefix)}")
    summary = IndexSummary(plan.kind, plan.count, plan.dim, plan.model, job.memory_budget_bytes)
    info = dataclasses.asdict(summary) | {"metric": "cosine"}
    write_atomically(f"{folder}/{INFO_FILE}", json.dumps(info, indent=2, sort_keys=True).encode())
    FileSystems.delete(parts)


def _merge_vectors(parts: list[str], plan: Plan, trained: bytes, prefix: str) -> list[str]:
    """Flat: the parts' vectors appended in shard order. HNSW: gathered (within the budget, as
    `choose_index` picked it) and inserted at once on one thread, as an in-memory build does."""
    assert plan.kind is not None
    if plan.kind == "Flat":
        index = _deserialize(trained)
        for path in parts:
            index.add(_part_vectors(path))
    else:
        points = np.empty((plan.count, plan.dim), dtype=np.float32)
        row = 0
        for path in parts:
            vectors = _part_vectors(path)
            points[row : row + len(vectors)] = vectors
            row += len(vectors)
        index = faissindex.new_index(plan.kind, plan.dim)
        with _one_thread():  # parallel insertion links nodes in an order that depends on timing
            index.add(points)
    faiss.write_index(index, prefix + INDEX_FILE)
    return [prefix + INDEX_FILE]


def _merge_ivf(parts: list[str], trained: bytes, prefix: str) -> list[str]:
    """The parts' inverted lists merged on disk into `image.ivfdata`, which the index names by its
    base name. Remote parts are first copied to the local staging folder (mapped, not loaded)."""
    local_parts = parts
    if not is_local(parts[0]):
        local_parts = [f"{prefix}part_{i:06d}.index" for i in range(len(parts))]
        for path, local in zip(parts, local_parts, strict=True):
            fetch(path, local)
    index = _deserialize(trained)
    LOG.info("merging %d index parts on disk", len(parts))
    _merge_on_disk(index, local_parts, prefix + IVFDATA_FILE)
    faissindex.on_disk_lists(index).filename = IVFDATA_FILE
    faiss.write_index(index, prefix + INDEX_FILE)
    del index  # unmaps the lists file before it moves
    return [prefix + IVFDATA_FILE, prefix + INDEX_FILE]


def _merge_on_disk(index: faiss.Index, part_paths: list[str], ivfdata: str) -> None:
    """faiss's on-disk merge (`faiss.contrib.ondisk.merge_ondisk`): the parts memory-mapped, their
    lists copied list by list into `ivfdata`, which becomes `index`'s inverted lists. Unlike
    `merge_ondisk`, the parts stay owned here, so their mappings are released afterwards."""
    parts = [faiss.read_index(path, faiss.IO_FLAG_MMAP) for path in part_paths]
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ivfdata)
    sources = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]
    for part in parts:
        sources.push_back(faiss.extract_index_ivf(part).invlists)
    index.ntotal = ivf.ntotal = lists.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # type: ignore[attr-defined]  # the index owns them now
    del sources, parts


def _write_ids(output_dir: str, plan: Plan, local: str) -> str:
    """ids.parquet: the kept rows' uid, url, caption, clip_score and shard, in row order, streamed
    shard by shard in row groups cut as `pq.write_table` cuts them."""
    pending: list[pa.Table] = []
    rows = 0
    with pq.ParquetWriter(local, IDS_SCHEMA, compression="zstd") as writer:
        for shard in plan.shards:
            meta = _metadata(output_dir, shard, [*_IDS_COLUMNS, "status"])
            kept = meta.select(_IDS_COLUMNS).filter(pc.equal(meta.column("status"), Status.SUCCESS))
            shard_column = pa.array([shard] * kept.num_rows, pa.string())
            pending.append(kept.append_column("shard", shard_column).cast(IDS_SCHEMA))
            rows += kept.num_rows
            if rows >= _ROW_GROUP:
                table = pa.concat_tables(pending)
                full = rows - rows % _ROW_GROUP
                writer.write_table(table.slice(0, full), row_group_size=_ROW_GROUP)
                pending, rows = [table.slice(full)], rows - full
        if rows:
            writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP)
    return local


# ---------------------------------------------------------------- reading a shard


def kept_points(output_dir: str, shard: str) -> np.ndarray:
    """The shard's kept rows' image embeddings, normalised (float32), in row order."""
    statuses = _metadata(output_dir, shard, ["status"]).column("status")
    path = _embedding_path(output_dir, shard)
    embeddings = np.load(io.BytesIO(read_bytes(path, known=True)), allow_pickle=False)
    _check_shape(output_dir, shard, embeddings.shape, len(statuses))
    return normalize(embeddings[pc.equal(statuses, Status.SUCCESS).to_numpy(zero_copy_only=False)])


def _metadata(output_dir: str, shard: str, columns: list[str]) -> pa.Table:
    path = f"{output_dir}/metadata/metadata_{shard}.parquet"
    return pq.read_table(io.BytesIO(read_bytes(path, known=True)), columns=columns)


def _embedding_path(output_dir: str, shard: str) -> str:
    path = f"{output_dir}/img_emb/img_emb_{shard}.npy"
    if not FileSystems.exists(path):
        raise SearchError(f"{path} is missing beside metadata_{shard}.parquet")
    return path


def _embedding_shape(path: str) -> tuple[int, ...]:
    """The shape in the `.npy` header, read without the array."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        reader = _NPY_HEADERS.get(np.lib.format.read_magic(handle))
        if reader is not None:
            shape: tuple[int, ...] = reader(handle)[0]
            return shape
    return tuple(np.load(io.BytesIO(read_bytes(path, known=True)), allow_pickle=False).shape)


def _check_shape(output_dir: str, shard: str, shape: tuple[int, ...], rows: int) -> None:
    if len(shape) != 2 or shape[0] != rows:
        path = f"{output_dir}/img_emb/img_emb_{shard}.npy"
        raise SearchError(f"{path} holds {shape} embeddings for {rows} metadata rows")


def _model_of(output_dir: str, shard: str) -> str | None:
    """The first `clip_model` of the shard's rows (one run uses one model: the plan reads shards in
    name order until one names it, usually the first)."""
    path = f"{output_dir}/{shard}.parquet"
    if not FileSystems.exists(path):
        return None
    table = pq.read_table(io.BytesIO(read_bytes(path, known=True)), columns=["clip_model"])
    return next((str(m) for m in table.column("clip_model").to_pylist() if m), None)


# ---------------------------------------------------------------- faiss helpers


def _part_kind(kind: str) -> str:
    """IVF parts are IVF indexes; HNSW and Flat parts hold the vectors (Flat)."""
    return kind if faissindex.needs_training(kind) else "Flat"


def _part_name(shard: str) -> str:
    return f"part_{shard}.index"


def _part_vectors(path: str) -> np.ndarray:
    part = _deserialize(read_bytes(path, known=True))
    vectors: np.ndarray = part.reconstruct_n(0, part.ntotal)
    return vectors


def _serialize(index: faiss.Index) -> bytes:
    return bytes(faiss.serialize_index(index).tobytes())


def _deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
