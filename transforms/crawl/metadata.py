"""A pool's metadata kept apart from its shards (`input.metadata`), joined to its samples by uid.

DataComp's `download_upstream.py` writes the pool's metadata, `metadata/<scale>/*.parquet` (`uid`,
`url`, `text`, `original_width`, `original_height`, `clip_b32_similarity_score`,
`clip_l14_similarity_score`, `face_bboxes`, `sha256`), each with a `.npz` sibling (`l14_img`,
`l14_txt`, `b32_img`, `b32_txt`, row-aligned with it), then has img2dataset download the images
into `shards/<scale>/*.tar`, whose own Parquet carries the `uid`. The metadata files do not line
up with the tars, so they are joined by uid (`JoinPoolMetadata`, one `CoGroupByKey`):

- each sample read from the pool gets the metadata's columns in `extra` (they are the pool's
  record, which DataComp's rules read: a column the shard's Parquet also has takes the
  metadata's value; `input.save_additional_columns`, when set, names the ones carried besides
  `schemas.pools.READ_COLUMNS`);
- with `identity` (one of DataComp's models, `schemas.pools.DATACOMP_EMBEDDINGS`), also its score
  (`clip_score`: the metadata's score column, else the cosine of the stored embeddings),
  `clip_model`, `embedding_source` and, for a sample still to be kept, the `.npz` embeddings, so
  the embed stage runs no model;
- a sample without a metadata row is unchanged; a metadata row without a sample (an image
  img2dataset did not keep) is counted (`crawl/metadata_not_in_pool`), and still counts in
  DataComp's rank (`metadata_scores` reads every row's score for `embed.keep_fraction`).

A metadata file that cannot be used stops the run with an `InputError` naming it: no `uid`
column, a uid that is not 32 hex digits (the row is named), a uid in two rows (both named), or a
`.npz` whose arrays do not have one row per Parquet row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import posixpath
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas.pools import READ_COLUMNS, base_name, datacomp_embeddings, pool_cell, pool_uid
from schemas.sample import Sample, Status
from transforms.common.errors import InputError
from transforms.common.progress import NAMESPACE
from transforms.crawl.pool import carrying_embeddings, unit_vector

STAGE = "crawl"
KEY = "input.metadata"
#: Rows read from a metadata file at a time (and embeddings with them).
_BATCH_ROWS = 8192
#: Metadata columns that are the sample's own (its uid, URL and caption), not carried in `extra`.
_OWN_COLUMNS = frozenset({"uid", "url", "text", "caption", "key", "extra"})
#: A metadata row: (columns, (image, text) embeddings or None, embedding source, "file row N").
MetadataRow = tuple[dict[str, Any], "tuple[np.ndarray, np.ndarray] | None", str, str]


@dataclasses.dataclass(frozen=True)
class PoolMetadata:
    """The pool's metadata files (`input.metadata`) and the columns carried from them."""

    #: A folder (with its subfolders) or a glob of Parquet files, local, s3:// or gs://.
    pattern: str
    #: `input.save_additional_columns`: the columns carried besides `READ_COLUMNS` (empty: all).
    carried: tuple[str, ...] = ()


def metadata_files(pattern: str) -> list[str]:
    """The Parquet files a folder (with its subfolders) or a glob names, sorted; names starting
    with `.` or `_` below the folder are skipped (a download's caches and markers)."""
    folder = None
    if not any(ch in pattern for ch in "*?[") and _is_folder(pattern):
        folder = pattern.rstrip("/") + "/"
        pattern = folder + "**"
    matched = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
    return sorted(path for path in matched if path.endswith(".parquet") and not _hidden(path, folder))


def _is_folder(path: str) -> bool:
    """Whether a path without wildcards names a folder (on an object store: not a `.parquet`)."""
    if "://" in path:
        return not path.endswith(".parquet")
    return os.path.isdir(path)


def _hidden(path: str, folder: str | None) -> bool:
    below = path[len(folder) :] if folder and path.startswith(folder) else posixpath.basename(path)
    return any(part.startswith((".", "_")) for part in below.replace(os.sep, "/").split("/") if part)


def npz_path(parquet: str) -> str:
    """The `.npz` sibling of a metadata Parquet file."""
    return parquet.removesuffix(".parquet") + ".npz"


def npz_arrays(path: str) -> set[str]:
    """The names of the arrays a `.npz` holds (its index is read, not its arrays)."""
    with _open(path) as handle, zipfile.ZipFile(_seekable(handle)) as archive:
        return {name.removesuffix(".npy") for name in archive.namelist()}


def _open(path: str) -> BinaryIO:
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _seekable(handle: BinaryIO) -> BinaryIO:
    return handle if handle.seekable() else io.BytesIO(handle.read())


def _npy_chunks(archive: zipfile.ZipFile, name: str, rows: int, where: str) -> Iterator[np.ndarray]:
    """The array `name` of a `.npz`, `_BATCH_ROWS` rows at a time (one chunk in memory);
    `InputError` unless it holds `rows` rows."""
    if f"{name}.npy" not in archive.namelist():
        raise InputError(f"{KEY}: {where} has no array '{name}'")
    with archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(member)
        if len(shape) != 2 or shape[0] != rows:
            raise InputError(
                f"{KEY}: {where}: '{name}' has shape {tuple(shape)}, but its Parquet has {rows} rows"
            )
        if fortran or dtype.hasobject:
            yield np.lib.format.read_array(archive.open(f"{name}.npy"), allow_pickle=False)
            return
        width = shape[1] * dtype.itemsize
        for start in range(0, rows, _BATCH_ROWS):
            count = min(_BATCH_ROWS, rows - start)
            data = member.read(count * width)
            if len(data) < count * width:
                raise InputError(f"{KEY}: {where}: '{name}' is cut short")
            yield np.frombuffer(data, dtype).reshape(count, shape[1])


def _check_columns(path: str, names: Sequence[str], needed: Sequence[str]) -> None:
    missing = [name for name in needed if name not in names]
    if missing:
        raise InputError(f"{KEY}: {path} has no column {', '.join(repr(m) for m in missing)}")


def metadata_rows(
    path: str, identity: str | None, carried: tuple[str, ...] = ()
) -> Iterator[tuple[str, MetadataRow]]:
    """(uid, (columns, embeddings, source, "file row N")) of each row of one metadata Parquet
    file; the embeddings of `identity` from its `.npz` when given, else None. `carried`: the
    columns kept besides `READ_COLUMNS` (empty: all)."""
    datacomp = datacomp_embeddings(identity) if identity else None
    with contextlib.ExitStack() as stack:
        file = pq.ParquetFile(_seekable(stack.enter_context(_open(path))))
        names = file.schema_arrow.names
        _check_columns(path, names, ["uid"])
        kept = [
            n for n in names if n not in _OWN_COLUMNS and (not carried or n in carried or n in READ_COLUMNS)
        ]
        rows = file.metadata.num_rows
        vectors: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
        source = base_name(path)
        if datacomp is not None:
            npz = npz_path(path)
            if not FileSystems.exists(npz):
                raise InputError(f"{KEY}: {path} has no {base_name(npz)} beside it (its embeddings)")
            archive = stack.enter_context(zipfile.ZipFile(_seekable(stack.enter_context(_open(npz)))))
            images = _npy_chunks(archive, datacomp.image_key, rows, npz)
            texts = _npy_chunks(archive, datacomp.text_key, rows, npz)
            vectors = _rows(images, texts)
            source = f"pool:{base_name(npz)}#{datacomp.image_key},{datacomp.text_key}"
        row = 0
        for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=["uid", *kept]):
            columns = batch.to_pydict()
            for i, value in enumerate(columns["uid"]):
                uid = pool_uid(value)
                if uid is None:
                    raise InputError(f"{KEY}: {path} row {row}: uid {value!r} is not 32 hex digits")
                cells = {name: pool_cell(columns[name][i]) for name in kept if columns[name][i] is not None}
                pair = next(vectors) if vectors is not None else None
                yield uid, (cells, pair, source, f"{path} row {row}")
                row += 1


def _rows(
    images: Iterator[np.ndarray], texts: Iterator[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (image, text) embedding pairs of two arrays read chunk by chunk, row by row."""
    for image, text in zip(images, texts, strict=True):
        yield from zip(image, text, strict=True)


def metadata_scores(path: str, column: str) -> Iterator[np.ndarray]:
    """The `column` scores of every row of one metadata file, float64 (NaN where missing), in
    arrays of at most `_BATCH_ROWS`: what DataComp's `get_threshold` ranks."""
    with _open(path) as handle:
        file = pq.ParquetFile(_seekable(handle))
        _check_columns(path, file.schema_arrow.names, [column])
        for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
            yield batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64)


class _AttachFn(beam.DoFn):
    """The samples of one uid with its metadata row; `InputError` when the uid has two."""

    def __init__(self, identity: str | None):
        self._identity = identity

    def setup(self) -> None:
        self._joined = Metrics.counter(NAMESPACE, f"{STAGE}/metadata_joined")
        self._unmatched = Metrics.counter(NAMESPACE, f"{STAGE}/metadata_not_in_pool")
        self._missing = Metrics.counter(NAMESPACE, f"{STAGE}/metadata_missing")

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Sample]:
        uid, grouped = element
        rows: list[MetadataRow] = sorted(grouped["metadata"], key=lambda r: r[3])
        if len(rows) > 1:
            raise InputError(f"{KEY}: uid {uid} is in two rows: {rows[0][3]} and {rows[1][3]}")
        samples: list[Sample] = grouped["samples"]
        if not samples:
            self._unmatched.inc()
            return
        for sample in samples:
            if not rows:
                self._missing.inc()
                yield sample
                continue
            self._joined.inc()
            yield self._attach(sample, rows[0])

    def _attach(self, sample: Sample, row: MetadataRow) -> Sample:
        cells, pair, source, _ = row
        sample = sample.evolve(extra={**sample.extra, **cells})
        datacomp = datacomp_embeddings(self._identity) if self._identity else None
        if datacomp is None or pair is None:
            return sample
        image, text = unit_vector(pair[0]), unit_vector(pair[1])
        score = cells.get(datacomp.score_column)
        if not isinstance(score, int | float) or score != score:  # missing or NaN: the cosine
            score = float(np.dot(image.astype(np.float32), text.astype(np.float32)))
        vectors = (image, text) if sample.status == Status.PENDING else None
        return carrying_embeddings(sample, self._identity, source, float(score), vectors)


class JoinPoolMetadata(beam.PTransform):
    """Pool samples → the same samples with their row of the metadata files `pattern` names (a
    folder or a glob), joined by uid; with `identity`, the embeddings and score of that model."""

    def __init__(self, pattern: str, identity: str | None = None, carried: tuple[str, ...] = ()):
        super().__init__()
        self._pattern = pattern
        self._identity = identity
        self._carried = carried

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        rows = (
            samples.pipeline
            | "MetadataPattern" >> beam.Create([self._pattern])
            | "MetadataFiles" >> beam.FlatMap(metadata_files)
            | "SpreadMetadata" >> beam.Reshuffle()
            | "MetadataRows" >> beam.FlatMap(metadata_rows, self._identity, self._carried)
        )
        keyed = samples | "ByUid" >> beam.Map(lambda s: (s.uid, s))
        return (
            {"samples": keyed, "metadata": rows}
            | "JoinMetadata" >> beam.CoGroupByKey()
            | "AttachMetadata" >> beam.ParDo(_AttachFn(self._identity))
        )


class MetadataScores(beam.PTransform):
    """The begin of a pipeline → arrays of the `column` score of every row of the metadata files
    `pattern` names (DataComp's whole pool, as `apply_filter.py` ranks it)."""

    def __init__(self, pattern: str, column: str):
        super().__init__()
        self._pattern = pattern
        self._column = column

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            begin
            | "ScorePattern" >> beam.Create([self._pattern])
            | "ScoreFiles" >> beam.FlatMap(metadata_files)
            | "SpreadScoreFiles" >> beam.Reshuffle()
            | "Scores" >> beam.FlatMap(metadata_scores, self._column)
        )
