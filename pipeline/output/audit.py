"""The audit of a finished output: what happened to every sample, as numbers `pipeline.output.report` draws.

In: an output folder (local, `s3://`, `gs://`) with `NNNNN.parquet`, `NNNNN.tar` and `stats.json`.
Out: an `Audit` with counts per status, stage and reason, the funnel, histograms, language, model
and domain counts, duplicate-group sizes, and a few sample rows per outcome with thumbnails.

A sample's caption is shown as it was shipped (`shipped_caption`, the tar's `.txt`), and a removed
duplicate with the kept copy it cites: every uid an error names is looked up, so the report can
show that row rather than cite a uid the page never shows. `pending` rows (no stage decided them)
are their own category, never counted as rejected or failed.

Memory stays bounded whatever the output's size: the Parquet files are read batch by batch with
only the columns needed; galleries keep the `k` rows with the smallest seeded hash of their uid
(the same rows in every output that holds them); domains are capped (`approximate` once pruned);
duplicate groups are held as 64-bit keys, one per group. Only the images shown are read: the tar
headers are walked and just the chosen members extracted.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image, UnidentifiedImageError

from pipeline import STAGE_NAMES
from pipeline.output.errors import AuditError
from schemas.layout import read_tar_images, shard_stems
from schemas.sample import Status, chosen_caption

STAGE_ORDER = ("read", *STAGE_NAMES, "write")
KEPT = "kept"  # the gallery category of successful samples
#: The reason of a sample on a safety blocklist: counted, never shown (no row, domain or thumbnail).
BLOCKLISTED = "blocklisted"
PENDING = Status.PENDING  # the category of rows no stage decided (a run without the crawl, say)
#: A sample uid (or a `dup_group`) as errors cite it.
UID = re.compile(r"\b[0-9a-f]{32}\b")
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/:?#]+)"
_BATCH_ROWS = 65_536
_MAX_DOMAINS = 200_000  # beyond this, the rarest domains are pruned and domain counts are approximate
#: The safety stage's columns (`schemas/sample.py`).
_SAFETY_COLUMNS = ("blocklist", "nsfw_score", "face_bboxes")
_SAMPLE_COLUMNS = (
    "uid", "url", "caption", "caption_clean", "status", "reason", "stage", "error",
    "clip_score", "dup_group", "duplicate_of", "key",
    "caption_source", "caption_completed", "caption_pseudo", "caption_bow",
)  # fmt: skip


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

    @property
    def total(self) -> int:
        return sum(self.kept) + sum(self.other)


@dataclasses.dataclass
class FunnelStep:
    stage: str
    entering: int
    dropped: dict[str, int]  # reason → samples this stage failed or rejected

    @property
    def kept(self) -> int:
        return self.entering - sum(self.dropped.values())


@dataclasses.dataclass
class Safety:
    """What the safety stage found: counts only (a blocked sample is never shown)."""

    blocklists: dict[str, int]  # list (url, domain, md5, sha1, sha256, pdq) → samples blocked
    reasons: dict[str, int]  # blocklisted / nsfw / too_many_faces → samples
    nsfw: Histogram | None  # nsfw_score of the scored samples (kept / not kept)
    max_nsfw: float | None
    with_faces: int  # samples with at least one face box
    faces: int  # face boxes in all
    blurred: int | None  # images blurred (stats.json), None when not recorded


@dataclasses.dataclass
class Audit:
    output: str
    stats: dict[str, Any]
    config: dict[str, Any] | None
    total: int
    outcomes: Counter[tuple[str, str, str]]  # (status, stage, reason) → samples
    funnel: list[FunnelStep]
    histograms: dict[str, Histogram]
    thresholds: dict[str, list[tuple[float, str]]]
    languages: dict[str, tuple[int, int]]  # lang → (kept, not kept)
    models: dict[str, int]
    domains: dict[str, Counter[str]]  # the top domains: domain → outcome (`kept` or a reason) → samples
    domains_approximate: bool
    group_sizes: dict[int, int]  # group size → number of duplicate groups
    groups: list[list[dict[str, Any]]]  # the largest groups' rows, the kept sample first
    samples: dict[str, list[dict[str, Any]]]  # `kept` or a reason → sample rows
    thumbnails: dict[str, str]  # uid → data: URI
    rows: dict[str, dict[str, Any]]  # uid → every sample row the audit shows or links to
    warnings: list[str]
    safety: Safety | None = None  # None: the output has no safety columns set

    def status_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (status, _, _), n in self.outcomes.items():
            counts[status] += n
        return dict(sorted(counts.items()))


def audit_output(
    output: str, *, seed: int = 0, kept_samples: int = 24, per_reason: int = 6, groups: int = 6
) -> Audit:
    """Audits one output folder; raises `AuditError` when it holds no Parquet shard."""
    output = output.rstrip("/")
    shards = _shard_names(output)
    if not shards:
        raise AuditError(f"{output} holds no Parquet shards (NNNNN.parquet); is it a Winnow output?")
    stats = _read_stats(output)
    config = stats.get("config") if isinstance(stats.get("config"), dict) else None
    scan = _Scan(seed, kept_samples, per_reason)
    for shard in shards:
        scan.read_shard(output, shard)
    top_groups, group_sizes = scan.group_summary(groups)
    shown = [row for rows in scan.samples.values() for _, row in rows]
    # A removed duplicate has no image: show the kept copy (`duplicate_of`, else its group's kept
    # sample), and every row an error cites.
    targets = {
        r[c] for r in shown for c in ("duplicate_of", "dup_group") if r.get(c) and r.get("stage") == "dedup"
    }
    targets |= {uid for r in shown for uid in cited_uids(r.get("error"))}
    found = _find_rows(output, shards, targets, top_groups, seed) if targets or top_groups else []
    by_uid = {r["uid"]: r for r in [*shown, *found]}
    members: dict[int, list[dict[str, Any]]] = {}
    for row in found:
        if row.get("dup_group") is not None and row["_group_key"] in top_groups:
            members.setdefault(row["_group_key"], []).append(row)
    group_rows = [
        sorted(members[key], key=lambda r: (r["status"] != "success", r["uid"]))
        for key in top_groups
        if key in members
    ]
    with_image = [r for r in by_uid.values() if r["status"] == "success" and r.get("key")]
    return Audit(
        output=output,
        stats=stats,
        config=config,
        total=scan.total,
        outcomes=scan.outcomes,
        funnel=funnel(scan.outcomes, scan.total, stats.get("stages", {})),
        histograms=scan.histograms,
        thresholds=thresholds(config),
        languages={k: (v[0], v[1]) for k, v in sorted(scan.languages.items(), key=lambda kv: -sum(kv[1]))},
        models=dict(scan.models.most_common()),
        domains=scan.top_domains(),
        domains_approximate=scan.domains_pruned,
        group_sizes=group_sizes,
        groups=group_rows,
        samples={k: [row for _, row in v] for k, v in sorted(scan.samples.items(), key=_sample_order)},
        thumbnails=read_thumbnails(output, with_image),
        rows=by_uid,
        warnings=_check_stats(stats, scan.outcomes),
        safety=scan.safety(stats, config),
    )


def shipped_caption(row: dict[str, Any]) -> str | None:
    """The caption a kept row's tar holds (its `.txt`), as `Sample.chosen_caption` picks it."""
    return chosen_caption(row)


def cited_uids(error: str | None) -> list[str]:
    """The sample uids an error message names (a duplicate's kept copy, its closest partner)."""
    return list(dict.fromkeys(UID.findall(error or "")))


def funnel(
    outcomes: Counter[tuple[str, str, str]], total: int, stats_stages: dict[str, Any]
) -> list[FunnelStep]:
    """Input rows through each stage in pipeline order: how many entered and what each dropped."""
    dropped: dict[str, Counter[str]] = {stage: Counter() for stage in stats_stages}
    for (status, stage, reason), n in outcomes.items():
        if status not in ("success", "pending"):
            dropped.setdefault(stage or "unknown", Counter())[reason or status] += n
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    stages = sorted(dropped, key=lambda s: (order.get(s, len(STAGE_ORDER) - 1.5), s))
    steps, entering = [], total
    for stage in stages:
        step = FunnelStep(stage, entering, dict(dropped[stage].most_common()))
        steps.append(step)
        entering = step.kept
    return steps


def thresholds(config: dict[str, Any] | None) -> dict[str, list[tuple[float, str]]]:
    """The configured cut-offs to draw on each histogram, from the run's config when recorded."""
    if not config:
        return {}
    wanted = {
        "clip_score": [("embed", "min_clip_score")],
        "num_tokens": [("text", "min_words"), ("text", "max_words")],
        "short_side": [("crawl", "min_image_size")],
        "aspect_ratio": [("crawl", "max_aspect_ratio")],
    }
    found: dict[str, list[tuple[float, str]]] = {}
    for name, keys in wanted.items():
        for section, key in keys:
            value = (config.get(section) or {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value:
                found.setdefault(name, []).append((float(value), f"{section}.{key} = {value}"))
    return found


def hash64(values: list[str | None], seed: int) -> np.ndarray:
    """A seeded 64-bit hash per string (0 for null): the order of the deterministic samples."""
    return np.fromiter(
        (xxhash.xxh64_intdigest(v.encode(), seed) if v is not None else 0 for v in values),
        np.uint64,
        len(values),
    )


class _Scan:
    """One streaming pass over the Parquet shards, accumulating everything with bounded memory."""

    def __init__(self, seed: int, kept_samples: int, per_reason: int):
        self.seed, self.kept_k, self.reason_k = seed, kept_samples, per_reason
        self.total = 0
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.histograms = {
            "clip_score": Histogram.empty(-1.0, 0.025, 81),
            "num_tokens": Histogram.empty(0, 1, 64),
            "short_side": Histogram.empty(0, 32, 64),
            "aspect_ratio": Histogram.empty(1.0, 0.1, 40),
        }
        self.languages: dict[str, list[int]] = {}
        self.models: Counter[str] = Counter()
        self.domains: dict[str, Counter[str]] = {}
        self.domains_pruned = False
        self.samples: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._groups: list[np.ndarray] = []  # keys of the current shard's rows with a dup_group
        self._group_keys = np.zeros(0, np.uint64)
        self._group_rows = np.zeros(0, np.int64)
        self.blocklists: Counter[str] = Counter()
        self.nsfw = Histogram.empty(0.0, 0.025, 40)
        self.with_faces = self.faces = 0
        self.has_safety = False

    def safety(self, stats: dict[str, Any], config: dict[str, Any] | None) -> Safety | None:
        """The safety section, or None when no safety column was ever set."""
        if not self.has_safety:
            return None
        reasons = {r: n for (_, stage, r), n in self.outcomes.items() if stage == "safety"}
        found = stats.get("safety")
        summary: dict[str, Any] = found if isinstance(found, dict) else {}
        max_nsfw = ((config or {}).get("safety") or {}).get("max_nsfw")
        return Safety(
            blocklists=dict(sorted(self.blocklists.items())),
            reasons=dict(sorted(reasons.items())),
            nsfw=self.nsfw if self.nsfw.total else None,
            max_nsfw=float(max_nsfw) if isinstance(max_nsfw, int | float) else None,
            with_faces=self.with_faces,
            faces=self.faces,
            blurred=summary.get("blurred") if isinstance(summary.get("blurred"), int) else None,
        )

    def read_shard(self, output: str, shard: str) -> None:
        with _open(f"{output}/{shard}.parquet") as handle:
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            _check_winnow_columns(output, shard, names)
            if "noise_prob" in names and "noise_prob" not in self.histograms:
                self.histograms["noise_prob"] = Histogram.empty(0.0, 0.025, 41)
            wanted = {*_SAMPLE_COLUMNS, "num_tokens", "lang", "original_width", "original_height"}
            wanted |= {"clip_model", "noise_prob", *_SAFETY_COLUMNS}
            for batch in parquet.iter_batches(_BATCH_ROWS, columns=sorted(wanted & names)):
                table = _with_columns(batch, wanted)
                self._add(table, shard)
                self._add_safety(table, shard)
        self._compact_groups()

    def _add(self, batch: pa.Table, shard: str) -> None:
        self.total += batch.num_rows
        status = batch["status"]
        kept = pc.equal(status, "success").to_numpy(zero_copy_only=False)
        outcome = pc.if_else(pc.equal(status, "success"), KEPT, pc.coalesce(batch["reason"], status))
        table = pa.table(
            {
                "status": status,
                "stage": pc.fill_null(batch["stage"], ""),
                "reason": pc.fill_null(batch["reason"], ""),
                "outcome": outcome,
                "lang": pc.fill_null(batch["lang"], "(none)"),
                "model": batch["clip_model"],
                "domain": _hosts(batch["url"]),
            }
        )
        for row in table.group_by(["status", "stage", "reason"]).aggregate([([], "count_all")]).to_pylist():
            self.outcomes[(row["status"], row["stage"], row["reason"])] += row["count_all"]
        for row in table.group_by(["lang", "status"]).aggregate([([], "count_all")]).to_pylist():
            self.languages.setdefault(row["lang"], [0, 0])[row["status"] != "success"] += row["count_all"]
        for row in table.group_by(["model"]).aggregate([([], "count_all")]).to_pylist():
            if row["model"] is not None:
                self.models[row["model"]] += row["count_all"]
        # A blocked sample's host is not shown either.
        shown = table.filter(pc.not_equal(table["outcome"], BLOCKLISTED))
        for row in shown.group_by(["domain", "outcome"]).aggregate([([], "count_all")]).to_pylist():
            self.domains.setdefault(row["domain"], Counter())[row["outcome"]] += row["count_all"]
        self._prune_domains()
        for name, values in self._measures(batch).items():
            self.histograms[name].add(values, kept)
        groups = batch["dup_group"].drop_null().to_pylist()
        if groups:
            self._groups.append(hash64(groups, self.seed))
        self._sample(batch, outcome, shard)

    def _add_safety(self, batch: pa.Table, shard: str) -> None:
        """Counts per blocklist, the NSFW scores, the faces (never a row of a blocked sample)."""
        blocked = batch["blocklist"].drop_null()
        for row in pc.value_counts(blocked).to_pylist():
            self.blocklists[row["values"]] += row["counts"]
        scores = pc.cast(batch["nsfw_score"], pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        kept = pc.equal(batch["status"], "success").to_numpy(zero_copy_only=False)
        self.nsfw.add(scores, kept)
        lengths = pc.list_value_length(batch["face_bboxes"]).to_numpy(zero_copy_only=False)
        lengths = np.nan_to_num(lengths.astype(np.float64)).astype(np.int64)
        self.with_faces += int((lengths > 0).sum())
        self.faces += int(lengths.sum())
        decided = pc.sum(pc.equal(pc.fill_null(batch["stage"], ""), "safety")).as_py() or 0
        measured = (~np.isnan(scores)).any() or batch["face_bboxes"].null_count < len(batch)
        if len(blocked) or measured or decided:
            self.has_safety = True

    def _measures(self, batch: pa.Table) -> dict[str, np.ndarray]:
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
        if "noise_prob" in self.histograms:
            measures["noise_prob"] = floats("noise_prob")
        return measures

    def _sample(self, batch: pa.Table, outcome: pa.ChunkedArray, shard: str) -> None:
        """Keeps, per outcome, the rows with the smallest seeded uid hashes seen so far."""
        hashes = hash64(batch["uid"].to_pylist(), self.seed)
        encoded = pc.dictionary_encode(outcome).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        for code, name in enumerate(encoded.dictionary.to_pylist()):
            if name == BLOCKLISTED:  # counted, never shown
                continue
            k = self.kept_k if name == KEPT else self.reason_k
            index = np.flatnonzero(codes == code)
            index = index[np.argsort(hashes[index], kind="stable")[:k]]
            held = self.samples.setdefault(name, [])
            if len(held) >= k:
                index = index[hashes[index] < held[-1][0]]
            if not len(index):
                continue
            rows = batch.select(list(_SAMPLE_COLUMNS)).take(pa.array(index)).to_pylist()
            held += [(int(hashes[i]), {**row, "shard": shard}) for i, row in zip(index, rows, strict=True)]
            held.sort(key=lambda pair: pair[0])
            del held[k:]

    def _prune_domains(self) -> None:
        if len(self.domains) > _MAX_DOMAINS:
            ranked = sorted(self.domains.items(), key=lambda kv: -kv[1].total())
            self.domains = dict(ranked[: _MAX_DOMAINS // 2])
            self.domains_pruned = True

    def _compact_groups(self) -> None:
        """Folds the group keys read so far into one (key, rows) pair of arrays: 16 bytes a group."""
        if not self._groups:
            return
        keys = np.concatenate([self._group_keys, *self._groups])
        rows = np.concatenate([self._group_rows, np.ones(sum(len(g) for g in self._groups), np.int64)])
        self._group_keys, inverse = np.unique(keys, return_inverse=True)
        self._group_rows = np.bincount(inverse, weights=rows).astype(np.int64)
        self._groups = []

    def group_summary(self, top: int) -> tuple[list[int], dict[int, int]]:
        """The keys of the `top` largest duplicate groups, and group size → number of groups."""
        self._compact_groups()
        keys, sizes = self._group_keys, self._group_rows
        order = np.lexsort((keys, -sizes))[:top]
        histogram = Counter(sizes.tolist())
        return [int(keys[i]) for i in order if sizes[i] > 1], dict(sorted(histogram.items()))

    def top_domains(self, n: int = 40) -> dict[str, Counter[str]]:
        by_rows = sorted(self.domains, key=lambda d: (-self.domains[d].total(), d))[:n]
        by_dropped = sorted(self.domains, key=lambda d: (-_dropped(self.domains[d]), d))[:n]
        return {d: self.domains[d] for d in dict.fromkeys([*by_rows, *by_dropped])}


#: Columns every Winnow shard has and a download's Parquet (img2dataset's, DataComp's) lacks.
_WINNOW_COLUMNS = ("uid", "status", "stage")


def _check_winnow_columns(output: str, shard: str, names: set[str]) -> None:
    """`AuditError` when a shard's Parquet lacks Winnow's columns: the folder is a download (an
    img2dataset or DataComp pool, say), which `winnow run` curates but `winnow audit` cannot read."""
    missing = [name for name in _WINNOW_COLUMNS if name not in names]
    if missing:
        raise AuditError(
            f"{output}/{shard}.parquet lacks Winnow's column(s) {', '.join(missing)}: {output} is "
            f"not a Winnow output (a pool of downloaded shards? curate it with `winnow run --input {output} "
            "--output NEW_FOLDER`, then audit NEW_FOLDER)"
        )


def _hosts(urls: pa.ChunkedArray) -> pa.ChunkedArray:
    """The lower-cased host of each URL, `(no host)` where there is none."""
    found = pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), _HOST), "host")
    return pc.fill_null(pc.utf8_lower(found), "(no host)")


def _dropped(outcomes: Counter[str]) -> int:
    """Rejected or failed samples: neither kept nor still pending."""
    return outcomes.total() - outcomes[KEPT] - outcomes[PENDING]


def _find_rows(
    output: str, shards: list[str], uids: set[str], groups: list[int], seed: int
) -> list[dict[str, Any]]:
    """Second pass: the rows of the given uids and of the given duplicate groups (by key)."""
    found: list[dict[str, Any]] = []
    uid_set, group_keys = pa.array(sorted(uids), pa.string()), np.array(groups, dtype=np.uint64)
    for shard in shards:
        with _open(f"{output}/{shard}.parquet") as handle:
            parquet = pq.ParquetFile(handle)
            columns = sorted(set(_SAMPLE_COLUMNS) & set(parquet.schema_arrow.names))
            for raw in parquet.iter_batches(_BATCH_ROWS, columns=columns):
                batch = _with_columns(raw, set(_SAMPLE_COLUMNS))
                keys = hash64(batch["dup_group"].to_pylist(), seed)
                in_group = np.isin(keys, group_keys) & pc.is_valid(batch["dup_group"]).to_numpy(False)
                match = pc.or_(pc.is_in(batch["uid"], value_set=uid_set), pa.array(in_group))
                index = np.flatnonzero(match.to_numpy(zero_copy_only=False))
                for i, row in zip(index, batch.take(pa.array(index)).to_pylist(), strict=True):
                    found.append({**row, "shard": shard, "_group_key": int(keys[i])})
    return found


def read_thumbnails(output: str, rows: list[dict[str, Any]], size: int = 128) -> dict[str, str]:
    """uid → JPEG data URI of a `size` px thumbnail, reading only these rows' images from the tars."""
    wanted: dict[str, dict[str, str]] = {}
    for row in rows:
        wanted.setdefault(row["shard"], {})[row["key"]] = row["uid"]
    thumbnails: dict[str, str] = {}
    for shard, keys in sorted(wanted.items()):
        path = f"{output}/{shard}.tar"
        if not FileSystems.exists(path):
            continue
        for key, _, data in read_tar_images(path, set(keys)):
            uri = thumbnail_uri(data, size)
            if uri:
                thumbnails[keys[key]] = uri
    return thumbnails


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


def _with_columns(batch: pa.RecordBatch, names: set[str]) -> pa.Table:
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


def _shard_names(output: str) -> list[str]:
    try:
        return shard_stems(output)
    except (OSError, ValueError) as err:  # Beam raises its own errors for unreachable filesystems
        raise AuditError(f"cannot list {output}: {err}") from err


def _read_stats(output: str) -> dict[str, Any]:
    path = f"{output}/stats.json"
    if not FileSystems.exists(path):
        return {}
    with _open(path) as handle:
        try:
            stats = json.loads(handle.read())
        except ValueError as err:
            raise AuditError(f"{path} is not valid JSON: {err}") from err
    return stats if isinstance(stats, dict) else {}


def _open(path: str) -> Any:
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _sample_order(item: tuple[str, Any]) -> tuple[int, str]:
    return ((item[0] != KEPT) + (item[0] != PENDING), item[0])


def _check_stats(stats: dict[str, Any], outcomes: Counter[tuple[str, str, str]]) -> list[str]:
    """Disagreements between stats.json and the Parquet rows (a partial copy, a rewritten shard)."""
    if "status" not in stats:
        return ["stats.json is missing: counts come from the Parquet files alone"]
    counted: Counter[str] = Counter()
    for (status, _, _), n in outcomes.items():
        counted[status] += n
    if dict(counted) != {k: v for k, v in stats["status"].items() if v}:
        return [f"stats.json counts {stats['status']} differ from the Parquet rows {dict(counted)}"]
    return []
