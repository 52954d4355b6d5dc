"""The scale benchmark (`benchmarks/scale.py`) and the sizing plan built from its figures
(`deploy/sizing.py`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402

from deploy.sizing import Measured, MeasuredError, plan, report  # noqa: E402

LINE = re.compile(
    r"^size=(\d+) wall_s=(\S+) peak_rss_mb=(\S+) comparisons_per_sample=(\S+) "
    r"shuffle_bytes_per_sample=(\S+) max_key_elements=(\S+)$"
)


def test_scale_item1_hard_data_has_a_heavy_tailed_group_and_more_topics_than_the_k_cap():
    layout = scale.plan_layout(300_000, "hard", 0)
    sizes = np.bincount(layout.group)
    assert len(layout.group) == 300_000 and sizes.max() == 20_000  # one group of 20,000 near-copies
    others = np.sort(sizes)[::-1][1:]
    assert others[0] >= 100 and (others == 1).sum() > len(others) / 2  # a Zipf tail, most alone
    assert (layout.kind[layout.group == int(np.argmax(sizes))] == scale.NEAR).mean() > 0.8
    assert len(np.unique(layout.topic)) > 100_000 // 39  # more scenes than the k-means cap's k
    # Deterministic, and the easy data keeps one original per copy.
    assert np.array_equal(scale.plan_layout(300_000, "hard", 0).group, layout.group)
    assert np.bincount(scale.plan_layout(3_000, "easy", 0).group).max() == 2
    # A near-copy is drawn, not copied: other bytes than its original's.
    small = scale.plan_layout(600, "hard", 0)
    near = int(np.flatnonzero(small.kind == scale.NEAR)[0])
    original = int(np.flatnonzero((small.group == small.group[near]) & (small.kind == scale.ORIGINAL))[0])
    cache: dict = {}
    assert scale.sample_bytes(small, near, "hard", 0, cache) != scale.sample_bytes(
        small, original, "hard", 0, cache
    )


def test_scale_item1_the_benchmark_prints_every_figure_of_the_whole_run(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "200", "--data",
         str(tmp_path / "data"), "--work", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    (found,) = [LINE.match(text) for text in done.stdout.splitlines() if LINE.match(text)]
    assert found is not None and int(found.group(1)) == 200
    assert all(float(value) > 0 for value in found.groups()[1:]), found.group(0)
    (row,) = json.loads(out.read_text())["sizes"]
    assert row["kept"] > 0 and row["downloaded"] == 200
    assert {"dedup", "noise", "embed", "write"} <= set(row["step_ms_per_sample_by_stage"])
    assert row["data"]["largest_group"] == 200 // 15
    assert Measured.load(out).size == 200  # the sizing plan reads it


def _measured(
    path: Path, sizes: list[tuple[int, float]], rss: tuple[float, float] = (1500.0, 1500.0)
) -> Path:
    rows = [
        {
            "size": size,
            "cpu_s": 0.05 * size,
            "peak_rss_mb": rss[min(index, 1)],
            "comparisons_per_sample": comparisons,
            "shuffle_bytes_per_sample": 30_000.0,
            "step_ms_per_sample_by_stage": {
                "read": 1.0,
                "crawl": 3.0,
                "dedup": 5.0,
                "noise": 4.0,
                "write": 2.0,
            },
            "shuffle_bytes_per_sample_by_stage": {"dedup": 14_000.0, "noise": 5_000.0, "write": 11_000.0},
        }
        for index, (size, comparisons) in enumerate(sizes)
    ]
    path.write_text(json.dumps({"sizes": rows}))
    return path


def test_scale_item5_the_sizing_plan_reads_measured_figures_and_grows_linearly(tmp_path):
    measured = Measured.load(_measured(tmp_path / "m.json", [(3_000, 100.0), (30_000, 110.0)]))
    assert measured.size == 30_000 and measured.ms_per_sample["other"] == pytest.approx(50 - 15)
    small, big = plan(1e8, 72, measured), plan(1e9, 72, measured)
    for a, b in zip(small.stages, big.stages, strict=True):
        assert b.core_hours == pytest.approx(10 * a.core_hours)
        assert b.shuffle_bytes == pytest.approx(10 * a.shuffle_bytes)
    dedup = {s.name: s for s in big.stages}["dedup"]
    assert dedup.core_hours == pytest.approx(1e9 * 0.92 * 0.55 * 5.0 / 1000 / 3600)
    assert big.worker_memory_gb == small.worker_memory_gb  # memory per worker does not grow with n
    done = subprocess.run(
        [sys.executable, "deploy/sizing.py", "--pairs", "1e9", "--hours", "72",
         "--measured", str(tmp_path / "m.json")],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout.splitlines()[0].startswith("1,000,000,000 pairs, target 72 h")
    assert any(text.startswith("dedup ") for text in done.stdout.splitlines())
    assert done.stdout.splitlines()[-1].startswith("plan: ")
    assert "worker process (measured peak at 30,000 pairs, 1.00x the peak at 3,000 pairs" in done.stdout
    # Worker memory that grew between the sizes is printed as grown, and refused under --strict.
    grown = _measured(tmp_path / "rss.json", [(3_000, 100.0), (30_000, 100.0)], rss=(1000.0, 2000.0))
    with pytest.raises(MeasuredError, match="peak RSS grew 2.00x"):
        Measured.load(grown, strict=True)
    assert Measured.load(grown).rss_growth == (2.0, 3_000, 30_000)
    lines = report(1e9, 72, plan(1e9, 72, Measured.load(grown)), Measured.load(grown), 16)
    assert any(text.startswith("warning: the worker's peak memory grew past 1.5x") for text in lines)
    assert not any(text.startswith("warning") for text in done.stdout.splitlines())
    # Per-sample work that grew between the sizes is refused under --strict; a bad file is exit 2.
    with pytest.raises(MeasuredError, match="comparisons_per_sample grew"):
        Measured.load(_measured(tmp_path / "grew.json", [(3_000, 100.0), (30_000, 400.0)]), strict=True)
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run(
        [sys.executable, "deploy/sizing.py", "--pairs", "1e9", "--measured", str(tmp_path / "bad.json")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad.json" in bad.stderr and len(bad.stderr.splitlines()) == 1
