"""Resume without loss: a run killed by SIGKILL and run again gives the same shards byte for byte;
`--retry-failed` fetches again only a previous run's transient failures; an outage raises an alarm."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import EXIT_ALARM, main
from pipeline.config import load_config
from pipeline.jobs import run_job
from tests.conftest import TEST_OVERRIDES, read_output_rows, shard_bytes
from tests.hostile import TDMREP_RULES, HostileSite
from transforms.common.errors import InputError

# Text, crawl and dedup: the whole pipeline short of the model stages, which tests elsewhere cover.
STAGES = "run.stages=[text,crawl,dedup]"


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Polls `condition` until it holds; fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(urls: str, output: str, tmp: str) -> subprocess.Popen:
    overrides = [arg for o in [*TEST_OVERRIDES, STAGES] for arg in ("--set", o)]
    command = [sys.executable, "-m", "pipeline.cli", "run", "--input", urls, "--output", output, *overrides]
    env = {**os.environ, "TMPDIR": tmp}  # where the run keeps its progress files, which show how far it got
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_run_killed_at_any_point_and_rerun_gives_the_same_shards(sample_web, tmp_path):
    config = load_config(overrides=[*TEST_OVERRIDES, STAGES])
    reference = str(tmp_path / "reference")
    run_job(config, [sample_web.urls], reference)
    output = str(tmp_path / "out")
    # Killed mid-crawl, then killed again while writing shards (the output folder has files).
    points = {
        "mid-crawl": lambda tmp: bool(glob.glob(f"{tmp}/winnow-progress-*/crawl.*.json")),
        "mid-write": lambda tmp: bool(os.path.isdir(output) and os.listdir(output)),
    }
    killed = {}
    for point, reached in points.items():
        tmp = tmp_path / point
        tmp.mkdir()
        child = _start(sample_web.urls, output, str(tmp))
        _wait_for(lambda t=str(tmp), r=reached, c=child: r(t) or c.poll() is not None, point)
        child.send_signal(signal.SIGKILL)
        killed[point] = child.wait() == -signal.SIGKILL
        # Whatever sits at a final name is complete: shards appear by rename or one upload.
        left = shard_bytes(output) if os.path.isdir(output) else {}
        reference_bytes = shard_bytes(reference)
        assert all(data == reference_bytes.get(name) for name, data in left.items()), point
    assert killed["mid-crawl"]  # the crawl takes seconds: the kill lands in it (mid-write may miss)
    assert run_job(config, [sample_web.urls], output)["samples"] == 300
    assert shard_bytes(output) == shard_bytes(reference)
    assert not [n for n in os.listdir(output) if n.startswith("_tmp-")]


def _url_list(path, urls: list[str]) -> str:
    pq.write_table(
        pa.table({"url": urls, "caption": [f"a red square number {i}" for i in range(len(urls))]}), path
    )
    return str(path)


def test_retry_failed_fetches_only_transient_failures_again(tmp_path):
    config = load_config(
        overrides=["crawl.allow_private_networks=true", "crawl.timeout=2", "run.stages=[crawl]"]
    )
    with HostileSite("rules", tdmrep=TDMREP_RULES) as site:
        urls = [
            *(site.url(f"/free/{i}.jpg") for i in range(6)),
            *(site.url(f"/outage/{i}.jpg") for i in range(5)),
            site.url("/gone/a.jpg"),
            site.url("/private/a.jpg"),
            site.url("/reserved/a.jpg"),
        ]
        inputs = [_url_list(tmp_path / "urls.parquet", urls)]
        site.outage = True
        first = str(tmp_path / "first")
        stats = run_job(config, inputs, first)
        assert stats["reasons"]["failed"]["http_503"] == 5
        assert "alarm" in stats  # 5 of 14 failed transiently: above the 25 % threshold
        site.outage = False
        seen = len(site.requests)
        second = str(tmp_path / "second")
        stats = run_job(config, [], second, retry_from=first)
        assert "alarm" not in stats and stats["retried_from"] == first
        # Only the five outage images were asked for again (and the robots.txt of the new process).
        assert sorted(site.requests[seen:]) == sorted(
            ["/robots.txt", "/.well-known/tdmrep.json", *(f"/outage/{i}.jpg" for i in range(5))]
        )
        fresh = str(tmp_path / "fresh")
        run_job(config, inputs, fresh)
    before = {r["uid"]: r for r in read_output_rows(first)}
    after = {r["uid"]: r for r in read_output_rows(second)}
    assert before.keys() == after.keys()
    for uid, row in after.items():
        if "/outage/" in row["url"]:
            assert (before[uid]["reason"], row["status"]) == ("http_503", "success")
        else:
            assert row == before[uid]  # settled rows, kept images included, come back as they were
    # The retried output is the output a run without the outage would have given, byte for byte.
    assert shard_bytes(second) == shard_bytes(fresh)


def test_retry_failed_needs_a_finished_output_and_another_folder(tmp_path, capsys):
    config = load_config(overrides=["run.stages=[crawl]"])
    previous = tmp_path / "previous"
    previous.mkdir()
    with pytest.raises(InputError, match="not an output of a finished Winnow run"):
        run_job(config, [], str(tmp_path / "out"), retry_from=str(previous))
    with pytest.raises(InputError, match="write the retry"):
        run_job(config, [], str(previous), retry_from=str(previous))
    assert main(["run", "--retry-failed", str(previous), "--output", str(tmp_path / "o")]) == 2
    assert "not an output of a finished Winnow run" in capsys.readouterr().err


def test_an_outage_raises_an_alarm_and_a_nonzero_exit(tmp_path, capsys):
    with HostileSite("missing") as site:
        site.outage = True
        urls = _url_list(tmp_path / "urls.parquet", [site.url(f"/outage/{i}.jpg") for i in range(8)])
        code = main(
            ["run", "--input", urls, "--output", str(tmp_path / "out"), "--stages", "crawl",
             "--set", "crawl.allow_private_networks=true"]
        )  # fmt: skip
    assert code == EXIT_ALARM
    err = capsys.readouterr().err
    assert "ALARM: 100% of the 8 samples the crawl attempted failed transiently (http_503 8)" in err
    assert "--retry-failed" in err
    assert os.path.exists(tmp_path / "out" / "00000.parquet")  # the output is still written
