"""The sizing guide's arithmetic (deploy/sizing.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.sizing import plan


def test_work_scales_with_pairs_and_workers_with_the_deadline():
    small, big = plan(100e6, 24), plan(1e9, 24)
    for a, b in zip(small.stages, big.stages, strict=True):
        assert b.hours == pytest.approx(10 * a.hours)
    # Ten times the work costs at most ten times as much: whole workers idle less on a big run.
    assert 0.8 * 10 * small.cost <= big.cost <= 10 * small.cost
    slow, fast = plan(1e9, 72), plan(1e9, 24)
    assert fast.cpu_workers > slow.cpu_workers and fast.gpus >= slow.gpus
    assert fast.hours <= 24 < slow.hours
    # The same work costs about the same however fast it is done.
    assert fast.cost == pytest.approx(slow.cost, rel=0.1)


def test_the_bounding_stage_follows_the_rates():
    assert plan(1e9, 72).bound == "embed (GPU)"
    assert plan(1e9, 72, gpu_rate=20_000).bound == "crawl"
    # Fewer downloads shrink every stage after the crawl.
    few = plan(1e9, 72, crawl_success=0.1)
    assert few.stages[2].items == pytest.approx(1e9 * 0.92 * 0.1)


def test_the_script_prints_a_plan():
    done = subprocess.run(
        [sys.executable, "deploy/sizing.py", "--pairs", "1e8", "--hours", "24"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines()[0] == "100,000,000 pairs, target 24 h"
    assert "bound by crawl" in done.stdout.splitlines()[-1]
    assert done.stdout.splitlines()[-2].startswith("shuffled: ")


def test_shuffled_bytes_per_stage_follow_the_measured_figures_and_the_image_size():
    from deploy.sizing import SHUFFLE_DEDUP, SHUFFLE_NOISE, SHUFFLE_READ_TEXT, SHUFFLE_WRITE_OVERHEAD

    result = plan(1e9, 72)
    by_name = {s.name: s for s in result.stages}
    downloaded = by_name["dedup"].items
    assert by_name["text"].shuffle_bytes == pytest.approx(1e9 * SHUFFLE_READ_TEXT)
    assert by_name["dedup"].shuffle_bytes == pytest.approx(downloaded * SHUFFLE_DEDUP)
    assert by_name["noise"].shuffle_bytes == pytest.approx(downloaded * SHUFFLE_NOISE)
    assert by_name["crawl"].shuffle_bytes == by_name["embed"].shuffle_bytes == 0  # no shuffle of theirs
    # The images cross one shuffle: the write stage's bytes grow by one image per downloaded pair.
    bigger = {s.name: s for s in plan(1e9, 72, image_kb=45).stages}
    assert bigger["write"].shuffle_bytes - by_name["write"].shuffle_bytes == pytest.approx(
        downloaded * 30_000
    )
    assert by_name["write"].shuffle_bytes == pytest.approx(downloaded * (SHUFFLE_WRITE_OVERHEAD + 15_000))
    assert plan(1e9, 72, image_kb=45).cost > result.cost
