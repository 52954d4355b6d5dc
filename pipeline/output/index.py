"""A searchable FAISS index of a finished output's kept samples, and search over it by text or image.

Build (`build_output_index`, run by `winnow run` after the shards are written): reads
`metadata/metadata_NNNNN.parquet` and the row-aligned `img_emb/img_emb_NNNNN.npy` one shard at a
time, keeps the rows with status `success`, and writes into `OUTPUT/index/`:

- `image.index`: a FAISS inner-product index of their normalised image embeddings (row i has id
  i); its type comes from the count and the memory budget (`pipeline.output.faissindex.choose_index`:
  Flat, HNSW32 or IVF-PQ, as autofaiss chooses);
- `ids.parquet`: row i of the index → uid, url, caption, clip_score, shard;
- `index.json`: index type, count, dimension, the model identity (`clip_model`) and the budget.
  It is written last and removed first, so an index without it is never read.

The same output gives byte-identical files: shards are read in name order, and HNSW graph
insertion, which depends on thread timing, runs on one thread. Remote outputs (s3://, gs://) are
written through Beam's `FileSystems` from a local temporary file.

Search (`search_output`): embeds a text query with the text tower (cross-modal text → image, as in
ALIGN) or an image file with the image tower, using the model named in `index.json` (or the one
given) and the embed stage's own preprocessing and model handler, so a stored image comes back
with a cosine of ~1. The last model used stays loaded, so repeated searches in one process are fast.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.output import faissindex
from pipeline.output.errors import SearchError
from schemas.sample import Status
from transforms.common.clustering import normalize
from transforms.common.files import write_atomically
from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import ImageError, process_image
from transforms.embed.clip import (
    ClipExample,
    LoadedClip,
    OpenClipModelHandler,
    Preprocessing,
    model_identity,
    model_pixels,
    preprocessing,
)
from transforms.embed.config import SHIPPED_MODEL, EmbedConfig, EmbedError

INDEX_DIR = "index"
INDEX_FILE = "image.index"
IDS_FILE = "ids.parquet"
INFO_FILE = "index.json"
#: The files of an output's index, in the order they are deleted (index.json first).
INDEX_FILES = (INFO_FILE, INDEX_FILE, IDS_FILE)
_METADATA_FILE = re.compile(r"/metadata_(\d{5,})\.parquet$")
_SHARD_FILE = re.compile(r"/\d{5,}\.parquet$")
_IDS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("clip_score", pa.float32()),
        pa.field("shard", pa.string(), nullable=False),
    ]
)
# A query image is brought to the form the crawl stores (EXIF orientation, alpha on white, RGB),
# unresized and losslessly re-encoded; the model's own geometry then resizes it.
_QUERY_IMAGE = ImageOptions(resize_mode="no", encode_format="png", encode_quality=1)


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What `index.json` records about a written index."""

    type: str
    count: int
    dim: int
    model: str | None
    memory_budget_bytes: int


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 = best), the sample and the cosine to the query."""

    rank: int
    uid: str
    url: str | None
    caption: str | None
    score: float


# ---------------------------------------------------------------- build


def build_output_index(output_dir: str, memory_budget_bytes: int) -> IndexSummary | None:
    """Indexes the kept samples' image embeddings of `output_dir` into `output_dir/index/`.

    Returns None, and removes an earlier index, when the output holds no embeddings of a kept
    sample (a run without the embed stage, or with `embed.write_embeddings=false`). Raises
    ValueError when no index type fits `memory_budget_bytes`, `SearchError` when an embedding
    file does not match its metadata file.
    """
    output_dir = output_dir.rstrip("/")
    remove_output_index(output_dir)
    chunks: list[np.ndarray] = []
    ids: list[pa.Table] = []
    for shard, meta, embeddings in _kept_shards(output_dir):
        chunks.append(embeddings)
        ids.append(meta.append_column("shard", pa.array([shard] * meta.num_rows, pa.string())))
    count = sum(len(chunk) for chunk in chunks)
    if count == 0:
        return None
    embeddings = np.concatenate(chunks)
    del chunks
    dim = embeddings.shape[1]
    kind = faissindex.choose_index(count, dim, memory_budget_bytes)
    index = _build_deterministic(embeddings, memory_budget_bytes, kind)
    summary = IndexSummary(kind, count, dim, _model_of(output_dir), memory_budget_bytes)

    folder = f"{output_dir}/{INDEX_DIR}"
    _write_faiss(index, f"{folder}/{INDEX_FILE}")
    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(ids).cast(_IDS_SCHEMA), buffer, compression="zstd")
    write_atomically(f"{folder}/{IDS_FILE}", buffer.getvalue())
    info = dataclasses.asdict(summary) | {"metric": "cosine"}
    write_atomically(f"{folder}/{INFO_FILE}", json.dumps(info, indent=2, sort_keys=True).encode())
    return summary


def remove_output_index(output_dir: str) -> None:
    """Deletes `output_dir/index/`'s files (index.json first, so no half-old index is ever read)."""
    folder = f"{output_dir.rstrip('/')}/{INDEX_DIR}"
    for name in INDEX_FILES:
        path = f"{folder}/{name}"
        if FileSystems.exists(path):
            FileSystems.delete([path])


def _kept_shards(output_dir: str) -> Iterator[tuple[str, pa.Table, np.ndarray]]:
    """(shard, metadata rows, float16 image embeddings) of each shard's kept samples, in shard order."""
    matched = FileSystems.match([f"{output_dir}/metadata/metadata_*.parquet"])[0].metadata_list
    shards = sorted(found.group(1) for m in matched if (found := _METADATA_FILE.search(m.path)))
    for shard in shards:
        meta = pq.read_table(io.BytesIO(_read(f"{output_dir}/metadata/metadata_{shard}.parquet")))
        emb_path = f"{output_dir}/img_emb/img_emb_{shard}.npy"
        if not FileSystems.exists(emb_path):
            raise SearchError(f"{emb_path} is missing beside metadata_{shard}.parquet")
        embeddings = np.load(io.BytesIO(_read(emb_path)), allow_pickle=False)
        if embeddings.ndim != 2 or len(embeddings) != meta.num_rows:
            raise SearchError(
                f"{emb_path} holds {embeddings.shape} embeddings for {meta.num_rows} metadata rows"
            )
        kept = pc.equal(meta.column("status"), Status.SUCCESS)
        if pc.any(kept).as_py():
            rows = meta.select(["uid", "url", "caption", "clip_score"]).filter(kept)
            yield shard, rows, embeddings[kept.to_numpy(zero_copy_only=False)]


def _build_deterministic(embeddings: np.ndarray, memory_budget_bytes: int, kind: str) -> faiss.Index:
    """`build_index`, with HNSW's graph built on one thread: parallel insertion (faiss's
    `hnsw_add_vertices`, with per-node locks) links nodes in an order that depends on timing.
    Flat adds in row order, and IVF-PQ's k-means and list assignment do not depend on the thread
    count (the same bytes on 1 and 2 threads here)."""
    if not kind.startswith("HNSW"):
        return faissindex.build_index(embeddings, memory_budget_bytes)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return faissindex.build_index(embeddings, memory_budget_bytes)
    finally:
        faiss.omp_set_num_threads(threads)


def _model_of(output_dir: str) -> str | None:
    """The `clip_model` of the output's kept samples (one run uses one model)."""
    matched = FileSystems.match([f"{output_dir}/*.parquet"])[0].metadata_list
    for path in sorted(m.path for m in matched if _SHARD_FILE.search(m.path)):
        table = pq.read_table(io.BytesIO(_read(path)), columns=["clip_model"])
        models = [m for m in table.column("clip_model").to_pylist() if m]
        if models:
            return str(models[0])
    return None


# ---------------------------------------------------------------- search

_TIE_MARGIN = 16


def search_output(
    output_dir: str,
    text: str | None = None,
    image_path: str | None = None,
    k: int = 10,
    model: str | None = None,
    pretrained: str | None = None,
) -> list[Hit]:
    """The `k` kept samples whose images are nearest to the query (a text or an image file).

    The query is embedded by the model that made the output's embeddings (from `index.json`) or
    by `model` / `pretrained` when given (e.g. an output made from a model folder now elsewhere).
    Raises `SearchError` for a missing output or index, an unreadable query image or a model that
    cannot embed for this index.
    """
    if (text is None) == (image_path is None):
        raise SearchError("give exactly one query: a text or an image file")
    if k < 1:
        raise SearchError(f"k must be >= 1, got {k}")
    output_dir = output_dir.rstrip("/")
    info = read_index_info(output_dir)
    config = query_model(info.get("model"), model, pretrained)
    # The ids are read before the model runs: with Arrow's threads started after torch's, a
    # search process aborted at exit in 7 of 16 runs ("terminate called without an active
    # exception", as in apache/arrow#34314); in this order, in none of 60.
    rows = pq.read_table(io.BytesIO(_read(f"{output_dir}/{INDEX_DIR}/{IDS_FILE}"))).to_pylist()
    index = _read_faiss(f"{output_dir}/{INDEX_DIR}/{INDEX_FILE}")
    query = _embed_query(config, text, image_path)
    if query.shape[0] != index.d:
        raise SearchError(
            f"model {model_identity(config)} gives {query.shape[0]}-dimensional embeddings, "
            f"the index holds {index.d}-dimensional ones (made with {info.get('model')})"
        )
    # A few more than k, so that samples with equal scores (the same image) are ranked by uid, not
    # by the order FAISS's heap happened to keep them in, which depends on k. Scores are given to
    # five decimals: copies of one image differ below that by float noise alone.
    scores, found = faissindex.search(index, query[None, :], min(k + _TIE_MARGIN, index.ntotal))
    ranked = sorted(
        ((round(float(score), 5), int(i)) for score, i in zip(scores[0], found[0], strict=True) if i >= 0),
        key=lambda hit: (-hit[0], rows[hit[1]]["uid"]),
    )
    return [
        Hit(rank, rows[i]["uid"], rows[i]["url"], rows[i]["caption"], score)
        for rank, (score, i) in enumerate(ranked[:k], start=1)
    ]


def read_index_info(output_dir: str) -> dict[str, Any]:
    """`index.json` of an output; `SearchError` when the output or its index is missing."""
    output_dir = output_dir.rstrip("/")
    path = f"{output_dir}/{INDEX_DIR}/{INFO_FILE}"
    if not FileSystems.exists(path):
        if not FileSystems.exists(f"{output_dir}/stats.json"):
            raise SearchError(f"{output_dir} is not a Winnow output (no stats.json)")
        raise SearchError(
            f"{output_dir} has no index ({INDEX_DIR}/{INFO_FILE}); a run writes one with the embed "
            "stage and output.index=true"
        )
    info: dict[str, Any] = json.loads(_read(path))
    return info


def query_model(identity: str | None, model: str | None = None, pretrained: str | None = None) -> EmbedConfig:
    """The embed config of the model to embed queries with: `model` / `pretrained` when given,
    otherwise the one `identity` (a `clip_model` value) names."""
    if model:
        return EmbedConfig(model=model, pretrained=pretrained or "", batch_size=1)
    if not identity:
        raise SearchError("the index does not say which model made it; pass --model (and --pretrained)")
    if identity.startswith(f"{SHIPPED_MODEL}@"):
        config = EmbedConfig(model=SHIPPED_MODEL, batch_size=1)
        current = model_identity(config)
        if current != identity:
            raise SearchError(
                f"the output was embedded with {identity}, but the shipped model is now {current}; "
                f"pass --model {SHIPPED_MODEL} to search with it anyway"
            )
        return config
    import open_clip

    name, slash, tag = identity.partition("/")
    if slash and open_clip.get_model_config(name) is not None:  # `name/tag` of open_clip's registry
        return EmbedConfig(model=name, pretrained="" if tag == "random-init" else tag, batch_size=1)
    return EmbedConfig(model=identity, batch_size=1)  # a model folder, as the run named it


def _embed_query(config: EmbedConfig, text: str | None, image_path: str | None) -> np.ndarray:
    """The L2-normalised float32 embedding of the query, made as the embed stage makes its own."""
    prep, handler, loaded = _query_encoder(config)
    if text is not None:
        import torch

        with torch.inference_mode():
            tokens = prep.tokenizer([text]).to(loaded.device)
            vector = loaded.model.encode_text(tokens, normalize=True)[0].float().cpu().numpy()
    else:
        assert image_path is not None
        # The stage's handler, for its exact pixel normalisation; the empty caption's half is unused.
        example = ClipExample(_query_pixels(image_path, prep.geometry), prep.tokenizer([""])[0].numpy())
        vector = list(handler.run_inference([example], loaded))[0].image
    return normalize(vector)[0]


@functools.lru_cache(maxsize=1)
def _query_encoder(config: EmbedConfig) -> tuple[Preprocessing, OpenClipModelHandler, LoadedClip]:
    """The model's preprocessing, handler and loaded model; the last one stays loaded for the next query."""
    try:
        handler = OpenClipModelHandler(config)
        return preprocessing(config), handler, handler.load_model()
    except EmbedError as err:
        raise SearchError(f"cannot load the query model ({err}); pass --model (and --pretrained)") from err


def _query_pixels(image_path: str, geometry: Any) -> np.ndarray:
    try:
        data = _read(image_path)
    except OSError as err:
        raise SearchError(f"cannot read query image {image_path}: {err}") from err
    try:
        stored = process_image(data, _QUERY_IMAGE)
    except ImageError as err:
        raise SearchError(f"{image_path}: {err} ({err.reason})") from err
    return model_pixels(stored.data, geometry)  # as the embed stage does for a stored image


# ---------------------------------------------------------------- files on any Beam filesystem


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def _read(path: str) -> bytes:
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        data: bytes = handle.read()
    return data


def _write_faiss(index: faiss.Index, path: str) -> None:
    if _is_local(path):
        faissindex.write_index(index, path)
        return
    with tempfile.TemporaryDirectory(prefix="winnow-index-") as workdir:
        local = os.path.join(workdir, INDEX_FILE)
        faissindex.write_index(index, local)
        with open(local, "rb") as source, FileSystems.create(path) as target:  # one upload
            shutil.copyfileobj(source, target, 1 << 20)


def _read_faiss(path: str) -> faiss.Index:
    if _is_local(path):
        return faissindex.read_index(path)
    with tempfile.TemporaryDirectory(prefix="winnow-index-") as workdir:
        local = os.path.join(workdir, INDEX_FILE)
        source = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        with source, open(local, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        return faissindex.read_index(local)
