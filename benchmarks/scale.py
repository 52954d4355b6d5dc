"""Scale: the whole default run (rows to shards, index and report) at two sizes, measured as work.

For each size (`--sizes 30000,300000`) a pool of downloaded shards is generated once and cached
under `--data` (WebDataset tars, `<key>.jpg`, `<key>.txt`, `<key>.json` with the url: the layout
img2dataset writes), then `run_job` (the code `winnow run` calls) runs it with the code's default
config and the local test overrides, on the local runner with `--workers` worker processes, in a
fresh child process per size. The input is a pool, not the loopback sample web: fetching from a
loopback server costs about 14 ms a pair on 2 cores against about 2.5 ms for the shipped embed
model, so a crawled 300k run would be mostly HTTP. A pool run still reads every row, decodes,
resizes and re-encodes every image (the crawl stage's pool mode), then runs text, safety, embed
(the shipped model, computing every embedding), dedup, noise, the shards, stats, the index and
the audit report: only the HTTP fetch is skipped.

Per size it prints one line

    size=N wall_s=X peak_rss_mb=Y comparisons_per_sample=C shuffle_bytes_per_sample=B max_key_elements=K

- `wall_s`: the child's `run_job`, from the call to the report written.
- `peak_rss_mb`: the largest worker process's peak RSS (VmHWM of every `pipeline.worker` process
  below the child, polled from `/proc` every half second); the launcher's (the runner, which holds
  the data between fused steps on the local runner) is reported apart.
- `comparisons_per_sample`: the sum of every `winnow` counter named `*_comparisons` (each dedup
  level's, the noise neighbours') / N.
- `shuffle_bytes_per_sample`: the bytes entering every GroupByKey (`run.measure_shuffles`,
  `pipeline/shuffles.py`) / N.
- `max_key_elements`: the most elements one key grouped, over every GroupByKey whose groups a
  step reads whole (the `group_elements` distributions of `pipeline/shuffles.py`).

The data (`--skew hard`, the default) is drawn as the sample web draws it (`sampleweb.scenes`:
flat or patterned backgrounds with one to four shapes, so perceptual hashes are skewed), with
`n // 100` topics (scenes) so that k-means must find more clusters than `kmeans_sample // 39`,
heavy-tailed duplicate groups (copies per original drawn from Zipf(2.2), capped at n // 300) and
one group of n // 15 near-copies (20,000 at 300k). A copy is byte-identical (30 %) or a
near-copy: brightness changed by 3-10 %, cropped 1-3 % per side, re-encoded at JPEG quality
60-90. `--skew easy` is the earlier benchmark's data: 8 x 8 random colour grids, 3 % exact and
3 % near copies, each of its own original. Everything is a function of (`--seed`, N, index).

The growth between the two sizes is checked against the bounds of the scale rules: comparisons
and shuffle bytes per sample at most 1.2x, wall time at most 1.1x the size ratio, the largest
worker's RSS at most 1.5x, and `max_key_elements` at each size at most
`KEY_BOUND_FACTOR x max(dedup.max_group_size, output.samples_per_shard)` (PASS/FAIL per bound;
`--check` makes a FAIL exit 1). `--json FILE` writes every figure, per stage too (execution
milliseconds per top-level step, shuffle bytes per stage), for `deploy/sizing.py`.

    .venv/bin/python benchmarks/scale.py --sizes 30000,300000 --json deploy/scale_measured.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sampleweb.captions import describe  # noqa: E402
from sampleweb.scenes import random_scene, render  # noqa: E402

RESULT = "RESULT "
#: The overrides of a local run (`tests/conftest.py`'s), and the shuffle measurement.
OVERRIDES = (
    "crawl.allow_private_networks=true",
    "crawl.max_per_host=0",
    "output.samples_per_shard=1000",
    "run.measure_shuffles=true",
)
SHARD_SIZE = 1000  # pairs per generated tar
PIXELS = 64  # side of a generated image
_BASE_SIDE = 112  # the scene is rendered this big, then a window of it is kept
_WINDOW = 88
#: The bounds of the scale rules (growth from the smaller size to the larger).
PER_SAMPLE_BOUND = 1.2  # comparisons and shuffle bytes per sample
WALL_SLACK = 1.1  # wall time at most 1.1 x the size ratio (11x for 10x)
RSS_BOUND = 1.5  # the largest worker's RSS
#: `max_key_elements` may reach this many times the largest bounded group: a shard grouping holds
#: its rows and the verdicts joined to them, a tile its members from both sides.
KEY_BOUND_FACTOR = 4
FIELDS = (
    "wall_s",
    "peak_rss_mb",
    "comparisons_per_sample",
    "shuffle_bytes_per_sample",
    "max_key_elements",
)
#: Top-level step labels → the stage they belong to (the rest is `read`).
_STAGE_PREFIXES = (
    ("Text", "text"),
    ("Crawl", "crawl"),
    ("ScreenUrls", "safety"),
    ("Safety", "safety"),
    ("Embed", "embed"),
    ("Dedup", "dedup"),
    ("Noise", "noise"),
    ("Balance", "balance"),
    ("WriteShards", "write"),
    ("WriteStats", "write"),
    ("StageSummaries", "write"),
)


# ---------------------------------------------------------------- the data


@dataclasses.dataclass(frozen=True)
class Layout:
    """Who is what: `group[i]` (the original's group), `kind[i]` (0 original, 1 exact copy, 2
    near-copy) and `topic[g]` of each group."""

    group: np.ndarray
    kind: np.ndarray
    topic: np.ndarray

    def largest_group(self) -> int:
        return int(np.bincount(self.group).max())


ORIGINAL, EXACT, NEAR = 0, 1, 2


def plan_layout(n: int, skew: str, seed: int) -> Layout:
    """The groups of `n` pairs (see the module): deterministic in (seed, n, skew)."""
    rng = np.random.default_rng([seed, n, 1 if skew == "hard" else 2])
    if skew == "easy":
        copies = int(0.06 * n)
        originals = n - copies
        group = np.concatenate([np.arange(originals), rng.permutation(originals)[:copies]])
        kind = np.zeros(n, dtype=np.int8)
        kind[originals : originals + copies // 2] = EXACT
        kind[originals + copies // 2 :] = NEAR
        return Layout(group, kind, np.arange(originals))
    giant = max(2, n // 15)
    sizes = np.minimum(rng.zipf(2.2, size=n), max(2, n // 300))
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n - giant)) + 1]
    sizes[-1] -= int(sizes.sum()) - (n - giant)
    sizes = np.concatenate([[giant], sizes[sizes > 0]])
    members = np.repeat(np.arange(len(sizes)), sizes)
    first = np.zeros(n, dtype=bool)
    first[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = True
    kind = np.where(first, ORIGINAL, np.where(rng.random(n) < 0.3, EXACT, NEAR)).astype(np.int8)
    kind[(members == 0) & ~first & (rng.random(n) < 0.9)] = NEAR  # the big group: near-copies
    order = rng.permutation(n)
    topics = max(8, n // 100)
    return Layout(members[order], kind[order], rng.integers(0, topics, size=len(sizes)))


def _grid(group: int, seed: int) -> Image.Image:
    """The easy data's image: an 8 x 8 grid of random colours."""
    cells = np.random.default_rng([seed, 5, group]).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((PIXELS, PIXELS), Image.Resampling.NEAREST)


def _scene_image(topic: int, group: int, seed: int) -> Image.Image:
    """The hard data's original: its topic's scene, a window of it chosen by the group."""
    scene = random_scene(np.random.default_rng([seed, 7, topic]))
    offset = np.random.default_rng([seed, 8, group]).integers(0, _BASE_SIDE - _WINDOW + 1, size=2)
    x, y = int(offset[0]), int(offset[1])
    image = render(scene, _BASE_SIDE, _BASE_SIDE).crop((x, y, x + _WINDOW, y + _WINDOW))
    return image.resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _near(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near-copy: brighter or darker by 3-10 %, cropped 1-3 % per side."""
    factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.10)
    image = ImageEnhance.Brightness(image).enhance(float(factor))
    cut = rng.uniform(0.01, 0.03, size=4) * PIXELS
    box = (cut[0], cut[1], PIXELS - cut[2], PIXELS - cut[3])
    return image.resize((PIXELS, PIXELS), Image.Resampling.BILINEAR, box=box)


def _caption(layout: Layout, index: int, skew: str, seed: int) -> str:
    group = int(layout.group[index])
    if skew == "easy":
        return f"a colour grid number {group} photo {index}"
    scene = random_scene(np.random.default_rng([seed, 7, int(layout.topic[group])]))
    return f"{describe(scene, 'en', np.random.default_rng([seed, 9, index]))} photo {index}"


def sample_bytes(layout: Layout, index: int, skew: str, seed: int, cache: dict[int, Image.Image]) -> bytes:
    """The JPEG of pair `index`; `cache` holds originals drawn before (by group)."""
    group = int(layout.group[index])
    if group not in cache:
        cache[group] = (
            _grid(group, seed) if skew == "easy" else _scene_image(int(layout.topic[group]), group, seed)
        )
    image = cache[group]
    if layout.kind[index] == NEAR:
        rng = np.random.default_rng([seed, 10, index])
        return _jpeg(_near(image, rng), int(rng.integers(60, 91)))
    return _jpeg(image, 90)  # an original and its exact copies: the same bytes


def _write_shard(job: tuple[str, int, str, int, int]) -> None:
    folder, n, skew, seed, shard = job
    layout = plan_layout(n, skew, seed)
    cache: dict[int, Image.Image] = {}
    path = Path(folder) / f"{shard:06d}.tar"
    partial = path.with_suffix(".tar.partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(shard * SHARD_SIZE, min(n, (shard + 1) * SHARD_SIZE)):
            key = f"{index:09d}"
            caption = _caption(layout, index, skew, seed)
            meta = {"url": f"https://img{index % 997}.scale.invalid/{key}.jpg"}
            for name, payload in (
                (f"{key}.jpg", sample_bytes(layout, index, skew, seed, cache)),
                (f"{key}.txt", caption.encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
    partial.rename(path)


def ensure_pool(data: str, n: int, skew: str, seed: int, processes: int) -> Path:
    """The pool of size `n` under `data` (generated once; `layout.json` marks it complete)."""
    folder = Path(data) / f"{skew}-{n}-seed{seed}"
    done = folder / "layout.json"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    jobs = [(str(folder), n, skew, seed, s) for s in range(-(-n // SHARD_SIZE))]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for _ in pool.imap_unordered(_write_shard, jobs):
            pass
    layout = plan_layout(n, skew, seed)
    sizes = np.bincount(layout.group)
    summary = {
        "size": n,
        "skew": skew,
        "seed": seed,
        "groups": len(sizes),
        "largest_group": int(sizes.max()),
        "pairs_in_groups_of_2_or_more": int(sizes[sizes > 1].sum()),
        "topics": len(np.unique(layout.topic)),
        "exact_copies": int((layout.kind == EXACT).sum()),
        "near_copies": int((layout.kind == NEAR).sum()),
        "generated_s": round(time.monotonic() - started, 1),
    }
    done.write_text(json.dumps(summary, indent=2))
    return folder


# ---------------------------------------------------------------- one size (the child)


def run_one(pool: Path, output: str, workers: int) -> dict[str, Any]:
    """Runs the default pipeline on the pool's tars into `output`; returns what the stats hold."""
    from pipeline.config import load_config
    from pipeline.jobs import run_job

    config = load_config(None, list(OVERRIDES))
    started = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        stats = run_job(config, [f"{pool}/*.tar"], output, workers=workers)
    return {
        "wall_s": time.monotonic() - started,
        "job_s": stats["duration_s"],
        "samples": stats["samples"],
        "metrics": stats.get("metrics", {}),
        "shuffles": stats.get("shuffles", {}),
        "step_msecs": stats.get("step_msecs", {}),
        "max_group_size": config.dedup.max_group_size,
        "samples_per_shard": config.output.samples_per_shard,
    }


# ---------------------------------------------------------------- memory and CPU (the parent)


def descendants(root: int) -> list[int]:
    """The processes below `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM) in MB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Peaks(threading.Thread):
    """Polls the VmHWM of a process (the launcher) and of its `pipeline.worker` descendants."""

    def __init__(self, root: int, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.root = root
        self.launcher = 0.0
        self.workers: dict[int, float] = {}
        self._interval = interval_s
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def poll(self) -> None:
        self.launcher = max(self.launcher, _status_mb(self.root, "VmHWM"))
        for pid in descendants(self.root):
            try:
                if b"pipeline.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    self.workers[pid] = max(self.workers.get(pid, 0.0), _status_mb(pid, "VmHWM"))
            except OSError:
                continue


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class SizeFailed(RuntimeError):
    """A size's child process exited without a result."""


def measure(size: int, pool: Path, work: str, workers: int) -> dict[str, Any]:
    """Runs one size in a fresh child process and returns its figures."""
    output = tempfile.mkdtemp(prefix=f"scale-{size}-", dir=work)
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(pool), output, str(workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cpu_before = _cpu_s()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peaks = Peaks(child.pid)
    peaks.start()
    out, _ = child.communicate()
    peaks.stop()
    cpu = _cpu_s() - cpu_before
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT):
            return figures_of(size, json.loads(line[len(RESULT) :]), peaks, cpu)
    raise SizeFailed(f"size {size}: the run exited with {child.returncode} and no result")


def stage_of(label: str) -> str:
    """The stage a top-level step label belongs to (`read` for the reading steps)."""
    return next((stage for prefix, stage in _STAGE_PREFIXES if label.startswith(prefix)), "read")


def figures_of(size: int, run: dict[str, Any], peaks: Peaks, cpu_s: float) -> dict[str, Any]:
    """The per-sample figures of one size from the child's result and the parent's polls."""
    comparisons = {k: v for k, v in run["metrics"].items() if k.endswith("_comparisons")}
    shuffles: dict[str, dict[str, int]] = run["shuffles"]
    shuffle_by_stage: dict[str, int] = {}
    for label, row in shuffles.items():
        stage = stage_of(label)
        shuffle_by_stage[stage] = shuffle_by_stage.get(stage, 0) + row["bytes"]
    msecs_by_stage: dict[str, int] = {}
    for label, msecs in run["step_msecs"].items():
        stage = stage_of(label)
        msecs_by_stage[stage] = msecs_by_stage.get(stage, 0) + msecs
    largest = max(shuffles.items(), key=lambda kv: kv[1].get("max_group", 0), default=("", {}))
    downloaded = run["metrics"].get("crawl/kept", size)
    return {
        "size": size,
        "wall_s": round(run["wall_s"], 2),
        "job_s": run["job_s"],
        "after_job_s": round(run["wall_s"] - run["job_s"], 2),  # index, report, checks
        "peak_rss_mb": round(max(peaks.workers.values(), default=0.0), 1),
        "launcher_rss_mb": round(peaks.launcher, 1),
        "workers_seen": len(peaks.workers),
        "cpu_s": round(cpu_s, 2),
        "comparisons_per_sample": sum(comparisons.values()) / size,
        "comparisons": comparisons,
        "shuffle_bytes_per_sample": sum(row["bytes"] for row in shuffles.values()) / size,
        "shuffle_bytes_per_sample_by_stage": {k: v / size for k, v in sorted(shuffle_by_stage.items())},
        "step_ms_per_sample_by_stage": {k: v / size for k, v in sorted(msecs_by_stage.items())},
        "max_key_elements": largest[1].get("max_group", 0),
        "max_key_grouping": largest[0],
        "key_bound": KEY_BOUND_FACTOR * max(run["max_group_size"], run["samples_per_shard"]),
        "downloaded": downloaded,
        "kept": run["samples"],
        "counters": {k: v for k, v in run["metrics"].items() if k.endswith(("/total", "/kept"))},
    }


def line(figures: dict[str, Any]) -> str:
    return (
        f"size={figures['size']} wall_s={figures['wall_s']:.1f} peak_rss_mb={figures['peak_rss_mb']:.0f} "
        f"comparisons_per_sample={figures['comparisons_per_sample']:.1f} "
        f"shuffle_bytes_per_sample={figures['shuffle_bytes_per_sample']:.0f} "
        f"max_key_elements={figures['max_key_elements']}"
    )


def verdicts(low: dict[str, Any], high: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(what, measured, bound, holds) for each bound of the scale rules, `low` → `high`."""
    growth = high["size"] / low["size"]

    def ratio(field: str) -> float:
        return high[field] / low[field] if low[field] else float("inf")

    checks = [
        ("comparisons_per_sample growth", ratio("comparisons_per_sample"), PER_SAMPLE_BOUND),
        ("shuffle_bytes_per_sample growth", ratio("shuffle_bytes_per_sample"), PER_SAMPLE_BOUND),
        (f"wall_s growth for {growth:g}x the pairs", ratio("wall_s"), WALL_SLACK * growth),
        ("largest worker's RSS growth", ratio("peak_rss_mb"), RSS_BOUND),
    ]
    checks += [
        (
            f"max_key_elements at {f['size']:,} ({f['max_key_grouping']})",
            f["max_key_elements"],
            f["key_bound"],
        )
        for f in (low, high)
    ]
    return [(what, value, bound, value <= bound) for what, value, bound in checks]


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted(int(float(part)) for part in text.split(","))
    except ValueError as why:
        raise argparse.ArgumentTypeError(f"--sizes: {text!r} is not a comma-separated list of sizes") from why
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes: {text!r}: sizes are at least 1")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=_sizes, default=[30_000, 300_000], help="e.g. 30000,300000")
    parser.add_argument("--skew", choices=("hard", "easy"), default="hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "winnow-scale-data"),
        help="the generated pools' cache (one folder per skew, size and seed)",
    )
    parser.add_argument("--work", default=None, help="where the outputs go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write every figure here (for deploy/sizing.py)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a bound fails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--one"]:  # the child: one size
        pool, output, workers = argv[1], argv[2], int(argv[3])
        print(RESULT + json.dumps(run_one(Path(pool), output, workers)), flush=True)
        return 0
    args = _parser().parse_args(argv)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="winnow-scale-"))
        for size in args.sizes:
            pool = ensure_pool(args.data, size, args.skew, args.seed, max(1, os.cpu_count() or 1))
            summary = json.loads((pool / "layout.json").read_text())
            figures = measure(size, pool, work, args.workers)
            figures["data"] = summary
            rows.append(figures)
            print(line(figures), flush=True)
            print(f"  {_describe(figures)}", flush=True)
    failed = False
    if len(rows) >= 2:
        print(f"growth {rows[0]['size']:,} -> {rows[-1]['size']:,}:")
        for what, value, bound, holds in verdicts(rows[0], rows[-1]):
            failed |= not holds
            print(f"  {'PASS' if holds else 'FAIL'} {what}: {value:,.2f} <= {bound:,.2f}")
    if args.json:
        document = {
            "benchmark": "benchmarks/scale.py",
            "skew": args.skew,
            "workers": args.workers,
            "cores": os.cpu_count(),
            "sizes": rows,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 1 if failed and args.check else 0


def _describe(figures: dict[str, Any]) -> str:
    data = figures["data"]
    steps = ", ".join(f"{k} {v:.2f}" for k, v in figures["step_ms_per_sample_by_stage"].items())
    return (
        f"data: {data['groups']:,} groups, largest {data['largest_group']:,}, {data['topics']:,} topics; "
        f"downloaded {figures['downloaded']:,}, kept {figures['kept']:,}; cpu {figures['cpu_s']:.0f} s; "
        f"launcher {figures['launcher_rss_mb']:.0f} MB; comparisons {figures['comparisons']}; "
        f"ms per sample by stage: {steps}; index and report {figures['after_job_s']:.1f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
