"""Writes shards: WebDataset tars of kept samples and Parquet metadata of every sample.

In: `Sample`s after the last stage. Out, in the output folder (any Beam filesystem):

- `NNNNN.tar`: WebDataset shard with `<uid>.<ext>` image, `<uid>.txt` caption (the noise stage's
  choice, `Sample.chosen_caption`) and `<uid>.json`
  metadata for each sample with status `success`. The `.json` holds the metadata row's fields
  and the input's `save_additional_columns` as an `extra` object, always, so none is lost; each
  extra column is also a top-level key (img2dataset's layout) unless it is named as one of
  Winnow's own fields (`uid`, `key`, `status`, `width`, `extra`…), which keep their key;
- `NNNNN.parquet`: one row per sample of the shard, kept or not (`schemas.METADATA_SCHEMA`);
- `img_emb/img_emb_NNNNN.npy`, `text_emb/text_emb_NNNNN.npy`: the float16 CLIP embeddings of
  the shard's embedded samples, row i of both belonging to row i of
  `metadata/metadata_NNNNN.parquet` (uid, url, caption, clip_score, status) — clip-retrieval's
  layout, so its tools and FAISS index builders read it as is;
- `uids/uids_NNNNN.npy`, with `output.uids_file`: the shard's kept uids, sorted, in DataComp's
  format, which the launcher merges into that file (`transforms/write/uids.py`);
- `stats.json`: counts by status, stage and reason (written by `WriteStats`).

Determinism: the shard count is ceil(total / samples_per_shard); a sample goes to shard
`int(uid[:16], 16) % shards`, and each shard is sorted by uid, with fixed tar headers (mtime 0,
uid/gid 0, mode 0644). The same input and config give byte-identical shards on any runner.
Atomicity: a local shard is written under a temporary name and renamed; an object-store shard is
one upload, visible only once complete. A finished run deletes the temporary files and the
files of an earlier run in the same folder that this run did not write, so a killed run rerun
leaves no partial or stale shard; it deletes only what the folder's manifest says Winnow wrote
(`transforms/common/manifest.py`).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.coders import decode_sample, decode_verdict, encode_sample, encode_verdict
from schemas.layout import STATS_FILE, shard_name
from schemas.sample import (
    METADATA_SCHEMA,
    Sample,
    Status,
    extra_json,
    sample_to_metadata_row,
    samples_from_batch,
)
from schemas.verdict import Verdict
from transforms.common.files import write_atomically
from transforms.common.manifest import is_temp, list_files, read_manifest, write_manifest
from transforms.common.progress import StageCounter
from transforms.common.verdicts import apply_by_uid
from transforms.write.audit import AUDIT_FILE, AuditShards
from transforms.write.config import OutputConfig
from transforms.write.uids import part_name, uids_part

_EMBEDDING_METADATA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("clip_score", pa.float32()),
        pa.field("status", pa.string(), nullable=False),
    ]
)


#: stats.json keys: the rows the read stage produced, and (only when it differs from the rows
#: written, `samples`) how many of them the shards lack (negative: rows written twice).
ROWS_READ, ROWS_LOST = "rows_read", "rows_lost"


def shard_count(total: int, samples_per_shard: int) -> int:
    return max(1, math.ceil(total / samples_per_shard))


def shard_of(uid: str, shards: int) -> int:
    """Stable shard index of a uid: the same on every runner and every run."""
    return int(uid[:16], 16) % shards


def tar_members(samples: Iterable[Sample]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the WebDataset members of the kept samples, in the given order."""
    for sample in samples:
        if sample.status != Status.SUCCESS or sample.image is None:
            continue
        row = sample_to_metadata_row(sample)
        meta = {k: v for k, v in row.items() if k != "extra"}
        meta.update({k: v for k, v in sample.extra.items() if k not in row})
        meta["extra"] = dict(sample.extra)
        yield f"{sample.uid}.{sample.image_ext or 'jpg'}", sample.image
        caption = sample.chosen_caption()
        yield f"{sample.uid}.txt", (caption or "").encode("utf-8", "surrogatepass")
        yield f"{sample.uid}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A POSIX ustar archive with fixed headers (mode 0644, uid/gid 0, mtime 0), byte-for-byte what
    `tarfile` writes for the same members, built without its per-member overhead."""
    parts: list[bytes] = []
    size = 0
    for name, data in members:
        header = _ustar_header(name, len(data))
        padding = -len(data) % tarfile.BLOCKSIZE
        parts += (header, data, b"\0" * padding)
        size += len(header) + len(data) + padding
    end = 2 * tarfile.BLOCKSIZE
    end += -(size + end) % tarfile.RECORDSIZE
    parts.append(b"\0" * end)
    return b"".join(parts)


def _ustar_header(name: str, size: int) -> bytes:
    encoded = name.encode("utf-8")
    if len(encoded) > 100:  # member names are `<uid>.<ext>`, far below the ustar limit
        raise ValueError(f"tar member name too long for ustar: {name!r}")
    header = bytearray(tarfile.BLOCKSIZE)
    header[0 : len(encoded)] = encoded
    header[100:148] = b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % size + b"00000000000\0"
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156] = ord(tarfile.REGTYPE)
    header[257:265] = tarfile.POSIX_MAGIC
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def table_bytes(table: pa.Table, compression: str) -> bytes:
    """A Parquet file of `table` with the configured compression (`none`: uncompressed)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=None if compression == "none" else compression)
    return buffer.getvalue()


def parquet_bytes(samples: Iterable[Sample], compression: str) -> bytes:
    rows = [sample_to_metadata_row(s) for s in samples]
    return table_bytes(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), compression)


def embedding_files(name: str, samples: list[Sample], compression: str) -> dict[str, bytes]:
    """The shard's embedding files (relative path → bytes), empty if nothing was embedded."""
    embedded = [s for s in samples if s.image_embedding is not None and s.text_embedding is not None]
    if not embedded:
        return {}
    files = {}
    for folder, field in (("img_emb", "image_embedding"), ("text_emb", "text_embedding")):
        buffer = io.BytesIO()
        np.save(buffer, np.stack([getattr(s, field) for s in embedded]).astype(np.float16))
        files[f"{folder}/{folder}_{name}.npy"] = buffer.getvalue()
    table = pa.Table.from_pylist(
        [
            {
                "uid": s.uid,
                "url": s.url,
                "caption": s.caption_clean if s.caption_clean is not None else s.caption,
                "clip_score": s.clip_score,
                "status": s.status,
            }
            for s in embedded
        ],
        schema=_EMBEDDING_METADATA,
    )
    files[f"metadata/metadata_{name}.parquet"] = table_bytes(table, compression)
    return files


def _dedup_sorted(samples: Iterable[Sample]) -> list[Sample]:
    """Sorts by uid; a repeated (url, caption) pair keeps its first row in the tar, the rest are
    marked, but for copies the text stage already marked (`duplicate_url` naming the kept row)."""
    ordered = sorted(
        samples,
        key=lambda s: (s.uid, s.duplicate_of is not None, s.status != Status.SUCCESS, s.reason or ""),
    )
    out: list[Sample] = []
    for sample in ordered:
        marked = sample.reason == "duplicate_url" and sample.duplicate_of is not None
        if out and out[-1].uid == sample.uid and not marked:
            sample = sample.decided(
                Status.REJECTED, "duplicate_uid", "write", "same url and caption as a kept row"
            )
        out.append(sample)
    return out


def rows_by_shard(batch: pa.RecordBatch, shards: int) -> Iterator[tuple[int, bytes]]:
    """A row batch split by shard (`shard_of` each row's uid): (shard, the shard's rows as Arrow
    IPC stream bytes), one per shard the batch has rows for, in shard order."""
    members: dict[int, list[int]] = {}
    for row, uid in enumerate(batch.column("uid").to_pylist()):
        members.setdefault(shard_of(uid, shards), []).append(row)
    for shard in sorted(members):
        sink = pa.BufferOutputStream()
        part = batch.take(pa.array(members[shard], pa.int32()))
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_batch(part)
        yield shard, sink.getvalue().to_pybytes()


def _batches_of(encoded: Iterable[bytes]) -> list[pa.RecordBatch]:
    """The row batches of `rows_by_shard`'s IPC stream bytes."""
    batches: list[pa.RecordBatch] = []
    for data in encoded:
        with pa.ipc.open_stream(data) as reader:
            batches += list(reader)
    return batches


def _rows_table(encoded: Iterable[bytes]) -> pa.Table:
    """Row batches off the wire (Arrow IPC) as one `METADATA_SCHEMA` table, in the order and with
    the `duplicate_uid` marks `_dedup_sorted` gives the same rows as samples; columns the batches do
    not carry are null (no stage after the reader's and the text stage's set them)."""
    table = pa.Table.from_batches(_batches_of(encoded)).combine_chunks()
    n = table.num_rows
    status, reason = table.column("status"), table.column("reason")
    order = pc.sort_indices(
        pa.table({
            "uid": table.column("uid"),
            "copy": pc.is_valid(table.column("duplicate_of")),
            "failed": pc.not_equal(status, Status.SUCCESS),
            "reason": pc.fill_null(reason, ""),
        }),
        sort_keys=[(key, "ascending") for key in ("uid", "copy", "failed", "reason")],
    )  # fmt: skip
    table = table.take(order)
    marked = pc.and_(
        pc.equal(table.column("reason"), "duplicate_url"), pc.is_valid(table.column("duplicate_of"))
    )
    uids = np.array(table.column("uid").to_pylist(), dtype=object)
    repeated = np.zeros(n, dtype=bool)
    repeated[1:] = uids[1:] == uids[:-1]
    repeated &= ~np.asarray(pc.fill_null(marked, False).to_pylist(), dtype=bool)
    columns = {name: table.column(name) for name in table.column_names}
    if repeated.any():  # as `Sample.decided(REJECTED, "duplicate_uid", "write", ...)` marks them
        mask = pa.array(repeated)
        for name, value in (
            ("status", Status.REJECTED), ("reason", "duplicate_uid"), ("stage", "write"),
            ("error", "same url and caption as a kept row"),
        ):  # fmt: skip
            columns[name] = pc.if_else(mask, pa.scalar(value, pa.string()), columns[name])
    # `extra` as `sample_to_metadata_row` writes it: sorted keys, null when empty.
    columns["extra"] = pa.array(
        [extra_json(json.loads(text)) if text else None for text in columns["extra"].to_pylist()],
        pa.string(),
    )
    return pa.table(
        [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in METADATA_SCHEMA],
        schema=METADATA_SCHEMA,
    )


def _judged(joined: dict[str, list[bytes]]) -> list[Sample]:
    """A shard's samples off the wire (one by one, or as row batches), with the stages' verdicts
    applied."""
    samples = [decode_sample(encoded) for encoded in joined["sample"]]
    for batch in _batches_of(joined.get("rows", ())):
        samples += samples_from_batch(batch)
    if not joined["verdict"]:
        return samples
    return apply_by_uid(samples, (decode_verdict(encoded) for encoded in joined["verdict"]))


class _WriteShardFn(beam.DoFn):
    def __init__(self, output_dir: str, config: OutputConfig, progress_dir: str | None):
        self._output_dir = output_dir.rstrip("/")
        self._config = config
        self._progress_dir = progress_dir

    def setup(self) -> None:
        self._counter = StageCounter("write", self._progress_dir)

    def process(self, element: tuple[int, dict[str, list[bytes]]]) -> Iterator[dict[str, Any]]:
        index, joined = element
        if joined.get("rows") and not joined["sample"] and not joined["verdict"]:
            yield self._write_rows(index, joined["rows"])
            return
        samples = _dedup_sorted(_judged(joined))
        name = shard_name(index)
        tar = tar_bytes(tar_members(samples))
        kept = sum(1 for s in samples if s.status == Status.SUCCESS and s.image is not None)
        if kept:
            write_atomically(f"{self._output_dir}/{name}.tar", tar)
        write_atomically(
            f"{self._output_dir}/{name}.parquet", parquet_bytes(samples, self._config.parquet_compression)
        )
        embeddings = embedding_files(name, samples, self._config.parquet_compression)
        kept_uids = (s.uid for s in samples if s.status == Status.SUCCESS)
        for path, data in {**embeddings, **self._uids_part(name, kept_uids)}.items():
            write_atomically(f"{self._output_dir}/{path}", data)
        counts = Counter((s.stage or "", s.status, s.reason or "") for s in samples)
        for sample in samples:
            if sample.stage in (None, "write") and sample.status != Status.PENDING:
                self._counter.add(
                    kept=sample.status == Status.SUCCESS, reason=sample.reason, status=sample.status
                )
            else:
                self._counter.add_passed()
        self._counter.flush()
        yield {
            "shard": name,
            "files": [f"{name}.parquet"]
            + ([f"{name}.tar"] if kept else [])
            + sorted(embeddings)
            + ([part_name(name)] if self._config.uids_file else []),
            "samples": len(samples),
            "kept": kept,
            "tar_bytes": len(tar) if kept else 0,
            "counts": sorted([*key, n] for key, n in counts.items()),
        }

    def _uids_part(self, name: str, kept_uids: Iterable[str]) -> dict[str, bytes]:
        """With `output.uids_file`, the shard's part of it (`transforms/write/uids.py`): path → bytes."""
        return {part_name(name): uids_part(kept_uids)} if self._config.uids_file else {}

    def _write_rows(self, index: int, encoded: list[bytes]) -> dict[str, Any]:
        """A shard of row batches only (a run without a per-sample stage): its Parquet written
        from the Arrow rows, without a `Sample` per row. The rows have no image: no tar, no
        embeddings."""
        name = shard_name(index)
        table = _rows_table(encoded)
        write_atomically(
            f"{self._output_dir}/{name}.parquet", table_bytes(table, self._config.parquet_compression)
        )
        kept_uids = table.filter(pc.equal(table.column("status"), Status.SUCCESS)).column("uid").to_pylist()
        for path, data in self._uids_part(name, kept_uids).items():
            write_atomically(f"{self._output_dir}/{path}", data)
        keys = zip(*(table.column(c).to_pylist() for c in ("stage", "status", "reason")), strict=True)
        counts = Counter((stage or "", status, reason or "") for stage, status, reason in keys)
        for (stage, status, reason), n in counts.items():
            for _ in range(n):
                if stage in ("", "write") and status != Status.PENDING:
                    self._counter.add(kept=status == Status.SUCCESS, reason=reason or None, status=status)
                else:
                    self._counter.add_passed()
        self._counter.flush()
        return {
            "shard": name,
            "files": [f"{name}.parquet"] + ([part_name(name)] if self._config.uids_file else []),
            "samples": table.num_rows,
            "kept": 0,
            "tar_bytes": 0,
            "counts": sorted([*key, n] for key, n in counts.items()),
        }


class WriteShards(beam.PTransform):
    """Assigns samples to shards by uid hash and writes each shard's tar and Parquet.

    Returns one summary dict per shard (name, files, counts) for `WriteStats`.

    `total` is the number of samples as a singleton PCollection. Stages keep every row, so the
    pipeline passes the count taken right after reading: it is known before the first image is
    fetched, and each sample can then go straight from the last stage into its shard's group
    instead of waiting, image and all, for a count over the finished crawl. Without it, the
    samples are counted here.

    `verdicts` are the deciding stages' verdicts (`transforms/common/verdicts.py`): they are
    grouped with the samples of their shard and applied there, so a sample's image bytes and
    embeddings cross this one shuffle and no other. Samples and verdicts travel as bytes of their
    coders (`schemas/coders.py`), not pickled.

    `rows` are row batches (`schemas.sample.BATCH_SCHEMA`) written as well: a run in which no stage
    works sample by sample (no stage, or the text stage alone) sends its rows to their shards as
    Arrow batches, one per (batch, shard), instead of one element per row. The files are the same.
    """

    def __init__(
        self,
        output_dir: str,
        config: OutputConfig,
        progress_dir: str | None = None,
        total: beam.PCollection | None = None,
        verdicts: list[beam.PCollection] | None = None,
        rows: beam.PCollection | None = None,
    ):
        super().__init__()
        self._output_dir = output_dir
        self._config = config
        self._progress_dir = progress_dir
        self._total = total
        self._verdicts = verdicts or []
        self._rows = rows

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        total = (
            self._total if self._total is not None else samples | "Total" >> beam.combiners.Count.Globally()
        )
        per_shard = self._config.samples_per_shard
        count = beam.pvalue.AsSingleton(total)

        def wire_sample(sample: Sample, n: int) -> tuple[int, bytes]:
            return shard_of(sample.uid, shard_count(n, per_shard)), encode_sample(sample)

        def wire_verdict(found: Verdict, n: int) -> tuple[int, bytes]:
            return shard_of(found.uid, shard_count(n, per_shard)), encode_verdict(found)

        def wire_rows(batch: pa.RecordBatch, n: int) -> Iterator[tuple[int, bytes]]:
            return rows_by_shard(batch, shard_count(n, per_shard))

        verdicts = (
            self._verdicts | "AllVerdicts" >> beam.Flatten()
            if self._verdicts
            else samples.pipeline | "NoVerdicts" >> beam.Create([])
        )
        wired = {
            "sample": samples
            | "AssignShard" >> beam.Map(wire_sample, n=count).with_output_types(tuple[int, bytes]),
            "verdict": verdicts
            | "AssignVerdicts" >> beam.Map(wire_verdict, n=count).with_output_types(tuple[int, bytes]),
        }
        if self._rows is not None:
            wired["rows"] = self._rows | "AssignRowShards" >> beam.FlatMap(
                wire_rows, n=count
            ).with_output_types(tuple[int, bytes])
        return (
            wired
            | "GroupShards" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self._output_dir, self._config, self._progress_dir))
        )


def summarize(shards: list[dict[str, Any]], stages: Iterable[str]) -> dict[str, Any]:
    """The stats JSON body from the shard summaries: counts by status, stage and reason."""
    by_status: Counter[str] = Counter()
    by_reason: dict[str, Counter[str]] = {}
    dropped: dict[str, Counter[str]] = {}
    for shard in shards:
        for stage, status, reason, n in shard["counts"]:
            by_status[status] += n
            if status != Status.SUCCESS and reason:
                by_reason.setdefault(status, Counter())[reason] += n
                dropped.setdefault(stage, Counter())[reason] += n
    total = sum(s["samples"] for s in shards)
    entering = total
    stage_stats = {}
    for stage in [*stages, "write"]:
        lost = dropped.get(stage, Counter())
        stage_stats[stage] = {
            "total": entering,
            "kept": entering - sum(lost.values()),
            "dropped": dict(sorted(lost.items())),
        }
        entering -= sum(lost.values())
    return {
        "samples": total,
        "status": dict(sorted(by_status.items())),
        "reasons": {k: dict(sorted(v.items())) for k, v in sorted(by_reason.items())},
        "stages": stage_stats,
        "shards": {
            "count": len(shards),
            "tar_files": sum(1 for s in shards if s["kept"]),
            "tar_bytes": sum(s["tar_bytes"] for s in shards),
        },
    }


def finalize_output(
    shards: list[dict[str, Any]],
    output_dir: str,
    stages: Iterable[str],
    summaries: Iterable[tuple[str, dict[str, Any]]] = (),
    complete: bool = False,
    audit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes stats.json (with the stages' `summaries` under their names) and `audit.json` (the
    audit's aggregates, `transforms/write/audit.py`, when given), deletes the files that
    the folder's manifest names but this run did not write (stale shards, an older index or
    report) and temporary files, and records what this run wrote. The manifest stays `running`:
    the launcher completes it once the index and the report are written; `complete` only when no
    launcher waits for the job (`--no-wait`) and this is the run's last write."""
    output_dir = output_dir.rstrip("/")
    written = {name for shard in shards for name in shard["files"]} | {STATS_FILE}
    if audit is not None:
        written.add(AUDIT_FILE)
    manifest = read_manifest(output_dir)
    recorded = set(manifest.files) if manifest is not None else set()
    present = list_files(output_dir)
    stale = [f for f in present if (f in recorded and f not in written) or is_temp(f)]
    if stale:
        FileSystems.delete([f"{output_dir}/{name}" for name in stale])
    stats = summarize(sorted(shards, key=lambda s: s["shard"]), stages)
    stats.update(sorted(summaries))
    if ROWS_READ in stats and stats[ROWS_READ] != stats["samples"]:
        # A runner fault: stages never drop rows. Said here, where the shards are known, and
        # raised by the launcher once the job is over.
        stats[ROWS_LOST] = stats[ROWS_READ] - stats["samples"]
    write_atomically(f"{output_dir}/{STATS_FILE}", json.dumps(stats, indent=2, sort_keys=True).encode())
    if audit is not None:
        write_atomically(f"{output_dir}/{AUDIT_FILE}", json.dumps(audit).encode())
    write_manifest(output_dir, "complete" if complete else "running", written)
    return stats


class WriteStats(beam.PTransform):
    """Gathers the shard summaries, writes `stats.json` and `audit.json` (the audit's aggregates,
    computed on the workers from the shards just written: `AuditShards`) and cleans the output
    folder; `complete`: the job itself marks the output finished (see `finalize_output`)."""

    def __init__(
        self,
        output_dir: str,
        stages: Iterable[str],
        summaries: beam.PCollection | None = None,
        complete: bool = False,
    ):
        super().__init__()
        self._output_dir = output_dir
        self._stages = list(stages)
        self._summaries = summaries
        self._complete = complete

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        summaries = self._summaries
        if summaries is None:
            summaries = shards.pipeline | "NoSummaries" >> beam.Create([])
        audit = (
            shards
            | "ShardNames" >> beam.Map(lambda shard: shard["shard"])
            | "Audit" >> AuditShards(self._output_dir)
        )
        return (
            shards
            | "AllShards" >> beam.combiners.ToList()
            | "Finalize"
            >> beam.Map(
                finalize_output,
                self._output_dir,
                self._stages,
                beam.pvalue.AsList(summaries),
                complete=self._complete,
                audit=beam.pvalue.AsSingleton(audit),
            )
        )
