"""What a finished output folder holds, by name: the contract between the writer and its readers.

An output folder (local, s3://, gs://) holds, per shard `NNNNN` (`shard_name`): `NNNNN.parquet`
(every sample's row) and `NNNNN.tar` (the kept samples' WebDataset members), and with the embed
stage `img_emb/img_emb_NNNNN.npy`, `text_emb/text_emb_NNNNN.npy` and
`metadata/metadata_NNNNN.parquet` (clip-retrieval's layout); then `stats.json`, `report.html`,
`index/` and `winnow-manifest.json`. The writer (`transforms/write`) writes these names; a
previous run's reader (`transforms/read/previous.py`), the audit, the report and the index
(`pipeline/output`) read them through this module.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SHARD_FILE = re.compile(r"^\d{5,}\.(tar|parquet)$")
STATS_FILE = "stats.json"


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_stems(output_dir: str) -> list[str]:
    """The `NNNNN` of every shard of an output folder (its `NNNNN.parquet` files), sorted."""
    matched = FileSystems.match([f"{output_dir.rstrip('/')}/*.parquet"])[0].metadata_list
    names = (m.path.rstrip("/").rsplit("/", 1)[-1] for m in matched)
    return sorted(name.removesuffix(".parquet") for name in names if SHARD_FILE.match(name))


def read_tar_images(path: str, keys: set[str] | None = None) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of the images in a shard's tar, streamed member by member.

    With `keys`, only those are read (others are skipped by seeking) and reading stops once all
    are found. The `.txt` and `.json` members are not images."""
    left = set(keys) if keys is not None else None
    with (
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle,
        tarfile.open(fileobj=handle, mode="r|" if left is None else "r:") as tar,
    ):
        for member in tar:
            key, dot, ext = member.name.rpartition(".")
            if not (dot and member.isfile() and ext not in ("txt", "json")):
                continue
            if left is not None and key not in left:
                continue
            extracted = tar.extractfile(member)
            if extracted is not None:
                yield key, ext, extracted.read()
                if left is not None:
                    left.discard(key)
                    if not left:
                        return
