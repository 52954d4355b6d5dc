"""Runs one Winnow job end to end: check inputs, build, run, index the kept samples, complete the stats,
write the audit report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from pipeline.build import BATCH_STAGES, PoolSource, build_pipeline
from pipeline.config import ConfigError, RunConfig
from pipeline.lock import OutputLock, check_not_locked
from pipeline.output.errors import AuditError, IndexBudgetError, ReportError, RowsLostError
from pipeline.output.index import (
    INDEX_DIR,
    IndexSummary,
    build_output_index,
    index_files,
    index_outcome,
    remove_output_index,
)
from pipeline.output.indexjob import BuildOutputIndex, IndexJob
from pipeline.output.report import write_report
from pipeline.progress import ProgressPrinter
from pipeline.runner import is_local, make_pipeline, translated_steps
from pipeline.shuffles import NAMESPACE as SHUFFLE_NAMESPACE
from pipeline.shuffles import group_maxima, measure_shuffles, shuffle_table, stage_msecs
from pipeline.stores import check_bucket, check_writable
from schemas.layout import STATS_FILE
from schemas.pools import DATACOMP_EMBEDDINGS, available_embeddings, base_name, datacomp_embeddings
from transforms.common.errors import InputError
from transforms.common.files import write_atomically
from transforms.common.manifest import (
    claim_output,
    complete_output,
    inside,
    normalized,
    read_manifest,
    record_files,
    require_complete,
    unclaim_output,
)
from transforms.common.progress import NAMESPACE
from transforms.crawl.metadata import metadata_files, npz_arrays, npz_path
from transforms.crawl.pool import clip_retrieval_partitions
from transforms.crawl.stage import failure_alarm
from transforms.read.lists import check_input, detect_format, expand_inputs, holds_archives, is_directory
from transforms.safety import SafetyConfig
from transforms.safety.config import is_head
from transforms.write.shards import ROWS_LOST, ROWS_READ
from transforms.write.uids import PARTS_DIR, uids_path, write_uids_file

LOG = logging.getLogger(__name__)
_CHECKED_FILES = 20
_GIB = 1 << 30


def run_job(
    config: RunConfig,
    inputs: Sequence[str],
    output_dir: str,
    runner: str = "local",
    beam_args: Sequence[str] = (),
    workers: int | None = None,
    show_progress: bool = False,
    wait: bool = True,
    retry_from: str | None = None,
) -> dict[str, Any]:
    """Runs the pipeline and returns the stats dict (also written to `<output>/stats.json`).

    Raises `InputError` / `ConfigError` / `EmbedError` before anything runs when the input or the
    model settings are unusable. With the embed stage and `output.index`, the kept samples' image
    embeddings are then indexed into `<output>/index/` and `stats["index"]` says how. Last, the audit
    report is written to `<output>/report.html`; the returned stats name it under `report`.

    `retry_from` (`--retry-failed`): a previous output whose rows are the input; only its
    transient crawl failures are fetched again (`transforms/read/previous.py`), `inputs` are not read.
    """
    # Filesystem options (S3 endpoint and keys, GCP project) apply to the checks made here too.
    options = PipelineOptions(list(beam_args))
    FileSystems.set_options(options)
    # Beam's --dry_run (DataflowRunner): translate the job, run nothing, touch no remote store.
    dry_run = bool(options.view_as(TestOptions).dry_run) and not is_local(runner)
    if not dry_run:
        for path in [*inputs, *([retry_from] if retry_from else []), output_dir]:
            check_bucket(path, options)
    output_dir = output_dir.rstrip("/")
    if retry_from is not None:
        retry_from = retry_from.rstrip("/")
        check_retry_source(retry_from, output_dir, config)
        files: list[str] = []
    else:
        files = expand_inputs(inputs)
        check_no_overlap(inputs, files, output_dir)
        for path in files[:_CHECKED_FILES]:
            check_input(path, config.input)
    if config.output.uids_file:
        check_uids_file(output_dir, config.output.uids_file)
    if "balance" in config.run.stages and config.balance.entries != "auto":
        check_entries(str(config.balance.entries))
    if "safety" in config.run.stages:
        from transforms.embed.clip import model_identity  # the model code loads only for runs that need it

        check_safety(config.safety, model_identity(config.embed) if is_head(config.safety.nsfw_model) else "")
    local = is_local(runner)
    if local and "embed" in config.run.stages:
        from transforms.embed.clip import resolve_device

        resolve_device(config.embed.device)  # `cuda` on a machine without it: say so before starting
    progress_dir = tempfile.mkdtemp(prefix="winnow-progress-") if local and config.run.progress else None
    run_stages = [s for s in config.run.stages if retry_from is None or s not in BATCH_STAGES]
    stages = ["read", *run_stages, "write"]
    pipeline = make_pipeline(runner, beam_args, workers)
    # The files are checked here but matched again when the job runs: the job graph holds the
    # patterns, not a list of every file.
    archives = holds_archives(files, config.input)
    pool = previous_pool(retry_from) if retry_from is not None else pool_source(files, config)
    stats_of_job = build_pipeline(
        pipeline,
        config,
        [] if retry_from else inputs,
        output_dir,
        progress_dir,
        retry_from,
        archives,
        pool,
    )
    if not wait:  # no launcher waits: the job itself indexes, reports and completes the output
        _ = stats_of_job | "FinishOutput" >> FinishOutput(
            config, output_dir, _job_fields(files, pool, retry_from)
        )
    if config.run.measure_shuffles:
        measure_shuffles(pipeline)
    if dry_run:
        graph_bytes = len(pipeline.to_runner_api().SerializeToString())
        steps = translated_steps(pipeline.run())
        return {
            "dry_run": True,
            "runner": runner,
            "stages": stages,
            "steps": steps,
            "graph_bytes": graph_bytes,
        }
    # Everything is checked and the job is built: only now is the folder locked and claimed.
    try:
        with claimed_output(output_dir, options) as claim:
            return _run_claimed(
                claim, pipeline, config, files, output_dir, runner, beam_args, workers, show_progress,
                wait, progress_dir, stages, pool, retry_from,
            )  # fmt: skip
    finally:
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)


def _run_claimed(
    claim: Claim,
    pipeline: Any,
    config: RunConfig,
    files: list[str],
    output_dir: str,
    runner: str,
    beam_args: Sequence[str],
    workers: int | None,
    show_progress: bool,
    wait: bool,
    progress_dir: str | None,
    stages: list[str],
    pool: PoolSource | None,
    retry_from: str | None,
) -> dict[str, Any]:
    """`run_job` once the output is locked and claimed: runs the job, then writes the index, the
    report and, last, the manifest's `complete`."""
    local = is_local(runner)
    claim.started = True  # from here on the job may write
    if not wait:
        # Submitted, not waited for (a Flex Template launcher must return): the job writes the
        # shards, stats.json, the index and the report and completes the output (`FinishOutput`);
        # Beam's counters, which only a launcher reads, are not added to stats.json.
        submitted = pipeline.run()
        if local:  # the local runner runs the job in this process
            submitted.wait_until_finish()
        job_id = (
            getattr(submitted, "job_id", lambda: None)() if getattr(submitted, "has_job", False) else None
        )
        return {"submitted": True, "runner": runner, "stages": stages, "job_id": job_id}
    began = time.monotonic()
    if progress_dir and show_progress:
        with ProgressPrinter(progress_dir, stages):
            result = pipeline.run()
            result.wait_until_finish()
    else:
        result = pipeline.run()
        result.wait_until_finish()
    elapsed = time.monotonic() - began

    stats_path = f"{output_dir}/{STATS_FILE}"
    with FileSystems.open(stats_path) as handle:
        stats: dict[str, Any] = json.loads(handle.read())
    stats.update(_job_fields(files, pool, retry_from))
    stats["duration_s"] = round(elapsed, 3)
    stats["samples_per_s"] = round(stats["samples"] / elapsed, 1) if elapsed else None
    stats["metrics"] = _counters(result)
    if config.run.measure_shuffles:
        stats["shuffles"] = shuffle_table(_counters(result, SHUFFLE_NAMESPACE), group_maxima(result))
        stats["step_msecs"] = stage_msecs(result)
    return finish_output(
        config,
        output_dir,
        stats,
        lambda budget: build_output_index(output_dir, budget, runner, beam_args, workers),
    )


def finish_output(
    config: RunConfig, output_dir: str, stats: dict[str, Any], index: Callable[[int], IndexSummary | None]
) -> dict[str, Any]:
    """What follows a finished job, in the launcher that waited for it (`winnow run`) or as the
    job's own last step (`FinishOutput`, `--no-wait`): completes `stats` (the job's stats.json
    and what the caller adds) with the config and the alarm, checks that no row was lost, writes
    the uids file, the index (`index(budget)`: the job that builds it, or its outcome when the job
    has run; `_index_output`) and the report, and last marks the manifest `complete`."""
    stats_path = f"{output_dir}/{STATS_FILE}"
    stats["config"] = config.to_dict()
    alarm = failure_alarm(stats, config.crawl.max_failure_rate)  # the crawl's images, page mode's pages
    if alarm:
        stats["alarm"] = alarm
        LOG.error("ALARM: %s", alarm)
    write_atomically(stats_path, json.dumps(stats, indent=2, sort_keys=True).encode())
    check_rows(stats, output_dir)
    if config.output.uids_file:
        stats["uids_file"] = write_uids_file(output_dir, config.output.uids_file)
        write_atomically(stats_path, json.dumps(stats, indent=2, sort_keys=True).encode())
    summary = _index_output(config, output_dir, index)
    if summary is not None:
        stats["index"] = {"type": summary.type, "count": summary.count, "dim": summary.dim}
        write_atomically(stats_path, json.dumps(stats, indent=2, sort_keys=True).encode())
        record_files(output_dir, [f"{INDEX_DIR}/{name}" for name in index_files(summary.type)])
    stats["report"] = _write_report(output_dir, stats["samples"])
    complete_output(output_dir)  # last: `complete` means the index and the report are there too
    return stats


def _job_fields(files: Sequence[str], pool: PoolSource | None, retry_from: str | None) -> dict[str, Any]:
    """stats.json's entries known before the job: the input files' count, the pool read, the
    output retried."""
    fields: dict[str, Any] = {"input_files": len(files)}
    if pool is not None:  # what a retry of this output needs to know
        fields[POOL_KEY] = {
            "embeddings": pool.embeddings,
            "clip_retrieval": pool.clip_retrieval,
            "metadata": pool.metadata,
        }
    if retry_from is not None:
        fields["retried_from"] = retry_from
    return fields


def _wants_index(config: RunConfig) -> bool:
    return bool(config.output.index) and "embed" in config.run.stages


class FinishOutput(beam.PTransform):
    """The run's stats (the output of `build_pipeline`) → the steps `finish_output` takes, in the
    job itself, for a run no launcher waits for (`--no-wait`, a Flex Template): once the shards
    and stats.json are written, the index is built by the same job (`BuildOutputIndex` on the
    job's workers; its merge worker needs `output.index_memory_gb`), then one worker writes the
    uids file and the report (rendered from audit.json) and completes the manifest."""

    def __init__(self, config: RunConfig, output_dir: str, fields: dict[str, Any]):
        super().__init__()
        self._config = config
        self._output_dir = output_dir
        self._fields = fields

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        job = None
        done = stats
        if _wants_index(self._config):
            job = IndexJob(self._output_dir, _index_budget(self._config), uuid.uuid4().hex)
            done = stats | "Index" >> BuildOutputIndex(job)
        return done | "Finish" >> beam.Map(_finish_in_job, self._config, self._output_dir, self._fields, job)


def _finish_in_job(
    _: Any, config: RunConfig, output_dir: str, fields: dict[str, Any], job: IndexJob | None
) -> str:
    """`FinishOutput`'s last step, on one worker; returns the output folder."""
    with FileSystems.open(f"{output_dir}/{STATS_FILE}") as handle:
        stats: dict[str, Any] = json.loads(handle.read())
    stats.update(fields)

    def outcome(_: int) -> IndexSummary | None:
        return None if job is None else index_outcome(job)

    finish_output(config, output_dir, stats, outcome)
    return output_dir


@dataclasses.dataclass
class Claim:
    """An output folder a run holds; `started` once the run may have written into it."""

    started: bool = False


@contextlib.contextmanager
def claimed_output(output_dir: str, options: PipelineOptions) -> Iterator[Claim]:
    """Creates a local output folder, holds its lock (`pipeline/lock.py`) and claims it
    (`claim_output`) for the block, releasing the lock on every exit path. If the block fails
    before it sets `Claim.started`, the claim is undone (the previous manifest back, or none) and
    a folder this call created is removed: a run refused at its start leaves nothing behind."""
    created = False
    if FileSystems.get_scheme(output_dir) in (None, "file"):
        created = _make_local_folder(output_dir)
    claim = Claim()
    try:
        with OutputLock(output_dir, options):
            check_writable(output_dir)
            previous = read_manifest(output_dir)
            claim_output(output_dir)
            try:
                yield claim
            except BaseException:
                if not claim.started:
                    unclaim_output(output_dir, previous)
                raise
    except BaseException:
        if created and not claim.started:
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)  # only if empty
        raise


#: stats.json entry of a run that read a pool of downloaded shards.
POOL_KEY = "pool"


def pool_source(files: Sequence[str], config: RunConfig) -> PoolSource | None:
    """How the run reads its pool, or None when no input is a pool shard (`*.tar`).

    With the embed stage, the first shard's siblings (or, with `input.metadata`, the first
    metadata file's `.npz`) say which models' embeddings the pool carries: the configured model's
    are reused; only other models' is a `ConfigError` naming both, unless `embed.recompute`."""
    shards = [path for path in files if detect_format(path, config.input.input_format) == "webdataset"]
    metadata = config.input.metadata or None
    if not shards:
        if metadata:
            raise ConfigError(
                f"input.metadata: {metadata} is joined to a pool's shards, but no input is a *.tar"
            )
        return None
    first_metadata = check_metadata(metadata) if metadata else None
    if "embed" not in config.run.stages or config.embed.recompute:
        return PoolSource(None, metadata=metadata)
    from transforms.embed.clip import model_identity

    wanted = model_identity(config.embed)
    if config.input.embeddings:
        found = {config.input.embeddings_model: config.input.embeddings}
        check_clip_retrieval(config.input.embeddings)
    elif first_metadata:
        found = metadata_embeddings(first_metadata, wanted)
    else:
        found = available_embeddings(shards[0])
    if not found:
        return PoolSource(None, metadata=metadata)
    if wanted in found:
        return PoolSource(wanted, config.input.embeddings or None, metadata)
    raise ConfigError(
        f"embed.model: the pool's embeddings ({found[sorted(found)[0]]}) were made by "
        f"{', '.join(sorted(found))}, not by {wanted}; set embed.model and embed.pretrained to "
        "the pool's model, or embed.recompute: true to embed every image again"
    )


def check_metadata(pattern: str) -> str:
    """`InputError` unless `pattern` (`input.metadata`) names Parquet files with a `uid` column
    (the first files are checked; each is checked again when the job reads it); returns the first."""
    files = metadata_files(pattern)
    if not files:
        raise InputError(f"input.metadata: no Parquet files match '{pattern}'")
    for path in files[:_CHECKED_FILES]:
        try:
            with FileSystems.open(path) as handle:
                names = pq.ParquetFile(handle).schema_arrow.names
        except (OSError, pa.ArrowException) as err:
            raise InputError(
                f"input.metadata: {path} is not a Parquet file Winnow can read ({err})"
            ) from None
        if "uid" not in names:
            raise InputError(f"input.metadata: {path} has no 'uid' column to join the pool's samples by")
    return files[0]


def metadata_embeddings(parquet: str, wanted: str) -> dict[str, str]:
    """Identity → `.npz` of the DataComp embeddings beside the metadata file `parquet`; a
    `ConfigError` when it has none and `wanted` is one of DataComp's models (whose embeddings
    `download_upstream.py --download_npz` fetches)."""
    npz = npz_path(parquet)
    if not FileSystems.exists(npz):
        if datacomp_embeddings(wanted) is None:
            return {}
        raise ConfigError(
            f"input.metadata: {parquet} has no {base_name(npz)} beside it, so {wanted}'s embeddings "
            "cannot be reused: fetch them (DataComp's download_upstream.py --download_npz), or set "
            "embed.recompute: true to embed every image again"
        )
    names = npz_arrays(npz)
    return {e.identity: npz for e in DATACOMP_EMBEDDINGS if {e.image_key, e.text_key} <= names}


def check_clip_retrieval(folder: str) -> None:
    """`InputError` unless `folder` holds a clip-retrieval output: its partitions' three files."""
    parts = clip_retrieval_partitions(folder)
    if not parts:
        raise InputError(
            f"input.embeddings: {folder} has no metadata/metadata_*.parquet (clip-retrieval's output)"
        )
    for part in parts:
        for path in part[1:]:
            if not FileSystems.exists(path):
                raise InputError(f"input.embeddings: {path} is missing beside {part[0]}")


def check_entries(path: str) -> None:
    """`ConfigError` naming the file and line of a balance entries file that cannot be used."""
    from transforms.balance.entries import EntriesError, read_entries

    try:
        read_entries(path)
    except EntriesError as err:
        raise ConfigError(str(err)) from None


def check_safety(config: SafetyConfig, identity: str) -> None:
    """`ConfigError` naming the file and line of a blocklist entry that is not one, or the model
    or detector that cannot be loaded, or a CLIP head fitted to another model than `identity`
    (the run's embedding model), before anything runs."""
    from transforms.safety.blocklists import BlocklistError, read_blocklists
    from transforms.safety.faces import FaceDetector, FaceError
    from transforms.safety.head import HeadError, load_head
    from transforms.safety.nsfw import model_path

    try:
        read_blocklists(config)
    except BlocklistError as err:
        raise ConfigError(f"safety: {err}") from None
    if config.detector is not None:
        try:
            FaceDetector(config.detector)
        except FaceError as err:
            raise ConfigError(str(err)) from None
    if is_head(config.nsfw_model):
        try:
            head = load_head(str(config.nsfw_model))
        except HeadError as err:
            raise ConfigError(str(err)) from None
        if head.clip_model != identity:
            raise ConfigError(
                f"safety.nsfw_model: the CLIP head {config.nsfw_model} reads {head.clip_model} "
                f"embeddings, but this run embeds with {identity}"
            )
    elif config.nsfw_model is not None and not FileSystems.exists(model_path(config.nsfw_model)):
        raise ConfigError(f"safety.nsfw_model: no ONNX file at {config.nsfw_model}")


def check_uids_file(output_dir: str, uids_file: str) -> None:
    """`ConfigError` when `output.uids_file` names a file outside the output that exists already:
    Winnow writes into the output folder, or a new file, and overwrites nothing it did not write."""
    path, inside = uids_path(output_dir, uids_file)
    if inside and uids_file.startswith(f"{PARTS_DIR}/"):
        raise ConfigError(
            f"output.uids_file: {uids_file} is inside {PARTS_DIR}/, where the shards' parts of it go; "
            "name another file"
        )
    if not inside and FileSystems.exists(path):
        raise ConfigError(
            f"output.uids_file: {path} exists; name a new file, or one inside the output folder"
        )


def previous_pool(previous: str) -> PoolSource | None:
    """The pool a previous output read (its stats.json), for `--retry-failed` on it."""
    with FileSystems.open(f"{previous}/{STATS_FILE}") as handle:
        recorded = json.loads(handle.read()).get(POOL_KEY)
    if not isinstance(recorded, dict):
        return None
    return PoolSource(recorded.get("embeddings"), recorded.get("clip_retrieval"), recorded.get("metadata"))


def check_rows(stats: dict[str, Any], output_dir: str) -> None:
    """`RowsLostError` when the shards do not hold exactly the rows read (stats.json's
    `rows_lost`, set by the job): stages never drop a row, so only the runner can have."""
    lost = stats.get(ROWS_LOST)
    if not lost:
        return
    read, written = stats[ROWS_READ], stats["samples"]
    what = f"lost {lost}; the shards are incomplete" if lost > 0 else f"wrote {-lost} twice"
    raise RowsLostError(
        f"{output_dir}: {read} rows were read and {written} written: the runner {what} "
        f"(stats.json: {ROWS_READ}, {ROWS_LOST})"
    )


def check_no_overlap(patterns: Sequence[str], files: Sequence[str], output_dir: str) -> None:
    """`InputError` when the output folder is an input, holds an input or lies inside an input
    folder: the run would overwrite or delete the lists it reads, or read its own shards."""
    output = normalized(output_dir)
    for path in files:
        if inside(normalized(path), output):
            raise InputError(f"--output {output_dir} holds the input file {path}; write to another folder")
    for pattern in patterns:
        base = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        if is_directory(pattern):
            folder = pattern
        elif base != pattern:  # a glob: the folder it starts in
            folder = posixpath.dirname(base) or "."
        else:
            continue
        if inside(output, normalized(folder)):
            raise InputError(
                f"--output {output_dir} is inside the input folder {pattern}; write to another folder"
            )


def check_retry_source(previous: str, output_dir: str, config: RunConfig) -> None:
    """`InputError` unless `previous` is a finished output apart from `output_dir`, made with the
    same settings as `config` wherever a setting changes results."""
    old, new = normalized(previous), normalized(output_dir)
    if inside(old, new) or inside(new, old):
        raise InputError(
            f"--retry-failed {previous}: write the retry to a folder outside it (not {output_dir})"
        )
    check_not_locked(previous, "--retry-failed")  # a run writing it now: its rows are not settled
    require_complete(previous)
    with FileSystems.open(f"{previous}/{STATS_FILE}") as handle:
        before = json.loads(handle.read()).get("config")
    if not isinstance(before, dict):
        raise InputError(f"--retry-failed {previous}: its {STATS_FILE} records no config")
    changed = config_changes(before, config.to_dict())
    if changed:
        listed = ", ".join(f"{key} ({old!r} -> {new!r})" for key, old, new in changed[:5])
        raise InputError(
            f"--retry-failed {previous}: the config differs where it changes results: {listed}; "
            "a retry must use the previous run's settings (run from the input lists to apply new ones)"
        )


#: Settings that change how fast or politely a run goes, never what it writes: a retry may change them.
RETRY_MAY_CHANGE = frozenset(
    {
        "run.progress",
        "run.measure_shuffles",
        "text.repeated_urls_in_memory",
        "text.boilerplate_in_memory",
        "crawl.thread_count",
        "crawl.timeout",
        "crawl.deadline",
        "crawl.retries",
        "crawl.max_per_host",
        "crawl.min_host_delay",
        "crawl.max_crawl_delay",
        "crawl.robots_cache_ttl",
        "crawl.max_failure_rate",
        "embed.device",
        "embed.batch_size",
        "embed.accelerator",
    }
)


def config_changes(
    before: dict[str, Any], after: dict[str, Any], where: str = ""
) -> list[tuple[str, Any, Any]]:
    """(key, old, new) of every setting that differs and is not in `RETRY_MAY_CHANGE`."""
    changes = []
    for key in sorted(set(before) | set(after)):
        name = f"{where}.{key}" if where else key
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, name)
        elif old != new and name not in RETRY_MAY_CHANGE:
            changes.append((name, old, new))
    return changes


def _make_local_folder(output_dir: str) -> bool:
    """Creates the output folder if it does not exist; returns whether it did."""
    if os.path.isdir(output_dir):
        return False
    try:
        os.makedirs(output_dir)
    except FileExistsError:
        if not os.path.isdir(output_dir):
            raise InputError(f"output '{output_dir}' is a file, not a folder") from None
        return False  # created meanwhile by another process
    except OSError as err:
        raise InputError(f"output '{output_dir}' cannot be created: {err.strerror or err}") from err
    return True


def _write_report(output_dir: str, samples: int) -> str | None:
    """The audit report of the finished output. A report the filesystem refuses (a full disk) fails
    the run with `ReportError`: the output is not complete without it, and the message says so."""
    if samples == 0:
        LOG.warning("no audit report: the input held no rows, so the output has nothing to report")
        return None
    try:
        return write_report(output_dir)
    except AuditError as err:
        LOG.warning("audit report not written (`winnow audit %s` retries): %s", output_dir, err)
        return None
    except OSError as err:
        raise ReportError(
            f"the audit report could not be written to {output_dir}: {err.strerror or err}; the "
            f"shards and {STATS_FILE} are written but the output is not complete: fix that and run "
            "the same command again"
        ) from err


def _index_budget(config: RunConfig) -> int:
    return int(config.output.index_memory_gb * _GIB)


def _index_output(
    config: RunConfig, output_dir: str, build: Callable[[int], IndexSummary | None]
) -> IndexSummary | None:
    """Writes `<output>/index/` when asked for and the run embedded, with `build(budget)`: a
    second Beam job on the run's runner and options, or the outcome of the run's own job's index
    steps (`FinishOutput`); otherwise removes an older index."""
    if not _wants_index(config):
        remove_output_index(output_dir)
        return None
    budget = _index_budget(config)
    started = time.monotonic()
    try:
        summary = build(budget)
    except IndexBudgetError as err:
        raise ConfigError(
            f"output.index_memory_gb={config.output.index_memory_gb}: {err} "
            "(the shards and stats.json are written; only the index is missing)"
        ) from err
    if summary is not None:
        LOG.info("index: %s of %d samples in %.1fs", summary.type, summary.count, time.monotonic() - started)
    return summary


def _counters(result: Any, namespace: str = NAMESPACE) -> dict[str, int]:
    """Beam counters of `namespace` (`winnow`: `<stage>/total`, …) as the runner reports them."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except (NotImplementedError, AttributeError):  # some runners report no metrics
        return {}
    totals: dict[str, int] = {}
    for counter in queried["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (counter.committed or 0)
    return dict(sorted(totals.items()))
