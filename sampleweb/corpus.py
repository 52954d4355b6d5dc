"""Generate a sample-web corpus: image files plus a ground-truth manifest.

Contract:

* ``generate_corpus(out_dir, samples, seed, config)`` writes ``out_dir/files/<id>.<ext>`` and
  ``out_dir/manifest.parquet`` (one row per sample, ordered by ``id``; columns in
  :data:`MANIFEST_SCHEMA`, documented in ``sampleweb/README.md``) and returns a
  :class:`CorpusSummary`.  ``out_dir`` holds Winnow's output manifest (``winnow-manifest.json``,
  :mod:`transforms.common.manifest`): a folder is written only when it is new, empty or an earlier
  sample web whose manifest names every file in it; only the files it names are replaced, and the
  tools that add files to a sample web (URL lists, metadata, eval sets) record theirs there too.
  Any other folder is refused (``FileExistsError``) and left as it is.
* Output is a pure function of ``(samples, seed, config)``: the same arguments give
  byte-identical files and manifest, whatever the number of worker processes.  Each sample draws
  its scene, layout and caption from its own ``numpy`` ``SeedSequence`` stream keyed by
  ``(seed, purpose, index)``; roles (noise, duplicates, faults, split, language) are allocated
  with exact counts (rate x samples, rounded) by one plan stream keyed by ``seed``.
* Rendering runs in a process pool over all cores; each task renders a scene once and writes the
  original and all of its duplicates.
* Duplicate groups and faults are disjoint: every member of a duplicate group is served
  successfully.  Members of a group share the original's scene, concepts and split.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sampleweb.captions import LANGUAGES, boilerplate, describe, keyword_stuffing, too_short
from sampleweb.layout import FAULT_REASONS, FAULTS, FAULTS_WITH_FILE, FORMATS, ROBOTS_FORMS, url_path
from sampleweb.scenes import Scene, concepts, random_scene
from sampleweb.variants import NEAR_VARIANTS, ImageSpec, RenderTask, run_render_task

log = logging.getLogger(__name__)

NOISE_TYPES: tuple[str, ...] = (
    "none",
    "mismatched",
    "partial",
    "boilerplate",
    "empty",
    "too_short",
    "too_long",
)
SPLITS: tuple[str, ...] = ("train", "heldout")
MANIFEST_NAME = "manifest.parquet"
FILES_DIR = "files"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("concepts", pa.list_(pa.string()), nullable=False),
        pa.field("noise", pa.string(), nullable=False),
        pa.field("dup_group", pa.int64(), nullable=False),
        pa.field("dup_variant", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("fault", pa.string()),
        pa.field("expected_status", pa.string(), nullable=False),
        pa.field("expected_reason", pa.string()),
        pa.field("format", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

# Seed-sequence purposes: each sample gets one independent stream per purpose.
_SCENE, _LAYOUT, _CAPTION, _RENDER, _PLAN, _VARIANT = range(6)
_ASPECTS: tuple[tuple[float, float], ...] = (
    (1.0, 0.22),
    (4 / 3, 0.3),
    (3 / 2, 0.22),
    (16 / 9, 0.16),
    (2.0, 0.1),
)
_P_PORTRAIT = 0.3
_QUALITY = {"jpeg": (72, 93), "webp": (70, 91), "png": (0, 1), "gif": (0, 1)}
_GRAPHIC_GRAIN_SCALE = 0.35  # PNG and GIF get lighter grain, like graphics rather than photos
_OVERLAY_TEXTS = ("© sampleweb", "SAMPLE", "www.example.com", "stock photo", "preview", "@winnow")
_EMPTY_CAPTIONS: tuple[str | None, ...] = ("", None, " ")
_MIN_SIDE = 16


@dataclass(frozen=True)
class CorpusConfig:
    """Rates and shapes of a generated corpus.  All rates are fractions of ``samples``.

    ``workers`` only sets the size of the process pool (``None``: all cores); it never changes
    the output.
    """

    languages: tuple[tuple[str, float], ...] = (
        ("en", 0.70),
        ("fr", 0.06),
        ("de", 0.06),
        ("es", 0.06),
        ("zh", 0.06),
        ("it", 0.03),
        ("pt", 0.03),
    )
    mismatched_rate: float = 0.08
    partial_rate: float = 0.06
    boilerplate_rate: float = 0.06
    empty_rate: float = 0.02
    too_short_rate: float = 0.01
    too_long_rate: float = 0.01
    exact_dup_rate: float = 0.05
    near_dup_rate: float = 0.08
    near_dup_variants: tuple[str, ...] = NEAR_VARIANTS
    fault_rate: float = 0.05
    faults: tuple[str, ...] = FAULTS
    heldout_rate: float = 0.10
    formats: tuple[tuple[str, float], ...] = (("jpeg", 0.70), ("png", 0.12), ("webp", 0.12), ("gif", 0.06))
    median_long_side: int = 800
    long_side_sigma: float = 0.55
    min_long_side: int = 64
    max_long_side: int = 2000
    grain: float = 6.0
    workers: int | None = None

    def __post_init__(self) -> None:
        rates = {name: getattr(self, name) for name in self.__dataclass_fields__ if name.endswith("_rate")}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if sum(self.noise_rates.values()) > 1.0:
            raise ValueError("caption noise rates add up to more than 1")
        if 1.5 * (self.exact_dup_rate + self.near_dup_rate) + self.fault_rate > 1.0:
            raise ValueError("duplicate groups and faults need more samples than there are")
        _check_weights("languages", self.languages, LANGUAGES)
        _check_weights("formats", self.formats, FORMATS)
        _check_names("faults", self.faults, FAULTS)
        _check_names("near_dup_variants", self.near_dup_variants, NEAR_VARIANTS)
        if not 0 < self.min_long_side <= self.median_long_side <= self.max_long_side:
            raise ValueError("need 0 < min_long_side <= median_long_side <= max_long_side")

    @property
    def noise_rates(self) -> dict[str, float]:
        """Rate of each caption noise type other than ``none``."""
        return {
            "mismatched": self.mismatched_rate,
            "partial": self.partial_rate,
            "boilerplate": self.boilerplate_rate,
            "empty": self.empty_rate,
            "too_short": self.too_short_rate,
            "too_long": self.too_long_rate,
        }


def _check_weights(name: str, weights: Sequence[tuple[str, float]], known: Sequence[str]) -> None:
    _check_names(name, [key for key, _ in weights], known)
    if not weights or any(weight < 0 for _, weight in weights) or sum(w for _, w in weights) <= 0:
        raise ValueError(f"{name} needs non-negative weights with a positive sum")


def _check_names(name: str, values: Sequence[str], known: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown or len(set(values)) != len(values):
        raise ValueError(
            f"{name}: unknown or repeated entries {unknown or list(values)}; known: {list(known)}"
        )


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`generate_corpus` wrote."""

    out_dir: str
    manifest_path: str
    samples: int
    files: int
    total_bytes: int
    seconds: float
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        """A few lines for a person: what was written, then each ground-truth label's counts."""
        lines = [
            f"{self.samples:,} samples: {self.files:,} files ({self.total_bytes / 1e6:.1f} MB) in "
            f"{self.out_dir} in {self.seconds:.1f}s; ground truth in {self.manifest_path}"
        ]
        for label, counts in self.counts.items():
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            shown = ", ".join(f"{n:,} {'none' if value == 'null' else value}" for value, n in ranked)
            lines.append(f"  {label}: {shown}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- planning


def _rng(seed: int, purpose: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose, index)))


def _quota(weights: Sequence[tuple[str, float]], total: int) -> list[str]:
    """Exactly ``total`` labels in proportion to ``weights`` (largest-remainder rounding)."""
    norm = sum(weight for _, weight in weights)
    raw = [(label, weight / norm * total) for label, weight in weights]
    counts = {label: math.floor(share) for label, share in raw}
    by_remainder = sorted(raw, key=lambda item: item[1] - math.floor(item[1]), reverse=True)
    for label, _ in by_remainder[: total - sum(counts.values())]:
        counts[label] += 1
    return [label for label, _ in weights for _ in range(counts[label])]


def _cycle(labels: Sequence[str], total: int, rng: np.random.Generator) -> list[str]:
    """``total`` labels spread evenly over ``labels``, in random order."""
    spread = [labels[k % len(labels)] for k in range(total)]
    return [spread[int(i)] for i in rng.permutation(total)]


@dataclass(frozen=True)
class _Layout:
    fmt: str
    width: int
    height: int
    quality: int
    grain_factor: float


def _draw_layout(rng: np.random.Generator, config: CorpusConfig) -> _Layout:
    names, weights = zip(*config.formats, strict=True)
    fmt = names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]
    long_side = round(config.median_long_side * math.exp(config.long_side_sigma * rng.standard_normal()))
    long_side = int(np.clip(long_side, config.min_long_side, config.max_long_side))
    ratios, aspect_weights = zip(*_ASPECTS, strict=True)
    ratio = ratios[int(rng.choice(len(ratios), p=np.asarray(aspect_weights) / sum(aspect_weights)))]
    short_side = max(_MIN_SIDE, round(long_side / ratio))
    portrait = rng.random() < _P_PORTRAIT
    width, height = (short_side, long_side) if portrait else (long_side, short_side)
    low, high = _QUALITY[fmt]
    return _Layout(fmt, width, height, int(rng.integers(low, high)), float(rng.uniform(0.5, 1.5)))


@dataclass
class _Row:
    """Mutable planning record of one sample; frozen into manifest columns at the end."""

    id: int
    scene: Scene
    layout: _Layout
    lang: str = "en"
    noise: str = "none"
    caption_source: int = -1
    dup_group: int = -1
    dup_variant: str | None = None
    split: str = "train"
    fault: str | None = None
    robots_form: str | None = None
    spec: ImageSpec | None = None
    caption: str | None = None
    caption_lang: str | None = None


def _assign_groups(
    rows: list[_Row], order: Iterator[int], config: CorpusConfig, rng: np.random.Generator
) -> None:
    n = len(rows)
    exact, near = round(config.exact_dup_rate * n), round(config.near_dup_rate * n)
    copies = exact + near
    if copies == 0:
        return
    groups = math.ceil(copies / 2)
    sizes = [2] * groups
    for _ in range(copies - groups):
        sizes[int(rng.integers(groups))] += 1
    variants = _cycle(["exact"], exact, rng) + _cycle(list(config.near_dup_variants), near, rng)
    variants = [variants[int(i)] for i in rng.permutation(len(variants))]
    for size in sizes:
        members = sorted(next(order) for _ in range(size))
        original = rows[members[0]]
        original.dup_group, original.dup_variant = original.id, "original"
        for member in members[1:]:
            row = rows[member]
            row.scene, row.dup_group, row.dup_variant = original.scene, original.id, variants.pop()


def _assign_faults(
    rows: list[_Row], order: Iterator[int], config: CorpusConfig, rng: np.random.Generator
) -> None:
    count = round(config.fault_rate * len(rows))
    faults = _cycle(list(config.faults), count, rng)
    forms = _cycle(list(ROBOTS_FORMS), faults.count("noai"), rng)
    for fault in faults:
        row = rows[next(order)]
        row.fault = fault
        if fault == "noai":
            row.robots_form = forms.pop()


def _owner(row: _Row) -> int:
    """Id of the sample whose scene this row shows (itself, or its group's original)."""
    return row.id if row.dup_group == -1 else row.dup_group


def _assign_split(rows: list[_Row], config: CorpusConfig, rng: np.random.Generator) -> None:
    owners = [row.id for row in rows if _owner(row) == row.id]
    heldout = {
        owners[int(i)] for i in rng.permutation(len(owners))[: round(config.heldout_rate * len(owners))]
    }
    for row in rows:
        row.split = "heldout" if _owner(row) in heldout else "train"


def _assign_noise(rows: list[_Row], config: CorpusConfig, rng: np.random.Generator) -> None:
    n = len(rows)
    order = [int(i) for i in rng.permutation(n)]
    eligible = [i for i in order if len(rows[i].scene.objects) >= 2]
    partial = set(eligible[: round(config.partial_rate * n)])
    remaining = iter(i for i in order if i not in partial)
    for i in sorted(partial):
        rows[i].noise = "partial"
    for noise, rate in config.noise_rates.items():
        if noise == "partial":
            continue
        for _ in range(round(rate * n)):
            index = next(remaining, None)
            if index is None:
                return
            rows[index].noise = noise
    for row in rows:
        if row.noise == "mismatched":
            row.caption_source = _mismatch_source(rows, row, rng)


def _mismatch_source(rows: list[_Row], row: _Row, rng: np.random.Generator) -> int:
    own = set(concepts(row.scene))
    for _ in range(1000):
        other = rows[int(rng.integers(len(rows)))]
        if _owner(other) != _owner(row) and set(concepts(other.scene)) != own:
            return other.id
    raise RuntimeError("no scene to borrow a mismatched caption from; use more samples")


def _write_caption(row: _Row, rows: list[_Row], seed: int) -> None:
    rng = _rng(seed, _CAPTION, row.id)
    row.caption_lang = row.lang
    if row.noise == "none":
        row.caption = describe(row.scene, row.lang, rng)
    elif row.noise == "mismatched":
        row.caption = describe(rows[row.caption_source].scene, row.lang, rng)
    elif row.noise == "partial":
        objects = row.scene.objects
        keep = sorted(int(i) for i in rng.permutation(len(objects))[: int(rng.integers(1, len(objects)))])
        row.caption = describe(row.scene, row.lang, rng, [objects[i] for i in keep])
    elif row.noise == "boilerplate":
        row.caption, row.caption_lang = boilerplate(row.lang, rng)
    elif row.noise == "empty":
        row.caption, row.caption_lang = _EMPTY_CAPTIONS[int(rng.integers(len(_EMPTY_CAPTIONS)))], None
    elif row.noise == "too_short":
        row.caption, row.caption_lang = too_short(rng), None
    elif row.noise == "too_long":
        row.caption = keyword_stuffing(row.scene, row.lang, rng)
    else:
        raise ValueError(f"unknown noise {row.noise!r}")


def _copy_spec(row: _Row, original: ImageSpec, rng: np.random.Generator) -> ImageSpec:
    variant = row.dup_variant or "exact"
    base = ImageSpec(row.id, original.fmt, original.quality, original.width, original.height, variant)
    w, h = original.width, original.height
    if variant == "exact":
        return base
    if variant == "reencode":
        if original.fmt == "jpeg" and rng.random() < 0.5:
            return replace(base, fmt="webp", quality=int(rng.integers(60, 90)))
        if original.fmt == "jpeg":
            return replace(base, quality=max(35, original.quality - int(rng.integers(20, 35))))
        return replace(base, fmt="jpeg", quality=int(rng.integers(60, 90)))
    if variant == "resize":
        scale = float(rng.uniform(0.45, 0.8))
        return replace(base, width=max(_MIN_SIDE, round(w * scale)), height=max(_MIN_SIDE, round(h * scale)))
    if variant == "crop":
        left, right = (max(1, round(w * f)) for f in rng.uniform(0.01, 0.05, 2))
        top, bottom = (max(1, round(h * f)) for f in rng.uniform(0.01, 0.05, 2))
        box = (left, top, w - right, h - bottom)
        return replace(base, width=box[2] - box[0], height=box[3] - box[1], crop_box=box)
    if variant == "brightness":
        factor = float(rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.25))
        return replace(base, brightness=factor)
    if variant == "text_overlay":
        text = _OVERLAY_TEXTS[int(rng.integers(len(_OVERLAY_TEXTS)))]
        return replace(base, text=text, text_corner=int(rng.integers(4)))
    raise ValueError(f"unknown duplicate variant {variant!r}")


def _plan(samples: int, seed: int, config: CorpusConfig) -> list[_Row]:
    rows = [
        _Row(i, random_scene(_rng(seed, _SCENE, i)), _draw_layout(_rng(seed, _LAYOUT, i), config))
        for i in range(samples)
    ]
    copies = round(config.exact_dup_rate * samples) + round(config.near_dup_rate * samples)
    if copies + math.ceil(copies / 2) + round(config.fault_rate * samples) > samples:
        raise ValueError(f"{samples} samples are too few for the duplicate and fault rates")
    rng = _rng(seed, _PLAN)
    order = iter(int(i) for i in rng.permutation(samples))
    _assign_groups(rows, order, config, rng)
    _assign_faults(rows, order, config, rng)
    _assign_split(rows, config, rng)
    languages = _quota(config.languages, samples)
    for row, index in zip(rows, rng.permutation(samples), strict=True):
        row.lang = languages[int(index)]
    _assign_noise(rows, config, rng)
    for row in rows:
        _write_caption(row, rows, seed)
    _assign_specs(rows, seed)
    return rows


def _assign_specs(rows: list[_Row], seed: int) -> None:
    """Image specs: originals from their layout, then copies derived from their original."""
    for row in rows:
        if _owner(row) == row.id:
            fmt = "jpeg" if row.fault == "html" else row.layout.fmt
            row.spec = ImageSpec(row.id, fmt, row.layout.quality, row.layout.width, row.layout.height)
    for row in rows:
        original = rows[_owner(row)].spec
        if _owner(row) != row.id and original is not None:
            row.spec = _copy_spec(row, original, _rng(seed, _VARIANT, row.id))


# --------------------------------------------------------------------------- rendering


def _has_file(row: _Row) -> bool:
    return row.fault is None or row.fault in FAULTS_WITH_FILE


def _grain(row: _Row, config: CorpusConfig) -> float:
    scale = 1.0 if row.layout.fmt in ("jpeg", "webp") else _GRAPHIC_GRAIN_SCALE
    return config.grain * scale * row.layout.grain_factor


def _tasks(rows: list[_Row], files_dir: str, seed: int, config: CorpusConfig) -> list[RenderTask]:
    copies: dict[int, list[ImageSpec]] = {}
    for row in rows:
        if _owner(row) != row.id and row.spec is not None:
            copies.setdefault(_owner(row), []).append(row.spec)
    tasks = []
    for row in rows:
        if _owner(row) == row.id and _has_file(row) and row.spec is not None:
            grain_seed = int(np.random.SeedSequence(seed, spawn_key=(_RENDER, row.id)).generate_state(1)[0])
            tasks.append(
                RenderTask(
                    files_dir,
                    row.scene,
                    _grain(row, config),
                    grain_seed,
                    row.spec,
                    tuple(copies.get(row.id, ())),
                )
            )
    return sorted(tasks, key=lambda task: -task.cost)


def _render_all(tasks: list[RenderTask], workers: int) -> dict[int, int]:
    written: dict[int, int] = {}
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            written.update(run_render_task(task))
        return written
    chunksize = max(1, len(tasks) // (workers * 32))
    with multiprocessing.get_context().Pool(workers) as pool:
        for result in pool.imap_unordered(run_render_task, tasks, chunksize=chunksize):
            written.update(result)
    return written


# --------------------------------------------------------------------------- manifest


def _manifest_row(row: _Row) -> dict[str, object]:
    spec = row.spec
    if spec is None:
        raise RuntimeError(f"sample {row.id} was never planned")
    has_file = _has_file(row)
    return {
        "id": row.id,
        "path": url_path(row.id, spec.fmt, row.fault, row.robots_form),
        "caption": row.caption,
        "lang": row.caption_lang,
        "concepts": concepts(row.scene),
        "noise": row.noise,
        "dup_group": row.dup_group,
        "dup_variant": row.dup_variant,
        "split": row.split,
        "fault": row.fault,
        "expected_status": "success" if row.fault is None else "failed",
        "expected_reason": None if row.fault is None else FAULT_REASONS[row.fault],
        "format": spec.fmt,
        "width": spec.width if has_file else None,
        "height": spec.height if has_file else None,
    }


def _manifest(rows: list[_Row]) -> pa.Table:
    return pa.Table.from_pylist([_manifest_row(row) for row in rows], schema=MANIFEST_SCHEMA)


def _counts(table: pa.Table) -> dict[str, dict[str, int]]:
    out = {}
    for name in ("noise", "lang", "fault", "format", "dup_variant", "split", "expected_reason"):
        counter = Counter("null" if value is None else str(value) for value in table.column(name).to_pylist())
        out[name] = dict(sorted(counter.items()))
    return out


#: What a sample web's folder holds once its tools have run (see :func:`_claim_folder`).
_OWN_NAME = re.compile(
    rf"^({re.escape(MANIFEST_NAME)}|{FILES_DIR}/\d{{6}}\.\w+|urls\.parquet|truth\.parquet|metadata\.tsv"
    r"|eval/.+|\.generated-\d+-\d+)$"
)


def _claim_folder(out_dir: str) -> None:
    """Refuses ``out_dir`` unless it is new, empty or an earlier sample web whose manifest names
    every file in it; deletes the files that manifest names and leaves it ``running`` (a killed
    generation's files, with the sample web's names, are then taken up by the next one)."""
    from transforms.common.manifest import survey, write_manifest

    if not os.path.isdir(out_dir):
        if os.path.exists(out_dir):
            raise FileExistsError(f"{out_dir} is a file, not a folder")
        return
    _, recorded, foreign = survey(out_dir, lambda name: bool(_OWN_NAME.match(name)))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise FileExistsError(
            f"{out_dir} is not a generated sample web's folder: it holds files Winnow did not write "
            f"('{foreign[0]}'{more}), and it replaces only what it wrote; use another folder"
        )
    write_manifest(out_dir, "running", recorded)
    for name in sorted(recorded):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))


def generate_corpus(
    out_dir: str, samples: int, seed: int, config: CorpusConfig | None = None
) -> CorpusSummary:
    """Generate ``samples`` samples under ``out_dir``; deterministic in (samples, seed, config)."""
    config = config or CorpusConfig()
    if samples < 1 or seed < 0:
        raise ValueError("need samples >= 1 and seed >= 0")
    from transforms.common.manifest import write_manifest

    started = time.perf_counter()
    files_dir = os.path.join(out_dir, FILES_DIR)
    _claim_folder(out_dir)
    os.makedirs(files_dir, exist_ok=True)
    rows = _plan(samples, seed, config)
    tasks = _tasks(rows, files_dir, seed, config)
    workers = config.workers or os.cpu_count() or 1
    log.info("rendering %d scenes for %d samples on %d workers", len(tasks), samples, workers)
    written = _render_all(tasks, workers)
    table = _manifest(rows)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    pq.write_table(table, manifest_path, compression="zstd")
    names = [f"{FILES_DIR}/{name}" for name in sorted(os.listdir(files_dir))]
    write_manifest(out_dir, "complete", [MANIFEST_NAME, *names])
    seconds = time.perf_counter() - started
    summary = CorpusSummary(
        out_dir=out_dir,
        manifest_path=manifest_path,
        samples=samples,
        files=len(written),
        total_bytes=sum(written.values()),
        seconds=seconds,
        counts=_counts(table),
    )
    log.info("wrote %d files (%.1f MB) in %.1f s", summary.files, summary.total_bytes / 1e6, seconds)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sampleweb.corpus OUT_DIR --samples N --seed S``."""
    parser = argparse.ArgumentParser(description="Generate a Winnow sample-web corpus.")
    parser.add_argument("out_dir")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = generate_corpus(args.out_dir, args.samples, args.seed, CorpusConfig(workers=args.workers))
    for name, counts in summary.counts.items():
        log.info("%s: %s", name, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
