"""Evaluation-set decontamination: drop training samples that are copies of evaluation images.

(uid, Fingerprint) → a `Decision` (`eval_contamination`, `duplicate_of` = the eval image's name)
for every candidate that matches an image of `dedup.eval_images`:

- by hash: within `max_hash_distance` bits, agreeing on one of the `dedup.hash_bands` LSH bands
  (every pair within the distance when it is 0) and with thumbnail cosine >=
  `min_thumbnail_similarity` (the perceptual level's test); of several, the one on the lowest
  band, then the first by name. With PDQ (256 bits) there are no bands: every eval image within
  the distance is a candidate, the nearest first, then by name. A hash that is not comparable
  (`types.comparable`: PDQ quality <= 49), on either side, matches nothing by hash;
- by embedding (when the run embeds): image-embedding cosine >= `eval_min_cosine` (the nearest).

The eval set is fingerprinted once, gathered once (it is bounded by the eval set, not the run)
and packed into one compact blob (`pack_eval_set`: names, hashes, thumbnails, embeddings) that
every worker receives as a singleton side input; each worker process builds its index from it
once (`Shared`): a FAISS `IndexBinaryFlat` of the comparable hashes (`hash_bits` wide) and an
`IndexFlatIP` of the embeddings.
Samples are matched a batch at a time: one Hamming range search in FAISS, then array operations
on the candidate pairs, with no Python loop over eval images (about 3 µs per sample per 1,000 eval
images on one core, skewed hashes included; see benchmarks/README.md). An exhaustive binary
scan beats multi-index hashing (`IndexBinaryMultiHash`, 4 x 16 bits, 2 flips) here: real hashes
are skewed, flat images crowd a few buckets, and there it measured 4-10x slower.

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
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator

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
from transforms.dedup.perceptual import HASH_BITS, SIGNATURE_SIDE, hash_bands, hash_words
from transforms.dedup.types import EVAL, Decision, Fingerprint, comparable
from transforms.embed.clip import ClipEmbedding, OpenClipModelHandler, PreprocessFn, on_accelerator
from transforms.embed.config import EmbedConfig

LOG = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "bytes")
NAME_COLUMNS = ("key", "uid", "id", "path", "file_name")
SIGNATURE_BYTES = 3 * SIGNATURE_SIDE * SIGNATURE_SIDE
_MAGIC = b"winnow-eval-set/1\n"
_ALIGN = 64  # each packed array starts on a 64-byte boundary
_PAIR_CHUNK = 8192  # (query, eval image) candidate pairs verified at once: ~25 MB of float32 thumbnails


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
                yield eval_sample(name, data, self._options)
            except ImageError as err:
                LOG.warning("eval image %s cannot be decoded: %s", name, err)
                self._unreadable.inc()


def eval_sample(name: str, data: bytes, options: ImageOptions) -> Sample:
    """An evaluation image as a downloaded sample named `name`: `data` through the crawl's own
    resize and encoding, so it is fingerprinted as the run's samples are (`ImageError` if it
    does not decode)."""
    image = process_image(data, options)
    return Sample(
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


def pack_eval_set(evals: Iterable[Fingerprint], bits: int = HASH_BITS) -> bytes:
    """The eval fingerprints as one compact, picklable blob (the `Match` step's side input).

    Only what matching reads travels: names (UTF-8, in uid order), the `bits`-bit hashes (64 for
    dHash/pHash, 256 for PDQ: `perceptual.hash_words`, 8 or 32 bytes each) and whether each is
    comparable (`types.comparable`), thumbnail signatures and the image embeddings of the eval
    images that have one. Each array is stored raw behind a small JSON header, so `_EvalIndex`
    reads it without copying (about 800 bytes per eval image without embeddings: 0.8 GB for 10^6,
    held once per worker process).
    """
    ordered = sorted(evals, key=lambda f: f.uid)
    names = [f.uid.encode() for f in ordered]
    embedded = [i for i, f in enumerate(ordered) if f.embedding is not None]
    arrays: dict[str, np.ndarray] = {
        "name_bytes": np.frombuffer(b"".join(names), dtype=np.uint8),
        "name_ends": np.cumsum([len(n) for n in names], dtype=np.int64),
        "hashes": hash_words([f.hash64 for f in ordered], bits),
        "comparable": np.array([comparable(f) for f in ordered], dtype=np.bool_),
        "signatures": np.frombuffer(b"".join(f.signature for f in ordered), dtype=np.int8).reshape(
            len(ordered), SIGNATURE_BYTES
        ),
        "embedded": np.array(embedded, dtype=np.int64),
    }
    if embedded:
        arrays["embeddings"] = np.stack([np.asarray(ordered[i].embedding) for i in embedded])
    header: dict[str, tuple[str, list[int], int]] = {}
    body = io.BytesIO()
    for key, array in arrays.items():
        body.write(bytes(-body.tell() % _ALIGN))
        header[key] = (array.dtype.str, list(array.shape), body.tell())
        body.write(np.ascontiguousarray(array).tobytes())
    encoded = json.dumps(header).encode()
    encoded += b" " * (-(len(_MAGIC) + 8 + len(encoded)) % _ALIGN)  # the arrays stay aligned
    return _MAGIC + len(encoded).to_bytes(8, "little") + encoded + body.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a `pack_eval_set` blob, as read-only views of it."""
    if not blob.startswith(_MAGIC):
        raise ValueError("not a packed evaluation set")
    size = int.from_bytes(blob[len(_MAGIC) : len(_MAGIC) + 8], "little")
    base = len(_MAGIC) + 8 + size
    header = json.loads(blob[len(_MAGIC) + 8 : base])
    arrays = {}
    for key, (dtype, shape, offset) in header.items():
        count = int(np.prod(shape, dtype=np.int64))
        view = np.frombuffer(blob, dtype=np.dtype(dtype), count=count, offset=base + offset)
        arrays[key] = view.reshape(shape)
    return arrays


def _codes(words: np.ndarray) -> np.ndarray:
    """`hash_words` rows as FAISS binary codes (8 bytes per word; the same byte order on both sides
    of a comparison, so Hamming distances are those of the hashes)."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    return words.view(np.uint8).reshape(len(words), 8 * words.shape[1])


def _band_masks(bands: int) -> np.ndarray:
    """(bands,) uint64: the bits of each LSH band of `perceptual.hash_bands`, band 0 first."""
    masks, shift = [], 0
    for _, ones in hash_bands((1 << HASH_BITS) - 1, bands):
        masks.append(ones << shift)
        shift += ones.bit_length()
    return np.array(masks, dtype=np.uint64)


def _norms(signatures: np.ndarray) -> np.ndarray:
    """(n,) float64 norms of int8 signatures, rounded through float32 as `signature_similarity` does."""
    squares = np.empty(len(signatures), dtype=np.int64)
    for start in range(0, len(signatures), _PAIR_CHUNK):  # bounded int32 copies
        wide = signatures[start : start + _PAIR_CHUNK].astype(np.int32)
        squares[start : start + _PAIR_CHUNK] = np.einsum("ij,ij->i", wide, wide)
    return np.sqrt(squares.astype(np.float32)).astype(np.float64)


class _EvalIndex:
    """A packed eval set ready to query: a FAISS binary index of the comparable hashes (exhaustive
    Hamming range search in C, a few nanoseconds per eval image; its ids are positions in
    `hashed`) and an inner-product index of the normalised embeddings. Built once per worker
    process from the side input (`Shared`)."""

    def __init__(self, blob: bytes, config: DedupConfig):
        arrays = _unpack(blob)
        self.size = len(arrays["hashes"])
        self._name_bytes = arrays["name_bytes"]
        self._name_ends = arrays["name_ends"]
        self.hashes = arrays["hashes"]
        if self.hashes.shape[1] * 64 != config.hash_bits:
            raise ValueError(
                f"eval hashes of {self.hashes.shape[1] * 64} bits, dedup.hash has {config.hash_bits}"
            )
        self.hashed = np.flatnonzero(arrays["comparable"])  # the eval rows in the hash index
        self.signatures = arrays["signatures"]
        self.norms = _norms(self.signatures)
        # LSH bands cut 64-bit hashes only; a PDQ candidate is any eval hash within the distance.
        self.masks = _band_masks(config.bands) if config.hash_bits == HASH_BITS else None
        self.hash_index = faiss.IndexBinaryFlat(config.hash_bits)
        if len(self.hashed):
            self.hash_index.add(_codes(self.hashes[self.hashed]))
        self.embedded = arrays["embedded"]
        self.index: faiss.Index | None = None
        if len(self.embedded):
            points = normalize(arrays["embeddings"])
            self.index = faiss.IndexFlatIP(points.shape[1])
            self.index.add(points)

    def name(self, row: int) -> str:
        """The uid (name) of the eval image at `row` (uid order)."""
        start = int(self._name_ends[row - 1]) if row else 0
        return self._name_bytes[start : int(self._name_ends[row])].tobytes().decode()


def _similarities(
    floats: np.ndarray, norms: np.ndarray, queries: np.ndarray, rows: np.ndarray, index: _EvalIndex
) -> np.ndarray:
    """`signature_similarity` of pairs (query, eval row), the queries' signatures given as float32
    `floats` and their `norms`, value for value: the int8 products sum exactly in float32
    (|sum| < 2^24), the norms are float32 like `np.linalg.norm`'s, the quotient float64.
    Computed `_PAIR_CHUNK` pairs at a time."""
    out = np.zeros(len(rows), dtype=np.float64)
    query_norms, eval_norms = norms[queries], index.norms[rows]
    out[(query_norms == 0) & (eval_norms == 0)] = 1.0
    both = np.flatnonzero((query_norms > 0) & (eval_norms > 0))
    for start in range(0, len(both), _PAIR_CHUNK):
        pick = both[start : start + _PAIR_CHUNK]
        evals = index.signatures[rows[pick]].astype(np.float32)
        dots = np.einsum("ij,ij->i", floats[queries[pick]], evals).astype(np.float64)
        out[pick] = dots / (query_norms[pick] * eval_norms[pick])
    return out


def _first_bands(xor: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per pair (the XOR of its hashes), the first LSH band the two agree on; len(masks): none."""
    band = np.full(len(xor), len(masks), dtype=np.int64)
    for position in range(len(masks) - 1, -1, -1):
        band[(xor & masks[position]) == 0] = position
    return band


def _hash_matches(
    hashes: np.ndarray, signatures: np.ndarray, index: _EvalIndex, config: DedupConfig
) -> dict[int, tuple[int, int, float]]:
    """Per query row with a match: (eval row, hash distance, thumbnail cosine).

    `hashes` are the queries' `hash_words` rows (comparable ones only). A match is an eval image
    within `max_hash_distance` bits that agrees with the query on at least one LSH band
    (`dedup.hash_bands`; all of them when it is 0, by pigeonhole; PDQ has none) and whose
    thumbnail cosine is >= `min_thumbnail_similarity`. Of several, the one on the lowest band (PDQ:
    the nearest), then the first in uid order. One FAISS range search for the batch gives the
    candidate pairs; they are ranked per query by (band, row) and their thumbnails compared in
    rounds of growing rank windows (4, 16, 64, ...), each round over the queries still unmatched:
    a query among a crowd of flat images stops at its first passing candidate, as a loop would,
    without one.
    """
    if not len(index.hashed) or not len(hashes):
        return {}
    limits, distances, found = index.hash_index.range_search(_codes(hashes), config.max_distance + 1)
    queries = np.repeat(np.arange(len(hashes), dtype=np.int64), np.diff(limits).astype(np.int64))
    rows = index.hashed[found.astype(np.int64)]
    if index.masks is None:
        bands = distances.astype(np.int64)
        agree = np.arange(len(rows))
    else:
        bands = _first_bands(hashes[queries, 0] ^ index.hashes[rows, 0], index.masks)
        agree = np.flatnonzero(bands < len(index.masks))
    order = agree[np.lexsort((rows[agree], bands[agree], queries[agree]))]
    queries, rows, distances = queries[order], rows[order], distances[order]
    rank = np.arange(len(order)) - np.searchsorted(queries, queries)
    query_floats = signatures.astype(np.float32)
    query_norms = _norms(signatures)
    matches: dict[int, tuple[int, int, float]] = {}
    low, width = 0, 4
    while len(queries):
        window = np.flatnonzero(rank < low + width)  # ranks >= low: the earlier ones are gone
        q = queries[window]
        cosines = _similarities(query_floats, query_norms, q, rows[window], index)
        passing = np.flatnonzero(cosines >= config.min_thumbnail_similarity)
        found, first = np.unique(q[passing], return_index=True)  # the lowest rank of each query
        for query, pair in zip(found.tolist(), passing[first].tolist(), strict=True):
            matches[query] = (int(rows[window[pair]]), int(distances[window[pair]]), float(cosines[pair]))
        low += width
        width *= 4
        rest = (rank >= low) & ~np.isin(queries, found)
        queries, rows, distances, rank = queries[rest], rows[rest], distances[rest], rank[rest]
    return matches


class _DecontaminateFn(beam.DoFn):
    """A batch of (uid, Fingerprint) → its `eval_contamination` decisions, sorted by uid."""

    def __init__(self, config: DedupConfig):
        self._config = config
        self._shared = Shared()  # the eval index, built once per process

    def process(self, batch: list[tuple[str, Fingerprint]], packed: bytes) -> Iterator[Decision]:
        # Built by the first instance of the process that needs it (a batch run has one window).
        index = self._shared.acquire(lambda: _EvalIndex(packed, self._config))
        self._index = index  # keeps the shared index alive while this instance uses it
        if not index.size or not batch:
            return
        matches: dict[str, tuple[str, str]] = {}
        hashed = [i for i, (_, f) in enumerate(batch) if comparable(f)]
        hashes = hash_words([batch[i][1].hash64 for i in hashed], self._config.hash_bits)
        signatures = np.frombuffer(b"".join(batch[i][1].signature for i in hashed), dtype=np.int8)
        signatures = signatures.reshape(len(hashed), SIGNATURE_BYTES)
        for q, (row, distance, similarity) in _hash_matches(hashes, signatures, index, self._config).items():
            evidence = f"hash distance {distance}, thumbnail cosine {similarity:.3f}"
            matches[batch[hashed[q]][0]] = (index.name(row), evidence)
        embedded = [(uid, f) for uid, f in batch if f.embedding is not None and uid not in matches]
        if embedded and index.index is not None:
            cosines, ids = index.index.search(normalize(np.stack([f.embedding for _, f in embedded])), 1)
            for (uid, _), cosine, hit in zip(embedded, cosines[:, 0], ids[:, 0], strict=True):
                if hit >= 0 and cosine >= self._config.eval_min_cosine:
                    name = index.name(int(index.embedded[hit]))
                    matches[uid] = (name, f"embedding cosine {float(cosine):.4f}")
        for uid in sorted(matches):
            name, evidence = matches[uid]
            yield Decision(uid, EVAL, name, f"copy of evaluation image {name}; {evidence}")


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
        packed = (
            samples
            | "EvalFingerprints" >> beam.Map(fingerprint, config.hash, self._image_options)
            | "EvalSet" >> beam.combiners.ToList()  # the eval set, once, on one worker
            | "PackEvalSet" >> beam.Map(pack_eval_set, config.hash_bits)
        )
        return (
            fingerprints
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
            | "Match" >> beam.ParDo(_DecontaminateFn(config), packed=beam.pvalue.AsSingleton(packed))
        )
