"""Scale: the dedup and noise stages on 100k-1M synthetic pairs, on the local runner with 2 workers.

Each size runs alone in a fresh child process (`--one N`), so its peak memory is its own. The
child generates N crawled-and-embedded `Sample`s inside the pipeline (`beam.Create` of chunk
starts, `--chunk` pairs each, then a reshuffle and one generating step, so the launcher never
holds the samples): a 32 px JPEG per pair drawn from its index (a colour grid and a shape), its
sha256, a caption, and L2-normalised float16 image and text embeddings (as the embed stage
carries them) around `--topics` topic directions, in the shipped model's dimension. Planted:
`--exact` byte-identical copies, `--near` brightened re-encodings, `--semantic` copies with
another image but an embedding within the dedup `epsilon`, and `--mismatched` captions (and
text embeddings) of another pair. The pairs go through `DeduplicateImages` (exact, perceptual and
semantic levels, no eval set) and `RepairCaptions` (default config; its concept vocabulary
through the shipped model's text tower) on Winnow's local runner (`LocalRunner`) with `--workers` SDK worker
processes, and are counted by status and reason after each stage, with the distinct pairs of the
output (Beam counters; nothing is written to disk): a size whose output does not hold every pair
is flagged (`ROWS LOST`).

Peak RSS per worker is the largest SDK worker process's `ru_maxrss`
(`getrusage(RUSAGE_CHILDREN)` in the child, read after the workers exited); `/proc/<pid>/status`
VmHWM of each worker, polled every half second, is printed beside it as a cross-check. The
launcher's (the runner, which holds the data between fused steps) is reported separately. A
size whose whole process tree passes `--max-rss-mb` is stopped and reported as failed.

    .venv/bin/python benchmarks/scale.py --sizes 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runner import make_pipeline  # noqa: E402
from schemas.sample import Sample, Status, make_uid  # noqa: E402
from transforms.common.progress import NAMESPACE  # noqa: E402
from transforms.crawl.config import ImageOptions  # noqa: E402
from transforms.dedup import DedupConfig, DeduplicateImages  # noqa: E402
from transforms.embed.clip import SHIPPED_MODELS_DIR, model_identity  # noqa: E402
from transforms.embed.config import SHIPPED_MODEL, EmbedConfig  # noqa: E402
from transforms.noise import NoiseConfig, RepairCaptions  # noqa: E402

#: Counter namespace of this benchmark's own count of the output.
COUNTS = "scale"
RESULT = "RESULT "
#: The targets: time at 1M at most 11 × the time at 100k; peak worker RSS at most 3 ×.
BASE, TOP, TIME_BOUND, RSS_BOUND = 100_000, 1_000_000, 11.0, 3.0

COLOURS = {
    "red": (200, 30, 30),
    "green": (40, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (230, 210, 40),
    "orange": (240, 140, 20),
    "purple": (130, 50, 160),
    "pink": (240, 150, 190),
    "brown": (120, 70, 30),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "teal": (20, 140, 140),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "oval", "diamond", "bar", "dot")
ADJECTIVES = ("small", "large", "bright", "dark", "shiny", "old", "new", "tiny", "soft", "striped")
# fmt: off
OBJECTS = (
    "cat", "dog", "horse", "bird", "fish", "tree", "flower", "house", "car", "bicycle",
    "boat", "train", "plane", "chair", "table", "lamp", "cup", "bottle", "book", "phone",
    "clock", "shoe", "hat", "bag", "ball", "kite", "guitar", "piano", "apple", "banana",
    "bread", "cake", "pizza", "mountain", "river", "beach", "forest", "street", "bridge", "tower",
    "window", "door", "fence", "garden", "field", "road", "sky", "cloud", "moon", "sun",
    "map", "robot", "teapot", "umbrella", "ladder", "bucket", "candle", "mirror", "pillow", "basket",
)
# fmt: on


def shipped_dim() -> int:
    """The embedding dimension of the shipped CLIP model (`winnow-tiny-clip`)."""
    config = json.loads((SHIPPED_MODELS_DIR / SHIPPED_MODEL / "open_clip_config.json").read_text())
    return int(config["model_cfg"]["embed_dim"])


#: Side of the colour grid an image is drawn from: 8 × 8 cells give difference hashes whose bits
#: are nearly independent, so the perceptual level's LSH buckets are close to their expected size.
GRID = 8
#: Planted roles, in the order their shares are cut from [0, 1).
ROLES = ("exact", "near", "semantic", "mismatched", "original")
EXACT, NEAR, SEMANTIC, MISMATCHED, ORIGINAL = range(len(ROLES))
_GOLDEN, _MIX1, _MIX2 = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser over a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, stream: int, indices: np.ndarray, count: int) -> np.ndarray:
    """(len(indices), count) floats in [0, 1): a counter-based stream, a function of (seed, stream,
    index, column) alone, so any pair's values come out the same in any chunk."""
    key = _splitmix(np.full(len(indices), seed * 1_000_003 + stream, dtype=np.uint64))
    key = _splitmix(key ^ indices.astype(np.uint64))
    bits = _splitmix(key[:, None] + np.arange(count, dtype=np.uint64)[None, :] * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normals(seed: int, stream: int, indices: np.ndarray, count: int) -> np.ndarray:
    """(len(indices), count) standard normal float32 (Box-Muller over `uniforms`)."""
    half = (count + 1) // 2
    u = uniforms(seed, stream, indices, 2 * half)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :half]))
    angle = 2.0 * np.pi * u[:, half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count].astype(
        np.float32
    )


def _units(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Workload:
    """The synthetic pairs: every field of pair `i` is a function of (seed, i) alone."""

    n: int
    dim: int
    topics: int
    exact: float
    near: float
    semantic: float
    mismatched: float
    spread: float
    text_noise: float
    delta: float
    pixels: int
    seed: int
    clip_model: str

    def roles(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's role (`ROLES`) and other pair: for a planted copy (exact, near, semantic)
        the pair whose image it copies (never itself a copy), for `mismatched` the pair whose
        caption it carries, for an original itself."""
        u = uniforms(self.seed, 1, indices, 3)
        cuts = np.cumsum([self.exact, self.near, self.semantic, self.mismatched])
        role = np.searchsorted(cuts, u[:, 0], side="right")
        role[(indices == 0) & (role <= SEMANTIC)] = ORIGINAL  # nothing before the first pair
        copies = role <= SEMANTIC
        other = indices.copy()
        other[copies] = self.image_of(np.floor(u[copies, 1] * indices[copies]).astype(np.int64))
        other[role == MISMATCHED] = np.floor(u[role == MISMATCHED, 2] * self.n).astype(np.int64)
        return role, other

    def image_of(self, indices: np.ndarray) -> np.ndarray:
        """The pair whose image each pair shows: itself, or the source of a planted copy."""
        if not len(indices):
            return indices
        role, other = self.roles(indices)
        return np.where(role <= SEMANTIC, other, indices)

    def centres(self) -> np.ndarray:
        return _units(normals(self.seed, 0, np.arange(self.topics), self.dim))


class Scenes:
    """What each pair of `indices` would show and say if it were an original: a colour grid with
    a shape, a caption naming them, and the image and text embeddings (float32)."""

    def __init__(self, workload: Workload, indices: np.ndarray, centres: np.ndarray):
        self._workload = workload
        self._row = {int(i): row for row, i in enumerate(indices)}
        u = uniforms(workload.seed, 2, indices, 16)
        grids = uniforms(workload.seed, 3, indices, 3 * GRID * GRID) * 256
        self._grids = grids.astype(np.uint8).reshape(-1, GRID, GRID, 3)
        self._colour = (u[:, 0] * len(COLOURS)).astype(int)
        self._background = (self._colour + 1 + (u[:, 1] * (len(COLOURS) - 1)).astype(int)) % len(COLOURS)
        self._shape = (u[:, 2] * len(SHAPES)).astype(int)
        self._adjective = (u[:, 3] * len(ADJECTIVES)).astype(int)
        self._object = (u[:, 4] * len(OBJECTS)).astype(int)
        self._corner = (u[:, 5:7] * (workload.pixels // 2)).astype(int)
        noise = normals(workload.seed, 4, indices, 2 * workload.dim) / math.sqrt(workload.dim)
        topics = centres[(u[:, 7] * workload.topics).astype(int)]
        self.image_embedding = _units(topics + workload.spread * noise[:, : workload.dim])
        self.text_embedding = _units(self.image_embedding + workload.text_noise * noise[:, workload.dim :])

    def row(self, index: int) -> int:
        return self._row[index]

    def caption(self, row: int) -> str:
        names = list(COLOURS)
        return (
            f"a {ADJECTIVES[self._adjective[row]]} {names[self._colour[row]]} {SHAPES[self._shape[row]]} "
            f"next to a {OBJECTS[self._object[row]]} on a {names[self._background[row]]} background"
        )

    def image(self, row: int) -> Image.Image:
        size = self._workload.pixels
        image = Image.fromarray(self._grids[row], "RGB").resize((size, size), Image.Resampling.BILINEAR)
        x, y = (int(v) for v in self._corner[row])
        box = (x, y, x + size // 3 + 2, y + size // 3 + 2)
        fill = list(COLOURS.values())[self._colour[row]]
        if SHAPES[self._shape[row]] in ("circle", "ring", "oval", "dot"):
            ImageDraw.Draw(image).ellipse(box, fill=fill)
        else:
            ImageDraw.Draw(image).rectangle(box, fill=fill)
        return image


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_samples(
    workload: Workload, start: int, stop: int, centres: np.ndarray
) -> Iterator[tuple[Sample, str]]:
    """Pairs `start` to `stop` as the crawl and embed stages leave them, each with its planted role."""
    indices = np.arange(start, stop, dtype=np.int64)
    role, other = workload.roles(indices)
    scenes = Scenes(workload, np.unique(np.concatenate([indices, other])), centres)
    shifts = normals(workload.seed, 5, indices, workload.dim)
    size = workload.pixels
    for k, index in enumerate(indices.tolist()):
        own, said = scenes.row(index), scenes.row(int(other[k]))
        image_embedding = scenes.image_embedding[own]
        image, quality = scenes.image(own), 85
        if role[k] <= SEMANTIC:  # a planted copy says what its source says
            image_embedding = scenes.image_embedding[said]
            if role[k] == EXACT:
                image = scenes.image(said)
            elif role[k] == NEAR:  # brighter by 12 levels, re-encoded at another quality
                image, quality = scenes.image(said).point(lambda v: min(255, v + 12)), 75
            if role[k] != EXACT:  # shifted by `delta`: cosine about 1 - delta² / 2 to the source
                shift = shifts[k] / np.linalg.norm(shifts[k])
                image_embedding = _units((image_embedding + workload.delta * shift)[None, :])[0]
        text_embedding = scenes.text_embedding[said]
        caption = scenes.caption(said)
        data = _jpeg(image, quality)
        url = f"https://img{index % 97}.synthetic.invalid/{index}.jpg"
        sample = Sample(
            uid=make_uid(url, caption),
            url=url,
            caption=caption,
            caption_clean=caption,
            num_tokens=len(caption.split()),
            lang="en",
            lang_score=0.99,
            status=Status.SUCCESS,
            http_status=200,
            content_type="image/jpeg",
            source_format="JPEG",
            original_width=size,
            original_height=size,
            width=size,
            height=size,
            sha256=hashlib.sha256(data).hexdigest(),
            image_bytes=len(data),
            image=data,
            image_ext="jpg",
            clip_score=float(np.dot(image_embedding, text_embedding)),
            clip_model=workload.clip_model,
            image_embedding=image_embedding.astype(np.float16),
            text_embedding=text_embedding.astype(np.float16),
        )
        yield sample, ROLES[role[k]]


class _MakeChunkFn(beam.DoFn):
    """A chunk's first index → its `chunk` samples."""

    def __init__(self, workload: Workload, chunk: int):
        self._workload = workload
        self._chunk = chunk

    def setup(self) -> None:
        self._centres = self._workload.centres()
        self._planted = {role: beam.metrics.Metrics.counter(COUNTS, f"planted/{role}") for role in ROLES}

    def process(self, start: int) -> Iterator[Sample]:
        stop = min(start + self._chunk, self._workload.n)
        for sample, role in make_samples(self._workload, start, stop, self._centres):
            self._planted[role].inc()
            yield sample


class _CountFn(beam.DoFn):
    """Counts samples by status and reason under `<where>/` (Beam counters: nothing big leaves
    the workers)."""

    def __init__(self, where: str):
        self._where = where

    def process(self, sample: Sample) -> Iterator[None]:
        beam.metrics.Metrics.counter(COUNTS, f"{self._where}/{sample.status}/{sample.reason or '-'}").inc()
        return iter(())


def _count_distinct(count: int) -> Iterator[None]:
    beam.metrics.Metrics.counter(COUNTS, "distinct_uids").inc(count)
    return iter(())


def _summary_counters(summary: dict[str, Any]) -> Iterator[None]:
    for lang, size in summary.get("vocabulary", {}).items():
        beam.metrics.Metrics.counter(COUNTS, f"vocabulary/{lang}").inc(size)
    return iter(())


# ---------------------------------------------------------------- memory


#: How an SDK worker process's command line reads in /proc (not the `sh -c` that starts it).
_WORKER_ARGV = b"\x00-m\x00apache_beam.runners.worker.sdk_worker_main"


class WorkerPeaks(threading.Thread):
    """Polls `/proc` for this process's SDK worker descendants and keeps each one's VmHWM (MB)."""

    def __init__(self, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self._interval = interval_s
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def poll(self) -> None:
        for pid in descendants(os.getpid()):
            try:
                if _WORKER_ARGV in Path(f"/proc/{pid}/cmdline").read_bytes():
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), _status_mb(pid, "VmHWM"))
            except OSError:
                continue


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


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


# ---------------------------------------------------------------- one size


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Runs size `args.one` in this process; returns its figures."""
    embed = EmbedConfig()
    workload = Workload(
        args.one,
        args.dim,
        args.topics,
        args.exact,
        args.near,
        args.semantic,
        args.mismatched,
        args.spread,
        args.text_noise,
        args.delta,
        args.pixels,
        args.seed,
        model_identity(embed),
    )
    levels = set(args.levels)
    dedup = DedupConfig(
        exact="exact" in levels,
        perceptual="perceptual" in levels,
        semantic="semantic" in levels,
        eval_images=None,
    )
    peaks = WorkerPeaks()
    peaks.start()
    started = time.monotonic()
    pipeline = make_pipeline("local", [], args.workers)
    samples = (
        pipeline
        | "Chunks" >> beam.Create(list(range(0, workload.n, args.chunk)))
        | "Spread" >> beam.Reshuffle()
        | "Generate" >> beam.ParDo(_MakeChunkFn(workload, args.chunk))
        | "Reshuffle" >> beam.Reshuffle()
    )
    if "dedup" in args.stages:
        samples = samples | "Dedup" >> DeduplicateImages(dedup, ImageOptions(), embed)
        if "noise" in args.stages:
            _ = samples | "CountAfterDedup" >> beam.ParDo(_CountFn("after_dedup"))
    if "noise" in args.stages:
        noise = samples | "Noise" >> RepairCaptions(NoiseConfig(), embed)
        samples = noise.rows
        _ = noise.summary | "SummaryCounts" >> beam.FlatMap(_summary_counters)
    _ = samples | "Count" >> beam.ParDo(_CountFn("out"))
    _ = (
        samples
        | "Uids" >> beam.Map(lambda sample: sample.uid)
        | "Distinct" >> beam.Distinct()
        | "CountDistinct" >> beam.combiners.Count.Globally()
        | "DistinctCounter" >> beam.FlatMap(_count_distinct)
    )
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - started
    peaks.stop()
    peaks.poll()
    counters: dict[str, int] = {}
    for namespace in (COUNTS, NAMESPACE):
        for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
            name = counter.key.metric.name
            counters[name] = counters.get(name, 0) + int(counter.committed)
    return {
        "size": workload.n,
        "wall_s": wall,
        "peak_rss_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        "launcher_rss_mb": _maxrss_mb(resource.RUSAGE_SELF),
        "worker_vmhwm_mb": sorted(peaks.peaks.values(), reverse=True),
        "counters": dict(sorted(counters.items())),
    }


def _rows_out(figures: dict[str, Any]) -> int:
    """The rows the output holds (the count of every status and reason), or the distinct pairs
    it holds when fewer."""
    rows = sum(v for k, v in figures["counters"].items() if k.startswith("out/"))
    return min(rows, figures["counters"].get("distinct_uids", rows))


def _describe(figures: dict[str, Any]) -> str:
    """The counts behind a size's line: planted roles, output by status/reason, work done, memory."""
    counters = figures["counters"]
    lines = []
    labels = (
        ("planted", "planted/"),
        ("after dedup", "after_dedup/"),
        ("out", "out/"),
        ("noise vocabulary", "vocabulary/"),
    )
    for label, prefix in labels:
        found = [f"{k[len(prefix) :]} {v:,}" for k, v in counters.items() if k.startswith(prefix)]
        if found:
            lines.append(f"  {label}: {', '.join(found)}")
    stages = [f"{k} {v:,}" for k, v in counters.items() if k.endswith(("/total", "/kept"))]
    lines.append(f"  stage counters: {', '.join(stages) or 'none'}")
    distinct = counters.get("distinct_uids")
    if _rows_out(figures) != figures["size"] or distinct not in (None, figures["size"]):
        lines.append(
            f"  ROWS LOST: the output holds {_rows_out(figures):,} rows, {distinct or 0:,} distinct pairs, "
            f"of {figures['size']:,}"
        )
    compared = [f"{k.split('/', 1)[1]} {v:,}" for k, v in counters.items() if k.endswith("_comparisons")]
    lines.append(f"  comparisons: {', '.join(compared) or 'none'}")
    hwm = ", ".join(f"{v:,.0f}" for v in figures["worker_vmhwm_mb"]) or "none seen"
    lines.append(
        f"  worker VmHWM polled (MB): {hwm}; launcher {figures['launcher_rss_mb']:,.0f} MB; "
        f"whole process tree at most {figures.get('tree_rss_mb', 0):,.0f} MB (polled)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- all sizes


class ChildFailed(RuntimeError):
    """A size's child process crashed or was stopped by the memory guard (the message says which)."""


def _child(size: int, passthrough: list[str], max_rss_mb: float) -> dict[str, Any]:
    """Runs one size in a fresh process; stops it (its process group) when the RSS of its whole
    process tree passes `max_rss_mb`, so that a memory blow-up is reported, not suffered."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(size), *passthrough]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
    reader.start()
    started, largest = time.monotonic(), 0.0
    while child.poll() is None:
        tree = {pid: _status_mb(pid, "VmRSS") for pid in [child.pid, *descendants(child.pid)]}
        largest = max(largest, sum(tree.values()))
        if sum(tree.values()) > max_rss_mb:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            parts = ", ".join(f"{mb:,.0f}" for mb in sorted(tree.values(), reverse=True) if mb >= 1)
            raise ChildFailed(
                f"stopped after {time.monotonic() - started:.0f} s: the process tree's RSS "
                f"{sum(tree.values()):,.0f} MB passed --max-rss-mb {max_rss_mb:,.0f} (processes, MB: {parts})"
            )
        time.sleep(1.0)
    reader.join()
    for line in reversed(lines):
        if line.startswith(RESULT):
            figures: dict[str, Any] = json.loads(line[len(RESULT) :])
            figures["tree_rss_mb"] = largest
            return figures
    raise ChildFailed(
        f"the child process exited with {child.returncode} and no result (its traceback: above)"
    )


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _verdict(label: str, ratio: float, bound: float) -> str:
    return f"{label} = {ratio:.2f} ≤ {bound:.2f}: {'holds' if ratio <= bound else 'FAILS'}"


def print_table(rows: list[dict[str, Any]], failed: dict[int, str]) -> None:
    """The table of the sizes that finished, and the targets' verdict (`failed`: size → why not)."""
    base = min(rows, key=lambda r: r["size"])
    print()
    print("| size | wall_s | peak_rss_mb | launcher_rss_mb | samples/s | time ratio | RSS ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: r["size"]):
        print(
            f"| {row['size']:,} | {row['wall_s']:.1f} | {row['peak_rss_mb']:,.0f} "
            f"| {row['launcher_rss_mb']:,.0f} | {row['size'] / row['wall_s']:,.0f} "
            f"| {row['wall_s'] / base['wall_s']:.2f} | {row['peak_rss_mb'] / base['peak_rss_mb']:.2f} |"
        )
    print()
    lost = {r["size"]: r["size"] - _rows_out(r) for r in rows if _rows_out(r) != r["size"]}
    if lost:
        where = ", ".join(f"{size:,} ({missing:,} missing)" for size, missing in sorted(lost.items()))
        print(f"WARNING: the output does not hold every pair at: {where}")
    by_size = {r["size"]: r for r in rows}
    if BASE in by_size and TOP in failed:
        print(f"targets: FAIL: {TOP:,} did not finish ({failed[TOP]})")
        return
    if BASE in by_size and TOP in by_size:
        low, high = by_size[BASE], by_size[TOP]
        print(
            "targets: "
            + _verdict("time 1M / 100k", high["wall_s"] / low["wall_s"], TIME_BOUND)
            + "; "
            + _verdict("worker RSS 1M / 100k", high["peak_rss_mb"] / low["peak_rss_mb"], RSS_BOUND)
        )
        return
    top = max(rows, key=lambda r: r["size"])
    growth = top["size"] / base["size"]
    if growth == 1:
        print(f"targets (1M vs 100k) not evaluated: only {base['size']:,} was run.")
        return
    # The same bounds scaled to the sizes run: time 1.1 × linear, RSS growth^(log 3 / log 10).
    time_bound = TIME_BOUND / (TOP / BASE) * growth
    rss_bound = growth ** (math.log(RSS_BOUND) / math.log(TOP / BASE))
    print(f"targets (1M vs 100k) not evaluated: sizes {BASE:,} and {TOP:,} were not both run.")
    print(
        f"scaled to {top['size']:,} vs {base['size']:,} ({growth:.1f}×): "
        + _verdict("time ratio", top["wall_s"] / base["wall_s"], time_bound)
        + "; "
        + _verdict("worker RSS ratio", top["peak_rss_mb"] / base["peak_rss_mb"], rss_bound)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--one", type=int, default=None, help="run this one size here (the child's mode)")
    parser.add_argument("--workers", type=int, default=2, help="local SDK worker processes")
    parser.add_argument("--chunk", type=int, default=2_500, help="pairs generated per element")
    parser.add_argument(
        "--dim", type=int, default=None, help="embedding dimension (default: the shipped model's)"
    )
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--exact", type=float, default=0.03, help="share of byte-identical copies")
    parser.add_argument("--near", type=float, default=0.03, help="share of brightened re-encodings")
    parser.add_argument("--semantic", type=float, default=0.04, help="share of embedding copies")
    parser.add_argument("--mismatched", type=float, default=0.10, help="share of another pair's caption")
    parser.add_argument("--spread", type=float, default=1.0, help="image scatter around a topic")
    parser.add_argument("--text-noise", type=float, default=1.5, help="text scatter around its image")
    parser.add_argument("--delta", type=float, default=0.02, help="a planted copy's embedding shift")
    parser.add_argument("--pixels", type=int, default=32, help="side of the square images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-rss-mb",
        type=float,
        default=0.0,
        help="stop a size whose process tree passes this RSS (default: 80%% of the available memory)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=("dedup", "noise"),
        default=["dedup", "noise"],
        help="stages run (both: the workload; one: to see what each costs)",
    )
    parser.add_argument(
        "--levels",
        nargs="+",
        choices=("exact", "perceptual", "semantic"),
        default=["exact", "perceptual", "semantic"],
        help="dedup levels on (all: the workload; fewer: to see what each costs)",
    )
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.dim is None:
        args.dim = shipped_dim()
    if args.one is not None:
        figures = run_one(args)
        print(RESULT + json.dumps(figures), flush=True)
        return
    passthrough: list[str] = []
    for name, value in vars(args).items():
        if name not in ("sizes", "one", "max_rss_mb"):
            passthrough += [
                f"--{name.replace('_', '-')}",
                *map(str, value if isinstance(value, list) else [value]),
            ]
    print(
        f"stages {' + '.join(args.stages)} (dedup levels: {', '.join(args.levels)}), local runner with "
        f"{args.workers} worker processes, dim {args.dim}; peak_rss_mb: the largest SDK worker's ru_maxrss "
        "(getrusage RUSAGE_CHILDREN of a fresh child per size)",
        flush=True,
    )
    max_rss_mb = args.max_rss_mb or 0.8 * _available_mb()
    rows: list[dict[str, Any]] = []
    failed: dict[int, str] = {}
    for size in args.sizes:
        if failed and size > min(failed):
            failed[size] = f"not run: {min(failed):,} failed"
            print(f"size={size} {failed[size]}", flush=True)
            continue
        try:
            figures = _child(size, passthrough, max_rss_mb)
        except ChildFailed as why:
            failed[size] = str(why)
            print(f"size={size} failed: {why}", flush=True)
            continue
        rows.append(figures)
        print(
            f"size={size} wall_s={figures['wall_s']:.1f} peak_rss_mb={figures['peak_rss_mb']:.0f}", flush=True
        )
        print(_describe(figures), flush=True)
    if rows:
        print_table(rows, failed)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
