"""The whole pipeline on the sample web: outcomes against ground truth, shards read back, determinism."""

from __future__ import annotations

import glob
import io
import json
import os

import apache_beam as beam
import pytest
import webdataset as wds
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.config import load_config
from pipeline.jobs import run_job
from sampleweb.scoring import chosen_caption
from schemas import Status
from tests.conftest import TEST_OVERRIDES, read_output_rows, shard_bytes
from transforms.common.manifest import write_manifest
from transforms.crawl.stage import DownloadImages
from transforms.read.config import InputConfig
from transforms.read.lists import rows_to_samples

CONFIG = load_config(overrides=TEST_OVERRIDES)


def expected_outcome(row: dict) -> tuple[str, str | None]:
    return row["expected_status"], row["expected_reason"] if row["expected_status"] != "success" else None


def test_download_stage_outcomes_match_ground_truth(sample_web):
    truth = {row["url"]: expected_outcome(row) for row in sample_web.truth_rows()}
    samples = list(rows_to_samples(sample_web.urls, InputConfig()))
    with test_pipeline.TestPipeline(runner=FnApiRunner()) as p:
        outcomes = (
            p
            | beam.Create(samples)
            | DownloadImages(CONFIG.crawl)
            | beam.Map(lambda s: (s.url, s.status, s.reason))
        )
        assert_that(outcomes, equal_to([(s.url, *truth[s.url]) for s in samples]))


@pytest.fixture(scope="module")
def full_run(sample_web, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("run") / "out")
    stats = run_job(CONFIG, [sample_web.urls], output)
    return output, stats


def test_every_input_row_has_one_metadata_row(sample_web, full_run):
    output, stats = full_run
    rows = read_output_rows(output)
    truth = sample_web.truth_rows()
    assert sorted(r["url"] for r in rows) == sorted(t["url"] for t in truth)
    assert stats["samples"] == len(truth)
    by_url = {r["url"]: r for r in rows}
    for t in truth:
        row = by_url[t["url"]]
        if row["stage"] == "dedup":  # downloaded as expected, then removed as a duplicate
            assert t["dup_group"] != -1 and expected_outcome(t) == ("success", None)
            continue
        if row["stage"] == "noise":  # downloaded as expected, then judged too noisy to repair
            assert row["reason"] == "noisy_pair" and expected_outcome(t) == ("success", None)
            continue
        assert (row["status"], row["reason"] if row["status"] != "success" else None) == expected_outcome(t)
        if row["status"] == Status.FAILED:
            assert row["stage"] == "crawl" and row["error"]


def test_shards_read_back_with_webdataset(full_run):
    output, stats = full_run
    rows = {r["key"]: r for r in read_output_rows(output) if r["key"]}
    tars = sorted(glob.glob(os.path.join(output, "*.tar")))
    seen = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        row = rows[sample["__key__"]]
        meta = json.loads(sample["json"])
        assert meta["uid"] == row["uid"] == sample["__key__"]
        # The noise stage's chosen caption; the raw caption stays in Parquet and the .json.
        assert sample["txt"].decode() == chosen_caption(row)
        assert meta["caption"] == row["caption"] and meta["caption_original"] == row["caption_clean"]
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.size == (256, 256) == (row["width"], row["height"])  # default border mode
        assert row["sha256"] and row["original_width"] > 0
        seen += 1
    assert seen == len(rows) == stats["status"]["success"] > 0
    assert stats["shards"]["count"] == len(glob.glob(os.path.join(output, "*.parquet")))


def test_stats_and_metrics_agree(full_run):
    _, stats = full_run
    crawl = stats["stages"]["crawl"]
    metrics = stats["metrics"]
    assert metrics["crawl/total"] == crawl["total"]
    assert metrics["crawl/kept"] == crawl["kept"]
    for reason, n in crawl["dropped"].items():
        assert metrics[f"crawl/dropped/{reason}"] == n
    assert sum(stats["status"].values()) == stats["samples"]
    assert stats["rows_read"] == stats["samples"] and "rows_lost" not in stats


def test_same_input_gives_byte_identical_shards(sample_web, full_run, tmp_path):
    """Two worker processes write what one does. (A second run in one process writing the same
    bytes is `test_rerun_over_a_killed_run_leaves_no_partial_or_stale_shard`'s check.)"""
    output, _ = full_run
    first = shard_bytes(output)
    multi = str(tmp_path / "multi")
    run_job(CONFIG, [sample_web.urls], multi, workers=2)
    assert len(first) >= 6
    assert shard_bytes(multi) == first


def test_rerun_over_a_killed_run_leaves_no_partial_or_stale_shard(sample_web, full_run, tmp_path):
    output, _ = full_run
    target = tmp_path / "out"
    target.mkdir()
    # What a killed run leaves behind: its claim on the folder (a manifest saying `running`), a
    # temporary file mid-write and a shard from a different layout.
    write_manifest(str(target), "running", [])
    (target / f"_tmp-{'0123abcd' * 4}-00001.tar").write_bytes(b"partial")
    (target / "00099.tar").write_bytes(b"stale")
    (target / "00099.parquet").write_bytes(b"stale")
    (target / "img_emb").mkdir()
    (target / "img_emb" / "img_emb_00099.npy").write_bytes(b"stale")
    run_job(CONFIG, [sample_web.urls], str(target))
    assert shard_bytes(str(target)) == shard_bytes(output)
    assert not [n for n in os.listdir(target) if n.startswith("_tmp-")]
    assert not (target / "00099.tar").exists() and not (target / "img_emb" / "img_emb_00099.npy").exists()


def test_stages_subset_without_crawl_writes_metadata_only(sample_web, tmp_path):
    config = load_config(overrides=[*TEST_OVERRIDES, "run.stages=[]"])
    stats = run_job(config, [sample_web.urls], str(tmp_path))
    assert stats["status"] == {"pending": stats["samples"]}
    assert not glob.glob(str(tmp_path / "*.tar"))
    assert len(read_output_rows(str(tmp_path))) == stats["samples"]


@pytest.mark.parametrize("path", ["samples", "batches"])
def test_a_row_lost_between_read_and_write_fails_the_run(sample_web, tmp_path, monkeypatch, capsys, path):
    """Stages never drop a row, so a shard set short of the rows read is a runner fault: the run
    says so in stats.json and fails (exit 1), never reports success over incomplete shards. The
    loss is made here by a step that skips one URL's row: the one that makes a `Sample` per row
    (a run with a per-sample stage), or the one that splits row batches by shard (a run without)."""
    import pyarrow.compute as pc

    import pipeline.build
    from pipeline.cli import main
    from pipeline.output.errors import RowsLostError
    from schemas.sample import samples_from_batch
    from transforms.write import shards

    victim = sample_web.truth_rows()[7]["url"]
    if path == "samples":
        # a stage that works sample by sample without the crawl: the balance stage, on captions
        stages = ["run.stages=[balance]", "balance.entries=auto"]

        def losing(batch):
            return [s for s in samples_from_batch(batch) if s.url != victim]

        monkeypatch.setattr(pipeline.build, "samples_from_batch", losing)
    else:
        stages = ["run.stages=[]"]
        real = shards.rows_by_shard

        def losing_rows(batch, n):
            return real(batch.filter(pc.fill_null(pc.not_equal(batch.column("url"), victim), True)), n)

        monkeypatch.setattr(shards, "rows_by_shard", losing_rows)
    config = load_config(overrides=[*TEST_OVERRIDES, *stages])
    with pytest.raises(RowsLostError, match=r"were read and .* written: the runner lost 1;"):
        run_job(config, [sample_web.urls], str(tmp_path / "out"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rows_lost"] == 1 and stats["rows_read"] == stats["samples"] + 1
    assert victim not in {row["url"] for row in read_output_rows(str(tmp_path / "out"))}

    code = main(
        [
            "run",
            "--input",
            sample_web.urls,
            "--output",
            str(tmp_path / "cli"),
            *[arg for o in [*stages, *TEST_OVERRIDES] for arg in ("--set", o)],
        ]
    )
    assert code == 1
    assert "the runner lost 1" in capsys.readouterr().err
