"""Evaluation-set decontamination: drop training samples that are copies of evaluation images.

(uid, Fingerprint) → a `Decision` (`eval_contamination`, `duplicate_of` = the eval image's name)
for every candidate that matches an image of `dedup.eval_images`:

- by hash: within `max_hash_distance` bits and thumbnail cosine >= `min_thumbnail_similarity`
  (the perceptual level's test), looked up through the eval hashes' LSH bands;
- by embedding (when the run embeds): image-embedding cosine >= `eval_min_cosine`.

The eval images go through the crawl's own image path (`process_image` with the `crawl` keys:
the same resize, crop and encoding as downloaded images) and, for embeddings, through the embed
stage's preprocessing and model, so both sides are compared like for like. Sources: image files
(a folder or a glob), WebDataset tars (image members) and Parquet files with an image column
(`jpg`, `png`, `webp`, `image` or `bytes`, raw bytes or Hugging Face's {bytes, path} struct).
An eval image that cannot be read or decoded is logged by name and counted
(`dedup/eval_unreadable`); it cannot match anything.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterator, Sequence

import apache_beam as beam
import faiss
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.utils.shared import Shared

from schemas.sample import Sample, Status
from transforms.common.clustering import normalize
from transforms.common.errors import InputError
from transforms.common.progress import NAMESPACE
from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import ImageError, process_image
from transforms.dedup.config import DedupConfig
from transforms.dedup.fingerprints import fingerprint
from transforms.dedup.perceptual import hamming, hash_bands, signature_similarity
from transforms.dedup.types import EVAL, Decision, Fingerprint
from transforms.embed.clip import ClipEmbedding, OpenClipModelHandler, PreprocessFn, on_accelerator
from transforms.embed.config import EmbedConfig

LOG = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "bytes")
NAME_COLUMNS = ("key", "uid", "id", "path", "file_name")


class EvalSetError(InputError):
    """The evaluation set cannot be found or has no image column (the message names the path)."""


def eval_files(spec: str) -> list[str]:
    """The files of an eval-set spec (a folder, a glob or one file), sorted."""
    pattern = spec
    if not any(ch in spec for ch in "*?[") and not spec.lower().endswith(
        (".tar", ".parquet", *IMAGE_SUFFIXES)
    ):
        pattern = spec.rstrip("/") + "/*"
    matched = sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)
    files = [p for p in matched if p.lower().endswith((".tar", ".parquet", *IMAGE_SUFFIXES))]
    if not files:
        raise EvalSetError(f"dedup.eval_images: no images, tars or Parquet files match '{spec}'")
    return files


def read_eval_images(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, encoded image) of every image in one eval-set file; names are unique within the set."""
    base = path.rsplit("/", 1)[-1]
    lower = path.lower()
    with FileSystems.open(path) as handle:
        data = handle.read()
    if lower.endswith(IMAGE_SUFFIXES):
        yield base, data
    elif lower.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        yield f"{base}:{member.name}", extracted.read()
    else:
        table = pq.read_table(io.BytesIO(data))
        column = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
        if column is None:
            raise EvalSetError(f"{path}: no image column; expected one of {list(IMAGE_COLUMNS)}")
        names_column = next((c for c in NAME_COLUMNS if c in table.column_names), None)
        names = table.column(names_column).to_pylist() if names_column else range(table.num_rows)
        for row, (name, value) in enumerate(zip(names, table.column(column).to_pylist(), strict=True)):
            if isinstance(value, dict):
                value = value.get("bytes")
            if value:
                yield f"{base}:{name if name is not None else row}", value


class _EvalSamplesFn(beam.DoFn):
    """An eval image as a `Sample` that went through the crawl's image path (uid = its name)."""

    def __init__(self, options: ImageOptions):
        self._options = options

    def setup(self) -> None:
        self._unreadable = beam.metrics.Metrics.counter(NAMESPACE, "dedup/eval_unreadable")

    def process(self, path: str) -> Iterator[Sample]:
        try:
            images = list(read_eval_images(path))
        except (OSError, tarfile.TarError, ValueError) as err:
            if isinstance(err, EvalSetError):
                raise
            LOG.warning("eval image file %s cannot be read: %s", path, err)
            self._unreadable.inc()
            return
        for name, data in images:
            try:
                image = process_image(data, self._options)
            except ImageError as err:
                LOG.warning("eval image %s cannot be decoded: %s", name, err)
                self._unreadable.inc()
                continue
            yield Sample(
                uid=name,
                url=None,
                caption="",
                status=Status.SUCCESS,
                image=image.data,
                width=image.width,
                height=image.height,
                original_width=image.original_width,
                original_height=image.original_height,
            )


def _with_embedding(element: tuple[Sample, PredictionResult | ClipEmbedding]) -> Sample:
    sample, result = element
    embedding: ClipEmbedding = result.inference if isinstance(result, PredictionResult) else result  # type: ignore[assignment]
    return sample.evolve(image_embedding=embedding.image)


class _EvalIndex:
    """The eval fingerprints as LSH buckets of their hashes and a FAISS index of their embeddings."""

    def __init__(self, evals: Sequence[Fingerprint], config: DedupConfig):
        self.evals = sorted(evals, key=lambda f: f.uid)
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for index, found in enumerate(self.evals):
            for key in hash_bands(found.hash64, config.bands):
                self.buckets.setdefault(key, []).append(index)
        embedded = [i for i, f in enumerate(self.evals) if f.embedding is not None]
        self.embedded = np.array(embedded, dtype=np.int64)
        self.index: faiss.Index | None = None
        if embedded:
            points = normalize(np.stack([self.evals[i].embedding for i in embedded]))
            self.index = faiss.IndexFlatIP(points.shape[1])
            self.index.add(points)


class _DecontaminateFn(beam.DoFn):
    def __init__(self, config: DedupConfig):
        self._config = config
        self._shared = Shared()  # the eval index, built once per process

    def process(self, batch: list[tuple[str, Fingerprint]], evals: list[Fingerprint]) -> Iterator[Decision]:
        if not evals:
            return
        # Built by the first instance of the process that needs it (a batch run has one window).
        index = self._shared.acquire(lambda: _EvalIndex(evals, self._config))
        self._index = index  # keeps the shared index alive while this instance uses it
        matches: dict[str, str] = {}
        for uid, found in batch:
            match = self._hash_match(found, index)
            if match:
                matches[uid] = match
        embedded = [(uid, f) for uid, f in batch if f.embedding is not None and uid not in matches]
        if embedded and index.index is not None:
            cosines, ids = index.index.search(normalize(np.stack([f.embedding for _, f in embedded])), 1)
            for (uid, _), cosine, hit in zip(embedded, cosines[:, 0], ids[:, 0], strict=True):
                if hit >= 0 and cosine >= self._config.eval_min_cosine:
                    name = index.evals[int(index.embedded[hit])].uid
                    matches[uid] = f"{name}\0embedding cosine {float(cosine):.4f}"
        for uid in sorted(matches):
            name, evidence = matches[uid].split("\0")
            yield Decision(uid, EVAL, name, f"copy of evaluation image {name}; {evidence}")

    def _hash_match(self, found: Fingerprint, index: _EvalIndex) -> str | None:
        config = self._config
        seen: set[int] = set()
        for key in hash_bands(found.hash64, config.bands):
            for candidate in index.buckets.get(key, ()):
                if candidate in seen:
                    continue
                seen.add(candidate)
                other = index.evals[candidate]
                distance = hamming(found.hash64, other.hash64)
                if distance > config.max_hash_distance:
                    continue
                similarity = signature_similarity(found.signature, other.signature)
                if similarity >= config.min_thumbnail_similarity:
                    return f"{other.uid}\0hash distance {distance}, thumbnail cosine {similarity:.3f}"
        return None


class DecontaminateEval(beam.PTransform):
    """(uid, Fingerprint) → `eval_contamination` decisions against `dedup.eval_images`."""

    def __init__(self, config: DedupConfig, image_options: ImageOptions, embed: EmbedConfig | None):
        super().__init__()
        self._config = config
        self._image_options = image_options
        self._embed = embed

    def expand(self, fingerprints: beam.PCollection) -> beam.PCollection:
        config = self._config
        assert config.eval_images is not None
        files = eval_files(config.eval_images)
        samples = (
            fingerprints.pipeline
            | "EvalFiles" >> beam.Create(files)
            | "EvalImages" >> beam.ParDo(_EvalSamplesFn(self._image_options))
        )
        if self._embed is not None:
            samples = (
                samples
                | "EvalPreprocess" >> beam.ParDo(PreprocessFn(self._embed))
                | "EvalEmbed"
                >> on_accelerator(
                    RunInference(KeyedModelHandler(OpenClipModelHandler(self._embed))), self._embed
                )
                | "EvalEmbeddings" >> beam.Map(_with_embedding)
            )
        evals = samples | "EvalFingerprints" >> beam.Map(fingerprint, config.hash, self._image_options)
        return (
            fingerprints
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
            | "Match" >> beam.ParDo(_DecontaminateFn(config), evals=beam.pvalue.AsList(evals))
        )
