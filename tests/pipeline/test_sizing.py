"""The sizing guide's arithmetic (deploy/sizing.py) on the checked-in measured figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.sizing import MEASURED, Measured, plan


def test_work_scales_with_pairs_and_workers_with_the_deadline():
    measured = Measured.load(MEASURED)
    small, big = plan(100e6, 24, measured), plan(1e9, 24, measured)
    for a, b in zip(small.stages, big.stages, strict=True):
        assert b.core_hours == pytest.approx(10 * a.core_hours)
    # Ten times the work costs at most ten times as much: whole workers idle less on a big run.
    assert 0.8 * 10 * small.cost <= big.cost <= 10 * small.cost
    slow, fast = plan(1e9, 72, measured), plan(1e9, 24, measured)
    assert fast.cpu_workers > slow.cpu_workers and fast.gpus >= slow.gpus
    assert fast.hours <= 24 < slow.hours
    assert fast.cost == pytest.approx(slow.cost, rel=0.1)  # the same work costs about the same


def test_the_bounding_stage_follows_the_rates():
    measured = Measured.load(MEASURED)
    assert plan(1e9, 72, measured, gpu_rate=200).bound == "embed (GPU)"
    assert plan(1e9, 72, measured, gpu_rate=1e6).bound == "crawl"
    few = {s.name: s for s in plan(1e9, 72, measured, crawl_success=0.1).stages}
    assert few["dedup"].items == pytest.approx(1e9 * 0.92 * 0.1)  # fewer downloads, less after the crawl


def test_the_script_prints_a_plan():
    done = subprocess.run(
        [sys.executable, "deploy/sizing.py", "--pairs", "1e8", "--hours", "24"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("100,000,000 pairs, target 24 h")
    assert lines[-1].startswith("plan: ")
    heads = [text.split(":")[0] for text in lines if text.startswith(("total:", "worker memory:", "plan:"))]
    assert heads == ["total", "worker memory", "plan"]
