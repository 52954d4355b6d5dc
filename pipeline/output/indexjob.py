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
4. Add. IVF-PQ: each shard's kept, normalised embeddings are encoded by the trained index
   (`sa_encode`: each vector's list and PQ code, what `add` would store), and only codes and ids
   (ids = row numbers) leave the worker, cut into ranges of consecutive lists (`ListRanges`: each
   range holds about `IndexJob.list_range_bytes` of the whole index). Flat and HNSW: the vectors
   go into a Flat part file.
5. Lists, IVF-PQ: the codes of one range, from every shard, are grouped on one worker, put in
   list order (shard order within a list, as an in-memory build adds them) and written as one
   segment of `image.ivfdata`, laid out as faiss's `OnDiskInvertedLists` lays out its lists
   (per list: its codes, then its ids). Its memory is bounded by the range (about three times
   `list_range_bytes`: the grouped codes, their concatenation, their sorted copy), not by n.
6. Merge, on one worker: IVF-PQ: the segments, concatenated in range order into `image.ivfdata`
   (streamed, one buffer), and `image.index`, the trained index whose inverted lists are that
   file (`OnDiskInvertedLists.set_all_lists_sizes`). It holds the trained index (coarse centroids
   and codebooks, `faissindex.ivf_resident_bytes`) and a few bytes per list, whatever the number
   of shards or vectors: at 10^9 vectors of 512 dimensions (IVF131072,PQ64 with the default 4 GiB
   budget), about 2 x 256 MiB (the index as the side input's bytes and deserialised) and 4 MiB of
   list sizes, while the ~540 segments of 128 MiB (72 GB: 64-byte codes and 8-byte ids) stream
   through one buffer. Flat and HNSW: the Flat parts, in shard order (Flat: fewer than 10,000
   vectors by definition; the same bytes as an in-memory build). Then `ids.parquet`, streamed
   shard by shard from the metadata; then `index.json`, last; then the parts and segments are
   deleted.

HNSW is built in one step on the merge worker: faiss cannot merge HNSW graphs, and the order of
insertion decides the graph. `choose_index` picks HNSW only while all vectors and links fit the
memory budget, which also bounds what a search loads, so that worker reads the Flat parts into one
array and inserts it on one thread, as an in-memory build does (the same bytes). Past the budget
`choose_index` picks IVF-PQ, whose build never holds every vector anywhere.

One merged index rather than per-shard parts searched together: a search would otherwise open
every part (hundreds of thousands at 10^9 pairs, each a download from an object store), and a
Flat index keeps the bytes an in-memory build gives it.

Determinism: every part and segment depends only on its shards and the plan, a segment orders its
codes by (list, shard, row), the merge reads the segments in range order and the on-disk index
names its lists file by base name: the same output gives the same bytes on any number of workers
or shards. With the local runner in one process, the workers are that process; with `--workers N`
or a remote runner the launcher holds only the job's small elements.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
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
from apache_beam.utils.shared import Shared

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
_LISTS = "lists"
# Bytes of one vector in the inverted lists besides its code: its id.
_ID_BYTES = 8
_COPY_CHUNK = 1 << 20
_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


@dataclasses.dataclass(frozen=True)
class IndexJob:
    """One build: the output folder, the memory budget of the index, the build's token (32 hex
    digits naming its temporary files) and the bytes of IVF lists one worker writes as a segment."""

    output_dir: str
    memory_budget_bytes: int
    token: str
    list_range_bytes: int = 128 << 20


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


@dataclasses.dataclass(frozen=True)
class ListRanges:
    """How an IVF index's lists are cut into ranges of `per_range` consecutive lists, one segment
    of `image.ivfdata` each (nlist 0: the index has no lists)."""

    nlist: int
    code_size: int
    per_range: int

    def bounds(self, number: int) -> tuple[int, int]:
        """The first list of range `number` and the one after its last."""
        return number * self.per_range, min(self.nlist, (number + 1) * self.per_range)


@dataclasses.dataclass(frozen=True)
class ShardLists:
    """A shard's vectors in one range of lists: their list numbers, ids and PQ codes, in row order."""

    shard: str
    lists: np.ndarray
    ids: np.ndarray
    codes: np.ndarray


@dataclasses.dataclass(frozen=True)
class Segment:
    """A written segment of `image.ivfdata`: its range and the sizes of the range's lists."""

    number: int
    sizes: np.ndarray


class BuildOutputIndex(beam.PTransform):
    """Writes `job.output_dir/index/` from the output's shards (see the module docstring).

    Applied to a pipeline, it is a job of its own; applied to a PCollection (the run's stats, in
    the run's own job), it starts once that PCollection is computed: after the shards are written.
    """

    def __init__(self, job: IndexJob):
        super().__init__()
        self._job = job

    def expand(self, pbegin: beam.pvalue.PBegin | beam.PCollection) -> beam.PCollection:
        job = self._job
        if isinstance(pbegin, beam.pvalue.PBegin):
            start = pbegin | "One" >> beam.Create([None])
        else:
            start = pbegin | "One" >> beam.Map(lambda _: None)
        shards = (
            start
            | "Pattern"
            >> beam.Map(lambda _, pattern: pattern, f"{job.output_dir}/metadata/metadata_*.parquet")
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "Shards" >> beam.FlatMap(_shard_of)
            | "Spread" >> beam.Reshuffle()
        )
        plan = beam.pvalue.AsSingleton(
            shards
            | "Count" >> beam.Map(count_shard, job.output_dir)
            | "AllCounts" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(make_plan, job)
        )
        rows = beam.pvalue.AsSingleton(start | "TrainingRows" >> beam.Map(_sample_rows, plan))
        trained_index = (
            shards
            | "Sample" >> beam.FlatMap(sample_shard, job.output_dir, plan, rows)
            | "AllSamples" >> beam.combiners.ToList()
            | "Train" >> beam.Map(train, plan)
        )
        trained = beam.pvalue.AsSingleton(trained_index)
        ranges = beam.pvalue.AsSingleton(trained_index | "Ranges" >> beam.Map(list_ranges, job, plan))
        added = shards | "Add" >> beam.ParDo(_AddShardFn(job), plan, trained, ranges).with_outputs(
            _LISTS, main="parts"
        )
        segments = (
            added[_LISTS]
            | "GroupLists" >> beam.GroupByKey()
            | "WriteLists" >> beam.Map(write_segment, job, ranges)
        )
        return (
            (added.parts, segments)
            | "Written" >> beam.Flatten()
            | "AllParts" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(merge, job, plan, trained, ranges)
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


def list_ranges(trained: bytes, job: IndexJob, plan: Plan) -> ListRanges:
    """How the trained IVF index's lists are cut into segments of about `job.list_range_bytes`
    (the plan's vectors spread over its lists); no lists for Flat and HNSW."""
    if plan.kind is None or not faissindex.needs_training(plan.kind):
        return ListRanges(0, 0, 1)
    ivf = faiss.extract_index_ivf(_deserialize(trained))
    total = plan.count * (ivf.code_size + _ID_BYTES)
    count = min(ivf.nlist, max(1, -(-total // job.list_range_bytes)))
    return ListRanges(ivf.nlist, ivf.code_size, -(-ivf.nlist // count))


class _AddShardFn(beam.DoFn):
    """A shard's kept points added to the index. IVF-PQ: their lists, codes and ids, by range of
    lists (output `lists`, keyed by range), from the trained index deserialised once per process.
    Flat and HNSW: a Flat part file, and the shard on the main output."""

    def __init__(self, job: IndexJob):
        self._job = job
        self._shared = Shared()
        self._trained: _Held | None = None

    def process(
        self, shard: str, plan: Plan, trained: bytes, ranges: ListRanges
    ) -> Iterator[str | beam.pvalue.TaggedOutput]:
        if plan.kind is None or shard not in plan.shards:
            return
        first, _ = plan.shards[shard]
        points = kept_points(self._job.output_dir, shard)
        if faissindex.needs_training(plan.kind):
            for item in encode_shard(self._index(trained), shard, first, points, ranges):
                yield beam.pvalue.TaggedOutput(_LISTS, item)
            return
        part = _deserialize(trained)
        part.add(points)
        write_atomically(
            part_path(self._job.output_dir, self._job.token, _part_name(shard)), _serialize(part)
        )
        yield shard

    def _index(self, trained: bytes) -> faiss.Index:
        if self._trained is None:
            self._trained = self._shared.acquire(lambda: _Held(_deserialize(trained)), tag=self._job.token)
        return self._trained.index


class _Held:
    """A trained index shared by the threads of a worker process (`Shared` holds weak references)."""

    def __init__(self, index: faiss.Index):
        self.index = index


def encode_shard(
    index: faiss.Index, shard: str, first: int, points: np.ndarray, ranges: ListRanges
) -> Iterator[tuple[int, ShardLists]]:
    """(range, its vectors) of the shard's `points` (rows first, first + 1, ...): each vector's list
    and PQ code as `index.add` stores them (`sa_encode`: the list number in `coarse_code_size`
    little-endian bytes, then the code), in row order within a range."""
    ivf = faiss.extract_index_ivf(index)
    encoded = index.sa_encode(points)
    coarse = ivf.coarse_code_size()  # type: ignore[attr-defined]
    lists = np.zeros(len(points), dtype=np.int64)
    for byte in range(coarse):
        lists |= encoded[:, byte].astype(np.int64) << (8 * byte)
    ids = np.arange(first, first + len(points), dtype=np.int64)
    numbers = lists // ranges.per_range
    order = np.argsort(numbers, kind="stable")
    present, starts = np.unique(numbers[order], return_index=True)
    for number, rows in zip(present.tolist(), np.split(order, starts[1:]), strict=True):
        codes = np.ascontiguousarray(encoded[rows, coarse:])
        yield number, ShardLists(shard, lists[rows].astype(np.uint32), ids[rows], codes)


# ---------------------------------------------------------------- lists


def write_segment(grouped: tuple[int, Iterable[ShardLists]], job: IndexJob, ranges: ListRanges) -> Segment:
    """Writes a range's segment of `image.ivfdata` from every shard's vectors in it (`grouped`: the
    range's number and those): per list, its codes then its ids, in shard and row order (as an
    in-memory build adds them)."""
    number, chunks = grouped
    ordered = sorted(chunks, key=lambda chunk: chunk.shard)
    low, high = ranges.bounds(number)
    lists = np.concatenate([chunk.lists for chunk in ordered]).astype(np.int64)
    order = np.argsort(lists, kind="stable")
    codes = np.concatenate([chunk.codes for chunk in ordered])[order]
    ids = np.concatenate([chunk.ids for chunk in ordered])[order]
    sizes = np.bincount(lists - low, minlength=high - low).astype(np.uint64)
    name = _segment_name(number)
    with staging(job.output_dir, job.token) as prefix:
        local = f"{prefix}{uuid.uuid4().hex}-{name}"
        with open(local, "wb") as handle:
            start = 0
            for size in sizes.tolist():
                handle.write(codes[start : start + size].data)
                handle.write(ids[start : start + size].data)
                start += size
        publish(local, part_path(job.output_dir, job.token, name))
    return Segment(number, sizes)


# ---------------------------------------------------------------- merge


def merge(
    written: list[str | Segment], job: IndexJob, plan: Plan, trained: bytes, ranges: ListRanges
) -> None:
    """Merges the parts or segments into `index/` (index file(s), ids.parquet, then index.json) and
    deletes them."""
    if plan.kind is None:
        return
    folder = f"{job.output_dir}/{INDEX_DIR}"
    with staging(job.output_dir, job.token) as prefix:
        if faissindex.needs_training(plan.kind):
            segments = sorted((w for w in written if isinstance(w, Segment)), key=lambda s: s.number)
            temporary = [part_path(job.output_dir, job.token, _segment_name(s.number)) for s in segments]
            staged = _merge_ivf(segments, temporary, plan, trained, ranges, prefix, folder)
        else:
            shards = sorted(w for w in written if isinstance(w, str))
            if shards != list(plan.shards):
                raise SearchError(
                    f"index parts missing for shards {sorted(set(plan.shards) - set(shards))[:5]}"
                )
            temporary = [part_path(job.output_dir, job.token, _part_name(shard)) for shard in shards]
            staged = _merge_vectors(temporary, plan, trained, prefix)
        staged.append(_write_ids(job.output_dir, plan, prefix + IDS_FILE))
        for local in staged:
            publish(local, f"{folder}/{local.removeprefix(prefix)}")
    summary = IndexSummary(plan.kind, plan.count, plan.dim, plan.model, job.memory_budget_bytes)
    info = dataclasses.asdict(summary) | {"metric": "cosine"}
    write_atomically(f"{folder}/{INFO_FILE}", json.dumps(info, indent=2, sort_keys=True).encode())
    if temporary:
        FileSystems.delete(temporary)


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


def _merge_ivf(
    segments: list[Segment],
    paths: list[str],
    plan: Plan,
    trained: bytes,
    ranges: ListRanges,
    prefix: str,
    folder: str,
) -> list[str]:
    """`image.ivfdata`: the segments concatenated in range order, streamed (staged for a local
    output, uploaded as it is written otherwise); `image.index`: the trained index whose on-disk
    lists are that file, named by its base name. Memory: the trained index and a few bytes a list."""
    sizes = np.zeros(ranges.nlist, dtype=np.uint64)
    for segment in segments:
        low, high = ranges.bounds(segment.number)
        sizes[low:high] = segment.sizes
    if int(sizes.sum()) != plan.count or len({s.number for s in segments}) != len(segments):
        raise SearchError(f"the index's list segments hold {int(sizes.sum())} of {plan.count} vectors")
    staged = [prefix + IVFDATA_FILE] if is_local(folder) else []
    target = staged[0] if staged else f"{folder}/{IVFDATA_FILE}"
    LOG.info("merging %d list segments of %d vectors", len(segments), plan.count)
    _concatenate(paths, target)
    index = _deserialize(trained)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, IVFDATA_FILE)
    lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
    lists.totsize = plan.count * (ivf.code_size + _ID_BYTES)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # type: ignore[attr-defined]  # the index owns them now
    index.ntotal = ivf.ntotal = plan.count
    faiss.write_index(index, prefix + INDEX_FILE)
    return [*staged, prefix + INDEX_FILE]


def _concatenate(sources: list[str], target: str) -> None:
    """Writes the files `sources` (any filesystem) one after the other into `target`, streamed."""
    with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for path in sources:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as source:
                shutil.copyfileobj(source, handle, _COPY_CHUNK)


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


def _segment_name(number: int) -> str:
    return f"lists_{number:06d}.ivfdata"


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
