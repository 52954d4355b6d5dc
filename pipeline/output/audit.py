"""The audit of a finished output: what happened to every sample, as numbers `pipeline.output.report` draws.

In: an output folder (local, `s3://`, `gs://`) with `NNNNN.parquet`, `NNNNN.tar`, `stats.json`
and, written by the job, `audit.json`. Out: an `Audit` with counts per status, stage and reason,
the funnel, histograms, language, model and domain counts, duplicate-group sizes, and a few sample
rows per outcome with thumbnails.

The numbers over the rows are the job's (`transforms/write/audit.py`, computed on the workers
into `audit.json`): this module reads that one small file and `stats.json`, never a row. An output
without `audit.json` (written before it existed), or whose shards no longer match it (a partial
copy, a rewritten shard: their count or bytes differ), gets the same aggregates from the same
transform run in a local pipeline over its shards, so the page is the same either way.

A sample's caption is shown as it was shipped (`shipped_caption`, the tar's `.txt`), and a removed
duplicate with the kept copy it cites: every uid an error names is looked up, so the report can
show that row rather than cite a uid the page never shows. `pending` rows (no stage decided them)
are their own category, never counted as rejected or failed. Galleries keep the `k` rows with the
smallest seeded hash of their uid (the same rows in every output that holds them); domain counts
are exact (counted per domain on the workers); the largest duplicate groups show at most
`AuditSettings.group_members` members each.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections import Counter
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import STAGE_NAMES
from pipeline.output.errors import AuditError
from schemas.layout import SHARD_FILE
from schemas.sample import chosen_caption
from transforms.write.audit import AUDIT_FILE, AUDIT_VERSION, AuditShards, missing_columns
from transforms.write.auditscan import (
    BLOCKLISTED,
    KEPT,
    PENDING,
    UID,
    AuditSettings,
    Histogram,
    cited_uids,
    hash64,
    thumbnail_uri,
)

__all__ = [
    "BLOCKLISTED", "KEPT", "PENDING", "STAGE_ORDER", "UID", "Audit", "AuditError", "FunnelStep",
    "Histogram", "Safety", "audit_output", "cited_uids", "funnel", "hash64", "shipped_caption",
    "thresholds", "thumbnail_uri",
]  # fmt: skip

LOG = logging.getLogger(__name__)
STAGE_ORDER = ("read", *STAGE_NAMES, "write")


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
    #: the size of each group in `groups` (it shows at most `AuditSettings.group_members` rows)
    group_members: list[int] = dataclasses.field(default_factory=list)

    def status_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (status, _, _), n in self.outcomes.items():
            counts[status] += n
        return dict(sorted(counts.items()))


def audit_output(
    output: str,
    *,
    settings: AuditSettings | None = None,
    options: PipelineOptions | None = None,
) -> Audit:
    """Audits one output folder; raises `AuditError` when it holds no Parquet shard or is not a
    Winnow output. `options`: the Beam options (filesystem keys) of the local pipeline that
    computes the aggregates of an output without a current `audit.json`."""
    output = output.rstrip("/")
    settings = settings or AuditSettings()
    shards = _shard_files(output)
    if not shards:
        raise AuditError(f"{output} holds no Parquet shards (NNNNN.parquet); is it a Winnow output?")
    stats = _read_stats(output)
    config = stats.get("config") if isinstance(stats.get("config"), dict) else None
    body = _recorded(output, shards, settings)
    if body is None:
        body = compute_audit(output, sorted(shards), settings, options)
    outcomes: Counter[tuple[str, str, str]] = Counter()
    for status, stage, reason, n in body["outcomes"]:
        outcomes[(status, stage, reason)] += n
    samples = {k: v for k, v in sorted(body["samples"].items(), key=_sample_order)}
    return Audit(
        output=output,
        stats=stats,
        config=config,
        total=body["total"],
        outcomes=outcomes,
        funnel=funnel(outcomes, body["total"], stats.get("stages", {})),
        histograms={name: _histogram(h) for name, h in body["histograms"].items()},
        thresholds=thresholds(config),
        languages={
            lang: (kept, other)
            for lang, kept, other in sorted(body["languages"], key=lambda r: -(r[1] + r[2]))
        },
        models=dict(Counter(dict(body["models"])).most_common()),
        domains={domain: Counter(dict(outcomes_)) for domain, outcomes_ in body["domains"]},
        domains_approximate=False,
        group_sizes={size: n for size, n in body["group_sizes"]},
        groups=[group["rows"] for group in body["groups"]],
        samples=samples,
        thumbnails=body["thumbnails"],
        rows={row["uid"]: row for row in body["rows"]},
        warnings=_check_stats(stats, outcomes),
        safety=_safety(body["safety"], stats, config, outcomes),
        group_members=[group["size"] for group in body["groups"]],
    )


def compute_audit(
    output: str, shards: list[str], settings: AuditSettings, options: PipelineOptions | None = None
) -> dict[str, Any]:
    """The body of `audit.json` for `shards` of `output`, from the job's own transform run in a
    local pipeline (for an output written without it)."""
    _check_winnow_columns(output, shards[0])
    with tempfile.TemporaryDirectory(prefix="winnow-audit-") as folder:
        target = f"{folder}/{AUDIT_FILE}"
        with beam.Pipeline(options=options or PipelineOptions([])) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(shards)
                | "Audit" >> AuditShards(output, settings)
                | "Keep" >> beam.Map(_write_json, target)
            )
        with open(target, encoding="utf-8") as handle:
            body: dict[str, Any] = json.load(handle)
    return body


def _write_json(body: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(body, handle)


def _recorded(output: str, shards: dict[str, int], settings: AuditSettings) -> dict[str, Any] | None:
    """The job's `audit.json`, or None when there is none, or it was made with other settings or
    another layout, or the shards are no longer those it counted (their number or bytes differ)."""
    path = f"{output}/{AUDIT_FILE}"
    if not FileSystems.exists(path):
        return None
    with _open(path) as handle:
        try:
            body = json.loads(handle.read())
        except ValueError:
            LOG.warning("%s is not valid JSON: the audit is computed from the shards", path)
            return None
    current = {"count": len(shards), "parquet_bytes": sum(shards.values())}
    if not isinstance(body, dict) or body.get("version") != AUDIT_VERSION:
        return None
    if body.get("settings") != dataclasses.asdict(settings):
        return None
    if body.get("shards") != current:
        LOG.warning("%s counted other shards than %s holds now: the audit is computed again", path, output)
        return None
    return body


def _histogram(found: dict[str, Any]) -> Histogram:
    return Histogram(found["lo"], found["width"], list(found["kept"]), list(found["other"]))


def _safety(
    found: dict[str, Any], stats: dict[str, Any], config: dict[str, Any] | None,
    outcomes: Counter[tuple[str, str, str]],
) -> Safety | None:  # fmt: skip
    """The safety section, or None when no safety column was ever set."""
    if not found["present"]:
        return None
    reasons = {r: n for (_, stage, r), n in outcomes.items() if stage == "safety"}
    recorded = stats.get("safety")
    summary: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    max_nsfw = ((config or {}).get("safety") or {}).get("max_nsfw")
    nsfw = _histogram(found["nsfw"])
    return Safety(
        blocklists=dict(found["blocklists"]),
        reasons=dict(sorted(reasons.items())),
        nsfw=nsfw if nsfw.total else None,
        max_nsfw=float(max_nsfw) if isinstance(max_nsfw, int | float) else None,
        with_faces=found["with_faces"],
        faces=found["faces"],
        blurred=summary.get("blurred") if isinstance(summary.get("blurred"), int) else None,
    )


def shipped_caption(row: dict[str, Any]) -> str | None:
    """The caption a kept row's tar holds (its `.txt`), as `Sample.chosen_caption` picks it."""
    return chosen_caption(row)


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


def _shard_files(output: str) -> dict[str, int]:
    """`NNNNN` → bytes of every `NNNNN.parquet` of the folder (one listing, no file opened)."""
    try:
        matched = FileSystems.match([f"{output}/*.parquet"])[0].metadata_list
    except (OSError, ValueError) as err:  # Beam raises its own errors for unreachable filesystems
        raise AuditError(f"cannot list {output}: {err}") from err
    files = {m.path.rstrip("/").rsplit("/", 1)[-1]: m.size_in_bytes for m in matched}
    return {name.removesuffix(".parquet"): size for name, size in files.items() if SHARD_FILE.match(name)}


def _check_winnow_columns(output: str, shard: str) -> None:
    """`AuditError` when a shard's Parquet lacks Winnow's columns: the folder is a download (an
    img2dataset or DataComp pool, say), which `winnow run` curates but `winnow audit` cannot read."""
    import pyarrow.parquet as pq

    with _open(f"{output}/{shard}.parquet") as handle:
        missing = missing_columns(pq.ParquetFile(handle).schema_arrow.names)
    if missing:
        raise AuditError(
            f"{output}/{shard}.parquet lacks Winnow's column(s) {', '.join(missing)}: {output} is "
            f"not a Winnow output (a pool of downloaded shards? curate it with `winnow run --input {output} "
            "--output NEW_FOLDER`, then audit NEW_FOLDER)"
        )


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
