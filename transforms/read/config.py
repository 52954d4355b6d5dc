"""The `input` section: what the URL lists (or archives, or pages) look like."""

from __future__ import annotations

import codecs
import dataclasses
from typing import Literal

from transforms.common.checks import Check

InputFormat = Literal[
    "auto", "parquet", "csv", "tsv", "jsonl", "txt", "wat", "warc", "arc", "pages", "webdataset"
]


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The `input` section: what the URL list looks like."""

    #: Column holding the image URL.
    url_col: str = "url"
    #: Column holding the alt-text / caption; empty string for lists without captions.
    caption_col: str = "caption"
    #: Extra input columns carried into every sample's metadata (img2dataset's name).
    save_additional_columns: tuple[str, ...] = ()
    #: `auto` picks by file suffix (after an optional `.gz`/`.bz2`; `.warc.wat.gz` is `wat`,
    #: `.warc.gz` is `warc`, `.arc.gz` is `arc`, the Internet Archive's format before WARC).
    #: `.tar` (`.tar.gz`, `.tgz`, `.tar.bz2`) is `webdataset`: a pool of downloaded shards
    #: (img2dataset, DataComp, Winnow), read
    #: with the siblings its tars have (`schemas/pools.py`); its images are not fetched again.
    #: `pages`: the list's URLs are web pages, fetched and harvested for
    #: their image/alt-text pairs (the list's own format is taken from its suffix).
    input_format: InputFormat = "auto"
    #: Largest web-archive record (a page, decompressed) harvested; a larger one is skipped.
    max_record_bytes: int = 10_000_000
    #: Charset of CSV, TSV and txt lists: `auto` (UTF-8, else the charset detected on the lines
    #: that are not UTF-8) or a codec name (`latin-1`, `cp1251`, `gb18030`…).
    encoding: str = "auto"
    #: A pool's embeddings as `clip-retrieval inference` wrote them (a folder with `img_emb/`,
    #: `text_emb/`, `metadata/`; its `image_path` is the WebDataset key): joined to the pool's
    #: samples by key and reused when `embeddings_model` is the embed stage's model. "" = none.
    embeddings: str = ""
    #: The model that made `embeddings`, as the embed stage names models (`ViT-B-32/openai`:
    #: clip-retrieval's `--clip_model ViT-B/32`).
    embeddings_model: str = ""
    #: A pool's metadata kept apart from its shards, as DataComp's `download_upstream.py` writes
    #: it (`metadata/<scale>/*.parquet` with `.npz` siblings): a folder (with its subfolders) or
    #: a glob of Parquet files (local, s3://, gs://), joined to the pool's samples by `uid`.
    #: Their columns (scores, `face_bboxes`, original sizes) and embeddings go with the samples,
    #: and `embed.keep_fraction` ranks every metadata row's score, as DataComp's baselines do.
    #: "" = none (a pool's metadata is then read beside its tars, by name).
    metadata: str = ""

    def __post_init__(self) -> None:
        check = Check("input", self)
        check.not_empty("url_col", "save_additional_columns")
        check.at_least(1, "max_record_bytes")
        if bool(self.embeddings) != bool(self.embeddings_model):
            raise ValueError("input.embeddings and input.embeddings_model go together: set both or neither")
        if self.metadata and self.embeddings:
            raise ValueError(
                "input.metadata and input.embeddings: set one (the metadata's .npz files hold the "
                "pool's embeddings)"
            )
        if self.metadata.strip() != self.metadata:
            raise ValueError(f"input.metadata: {self.metadata!r} has spaces around it")
        if self.encoding != "auto":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"input.encoding: unknown charset '{self.encoding}'") from None
