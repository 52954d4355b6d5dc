"""The full default pipeline through Beam's PortableRunner against Beam's local job service.

LOOPBACK workers run in this process but receive the pipeline only through the job service's
protocol, so everything the stages ship must pickle: the same proof a Spark or Flink cluster needs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.jobs import run_job
from tests.conftest import TEST_OVERRIDES, free_port, shard_bytes


@pytest.fixture(scope="module")
def job_endpoint():
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "apache_beam.runners.portability.local_job_service_main",
        f"--port={port}",
    ]
    service = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        service.kill()
        pytest.fail("Beam's local job service did not start")
    yield f"localhost:{port}"
    service.terminate()
    service.wait(timeout=10)


def test_portable_runner_matches_local_run(sample_web, job_endpoint, tmp_path, reference_run):
    config = load_config(overrides=TEST_OVERRIDES)
    portable = tmp_path / "portable"
    stats = run_job(
        config,
        [sample_web.urls],
        str(portable),
        runner="PortableRunner",
        beam_args=[f"--job_endpoint={job_endpoint}", "--environment_type=LOOPBACK"],
    )
    expected = shard_bytes(reference_run.dir)
    assert expected and shard_bytes(str(portable)) == expected
    assert stats["samples"] == 300 and stats["report"]


@pytest.mark.parametrize("engine", ["spark", "flink"])
def test_submit_script_runs_the_pipeline_on_a_job_server(
    engine, sample_web, job_endpoint, tmp_path, reference_run
):
    # deploy/<engine>/submit.sh as a cluster user runs it, pointed at a job server; LOOPBACK
    # stands in for the workers' PROCESS or DOCKER environment, which needs a cluster.
    output = tmp_path / engine
    overrides = [arg for item in TEST_OVERRIDES for arg in ("--set", item)]
    done = subprocess.run(
        [
            "bash",
            f"deploy/{engine}/submit.sh",
            "--input",
            sample_web.urls,
            "--output",
            str(output),
            *overrides,
        ],
        env={
            **os.environ,
            "JOB_ENDPOINT": job_endpoint,
            "ENVIRONMENT_TYPE": "LOOPBACK",
            "WINNOW": str(Path(sys.executable).parent / "winnow"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"→ {output}" in done.stdout
    assert shard_bytes(str(output)) == shard_bytes(reference_run.dir)
