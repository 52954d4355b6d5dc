"""The output's index at scale: IVF parts are codes and ids only, grouped by range of lists, so the
merge holds the trained index and a few bytes a list whatever the number of shards, and an index
of many parts is the index of one."""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import uuid

import faiss
import numpy as np
import pyarrow.parquet as pq

from pipeline.output import faissindex
from pipeline.output.indexfiles import parts_folder, read_faiss
from pipeline.output.indexjob import (
    SEED,
    BuildOutputIndex,
    IndexJob,
    count_shard,
    encode_shard,
    kept_points,
    list_ranges,
    make_plan,
    read_outcome,
    sample_shard,
    train,
    write_segment,
)
from pipeline.runner import make_pipeline
from tests.pipeline.test_indexjob import clustered, synthetic_output

# Measures the merge alone in a fresh process: its resident memory before, and its peak after.
_MEASURE_MERGE = textwrap.dedent(
    """
    import io, json, pickle, sys
    import faiss, pyarrow as pa, pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems
    from pipeline.output.indexjob import merge

    def warm_up(folder):
        pq.write_table(pa.table({"a": [1]}), io.BytesIO(), compression="zstd")
        pq.read_table(f"{folder}/metadata/metadata_00000.parquet")
        FileSystems.exists(folder)
        faiss.serialize_index(faiss.IndexFlatIP(2))

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))

    with open(sys.argv[1], "rb") as handle:
        args = pickle.load(handle)
    warm_up(args[1].output_dir)  # what any merge loads once: libraries, codecs, allocator pools
    before = status("VmRSS")
    merge(*args)
    print(json.dumps({"before_kib": before, "peak_kib": status("VmHWM")}))
    """
)


def _merge_inputs(folder: pathlib.Path, job: IndexJob) -> tuple:
    """What the job hands its merge step, made by the job's own steps without a runner: the plan,
    the trained index, its list ranges and the written segments."""
    out = str(folder)
    shards = sorted(path.stem.removeprefix("metadata_") for path in (folder / "metadata").iterdir())
    plan = make_plan([count_shard(shard, out) for shard in shards], job)
    assert plan.kind is not None and faissindex.needs_training(plan.kind)
    nlist = faiss.extract_index_ivf(faissindex.new_index(plan.kind, plan.dim)).nlist
    rows = faissindex.training_rows(plan.count, nlist, SEED)
    trained = train([sample for shard in shards for sample in sample_shard(shard, out, plan, rows)], plan)
    ranges = list_ranges(trained, job, plan)
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    grouped = collections.defaultdict(list)
    for shard in shards:
        first, _ = plan.shards[shard]
        for number, chunk in encode_shard(index, shard, first, kept_points(out, shard), ranges):
            grouped[number].append(chunk)
    written = [write_segment(item, job, ranges) for item in sorted(grouped.items())]
    return written, job, plan, trained, ranges


def _merge_in_a_process(folder: pathlib.Path, shards: int, vectors: np.ndarray, budget: int) -> dict:
    synthetic_output(folder, vectors, shards)
    job = IndexJob(str(folder), budget, uuid.uuid4().hex)
    written, job, plan, trained, ranges = inputs = _merge_inputs(folder, job)
    segments = [name for name in os.listdir(parts_folder(str(folder))) if name.endswith(".ivfdata")]
    segment_bytes = sum(os.path.getsize(os.path.join(parts_folder(str(folder)), name)) for name in segments)
    arguments = folder / "merge.pickle"
    arguments.write_bytes(pickle.dumps(inputs))
    # One malloc arena, Arrow on the system allocator, one thread: a steady peak to compare.
    quiet = {"MALLOC_ARENA_MAX": "1", "ARROW_DEFAULT_MEMORY_POOL": "system", "OMP_NUM_THREADS": "1"}
    env = dict(os.environ, PYTHONPATH=os.getcwd(), **quiet)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_MERGE, str(arguments)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    index = folder / "index"
    return {
        "plan": plan,
        "trained_bytes": len(trained),
        "segment_bytes": segment_bytes,
        "code_size": ranges.code_size,
        "growth_kib": measured["peak_kib"] - measured["before_kib"],
        "files": {name: (index / name).read_bytes() for name in ("image.index", "image.ivfdata")},
        "left": sorted(os.listdir(parts_folder(str(folder)))),
    }


def test_scale_item5_index_merge_memory_is_flat_in_the_number_of_parts(tmp_path):
    """4 and 40 shards of the same 12,000 vectors (128-d, IVF512,PQ16, a trained index of 384 KiB):
    the parts on disk are the codes and ids (no trained index in any), and the merge's peak memory
    above its start is the same within noise (~0.3 MiB), where parts that each carried the trained
    index added 36 of them (13.5 MiB)."""
    vectors = clustered(12_000, 128, seed=3)
    budget = 700_000
    few = _merge_in_a_process(tmp_path / "few", 4, vectors, budget)
    many = _merge_in_a_process(tmp_path / "many", 40, vectors, budget)

    assert few["plan"].kind == many["plan"].kind == "IVF512,PQ16"
    count = many["plan"].count
    for built in (few, many):
        assert built["segment_bytes"] == count * (built["code_size"] + 8)  # codes and ids only
        assert built["left"] == [name for name in built["left"] if name.endswith("plan.json")]
    assert few["files"] == many["files"]  # the same index from 4 or 40 parts

    trained = many["trained_bytes"]
    assert trained > 390_000
    # Flat: 10x the parts add less than 2 MiB (five trained indexes) to the merge's peak.
    assert abs(many["growth_kib"] - few["growth_kib"]) < 2 * 1024, (
        few["growth_kib"],
        many["growth_kib"],
    )


def test_scale_item5_index_of_many_parts_equals_a_one_part_build(tmp_path, caplog):
    """The same rows as 1 shard (one segment of lists) or 10 shards cut into many list ranges: the
    same image.index and image.ivfdata bytes, the same ids and the same search results."""
    vectors = clustered(11_800, 16)
    budget = 200_000
    outputs = {}
    for shards, range_bytes in ((1, 64 << 20), (10, 4_096)):
        folder = tmp_path / f"shards{shards}"
        synthetic_output(folder, vectors, shards)
        job = IndexJob(str(folder), budget, uuid.uuid4().hex, list_range_bytes=range_bytes)
        pipeline = make_pipeline("local")
        _ = pipeline | "Index" >> BuildOutputIndex(job)
        with caplog.at_level(logging.INFO, logger="pipeline.output.indexjob"):
            caplog.clear()
            pipeline.run().wait_until_finish()
        merged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("merging")]
        summary = read_outcome(job)
        assert summary is not None and (summary.type, summary.count) == ("IVF512,PQ4", 10_114)
        outputs[shards] = (folder, merged)

    (one, one_log), (ten, ten_log) = outputs[1], outputs[10]
    assert one_log == ["merging 1 list segments of 10114 vectors"]
    segments = int(ten_log[0].split()[1])
    assert segments > 20, ten_log  # 10,114 x 12 bytes in ranges of 4 KiB
    for name in ("image.index", "image.ivfdata"):
        assert (one / "index" / name).read_bytes() == (ten / "index" / name).read_bytes(), name
    ids_one, ids_ten = (pq.read_table(f / "index" / "ids.parquet").drop(["shard"]) for f in (one, ten))
    assert ids_one.equals(ids_ten)

    queries = faissindex.normalize(vectors[::40])
    found_one = faissindex.search(read_faiss(str(one)), queries, 10)
    found_ten = faissindex.search(read_faiss(str(ten)), queries, 10)
    assert np.array_equal(found_one[1], found_ten[1]) and np.array_equal(found_one[0], found_ten[0])
    # and they are neighbours: the exact nearest kept row is the first hit for most queries
    row_of = np.array([int(uid, 16) for uid in ids_one.column("uid").to_pylist()])
    exact = row_of[(queries @ faissindex.normalize(vectors[row_of]).T).argmax(axis=1)]
    recall = np.mean(row_of[found_one[1][:, 0]] == exact)
    assert recall > 0.5, recall
