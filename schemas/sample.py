"""The sample record: one image/alt-text pair as it moves through the pipeline.

Every stage reads and adds fields of `Sample`; `METADATA_SCHEMA` is the Arrow schema of the
per-shard Parquet file that holds one row for **every** sample, kept or not. The encoded image
travels in `Sample.image` but is written to the WebDataset tar only, never to Parquet.

Columns (all nullable unless noted):

| column | set by | meaning |
|---|---|---|
| uid (not null) | read | 128-bit hex key from url + caption (`make_uid`), the WebDataset key |
| url, caption | read | as given in the input list |
| extra | read | JSON object of the input's `save_additional_columns` |
| caption_clean | text | normalised caption (the raw one stays in `caption`); the tar's `.txt` |
| num_tokens | text | words, or characters for Chinese/Japanese/Korean, of `caption_clean` |
| lang, lang_score | text | fastText lid.176 language code and probability of `caption_clean` |
| status (not null) | every stage | `pending` until decided, then `success`, `failed` or `rejected` |
| reason | the deciding stage | machine-readable reason code, e.g. `http_404`, `timeout` |
| stage | the deciding stage | which stage set a non-success status |
| error | the deciding stage | human-readable detail (exception message) |
| http_status | crawl | final HTTP status code |
| content_type | crawl | the server's Content-Type header |
| source_format | crawl | the format Pillow identified (JPEG, PNG, WEBP, GIF, ...) |
| original_width, original_height | crawl | decoded size, EXIF orientation applied |
| width, height | crawl | size of the stored image |
| sha256 | crawl | hex digest of the downloaded bytes |
| image_bytes | crawl | size of the stored (re-encoded) image |
| blocklist | safety | the list a `blocklisted` row matched: url, domain, md5, sha1, sha256, pdq |
| nsfw_score | safety | the NSFW model's probability that the image is not safe for work, in [0, 1] |
| face_bboxes | safety | faces on the stored image, normalised [x0, y0, x1, y1] (DataComp's convention) |
| clip_score | embed | cosine of the image and text embeddings |
| clip_model | embed | identity of the model that made the score (name/tag, or checkpoint @ digest) |
| embedding_source | crawl | where a pool's embeddings were read (`pool:<file>#<arrays>`); null: computed |
| dup_group | dedup | uid of the sample a duplicate group keeps, on every member, the kept one included |
| duplicate_of | text, dedup | on a removed copy: the uid kept (same URL or image), or the eval image |
| noise_prob | noise | probability that the caption does not describe the image, in [0, 1] |
| caption_agreement | noise | mean cosine of the caption to the captions of its nearest images |
| image_agreement | noise | mean cosine of the image to the images of its nearest captions |
| concepts | noise | the image's top vocabulary terms, zero-shot cosine or class probability: {term, score} |
| caption_original | noise | the caption the stage judged (`caption_clean`); the tar's `.json` keeps it |
| caption_completed | noise | the original followed by the visual concepts it does not name |
| caption_pseudo | noise | the caption of the nearest clean neighbour, or a generated one |
| pseudo_source | noise | where `caption_pseudo` comes from: `neighbour:<uid>` or `model:<identity>` |
| caption_bow | noise | bag-of-words caption of the visual concepts, frequent terms down-weighted |
| caption_source | noise | the caption in the tar's `.txt`: original, completed, generated, neighbour or bow |
| matched_entries | balance | the metadata entries the caption matched (at most `balance.max_matched`) |
| balance_prob | balance | the caption's keep probability, 1 − ∏(1 − pₑ) over its matched entries |

The crawl carries what a probe measured of the original image (`probes`: digests, PDQ, faces) to
the safety stage, which turns it into columns and drops it; it is never written.
The embed stage also carries `image_embedding` / `text_embedding` (L2-normalised float16) to the
writer, which stores them beside the shard as `.npy` files rather than in the Parquet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa


class Status:
    """Values of the `status` column."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    REJECTED = "rejected"


#: `caption_source` → the column holding the caption the noise stage chose.
_CHOSEN_COLUMN = {
    "completed": "caption_completed",
    "generated": "caption_pseudo",
    "neighbour": "caption_pseudo",
    "bow": "caption_bow",
}


def chosen_caption(row: Mapping[str, Any]) -> str | None:
    """The caption a training set gets (the tar's `.txt`) from a sample's fields or a metadata row:
    the noise stage's choice, else the cleaned caption, else the raw one."""
    column = _CHOSEN_COLUMN.get(row.get("caption_source") or "")
    chosen = row.get(column) if column else None
    if chosen is not None:
        return chosen
    return row.get("caption_clean") if row.get("caption_clean") is not None else row.get("caption")


def make_uid(url: str | None, caption: str | None) -> str:
    """A stable 128-bit hex key for a pair, the same on every run and runner (DataComp-style)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update((url or "").encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update((caption or "").encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclasses.dataclass
class Sample:
    """One image/alt-text pair. Stages return modified copies via `evolve` / `decided`."""

    uid: str
    url: str | None
    caption: str | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    caption_clean: str | None = None
    num_tokens: int | None = None
    lang: str | None = None
    lang_score: float | None = None
    status: str = Status.PENDING
    reason: str | None = None
    stage: str | None = None
    error: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    source_format: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    image_bytes: int | None = None
    image: bytes | None = dataclasses.field(default=None, repr=False)
    image_ext: str | None = None
    probes: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    blocklist: str | None = None
    nsfw_score: float | None = None
    face_bboxes: list[list[float]] | None = None
    clip_score: float | None = None
    clip_model: str | None = None
    embedding_source: str | None = None
    image_embedding: Any = dataclasses.field(default=None, repr=False)
    text_embedding: Any = dataclasses.field(default=None, repr=False)
    dup_group: str | None = None
    duplicate_of: str | None = None
    noise_prob: float | None = None
    caption_agreement: float | None = None
    image_agreement: float | None = None
    concepts: list[tuple[str, float]] | None = None
    caption_original: str | None = None
    caption_completed: str | None = None
    caption_pseudo: str | None = None
    pseudo_source: str | None = None
    caption_bow: str | None = None
    caption_source: str | None = None
    matched_entries: list[str] | None = None
    balance_prob: float | None = None
    #: A row a retry read back already decided (`transforms/read/previous.py`): the stages see it
    #: so that new images are judged against it, but its row is written as it was read. Never a
    #: column.
    settled: bool = False

    def chosen_caption(self) -> str | None:
        """The caption a training set gets (the tar's `.txt`): the noise stage's choice, else the
        cleaned caption, else the raw one."""
        return chosen_caption(self.__dict__)

    def evolve(self, **changes: Any) -> Sample:
        """A copy with `changes` applied: `dataclasses.replace` without re-running `__init__`
        (several times faster, which matters at a few hundred thousand samples per second)."""
        unknown = changes.keys() - self.__dict__.keys()
        if unknown:
            raise TypeError(f"Sample has no field(s) {sorted(unknown)}")
        new = object.__new__(Sample)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def decided(self, status: str, reason: str | None, stage: str, error: str | None = None) -> Sample:
        """A copy carrying a decision; the image (and what was measured of it) is dropped unless
        the sample succeeded."""
        if status == Status.SUCCESS:
            return self.evolve(status=status, reason=reason, stage=stage, error=error)
        return self.evolve(status=status, reason=reason, stage=stage, error=error, image=None, probes=None)


METADATA_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("extra", pa.string()),
        pa.field("caption_clean", pa.string()),
        pa.field("num_tokens", pa.int32()),
        pa.field("lang", pa.string()),
        pa.field("lang_score", pa.float32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("content_type", pa.string()),
        pa.field("source_format", pa.string()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("image_bytes", pa.int64()),
        pa.field("blocklist", pa.string()),
        pa.field("nsfw_score", pa.float32()),
        pa.field("face_bboxes", pa.list_(pa.list_(pa.float32()))),
        pa.field("clip_score", pa.float32()),
        pa.field("clip_model", pa.string()),
        pa.field("embedding_source", pa.string()),
        pa.field("dup_group", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("noise_prob", pa.float32()),
        pa.field("caption_agreement", pa.float32()),
        pa.field("image_agreement", pa.float32()),
        pa.field("concepts", pa.list_(pa.struct([("term", pa.string()), ("score", pa.float32())]))),
        pa.field("caption_original", pa.string()),
        pa.field("caption_completed", pa.string()),
        pa.field("caption_pseudo", pa.string()),
        pa.field("pseudo_source", pa.string()),
        pa.field("caption_bow", pa.string()),
        pa.field("caption_source", pa.string()),
        pa.field("matched_entries", pa.list_(pa.string())),
        pa.field("balance_prob", pa.float32()),
        pa.field("key", pa.string()),
    ]
)


#: Columns of a row batch: how the reader and the text stage carry samples before the crawl, as
#: Arrow record batches (one Python object per row only from the crawl on). `extra` is JSON text.
#: `duplicate_of` names the kept row of a URL that the text stage found more than once.
BATCH_SCHEMA = pa.schema(
    [METADATA_SCHEMA.field(name) for name in (*METADATA_SCHEMA.names[:12], "duplicate_of")]
)
_BATCH_FIELDS = tuple(BATCH_SCHEMA.names)


def batch_from_samples(samples: list[Sample]) -> pa.RecordBatch:
    """The row batch holding `samples` (`BATCH_SCHEMA`); fields past the text stage are not carried."""
    columns: dict[str, list[Any]] = {name: [getattr(s, name) for s in samples] for name in _BATCH_FIELDS}
    columns["extra"] = [extra_json(s.extra) for s in samples]
    return pa.RecordBatch.from_pydict(columns, schema=BATCH_SCHEMA)


def samples_from_batch(batch: pa.RecordBatch) -> list[Sample]:
    """One `Sample` per row of a row batch."""
    return samples_from_columns({name: batch.column(name).to_pylist() for name in _BATCH_FIELDS})


def samples_from_columns(columns: dict[str, list[Any]]) -> list[Sample]:
    """One `Sample` per row of `BATCH_SCHEMA` columns given as Python lists (`extra` as JSON)."""
    samples = []
    for values in zip(*(columns[name] for name in _BATCH_FIELDS), strict=True):
        sample = object.__new__(Sample)
        fields = dict(_DEFAULTS)
        fields.update(zip(_BATCH_FIELDS, values, strict=True))
        fields["extra"] = json.loads(fields["extra"]) if fields["extra"] else {}
        sample.__dict__ = fields
        samples.append(sample)
    return samples


def extra_json(extra: dict[str, Any]) -> str | None:
    """`extra` as the Parquet and the row batches hold it: JSON with sorted keys, null when empty."""
    return json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else None


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Sample) if f.default is not dataclasses.MISSING}


_FLOAT32_FIELDS = tuple(f.name for f in METADATA_SCHEMA if f.type == pa.float32())


def _float32(value: float) -> float:
    """`value` rounded to the nearest float32, the precision the Parquet keeps."""
    return float(np.float32(value))


def sample_to_metadata_row(sample: Sample) -> dict[str, Any]:
    """The Parquet row of a sample (`METADATA_SCHEMA`); `key` is set only for samples in the tar."""
    row = {name: getattr(sample, name) for name in METADATA_SCHEMA.names if hasattr(sample, name)}
    row["extra"] = extra_json(sample.extra)
    for name in _FLOAT32_FIELDS:  # as the Parquet stores them, so the tar's .json says the same
        if row[name] is not None:
            row[name] = _float32(row[name])
    if sample.face_bboxes is not None:  # as the Parquet stores them
        row["face_bboxes"] = [[_float32(v) for v in box] for box in sample.face_bboxes]
    if sample.concepts is not None:
        row["concepts"] = [{"term": term, "score": _float32(score)} for term, score in sample.concepts]
    row["key"] = sample.uid if sample.status == Status.SUCCESS and sample.image is not None else None
    return row
