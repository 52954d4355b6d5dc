"""No growing gathers in the launcher: `output.uids_file` is written per shard and merged
streaming, and `--retry-failed` matches the previous output's files when the job runs."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.build import build_pipeline
from pipeline.config import ConfigError, load_config
from pipeline.jobs import check_uids_file, run_job
from schemas.layout import shard_name, shard_stems
from schemas.sample import Sample, Status, make_uid
from tests.hostile import HostileSite
from transforms.common.manifest import read_manifest
from transforms.read.previous import ReadPreviousOutput
from transforms.write.shards import parquet_bytes
from transforms.write.uids import UID_DTYPE, merge_parts, part_name


def _reference_uids_file(output: str) -> bytes:
    """What the launcher wrote before the parts: every kept uid of the Parquet files in lists,
    sorted as one array and saved."""
    uids = []
    for stem in shard_stems(output):
        table = pq.read_table(f"{output}/{stem}.parquet", columns=["uid", "status"])
        uids += [
            u
            for u, s in zip(*(table[c].to_pylist() for c in ("uid", "status")), strict=True)
            if s == "success"
        ]
    pairs = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], UID_DTYPE)
    buffer = io.BytesIO()
    np.save(buffer, np.sort(pairs))
    return buffer.getvalue()


def test_scale_item4_uids_file_is_merged_from_shard_parts(tmp_path):
    config = load_config(
        overrides=[
            "crawl.allow_private_networks=true", "run.stages=[crawl]", "output.samples_per_shard=3",
            "output.uids_file=kept.npy", "output.index=false",
        ]
    )  # fmt: skip
    outputs = {}
    with HostileSite() as site:
        urls = [*(site.url(f"/free/{i}.jpg") for i in range(10)), site.url("/gone/a.jpg")]
        captions = [f"a red square number {i}" for i in range(len(urls))]
        lists = str(tmp_path / "urls.parquet")
        pq.write_table(pa.table({"url": urls, "caption": captions}), lists)
        for workers in (1, 2):
            outputs[workers] = str(tmp_path / f"out{workers}")
            stats = run_job(config, [lists], outputs[workers], workers=workers)
    output = outputs[1]
    merged = (tmp_path / "out1" / "kept.npy").read_bytes()
    assert stats["uids_file"]["count"] == 10 == stats["status"]["success"]
    # Byte for byte the file the launcher made from every kept uid in memory, on 1 and 2 workers.
    assert merged == _reference_uids_file(output) == (tmp_path / "out2" / "kept.npy").read_bytes()
    # One sorted part per shard, written by the shard's writer and recorded with it.
    stems = shard_stems(output)
    assert len(stems) == 4
    parts = [f"{output}/{part_name(stem)}" for stem in stems]
    assert all(np.all(np.diff(np.load(p)["f0"].astype(float)) >= 0) for p in parts)
    assert sum(len(np.load(p)) for p in parts) == 10
    recorded = set(read_manifest(output).files)
    assert {part_name(stem) for stem in stems} | {"kept.npy"} <= recorded
    # Merged two parts at a time, one uid per read: the same bytes (the rounds through runs).
    merge_parts(parts, str(tmp_path / "rounds.npy"), chunk_rows=1, fan_in=2)
    assert (tmp_path / "rounds.npy").read_bytes() == merged
    # The parts' folder is Winnow's: a uids file named inside it is refused before anything runs.
    with pytest.raises(ConfigError, match="uids/"):
        check_uids_file(output, "uids/selected.npy")


def _synthetic_parts(folder, rows: int, parts: int, seed: int) -> tuple[list[str], bytes]:
    """`parts` sorted part files of `rows` random uid pairs in all, and np.save's bytes of them all."""
    rng = np.random.default_rng(seed)
    pairs = np.empty(rows, UID_DTYPE)
    pairs["f0"] = rng.integers(0, 2**63, rows, dtype=np.uint64) * 2 + rng.integers(
        0, 2, rows, dtype=np.uint64
    )
    pairs["f1"] = rng.integers(0, 2**63, rows, dtype=np.uint64)
    pairs["f0"][:50] = pairs["f0"][50]  # pairs sharing their high half
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, chunk in enumerate(np.array_split(pairs, parts)):
        paths.append(f"{folder}/uids_{i:05d}.npy")
        np.save(paths[-1], np.sort(chunk))
    buffer = io.BytesIO()
    np.save(buffer, np.sort(pairs))
    return paths, buffer.getvalue()


def merge_peak_bytes(paths: list[str], target: str, chunk_rows: int, fan_in: int) -> int:
    """The peak of the memory Python allocates while `merge_parts` merges `paths`."""
    tracemalloc.start()
    try:
        merge_parts(paths, target, chunk_rows=chunk_rows, fan_in=fan_in)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_scale_item4_uids_merge_memory_stays_flat_in_the_rows(tmp_path):
    peaks = {}
    for rows in (100_000, 1_000_000):
        paths, expected = _synthetic_parts(tmp_path / str(rows), rows, parts=40, seed=rows)
        target = str(tmp_path / f"merged_{rows}.npy")
        peaks[rows] = merge_peak_bytes(paths, target, chunk_rows=1024, fan_in=16)
        assert Path(target).read_bytes() == expected  # the whole sorted array, byte for byte
    # ×10 the uids, the same memory: a few chunks per part held, never the 16 MB of pairs.
    assert peaks[1_000_000] < 1.3 * peaks[100_000], peaks
    assert peaks[1_000_000] < 4 << 20, peaks


def _previous_output(folder, shards: int) -> list[str]:
    """A previous output of `shards` Parquet shards, 2 rows each (a failure a retry fetches again,
    a rejected row), and a file that is not a shard; the uids."""
    os.makedirs(folder)
    uids = []
    for index in range(shards):
        rows = []
        for k, (status, reason) in enumerate([(Status.FAILED, "timeout"), (Status.REJECTED, "too_small")]):
            url = f"http://example.com/{index}/{k}.jpg"
            uid = make_uid(url, "a caption")
            rows.append(
                Sample(uid=uid, url=url, caption="a caption", status=status, reason=reason, stage="crawl")
            )
            uids.append(uid)
        (folder / f"{shard_name(index)}.parquet").write_bytes(parquet_bytes(rows, "snappy"))
    (folder / "notes.parquet").write_bytes(b"not a shard")
    return uids


def test_scale_item4_retry_job_graph_does_not_grow_with_the_shards(tmp_path):
    config = load_config(overrides=["run.stages=[crawl]"])
    graphs = {}
    for shards in (3, 30):
        previous = tmp_path / f"previous{shards:02d}"  # the same length: the same pattern bytes
        _previous_output(previous, shards)
        pipeline = beam.Pipeline()
        build_pipeline(pipeline, config, [], str(tmp_path / f"out{shards:02d}"), retry_from=str(previous))
        proto = pipeline.to_runner_api()
        graphs[shards] = (len(proto.components.transforms), len(proto.SerializeToString()))
    # The job graph holds the folder's pattern: ten times the shards, the same transforms, and the
    # same bytes but for the pickler's noise (tens of bytes), far below the 27 more shard paths.
    (transforms3, bytes3), (transforms30, bytes30) = graphs[3], graphs[30]
    extra_paths = 27 * len(str(tmp_path / "previous30" / "00029.parquet"))
    assert transforms3 == transforms30 and abs(bytes30 - bytes3) < 256 < extra_paths, graphs
    # And the shards are matched when the job runs: every row of every shard, nothing else.
    previous = tmp_path / "matched"
    uids = _previous_output(previous, 5)
    with beam.Pipeline() as pipeline:
        read = pipeline | ReadPreviousOutput(str(previous)) | beam.Map(lambda s: (s.uid, s.status))
        assert_that(
            read,
            equal_to([(u, Status.PENDING if i % 2 == 0 else Status.REJECTED) for i, u in enumerate(uids)]),
        )
