"""Shard writing: deterministic tar and Parquet bytes, atomic files, stale shards removed."""

import dataclasses
import io
import json
import os
import re
import tarfile

import pyarrow.parquet as pq
import pytest

from schemas import METADATA_SCHEMA, Sample, Status, make_uid
from transforms.common.files import write_atomically
from transforms.common.manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest
from transforms.write.shards import (
    finalize_output,
    parquet_bytes,
    shard_count,
    shard_of,
    summarize,
    tar_bytes,
    tar_members,
)


def sample(i: int, ok: bool = True) -> Sample:
    url, caption = f"http://x/{i}.jpg", f"caption {i}"
    s = Sample(uid=make_uid(url, caption), url=url, caption=caption, extra={"n": i})
    if ok:
        image = b"\xff\xd8 fake %d" % i
        return dataclasses.replace(s, status=Status.SUCCESS, image=image, image_ext="jpg")
    return s.decided(Status.FAILED, "http_404", "crawl", "HTTP 404")


def test_tar_members_and_headers_are_fixed():
    samples = [sample(1), sample(2, ok=False), sample(3)]
    data = tar_bytes(tar_members(samples))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [
            f"{samples[0].uid}.jpg",
            f"{samples[0].uid}.txt",
            f"{samples[0].uid}.json",
            f"{samples[2].uid}.jpg",
            f"{samples[2].uid}.txt",
            f"{samples[2].uid}.json",
        ]
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}
        meta = json.loads(archive.extractfile(members[2]).read())
        assert meta["uid"] == meta["key"] == samples[0].uid
        assert meta["n"] == 1 and meta["caption"] == "caption 1"
    assert tar_bytes(tar_members(samples)) == data


def test_parquet_holds_every_row_with_the_schema():
    rows = pq.read_table(io.BytesIO(parquet_bytes([sample(1), sample(2, ok=False)], "zstd")))
    assert rows.schema.equals(METADATA_SCHEMA)
    table = rows.to_pylist()
    assert [r["status"] for r in table] == ["success", "failed"]
    assert table[1]["reason"] == "http_404" and table[1]["key"] is None
    assert json.loads(table[0]["extra"]) == {"n": 1}


def test_shard_assignment_is_stable_and_spread():
    uids = [make_uid(f"http://x/{i}", "") for i in range(4000)]
    n = shard_count(4000, 1000)
    assert n == 4
    counts = [sum(1 for u in uids if shard_of(u, n) == k) for k in range(n)]
    assert all(800 < c < 1200 for c in counts)
    assert shard_count(0, 1000) == 1


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "00000.tar")
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    with open(path, "rb") as handle:
        assert handle.read() == b"two"
    assert os.listdir(tmp_path) == ["00000.tar"]


def test_finalize_deletes_only_recorded_stale_files_and_its_temp_files(tmp_path):
    temp = f"_tmp-{'a' * 32}-00001.tar"
    for name in (
        "00000.tar",
        "00000.parquet",
        "00007.tar",
        "00007.parquet",
        "00009.parquet",
        temp,
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"x")
    # The previous run wrote shard 7; shard 9 and notes.txt are nobody's Winnow knows of.
    write_manifest(str(tmp_path), "complete", ["00000.tar", "00000.parquet", "00007.tar", "00007.parquet"])
    shard = {
        "shard": "00000",
        "files": ["00000.parquet", "00000.tar"],
        "samples": 2,
        "kept": 1,
        "tar_bytes": 1,
        "counts": [["", "success", "", 1], ["crawl", "failed", "http_404", 1]],
    }
    stats = finalize_output([shard], str(tmp_path), ["read", "crawl"])
    assert sorted(os.listdir(tmp_path)) == [
        "00000.parquet",
        "00000.tar",
        "00009.parquet",
        "notes.txt",
        "stats.json",
        MANIFEST_FILE,
    ]
    assert stats["stages"]["crawl"] == {"total": 2, "kept": 1, "dropped": {"http_404": 1}}
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    # Still `running`: the launcher completes it after the index and the report.
    assert read_manifest(str(tmp_path)) == Manifest("running", ("00000.parquet", "00000.tar", "stats.json"))


def test_atomic_write_never_replaces_a_folder(tmp_path):
    (tmp_path / "report.html").mkdir()
    (tmp_path / "report.html" / "keep.txt").write_text("mine")
    with pytest.raises(IsADirectoryError):
        write_atomically(str(tmp_path / "report.html"), b"<html>")
    assert (tmp_path / "report.html" / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["report.html"]


def test_summary_follows_samples_through_stages():
    counts = [["read", "failed", "missing_url", 1], ["crawl", "failed", "timeout", 1], ["", "success", "", 1]]
    shards = [{"shard": "00000", "samples": 3, "kept": 1, "tar_bytes": 5, "files": [], "counts": counts}]
    stats = summarize(shards, ["read", "crawl"])
    assert stats["stages"]["read"] == {"total": 3, "kept": 2, "dropped": {"missing_url": 1}}
    assert stats["stages"]["crawl"] == {"total": 2, "kept": 1, "dropped": {"timeout": 1}}
    assert stats["status"] == {"failed": 2, "success": 1}
    assert stats["reasons"] == {"failed": {"missing_url": 1, "timeout": 1}}


def _reference_tar(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_bytes_equal_what_tarfile_writes():
    members = [
        ("a" * 32 + ".jpg", b"\xff" * 1000),
        ("b.txt", b""),
        ("c.json", b"{}" * 300),
        ("d" * 100, b"1" * 511),
    ]
    assert tar_bytes(members) == _reference_tar(members)
    assert tar_bytes([]) == _reference_tar([])
    with pytest.raises(ValueError, match="too long"):
        tar_bytes([("e" * 101, b"")])


def test_tar_member_names_are_generated_keys_never_urls_or_captions():
    hostile = [
        ("http://x/../../etc/passwd.jpg", "../../../root/.ssh/authorized_keys"),
        ("http://x/a.jpg?name=/tmp/evil.sh", "/absolute/path.txt"),
        ("http://x/%2e%2e%2fshadow", "caption\x00with nul\nand newline"),
        ("http://x/" + "a" * 300 + ".png", "long " * 100),
    ]
    samples = []
    for url, caption in hostile:
        base = Sample(uid=make_uid(url, caption), url=url, caption=caption)
        samples.append(
            dataclasses.replace(base, status=Status.SUCCESS, image=b"\xff\xd8 img", image_ext="jpg")
        )
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(tar_members(samples)))) as archive:
        names = archive.getnames()
        assert len(names) == 3 * len(hostile)
        assert all(re.fullmatch(r"[0-9a-f]{32}\.(jpg|txt|json)", name) for name in names), names
        # The caption travels inside the member, not in its name.
        texts = {archive.extractfile(n).read().decode() for n in names if n.endswith(".txt")}
    assert texts == {caption for _, caption in hostile}


def _written(
    tmp_path, name: str, rows: list[Sample], as_batches: bool, mixed: bool = False
) -> dict[str, bytes]:
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing import test_pipeline

    from schemas.sample import batch_from_samples
    from transforms.write import WriteShards
    from transforms.write.config import OutputConfig

    out = tmp_path / name
    out.mkdir()
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        total = p | "Total" >> beam.Create([len(rows)])
        if mixed:  # the first half as samples, the rest as batches, into the same shards
            batches = p | "Batches" >> beam.Create([batch_from_samples(rows[30:])])
            samples = p | "Samples" >> beam.Create(rows[:30])
        elif as_batches:  # three uneven batches, as a reader's
            parts = [rows[:40], rows[40:41], rows[41:]]
            batches = p | "Batches" >> beam.Create([batch_from_samples(part) for part in parts])
            samples = p | "None" >> beam.Create([]).with_output_types(Sample)
        else:
            batches, samples = None, p | "Samples" >> beam.Create(rows)
        _ = samples | WriteShards(str(out), OutputConfig(samples_per_shard=25), total=total, rows=batches)
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_rows_sent_as_batches_write_the_same_files_as_samples(tmp_path):
    rows = [sample(i, ok=False) for i in range(60)]  # rows a run without a fetch writes
    rows[7] = rows[7].decided(Status.REJECTED, "too_few_words", "text", "1 word")
    rows[9] = dataclasses.replace(rows[3])  # a repeated pair: marked `duplicate_uid` in its shard
    rows[11] = dataclasses.replace(rows[11], extra={"zh": "图片", "a": [1, 2]}, lang_score=0.123456789)
    for i in (20, 21):  # pending pairs (no stage ran), one of them the text stage's marked copy
        rows[i] = Sample(uid=rows[i].uid, url=rows[i].url, caption="a kite", extra={})
    rows[21] = rows[21].decided(Status.REJECTED, "duplicate_url", "text", "copy")
    rows[21] = dataclasses.replace(rows[21], uid=rows[20].uid, duplicate_of=rows[20].uid)
    # One uid, two outcomes: the sort (status, then reason) decides which row is kept.
    rows[41] = dataclasses.replace(rows[40], extra={}).decided(
        Status.REJECTED, "too_few_words", "text", "1 word"
    )
    by_sample = _written(tmp_path, "samples", rows, as_batches=False)
    by_batch = _written(tmp_path, "batches", rows, as_batches=True)
    assert sorted(by_sample) == sorted(by_batch) and len(by_sample) == 3  # three Parquet shards
    assert by_sample == by_batch
    assert _written(tmp_path, "mixed", rows, as_batches=True, mixed=True) == by_sample
    read = [r for data in by_batch.values() for r in pq.read_table(io.BytesIO(data)).to_pylist()]
    assert sorted(r["uid"] for r in read) == sorted(s.uid for s in rows)
    # rows[9] and rows[41]; the copy the text stage marked (rows[21]) is not
    assert sum(r["reason"] == "duplicate_uid" for r in read) == 2
    assert json.loads(next(r["extra"] for r in read if r["uid"] == rows[11].uid)) == {
        "zh": "图片",
        "a": [1, 2],
    }
