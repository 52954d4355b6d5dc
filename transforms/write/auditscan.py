"""The audit's counts of one batch of Parquet rows, mergeable in any order into bounded totals.

In: row batches of an output's `NNNNN.parquet` files (`scan_batch`). Out: an `AuditCounts` per
shard that `AuditCounts.merge` folds into one, whatever the order; its size depends on the number
of reasons, languages and models, never on the number of rows:

- counts per (status, stage, reason), per language and per model, each with the position of the
  row that first had it (shard index << 32 | row), so that ties list in the order a reader of the
  shards in order meets them, on any runner;
- fixed-bin histograms of the scores and sizes, and the safety stage's counts;
- per outcome (`kept` or a reason) the `k` rows with the smallest seeded hash of their uid: the
  same rows in every output that holds them (ties: the first read).

Domains and duplicate groups have one key per domain or group: they are counted per key by the
job (`transforms/write/audit.py`), not here. A blocklisted sample is counted, never sampled.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from PIL import Image, UnidentifiedImageError

KEPT = "kept"  # the gallery category of successful samples
#: The reason of a sample on a safety blocklist: counted, never shown (no row, domain or thumbnail).
BLOCKLISTED = "blocklisted"
PENDING = "pending"  # the category of rows no stage decided (`Status.PENDING`)
#: A sample uid (or a `dup_group`) as errors cite it.
UID = re.compile(r"\b[0-9a-f]{32}\b")
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/:?#]+)"
#: The safety stage's columns (`schemas/sample.py`).
SAFETY_COLUMNS = ("blocklist", "nsfw_score", "face_bboxes")
SAMPLE_COLUMNS = (
    "uid", "url", "caption", "caption_clean", "status", "reason", "stage", "error",
    "clip_score", "dup_group", "duplicate_of", "key",
    "caption_source", "caption_completed", "caption_pseudo", "caption_bow",
)  # fmt: skip
#: Every column the scan reads (those an older output lacks are read as nulls).
SCAN_COLUMNS = frozenset(
    {*SAMPLE_COLUMNS, *SAFETY_COLUMNS, "num_tokens", "lang", "original_width", "original_height"}
    | {"clip_model", "noise_prob"}
)
_POSITION_BITS = 32  # rows per shard stay far below 2**32


def position(shard: str, row: int) -> int:
    """The reading order of a row: its shard's index, then its row in the shard."""
    return (int(shard) << _POSITION_BITS) | row


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """How many rows the audit shows, and the seed of the uid hash that picks them."""

    seed: int = 0
    kept_samples: int = 24  # kept rows in the gallery
    per_reason: int = 6  # rows per rejection reason (and of `pending`)
    groups: int = 6  # the largest duplicate groups shown
    group_members: int = 50  # members shown per group, the kept one first
    thumbnail_px: int = 128

    def k(self, outcome: str) -> int:
        return self.kept_samples if outcome == KEPT else self.per_reason


@dataclasses.dataclass
class Histogram:
    """Counts in `len(kept)` bins of `width` from `lo`; values outside land in the end bins."""

    lo: float
    width: float
    kept: list[int]
    other: list[int]

    @classmethod
    def empty(cls, lo: float, width: float, bins: int) -> Histogram:
        return cls(lo, width, [0] * bins, [0] * bins)

    def add(self, values: np.ndarray, kept: np.ndarray) -> None:
        ok = ~np.isnan(values)
        index = np.clip(np.floor((values[ok] - self.lo) / self.width), 0, len(self.kept) - 1).astype(np.int64)
        for series, mask in ((self.kept, kept[ok]), (self.other, ~kept[ok])):
            counts = np.bincount(index[mask], minlength=len(series))
            series[:] = [a + int(b) for a, b in zip(series, counts, strict=True)]

    def merge(self, other: Histogram) -> None:
        self.kept[:] = [a + b for a, b in zip(self.kept, other.kept, strict=True)]
        self.other[:] = [a + b for a, b in zip(self.other, other.other, strict=True)]

    @property
    def total(self) -> int:
        return sum(self.kept) + sum(self.other)


def histograms() -> dict[str, Histogram]:
    """The audit's histograms, empty (`noise_prob` is added once a shard has the column)."""
    return {
        "clip_score": Histogram.empty(-1.0, 0.025, 81),
        "num_tokens": Histogram.empty(0, 1, 64),
        "short_side": Histogram.empty(0, 32, 64),
        "aspect_ratio": Histogram.empty(1.0, 0.1, 40),
    }


def noise_histogram() -> Histogram:
    return Histogram.empty(0.0, 0.025, 41)


def count(counts: dict[Any, list[int]], key: Any, n: int, first: int) -> None:
    """Adds `n` to `counts[key]` = [n, first position seen]."""
    held = counts.get(key)
    if held is None:
        counts[key] = [n, first]
    else:
        held[0] += n
        held[1] = min(held[1], first)


def in_reading_order(counts: dict[Any, list[int]]) -> list[tuple[Any, int]]:
    """(key, n) by the position each key was first seen."""
    return [(key, held[0]) for key, held in sorted(counts.items(), key=lambda kv: kv[1][1])]


@dataclasses.dataclass
class AuditCounts:
    """The bounded totals of any set of shards (see the module)."""

    total: int = 0
    outcomes: dict[tuple[str, str, str], list[int]] = dataclasses.field(default_factory=dict)
    histograms: dict[str, Histogram] = dataclasses.field(default_factory=histograms)
    languages: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # [kept, other, first]
    models: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    blocklists: dict[str, int] = dataclasses.field(default_factory=dict)
    nsfw: Histogram = dataclasses.field(default_factory=lambda: Histogram.empty(0.0, 0.025, 40))
    with_faces: int = 0
    faces: int = 0
    has_safety: bool = False
    #: outcome → (uid hash, position, row), the smallest first, at most `AuditSettings.k` of them.
    samples: dict[str, list[tuple[int, int, dict[str, Any]]]] = dataclasses.field(default_factory=dict)

    def merge(self, other: AuditCounts, settings: AuditSettings) -> None:
        self.total += other.total
        for mine, theirs in ((self.outcomes, other.outcomes), (self.models, other.models)):
            for key, (n, first) in theirs.items():
                count(mine, key, n, first)
        for lang, (kept, dropped, first) in other.languages.items():
            held = self.languages.setdefault(lang, [0, 0, first])
            held[0], held[1], held[2] = held[0] + kept, held[1] + dropped, min(held[2], first)
        for name, hist in other.histograms.items():
            if name in self.histograms:
                self.histograms[name].merge(hist)
            else:
                self.histograms[name] = Histogram(hist.lo, hist.width, list(hist.kept), list(hist.other))
        for name, n in other.blocklists.items():
            self.blocklists[name] = self.blocklists.get(name, 0) + n
        self.nsfw.merge(other.nsfw)
        self.with_faces += other.with_faces
        self.faces += other.faces
        self.has_safety = self.has_safety or other.has_safety
        for outcome, rows in other.samples.items():
            picked = sorted([*self.samples.get(outcome, []), *rows], key=lambda s: (s[0], s[1]))
            self.samples[outcome] = picked[: settings.k(outcome)]


def hash64(values: list[str | None], seed: int) -> np.ndarray:
    """A seeded 64-bit hash per string (0 for null): the order of the deterministic samples."""
    return np.fromiter(
        (xxhash.xxh64_intdigest(v.encode(), seed) if v is not None else 0 for v in values),
        np.uint64,
        len(values),
    )


def cited_uids(error: str | None) -> list[str]:
    """The sample uids an error message names (a duplicate's kept copy, its closest partner)."""
    return list(dict.fromkeys(UID.findall(error or "")))


def with_columns(batch: pa.RecordBatch, names: set[str] | frozenset[str]) -> pa.Table:
    """The batch as a table with every wanted column, all-null where an older output lacks one."""
    table = pa.Table.from_batches([batch])
    for name in sorted(names - set(table.column_names)):
        kind = pa.float64() if name in ("clip_score", "noise_prob", "nsfw_score") else pa.string()
        if name in ("num_tokens", "original_width", "original_height"):
            kind = pa.int32()
        if name == "face_bboxes":
            kind = pa.list_(pa.list_(pa.float32()))
        table = table.append_column(name, pa.nulls(table.num_rows, kind))
    return table


def hosts(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """The lower-cased host of each URL, `(no host)` where there is none."""
    found = pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), _HOST), "host")
    return pc.fill_null(pc.utf8_lower(found), "(no host)")


def outcome_of(batch: pa.Table) -> pa.ChunkedArray:
    """`kept` for a kept row, else its reason (its status where it has none)."""
    status = batch["status"]
    return pc.if_else(pc.equal(status, "success"), KEPT, pc.coalesce(batch["reason"], status))


def scan_batch(
    counts: AuditCounts, batch: pa.Table, shard: str, offset: int, settings: AuditSettings
) -> tuple[pa.Table, pa.Table]:
    """Adds a batch (`with_columns(…, SCAN_COLUMNS)`, rows `offset`… of `shard`) to `counts`.

    Returns the batch's (domain, outcome) counts and its dup_group counts, for the job to count
    per key: columns `domain`, `outcome`, `count_all`, `_pos_min`; and `dup_group`, `count_all`."""
    n = batch.num_rows
    counts.total += n
    positions = pa.array(position(shard, offset) + np.arange(n, dtype=np.int64), pa.int64())
    status = batch["status"]
    kept = pc.equal(status, "success").to_numpy(zero_copy_only=False)
    outcome = outcome_of(batch)
    table = pa.table(
        {
            "status": status,
            "stage": pc.fill_null(batch["stage"], ""),
            "reason": pc.fill_null(batch["reason"], ""),
            "outcome": outcome,
            "lang": pc.fill_null(batch["lang"], "(none)"),
            "model": batch["clip_model"],
            "domain": hosts(batch["url"]),
            "dup_group": batch["dup_group"],
            "_pos": positions,
        }
    )

    def grouped(table: pa.Table, keys: list[str]) -> list[dict[str, Any]]:
        aggregated = table.group_by(keys, use_threads=False).aggregate([([], "count_all"), ("_pos", "min")])
        return aggregated.to_pylist()

    for row in grouped(table, ["status", "stage", "reason"]):
        count(
            counts.outcomes, (row["status"], row["stage"], row["reason"]), row["count_all"], row["_pos_min"]
        )
    for row in grouped(table, ["lang", "status"]):
        held = counts.languages.setdefault(row["lang"], [0, 0, row["_pos_min"]])
        held[row["status"] != "success"] += row["count_all"]
        held[2] = min(held[2], row["_pos_min"])
    for row in grouped(table.filter(pc.is_valid(table["model"])), ["model"]):
        count(counts.models, row["model"], row["count_all"], row["_pos_min"])
    for name, values in _measures(batch, "noise_prob" in counts.histograms).items():
        counts.histograms[name].add(values, kept)
    _scan_safety(counts, batch, kept)
    _sample(counts, batch, outcome, shard, offset, settings)
    # A blocked sample's host is not shown either.
    shown = table.filter(pc.not_equal(table["outcome"], BLOCKLISTED))
    domains = shown.group_by(["domain", "outcome"], use_threads=False).aggregate(
        [([], "count_all"), ("_pos", "min")]
    )
    groups = table.filter(pc.is_valid(table["dup_group"])).group_by(["dup_group"], use_threads=False)
    return domains, groups.aggregate([([], "count_all")])


def _measures(batch: pa.Table, noise: bool) -> dict[str, np.ndarray]:
    def floats(column: str) -> np.ndarray:
        return pc.cast(batch[column], pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

    width, height = floats("original_width"), floats("original_height")
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.maximum(width, height) / np.minimum(width, height)
    measures = {
        "clip_score": floats("clip_score"),
        "num_tokens": floats("num_tokens"),
        "short_side": np.minimum(width, height),
        "aspect_ratio": np.where(np.isfinite(aspect), aspect, np.nan),
    }
    if noise:
        measures["noise_prob"] = floats("noise_prob")
    return measures


def _scan_safety(counts: AuditCounts, batch: pa.Table, kept: np.ndarray) -> None:
    """Counts per blocklist, the NSFW scores, the faces (never a row of a blocked sample)."""
    blocked = batch["blocklist"].drop_null()
    for row in pc.value_counts(blocked).to_pylist():
        counts.blocklists[row["values"]] = counts.blocklists.get(row["values"], 0) + row["counts"]
    scores = pc.cast(batch["nsfw_score"], pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    counts.nsfw.add(scores, kept)
    lengths = pc.list_value_length(batch["face_bboxes"]).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64)).astype(np.int64)
    counts.with_faces += int((lengths > 0).sum())
    counts.faces += int(lengths.sum())
    decided = pc.sum(pc.equal(pc.fill_null(batch["stage"], ""), "safety")).as_py() or 0
    measured = (~np.isnan(scores)).any() or batch["face_bboxes"].null_count < len(batch)
    if len(blocked) or measured or decided:
        counts.has_safety = True


def _sample(
    counts: AuditCounts, batch: pa.Table, outcome: pa.ChunkedArray, shard: str, offset: int,
    settings: AuditSettings,
) -> None:  # fmt: skip
    """Keeps, per outcome, the rows with the smallest seeded uid hashes seen so far."""
    hashes = hash64(batch["uid"].to_pylist(), settings.seed)
    encoded = pc.dictionary_encode(outcome).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    for code, name in enumerate(encoded.dictionary.to_pylist()):
        if name == BLOCKLISTED:  # counted, never shown
            continue
        k = settings.k(name)
        index = np.flatnonzero(codes == code)
        index = index[np.argsort(hashes[index], kind="stable")[:k]]
        held = counts.samples.setdefault(name, [])
        if len(held) >= k:
            index = index[hashes[index] < held[-1][0]]
        if not len(index):
            continue
        rows = batch.select(list(SAMPLE_COLUMNS)).take(pa.array(index)).to_pylist()
        held += [
            (int(hashes[i]), position(shard, offset + int(i)), {**row, "shard": shard})
            for i, row in zip(index, rows, strict=True)
        ]
        held.sort(key=lambda s: (s[0], s[1]))
        del held[k:]


def thumbnail_uri(data: bytes, size: int = 128) -> str | None:
    """A JPEG data URI of the image scaled to fit `size` px, or None if it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size * 2, size * 2))
            thumb = image.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return None
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, "JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
