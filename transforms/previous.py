"""Read a previous run's output back as samples: the input of `winnow run --retry-failed PREVIOUS`.

In: an output folder (any Beam filesystem) with its `NNNNN.parquet` metadata and `NNNNN.tar` shards.
Out: one `Sample` per metadata row, every row of the previous run and nothing else:

- a row the crawl failed for a reason a later run may fix (`transforms.fetch.is_retryable_failure`:
  timeouts, DNS and connection errors, 5xx, 429, an unreachable robots.txt) comes back `pending`,
  as the text stage left it, so the crawl fetches it again;
- a kept row comes back `success` with its image read from the tar, so the stages after the crawl
  judge it again together with the newly fetched samples (a new image may duplicate it);
- every other row (rejected by a rule, opted out, a 404, a duplicate) comes back as it was.

A kept row whose image is missing from its tar (a shard cut short) is fetched again, and logged.
Rows that were never crawled (`pending`) stay pending, so a retry also finishes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.sample import BATCH_SCHEMA, METADATA_SCHEMA, Sample, Status
from transforms.fetch import is_retryable_failure
from transforms.readers import InputError
from transforms.writers import read_tar_images, shard_stems

LOG = logging.getLogger(__name__)
_TEXT_FIELDS = tuple(BATCH_SCHEMA.names)
_ROW_FIELDS = tuple(name for name in METADATA_SCHEMA.names if name != "key")


def shard_metadata_files(output_dir: str) -> list[str]:
    """The `NNNNN.parquet` files of an output folder, sorted; `InputError` if there are none."""
    output_dir = output_dir.rstrip("/")
    stems = shard_stems(output_dir)
    if not stems:
        raise InputError(f"{output_dir}: no NNNNN.parquet shards; --retry-failed needs a finished output")
    return [f"{output_dir}/{stem}.parquet" for stem in stems]


def tar_images(tar_path: str) -> dict[str, tuple[str, bytes]]:
    """uid → (extension, bytes) of the images in a WebDataset shard (none if the tar is missing)."""
    if not FileSystems.exists(tar_path):
        return {}
    return {key: (ext, data) for key, ext, data in read_tar_images(tar_path)}


def sample_from_row(row: dict[str, Any], image: tuple[str, bytes] | None) -> Sample:
    """The sample a previous run's metadata row stands for in a retry (the module docstring's rules)."""
    retry = row["status"] == Status.FAILED and row["stage"] == "crawl" and is_retryable_failure(row["reason"])
    lost = row["status"] == Status.SUCCESS and row["key"] is not None and image is None
    names = _TEXT_FIELDS if retry or lost else _ROW_FIELDS
    fields: dict[str, Any] = {name: row[name] for name in names}
    fields["extra"] = json.loads(row["extra"]) if row["extra"] else {}
    if retry or lost:
        fields.update(status=Status.PENDING, reason=None, stage=None, error=None)
    else:
        if row.get("concepts") is not None:
            fields["concepts"] = [(c["term"], c["score"]) for c in row["concepts"]]
        if row["status"] == Status.SUCCESS and image is not None:
            fields["image_ext"], fields["image"] = image
    return Sample(**fields)


def _read_shard(parquet_path: str) -> Iterator[Sample]:
    tar_path = parquet_path[: -len(".parquet")] + ".tar"
    images = tar_images(tar_path)
    with FileSystems.open(parquet_path) as handle:
        rows = pq.read_table(handle).to_pylist()
    for row in rows:
        image = images.get(row["uid"])
        if row["status"] == Status.SUCCESS and row["key"] is not None and image is None:
            LOG.warning("%s: the image of kept row %s is missing; it is fetched again", tar_path, row["uid"])
        yield sample_from_row(row, image)


class ReadPreviousOutput(beam.PTransform):
    """Every metadata row of a previous output as a `Sample`, ready for the crawl to retry."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._files = shard_metadata_files(output_dir)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Shards" >> beam.Create(self._files)
            | "Spread" >> beam.Reshuffle()
            | "ReadShard" >> beam.FlatMap(_read_shard)
        )
