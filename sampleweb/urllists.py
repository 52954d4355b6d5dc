"""URL lists for downloaders and the matching ground truth of a served sample web.

Contract: :func:`write_url_lists` reads ``<out_dir>/manifest.parquet`` and writes, in manifest
order (one row per sample, same row index in both files):

* ``<out_dir>/urls.parquet``: ``url``, ``caption`` — the input of a downloader such as the
  Winnow pipeline or img2dataset (``url_col="url"``, ``caption_col="caption"``);
* ``<out_dir>/truth.parquet``: ``url`` plus the ground-truth columns :data:`TRUTH_COLUMNS`.

URLs are absolute: ``base_url`` (trailing slash ignored) followed by the sample's path.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sampleweb.corpus import MANIFEST_NAME
from transforms.common.manifest import record_files

URLS_NAME = "urls.parquet"
TRUTH_NAME = "truth.parquet"
TRUTH_COLUMNS: tuple[str, ...] = (
    "lang",
    "concepts",
    "noise",
    "dup_group",
    "dup_variant",
    "split",
    "expected_status",
    "expected_reason",
    "fault",
    "format",
    "width",
    "height",
)


def write_url_lists(out_dir: str, base_url: str) -> tuple[str, str]:
    """Write ``urls.parquet`` and ``truth.parquet`` for ``base_url``; returns their paths."""
    manifest = pq.read_table(os.path.join(out_dir, MANIFEST_NAME))
    urls = pc.binary_join_element_wise(base_url.rstrip("/"), manifest.column("path"), "")
    urls_table = pa.table({"url": urls, "caption": manifest.column("caption")})
    truth_table = pa.table({"url": urls, **{name: manifest.column(name) for name in TRUTH_COLUMNS}})
    urls_path = os.path.join(out_dir, URLS_NAME)
    truth_path = os.path.join(out_dir, TRUTH_NAME)
    pq.write_table(urls_table, urls_path, compression="zstd")
    pq.write_table(truth_table, truth_path, compression="zstd")
    record_files(out_dir, [URLS_NAME, TRUTH_NAME])
    return urls_path, truth_path
