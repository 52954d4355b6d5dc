"""Read a previous run's output back as samples: the input of `winnow run --retry-failed PREVIOUS`.

In: an output folder (any Beam filesystem) with its `NNNNN.parquet` metadata and `NNNNN.tar` shards.
Out: one `Sample` per metadata row, every row of the previous run and nothing else:

- a row the crawl failed for a reason a later run may fix (`schemas.reasons.is_retryable_failure`:
  timeouts, DNS and connection errors, 5xx, 429, an unreachable robots.txt) comes back `pending`,
  as the text stage left it, so the crawl fetches it again;
- a kept row comes back `success` with its image read from the tar, so the stages after the crawl
  judge it again together with the newly fetched samples (a new image may duplicate it);
- every other row (rejected by a rule, opted out, a 404, a duplicate) comes back as it was.

A kept row whose image is missing from its tar (a shard cut short) is fetched again, and logged.
Rows that were never crawled (`pending`) stay pending, so a retry also finishes them.

Every row that comes back decided is *settled*: it also carries its embeddings from the output's
`img_emb/` and `text_emb/` files, and after the stages `KeepSettled` writes it exactly as it was.
The stages after the crawl still see the settled kept rows, so a newly fetched image is judged
against them, but they never change a settled row's verdict or scores: a retry that recovers
nothing writes what the previous run wrote. A new image that duplicates a settled kept one is the
one removed (it points to the settled one, which then heads the group).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.layout import read_tar_images, shard_stems
from schemas.reasons import is_retryable_failure
from schemas.sample import BATCH_SCHEMA, METADATA_SCHEMA, Sample, Status
from transforms.common.errors import InputError

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


def shard_embeddings(output_dir: str, stem: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """uid → (image, text) embedding of a shard's embedded samples (none if it has no files)."""
    meta = f"{output_dir}/metadata/metadata_{stem}.parquet"
    if not FileSystems.exists(meta):
        return {}
    with FileSystems.open(meta) as handle:
        uids = pq.read_table(handle, columns=["uid"]).column("uid").to_pylist()
    arrays = []
    for folder in ("img_emb", "text_emb"):
        with FileSystems.open(f"{output_dir}/{folder}/{folder}_{stem}.npy") as handle:
            arrays.append(np.load(io.BytesIO(handle.read()), allow_pickle=False))
    return {uid: (arrays[0][i], arrays[1][i]) for i, uid in enumerate(uids)}


def _settled(sample: Sample) -> bool:
    return sample.status != Status.PENDING


def _read_shard(parquet_path: str) -> Iterator[Sample]:
    output_dir, _, name = parquet_path.rpartition("/")
    stem = name[: -len(".parquet")]
    tar_path = f"{output_dir}/{stem}.tar"
    images = tar_images(tar_path)
    embeddings = shard_embeddings(output_dir, stem)
    with FileSystems.open(parquet_path) as handle:
        rows = pq.read_table(handle).to_pylist()
    for row in rows:
        image = images.get(row["uid"])
        if row["status"] == Status.SUCCESS and row["key"] is not None and image is None:
            LOG.warning("%s: the image of kept row %s is missing; it is fetched again", tar_path, row["uid"])
        sample = sample_from_row(row, image)
        if _settled(sample) and row["uid"] in embeddings:
            image_embedding, text_embedding = embeddings[row["uid"]]
            sample = sample.evolve(image_embedding=image_embedding, text_embedding=text_embedding)
        yield sample


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


_DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")


def _restore(element: tuple[str, dict[str, list[Sample]]]) -> Iterator[Any]:
    """One uid's rows: a settled row as it was read (main output), else the stages' verdict keyed
    by its group (`new`). A settled kept row that the stages removed as a duplicate of another row
    claims that one (`claims`) and waits, as a `claimant`, to hear whether the claim held."""
    uid, found = element
    judged, before = found["judged"], found["before"]
    if not before:
        for sample in judged:
            yield beam.pvalue.TaggedOutput("new", (sample.dup_group or sample.uid, sample))
        return
    settled, now = before[0], (judged[0] if judged else None)
    if settled.status == Status.SUCCESS and now and now.reason in _DUPLICATE_REASONS and now.duplicate_of:
        yield beam.pvalue.TaggedOutput("claims", (now.duplicate_of, (uid, now.reason)))
        yield beam.pvalue.TaggedOutput("claimants", (uid, settled))
    else:
        yield settled


def _resolve(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """A group of new rows: if settled kept rows claim its head, the head is the removed duplicate
    of the first of them, and the group's other new rows point to that one too (`heads` names it)."""
    head, found = element
    claims = sorted(found["claims"])
    if not claims or not any(sample.uid == head for sample in found["new"]):
        yield from found["new"]  # a claim on a settled row changes nothing
        return
    keeper, reason = claims[0]
    yield beam.pvalue.TaggedOutput("heads", (keeper, head))
    for sample in found["new"]:
        if sample.uid == head:
            sample = sample.decided(
                Status.REJECTED, reason, "dedup", f"duplicates the kept image of {keeper}"
            )
            yield sample.evolve(duplicate_of=keeper, dup_group=keeper)
        else:
            pointed = sample.duplicate_of == head
            yield sample.evolve(dup_group=keeper, duplicate_of=keeper if pointed else sample.duplicate_of)


def _head_group(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Sample]:
    """A claimant as it was, heading its group if new rows now point to it."""
    uid, found = element
    for settled in found["claimant"]:
        yield settled.evolve(dup_group=settled.dup_group or uid) if found["heads"] else settled


class KeepSettled(beam.PTransform):
    """After the stages of a retry: every settled row exactly as it was read, and the stages'
    verdict for the rows fetched again (a new duplicate of a settled kept image is the one removed)."""

    def __init__(self, previous: beam.PCollection):
        super().__init__()
        self._previous = previous

    def expand(self, judged: beam.PCollection) -> beam.PCollection:
        before = (
            self._previous
            | "Settled" >> beam.Filter(_settled)
            | "KeyBefore" >> beam.Map(lambda s: (s.uid, s))
        )
        restored = (
            {"judged": judged | "KeyJudged" >> beam.Map(lambda s: (s.uid, s)), "before": before}
            | "JoinByUid" >> beam.CoGroupByKey()
            | "Restore" >> beam.FlatMap(_restore).with_outputs("new", "claims", "claimants", main="settled")
        )
        resolved = (
            {"new": restored.new, "claims": restored.claims}
            | "JoinByGroup" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve).with_outputs("heads", main="rows")
        )
        claimants = (
            {"claimant": restored.claimants, "heads": resolved.heads}
            | "JoinClaims" >> beam.CoGroupByKey()
            | "HeadGroups" >> beam.FlatMap(_head_group)
        )
        return (restored.settled, resolved.rows, claimants) | "AllRows" >> beam.Flatten()
