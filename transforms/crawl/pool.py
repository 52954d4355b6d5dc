"""The crawl stage's pool mode: each image read from the pool's tar instead of fetched again.

In: `Sample`s read from a pool (`transforms/read/pool.py`): `extra` names their shard
(`__shard__`) and key (`__key__`). The samples of one shard are grouped (light rows: the images are
not read yet), and the shard's tar is read once, front to back, for the keys still pending.

Out: the same samples. A pending one becomes `success` with its image decoded, resized and
re-encoded as the crawl does it (`crawl.resize_mode: no` keeps the pool's bytes as they are), its
sizes and `sha256` (of the pool's bytes); or `failed` with the crawl's reasons (`decode_error`,
`image_too_small`, ...), `image_missing` (no image member for the key), `duplicate_key` (a
second row naming a key: the first in uid order gets the image) or `shard_unreadable` (the
tar cannot be read, or not to its end: `--retry-failed` reads it again). Nothing is dropped.

The image-size rules (`crawl.min_image_size`, `crawl.max_aspect_ratio`, `crawl.max_image_area`)
apply to the pool's `original_width` / `original_height` when it records them (DataComp's basic
filter reads those columns: a pool's stored images are often resized), else to the decoded image.

`PoolEmbeddings` (when the embed stage's model made the pool's embeddings): every sample of the
shard gets the pool's score for that model (`clip_score`; the pool's score column when it has one,
else the cosine of the stored embeddings), `clip_model` and `embedding_source`; the loaded ones
also get the embeddings, so the embed stage runs no model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.pools import (
    KEY,
    SHARD,
    base_name,
    datacomp_embeddings,
    exists,
    is_image,
    pool_uid,
    read_bytes,
    shard_files,
    stream_members,
)
from schemas.sample import Sample, Status
from transforms.common.progress import StageCounter
from transforms.crawl.config import CrawlConfig
from transforms.crawl.imaging import ImageError, ImageProbe, check_shape, process_image

LOG = logging.getLogger(__name__)
STAGE = "crawl"


def in_pool(sample: Sample) -> bool:
    """Whether the sample was read from a pool (its image is in a tar, not on the web)."""
    return SHARD in sample.extra


@dataclasses.dataclass
class ShardEmbeddings:
    """One shard's precomputed embeddings for one model: rows found by uid or by key."""

    rows: dict[str, int]
    image: np.ndarray
    text: np.ndarray
    #: `extra` entry holding the pool's own score for this model (None: the cosine is used).
    score_column: str | None
    source: str

    def row(self, sample: Sample) -> int | None:
        found = self.rows.get(sample.uid)
        return found if found is not None else self.rows.get(str(sample.extra.get(KEY)))

    def score(self, sample: Sample, row: int | None) -> float | None:
        recorded = sample.extra.get(self.score_column) if self.score_column else None
        if isinstance(recorded, int | float):
            return float(recorded)
        if row is None:
            return None
        return float(np.dot(self.image[row].astype(np.float32), self.text[row].astype(np.float32)))


def shard_embeddings(tar: str, identity: str) -> ShardEmbeddings | None:
    """The embeddings `identity` made for the shard `tar`, or None when the pool has none."""
    files = shard_files(tar)
    datacomp = datacomp_embeddings(identity)
    if datacomp is not None and exists(files.npz) and exists(files.parquet):
        with np.load(io.BytesIO(read_bytes(files.npz))) as arrays:
            if {datacomp.image_key, datacomp.text_key} <= set(arrays.files):
                return ShardEmbeddings(
                    _row_index(files.parquet),
                    arrays[datacomp.image_key],
                    arrays[datacomp.text_key],
                    datacomp.score_column,
                    f"pool:{base_name(files.npz)}#{datacomp.image_key},{datacomp.text_key}",
                )
    if exists(files.img_emb) and exists(files.text_emb) and exists(files.metadata):
        return ShardEmbeddings(
            _row_index(files.metadata),
            np.load(io.BytesIO(read_bytes(files.img_emb))),
            np.load(io.BytesIO(read_bytes(files.text_emb))),
            "clip_score",
            f"pool:img_emb/{base_name(files.img_emb)}",
        )
    return None


def _row_index(parquet: str) -> dict[str, int]:
    """uid (or, without one, key) → row of a Parquet the embeddings are aligned with."""
    file = pq.ParquetFile(io.BytesIO(read_bytes(parquet)))
    columns = [name for name in ("uid", "key") if name in file.schema_arrow.names]
    table = file.read(columns=columns)
    index: dict[str, int] = {}
    if "uid" in columns:
        for row, value in enumerate(table.column("uid").to_pylist()):
            uid = pool_uid(value)
            if uid:
                index[uid] = row
    if "key" in columns:
        for row, key in enumerate(table.column("key").to_pylist()):
            if key is not None:
                index.setdefault(str(key), row)
    return index


def read_images(tar: str, keys: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of the first image member of each of `keys`, the tar read once."""
    left = set(keys)
    if not left:
        return
    for key, ext, data in stream_members(tar, lambda key, ext: key in left and is_image(ext)):
        if data is None:
            continue
        left.discard(key)
        yield key, ext, data
        if not left:
            return


def load_image(
    sample: Sample, ext: str, data: bytes, config: CrawlConfig, probe: ImageProbe | None = None
) -> Sample:
    """The sample with its pool image decoded and stored as the crawl stores images, or failed.
    With `resize_mode: no` the pool's bytes are kept, unless the probe changed the pixels or the
    image has more than 8 bits per sample (then the 8-bit image the crawl made is stored)."""
    width, height = sample.extra.get("original_width"), sample.extra.get("original_height")
    recorded = isinstance(width, int) and isinstance(height, int)
    options = config
    loaded = sample.evolve(sha256=hashlib.sha256(data).hexdigest())
    try:
        if recorded:  # the rules read the pool's original size; the stored image may be resized
            check_shape(width, height, config)  # type: ignore[arg-type]
            options = dataclasses.replace(
                config, min_image_size=0, max_aspect_ratio=None, max_image_area=None
            )
        image = process_image(data, options, probe, sample.extra)
    except ImageError as err:
        return loaded.decided(Status.FAILED, err.reason, STAGE, str(err))
    keep = config.resize_mode == "no" and not image.probed.get("blurred") and not image.high_bit
    stored = data if keep else image.data
    return loaded.evolve(
        status=Status.SUCCESS,
        reason=None,
        stage=None,
        error=None,
        source_format=image.source_format,
        original_width=width if recorded else image.original_width,
        original_height=height if recorded else image.original_height,
        width=image.original_width if keep else image.width,
        height=image.original_height if keep else image.height,
        image=stored,
        image_bytes=len(stored),
        image_ext=ext.lower() if keep else config.encode_format,
        probes=image.probed or None,
    )


class _LoadShardFn(beam.DoFn):
    def __init__(
        self,
        config: CrawlConfig,
        embeddings: str | None,
        progress_dir: str | None,
        probe: ImageProbe | None,
    ):
        self._config = config
        self._embeddings = embeddings
        self._progress_dir = progress_dir
        self._probe = probe

    def setup(self) -> None:
        self._counter = StageCounter(STAGE, self._progress_dir)

    def process(self, element: tuple[str, Iterable[Sample]]) -> Iterator[Sample]:
        """The shard's samples: the decided ones first, then each pending one as the tar's read
        reaches its image (one image in memory at a time), then those the tar did not hold."""
        tar, group = element
        samples = sorted(group, key=lambda s: s.uid)
        embeddings = shard_embeddings(tar, self._embeddings) if self._embeddings else None
        pending: dict[str, Sample] = {}
        for sample in samples:
            key = str(sample.extra.get(KEY))
            if sample.status == Status.PENDING and key in pending:  # the pool names a key twice
                detail = f"key {key!r} is also the key of {pending[key].uid}, which is given its image"
                yield self._finish(
                    sample.decided(Status.FAILED, "duplicate_key", STAGE, detail), embeddings, True
                )
            elif sample.status == Status.PENDING:
                pending[key] = sample
            else:
                self._counter.add_passed()
                yield self._finish(sample, embeddings)
        unreadable: str | None = None
        try:
            for key, ext, data in read_images(tar, set(pending)):
                loaded = load_image(pending.pop(key), ext, data, self._config, self._probe)
                yield self._finish(loaded, embeddings, True)
        except (OSError, tarfile.TarError, EOFError) as err:
            LOG.warning("%s: unreadable: %s", tar, err)
            unreadable = f"{tar}: {err}"
        for key, sample in sorted(pending.items()):
            if unreadable is not None:
                failed = sample.decided(Status.FAILED, "shard_unreadable", STAGE, unreadable)
            else:
                failed = sample.decided(
                    Status.FAILED, "image_missing", STAGE, f"no image member for key {key!r}"
                )
            yield self._finish(failed, embeddings, True)

    def _finish(self, sample: Sample, embeddings: ShardEmbeddings | None, counted: bool = False) -> Sample:
        if counted:
            self._counter.add(
                kept=sample.status == Status.SUCCESS, reason=sample.reason, status=sample.status
            )
        if sample.status != Status.SUCCESS and sample.image_embedding is not None:
            sample = sample.evolve(image_embedding=None, text_embedding=None)  # joined, then not loaded
        return _with_embeddings(sample, embeddings, self._embeddings) if embeddings else sample

    def finish_bundle(self) -> None:
        self._counter.flush()


def _with_embeddings(sample: Sample, embeddings: ShardEmbeddings, identity: str | None) -> Sample:
    row = embeddings.row(sample)
    score = embeddings.score(sample, row)
    if score is None:
        return sample
    vectors = None
    if row is not None and sample.status == Status.SUCCESS:
        vectors = unit_vector(embeddings.image[row]), unit_vector(embeddings.text[row])
    return carrying_embeddings(sample, identity, embeddings.source, score, vectors)


def carrying_embeddings(
    sample: Sample,
    identity: str | None,
    source: str,
    score: float,
    vectors: tuple[np.ndarray, np.ndarray] | None,
) -> Sample:
    """The sample with a pool's score made by `identity`, where it came from, and (for a sample
    still to be kept) the image and text embeddings."""
    changes: dict[str, Any] = {"clip_score": score, "clip_model": identity, "embedding_source": source}
    if vectors is not None:
        changes.update(image_embedding=vectors[0], text_embedding=vectors[1])
    return sample.evolve(**changes)


def unit_vector(vector: np.ndarray) -> np.ndarray:
    """float16, L2-normalised as the embed stage stores embeddings."""
    v = vector.astype(np.float32)
    norm = float(np.linalg.norm(v))
    return (v / norm if norm else v).astype(np.float16)


def clip_retrieval_partitions(folder: str) -> list[tuple[str, str, str]]:
    """(metadata, image embeddings, text embeddings) of each partition of a clip-retrieval output
    (`metadata/metadata_N.parquet`, `img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy`)."""
    folder = folder.rstrip("/")
    matched = FileSystems.match([f"{folder}/metadata/metadata_*.parquet"])[0].metadata_list
    parts = []
    for path in sorted(m.path for m in matched):
        number = path.rsplit("metadata_", 1)[1].removesuffix(".parquet")
        parts.append(
            (path, f"{folder}/img_emb/img_emb_{number}.npy", f"{folder}/text_emb/text_emb_{number}.npy")
        )
    return parts


def partition_embeddings(
    paths: tuple[str, str, str],
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray, str]]]:
    """(WebDataset key, (image embedding, text embedding, source)) of each row of one partition:
    clip-retrieval's `image_path` is the sample's `__key__`, rows aligned with the `.npy` files."""
    metadata, image_path, text_path = paths
    keys = pq.read_table(io.BytesIO(read_bytes(metadata)), columns=["image_path"]).column(0).to_pylist()
    image, text = np.load(io.BytesIO(read_bytes(image_path))), np.load(io.BytesIO(read_bytes(text_path)))
    if not len(keys) == len(image) == len(text):
        raise ValueError(f"{metadata}: {len(keys)} rows, but {len(image)} and {len(text)} embeddings")
    source = "clip-retrieval:" + base_name(image_path)
    for row, key in enumerate(keys):
        yield str(key), (image[row], text[row], source)


def _attach(element: tuple[str, dict[str, list[Any]]], identity: str) -> Iterator[Sample]:
    """The samples of one key, with the embeddings clip-retrieval made for that key (if any)."""
    _, grouped = element
    found = sorted(grouped["embeddings"], key=lambda e: e[2])[:1]  # a key twice: the first partition's
    for sample in grouped["samples"]:
        if not found:
            yield sample
            continue
        image, text, source = unit_vector(found[0][0]), unit_vector(found[0][1]), found[0][2]
        score = float(np.dot(image.astype(np.float32), text.astype(np.float32)))
        vectors = (image, text) if sample.status == Status.PENDING else None
        yield carrying_embeddings(sample, identity, source, score, vectors)


class JoinClipRetrieval(beam.PTransform):
    """Pool samples → the same samples with the embeddings a clip-retrieval output holds for their
    key (`input.embeddings`), made by the model `identity`; a sample without any is unchanged."""

    def __init__(self, folder: str, identity: str):
        super().__init__()
        self._folder = folder
        self._identity = identity

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        embeddings = (
            samples.pipeline
            | "Folder" >> beam.Create([self._folder])
            | "Partitions" >> beam.FlatMap(clip_retrieval_partitions)
            | "Spread" >> beam.Reshuffle()
            | "Rows" >> beam.FlatMap(partition_embeddings)
        )
        keyed = samples | "ByKey" >> beam.Map(lambda s: (str(s.extra.get(KEY)), s))
        return (
            {"samples": keyed, "embeddings": embeddings}
            | "Join" >> beam.CoGroupByKey()
            | "Attach" >> beam.FlatMap(_attach, self._identity)
        )


class LoadPoolImages(beam.PTransform):
    """Reads each pool sample's image from its shard's tar (one read per shard), as the crawl
    would have stored it; with `embeddings` (a model identity) attaches the pool's embeddings,
    from beside the shards or, with `clip_retrieval` (a folder), from clip-retrieval's output.
    A `probe` measures each image as the crawl's does (`ImageProbe`)."""

    def __init__(
        self,
        config: CrawlConfig,
        embeddings: str | None = None,
        progress_dir: str | None = None,
        clip_retrieval: str | None = None,
        probe: ImageProbe | None = None,
    ):
        super().__init__()
        self._config = config
        self._probe = probe
        self._embeddings = embeddings
        self._progress_dir = progress_dir
        self._clip_retrieval = clip_retrieval

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        beside = self._embeddings
        if self._clip_retrieval and self._embeddings:
            samples = samples | "ClipRetrieval" >> JoinClipRetrieval(self._clip_retrieval, self._embeddings)
            beside = None  # the embeddings come from the clip-retrieval folder only
        return (
            samples
            | "ByShard" >> beam.Map(lambda s: (str(s.extra[SHARD]), s))
            | "GroupShard" >> beam.GroupByKey()
            | "Load" >> beam.ParDo(_LoadShardFn(self._config, beside, self._progress_dir, self._probe))
        )
