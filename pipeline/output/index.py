"""A searchable FAISS index of a finished output's kept samples, and search over it by text or image.

Build (`build_output_index`, run by `winnow run` after the shards are written): removes an earlier
index, then runs a Beam job on the run's runner and options (`pipeline/output/indexjob.py`) that
counts, trains, fills the index shard by shard on the workers and merges it into `OUTPUT/index/`
(`pipeline/output/indexfiles.py`: `image.index`, with `image.ivfdata` for IVF, `ids.parquet`,
`index.json`). Its type comes from the count and the memory budget
(`pipeline.output.faissindex.choose_index`: Flat, HNSW32 or IVF-PQ, as autofaiss chooses). The
launcher reads only the job's outcome: its memory does not grow with the output.

The same output gives byte-identical files, whatever the number of workers. Remote outputs
(s3://, gs://) are read and written through Beam's `FileSystems`.

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
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.lock import check_finished
from pipeline.output import faissindex
from pipeline.output.errors import SearchError
from pipeline.output.indexfiles import (
    IDS_FILE,
    INDEX_DIR,
    INDEX_FILE,
    INDEX_FILES,
    INFO_FILE,
    PARTS_DIR,
    IndexSummary,
    index_files,
    is_local,
    read_bytes,
    read_faiss,
)
from pipeline.output.indexjob import BuildOutputIndex, IndexJob, read_outcome
from pipeline.runner import make_pipeline, related_job_args
from transforms.common.clustering import normalize
from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import ImageError, process_image
from transforms.embed.config import SHIPPED_MODEL, EmbedConfig, EmbedError

if TYPE_CHECKING:  # the model code (and torch) loads only when a query needs it
    from transforms.embed.clip import LoadedClip, OpenClipModelHandler, Preprocessing

__all__ = [
    "IDS_FILE",
    "INDEX_DIR",
    "INDEX_FILE",
    "INDEX_FILES",
    "INFO_FILE",
    "Hit",
    "IndexSummary",
    "SearchError",
    "build_output_index",
    "index_files",
    "query_model",
    "read_index_info",
    "remove_output_index",
    "search_output",
]

# A query image is brought to the form the crawl stores (EXIF orientation, alpha on white, RGB),
# unresized and losslessly re-encoded; the model's own geometry then resizes it.
_QUERY_IMAGE = ImageOptions(resize_mode="no", encode_format="png", encode_quality=1)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 = best), the sample and the cosine to the query."""

    rank: int
    uid: str
    url: str | None
    caption: str | None
    score: float


# ---------------------------------------------------------------- build


def build_output_index(
    output_dir: str,
    memory_budget_bytes: int,
    runner: str = "local",
    beam_args: Sequence[str] = (),
    workers: int | None = None,
) -> IndexSummary | None:
    """Indexes the kept samples' image embeddings of `output_dir` into `output_dir/index/` with a
    Beam job on `runner` (`beam_args`, `workers` as for the run, `pipeline.runner.make_pipeline`).

    Returns None, and removes an earlier index, when the output holds no embeddings of a kept
    sample (a run without the embed stage, or with `embed.write_embeddings=false`). Raises
    `IndexBudgetError` (a ValueError) when no index type fits `memory_budget_bytes`; the job
    fails (with `SearchError` in one process) when an embedding file does not match its metadata.
    """
    output_dir = output_dir.rstrip("/")
    # Made first: it applies the filesystem options (S3 endpoint and keys) to this process too.
    pipeline = make_pipeline(runner, related_job_args(beam_args, "index"), workers)
    remove_output_index(output_dir)
    had_folder = is_local(output_dir) and os.path.isdir(f"{output_dir}/{INDEX_DIR}")
    job = IndexJob(output_dir, memory_budget_bytes, uuid.uuid4().hex)
    _ = pipeline | "Index" >> BuildOutputIndex(job)
    pipeline.run().wait_until_finish()
    return index_outcome(job, had_folder)


def index_outcome(job: IndexJob, had_folder: bool = True) -> IndexSummary | None:
    """Once `BuildOutputIndex(job)` has run: its summary (`read_outcome`: None when there was
    nothing to index, `IndexBudgetError` when no type fits); removes the local folders it left
    empty (`index/` itself too unless `had_folder`)."""
    try:
        return read_outcome(job)
    finally:
        _remove_empty_folders(job.output_dir, had_folder)


def remove_output_index(output_dir: str) -> None:
    """Deletes `output_dir/index/`'s files (index.json first, so no half-old index is ever read)."""
    folder = f"{output_dir.rstrip('/')}/{INDEX_DIR}"
    for name in INDEX_FILES:
        path = f"{folder}/{name}"
        if FileSystems.exists(path):
            FileSystems.delete([path])


def _remove_empty_folders(output_dir: str, keep_index_folder: bool) -> None:
    """The local parts folder the build left empty, and `index/` if the build made it for nothing
    (object stores have no folders)."""
    if not is_local(output_dir):
        return
    folders = [f"{output_dir}/{INDEX_DIR}/{PARTS_DIR}"] + (
        [] if keep_index_folder else [f"{output_dir}/{INDEX_DIR}"]
    )
    for folder in folders:
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


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
    cannot embed for this index, `InputError` for an output a run is writing or did not finish.
    """
    if (text is None) == (image_path is None):
        raise SearchError("give exactly one query: a text or an image file")
    from transforms.embed.clip import model_identity

    if k < 1:
        raise SearchError(f"k must be >= 1, got {k}")
    output_dir = output_dir.rstrip("/")
    check_finished(output_dir, "winnow search")
    info = read_index_info(output_dir)
    config = query_model(info.get("model"), model, pretrained)
    # The ids are read before the model runs: with Arrow's threads started after torch's, a
    # search process aborted at exit in 7 of 16 runs ("terminate called without an active
    # exception", as in apache/arrow#34314); in this order, in none of 60.
    rows = pq.read_table(io.BytesIO(read_bytes(f"{output_dir}/{INDEX_DIR}/{IDS_FILE}"))).to_pylist()
    index = read_faiss(output_dir)
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
    info: dict[str, Any] = json.loads(read_bytes(path))
    return info


def query_model(identity: str | None, model: str | None = None, pretrained: str | None = None) -> EmbedConfig:
    """The embed config of the model to embed queries with: `model` / `pretrained` when given,
    otherwise the one `identity` (a `clip_model` value) names."""
    if model:
        return EmbedConfig(model=model, pretrained=pretrained or "", batch_size=1)
    if not identity:
        raise SearchError("the index does not say which model made it; pass --model (and --pretrained)")
    if identity.startswith(f"{SHIPPED_MODEL}@"):
        from transforms.embed.clip import model_identity

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
    from transforms.embed.clip import ClipExample

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
    from transforms.embed.clip import OpenClipModelHandler, preprocessing

    try:
        handler = OpenClipModelHandler(config)
        return preprocessing(config), handler, handler.load_model()
    except EmbedError as err:
        raise SearchError(f"cannot load the query model ({err}); pass --model (and --pretrained)") from err


def _query_pixels(image_path: str, geometry: Any) -> np.ndarray:
    from transforms.embed.clip import model_pixels

    try:
        data = read_bytes(image_path)
    except OSError as err:
        raise SearchError(f"cannot read query image {image_path}: {err}") from err
    try:
        stored = process_image(data, _QUERY_IMAGE)
    except ImageError as err:
        raise SearchError(f"{image_path}: {err} ({err.reason})") from err
    return model_pixels(stored.data, geometry)  # as the embed stage does for a stored image
