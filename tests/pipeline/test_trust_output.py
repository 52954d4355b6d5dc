"""Winnow never deletes or overwrites what it did not write, and a retry never mixes or changes
results: the output-safety items of the trust list, each through the command a user runs."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.conftest import cli_err, overrides, read_output_rows, shard_bytes, tree_bytes
from transforms.common.manifest import MANIFEST_FILE, read_manifest


def test_item01_audit_out_never_deletes_a_folder_or_a_foreign_file(text_output, tmp_path, capsys):
    before = tree_bytes(text_output)
    # --out naming the output itself, the output with a slash, or the current folder: refused, untouched.
    for out in (text_output, text_output + "/", "."):
        code, err = cli_err(capsys, "audit", text_output, "--out", out)
        assert code == 2 and "is a folder" in err, (out, err)
    assert tree_bytes(text_output) == before
    # A file Winnow did not write is never replaced; its own report is.
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    code, err = cli_err(capsys, "audit", text_output, "--out", str(mine))
    assert code == 2 and "not a report Winnow wrote" in err
    assert mine.read_text() == "my notes"
    report = tmp_path / "report.html"
    assert cli_err(capsys, "audit", text_output, "--out", str(report))[0] == 0
    first = report.read_bytes()
    assert cli_err(capsys, "audit", text_output, "--out", str(report))[0] == 0
    assert report.read_bytes() == first and b"<!DOCTYPE html>" in first
    assert tree_bytes(text_output) == before


def _parquet_list(path, urls: list[str]) -> None:
    pq.write_table(
        pa.table({"url": urls, "caption": [f"a photo of thing {i}" for i in range(len(urls))]}), path
    )


def test_item02_output_overlapping_an_input_is_refused(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    for i in range(2):  # img2dataset's names, as both input and output would have them
        _parquet_list(lists / f"{i:05d}.parquet", [f"http://example.com/{i}/{j}.jpg" for j in range(3)])
    before = tree_bytes(lists)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for output in ("lists", "./lists", str(lists), "lists//", "lists/sub", "lists/../lists"):
            code, err = cli_err(capsys, "run", "--input", "lists", "--output", output, "--stages", "text")
            assert code == 2 and ("holds the input file" in err or "inside the input folder" in err), (
                output,
                err,
            )
        code, err = cli_err(
            capsys, "run", "--input", "lists/*.parquet", "--output", "./lists/x", "--stages", "text"
        )
        assert code == 2 and "inside the input folder" in err
    finally:
        os.chdir(cwd)
    assert tree_bytes(lists) == before


def test_item02_output_holding_files_winnow_did_not_write_is_refused(text_output, tmp_path, capsys):
    lists = tmp_path / "in"
    lists.mkdir()
    _parquet_list(lists / "urls.parquet", ["http://example.com/a.jpg"])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "00000.parquet").write_bytes(b"someone else's shard")
    (theirs / "notes.txt").write_text("keep me")
    code, err = cli_err(capsys, "run", "--input", str(lists), "--output", str(theirs), "--stages", "text")
    assert code == 2 and "holds files ('00000.parquet' and 1 more)" in err
    assert tree_bytes(theirs) == {"00000.parquet": b"someone else's shard", "notes.txt": b"keep me"}
    # A Winnow output with a file added by hand is not overwritten either.
    copy = tmp_path / "copy"
    shutil.copytree(text_output, copy)
    (copy / "mine.txt").write_text("added later")
    code, err = cli_err(capsys, "run", "--input", str(lists), "--output", str(copy), "--stages", "text")
    assert code == 2 and "its manifest does not name" in err and "mine.txt" in err
    # Without the added file, the same folder is Winnow's own output and is replaced cleanly.
    os.remove(copy / "mine.txt")
    assert cli_err(capsys, "run", "--input", str(lists), "--output", str(copy), "--stages", "text")[0] == 0
    manifest = read_manifest(str(copy))
    assert manifest is not None and manifest.state == "complete"
    assert sorted(tree_bytes(copy)) == sorted([*manifest.files, MANIFEST_FILE])
    assert len(read_output_rows(str(copy))) == 1  # the earlier run's shards are gone


def test_item03_retry_refuses_an_unfinished_output(text_output, tmp_path, capsys):
    killed = tmp_path / "killed"
    shutil.copytree(text_output, killed)
    manifest = json.loads((killed / MANIFEST_FILE).read_text())
    manifest["state"] = "running"  # what a run killed before its end leaves
    (killed / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, err = cli_err(capsys, "run", "--retry-failed", str(killed), "--output", str(tmp_path / "r1"))
    assert code == 2 and "did not finish" in err
    partial = tmp_path / "partial"
    shutil.copytree(text_output, partial)
    os.remove(partial / "00001.parquet")  # one shard lost
    code, err = cli_err(capsys, "run", "--retry-failed", str(partial), "--output", str(tmp_path / "r2"))
    assert code == 2 and "00001.parquet' is missing" in err
    os.remove(partial / MANIFEST_FILE)
    code, err = cli_err(capsys, "run", "--retry-failed", str(partial), "--output", str(tmp_path / "r3"))
    assert code == 2 and "not an output of a finished Winnow run" in err
    assert not any(os.path.exists(tmp_path / f"r{i}") for i in (1, 2, 3))


def test_item03_retry_refuses_its_own_folder_in_any_spelling(text_output, capsys):
    parent, name = os.path.split(text_output)
    for output in (text_output, f"{parent}//{name}", f"{parent}/./{name}/", f"{text_output}/sub"):
        code, err = cli_err(capsys, "run", "--retry-failed", text_output, "--output", output)
        assert code == 2 and "write the retry" in err, (output, err)


def test_item08_retry_with_a_changed_config_is_refused(sample_web, tmp_path, capsys):
    first = str(tmp_path / "first")
    stages = "run.stages=[text,crawl]"
    args = ["run", "--input", sample_web.urls, "--output", first, *overrides(stages, "crawl.image_size=256")]
    assert main(args) in (0, 3)
    capsys.readouterr()
    retry = ["run", "--retry-failed", first, "--output", str(tmp_path / "second")]
    code, err = cli_err(capsys, *retry, *overrides(stages, "crawl.image_size=128"))
    assert code == 2 and "crawl.image_size (256 -> 128)" in err
    assert not os.path.exists(tmp_path / "second")
    # Settings that change only speed or politeness may differ.
    code, _ = cli_err(capsys, *retry, *overrides(stages, "crawl.image_size=256", "crawl.thread_count=4"))
    assert code in (0, 3)
    widths = {r["width"] for r in read_output_rows(str(tmp_path / "second")) if r["status"] == "success"}
    assert widths == {256}


@pytest.mark.slow
def test_item09_a_retry_that_recovers_nothing_changes_nothing(sample_web, reference_run, tmp_path):
    # The sample web's failures (500s, timeouts) fail again: nothing is recovered, so the whole
    # pipeline's output, global stages (dedup groups, noise_prob) included, must be the same bytes.
    retried = str(tmp_path / "retried")
    assert main(["run", "--retry-failed", reference_run.dir, "--output", retried, *overrides()]) == 0
    with open(os.path.join(retried, "stats.json")) as handle:
        assert json.load(handle)["status"] == reference_run.stats["status"]
    before = {r["uid"]: r for r in read_output_rows(reference_run.dir)}
    after = {r["uid"]: r for r in read_output_rows(retried)}
    changed = [uid for uid in before if before[uid] != after[uid]]
    assert changed == []
    heads = {r["dup_group"] for r in after.values() if r["duplicate_of"]}
    assert heads and all(after[h]["dup_group"] == h for h in heads if h in after)
    assert shard_bytes(retried) == shard_bytes(reference_run.dir)


def test_item16_an_unwritable_output_is_refused_before_the_run(sample_web, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    target = str(tmp_path / "a-file" / "out")  # cannot be created, whoever runs the test
    code, err = cli_err(capsys, "run", "--input", sample_web.urls, "--output", target, *overrides())
    assert code == 2 and f"output '{target}' cannot be created" in err
    assert err.count("\n") == 1  # one line, before anything was fetched


def test_item01_corpus_never_deletes_a_users_files_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "files").mkdir(parents=True)
    (mine / "files" / "holiday.jpg").write_bytes(b"my photo")
    code, err = cli_err(capsys, "corpus", "--out", str(mine), "--samples", "5")
    assert code == 2 and "is not a generated sample web's" in err
    assert tree_bytes(mine) == {"files/holiday.jpg": b"my photo"}
