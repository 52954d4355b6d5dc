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

Every row that comes back decided is *settled* (`Sample.settled`): it also carries its embeddings
from the output's `img_emb/` and `text_emb/` files, and after the stages `KeepSettled` writes it
exactly as it was. The stages after the crawl still see the settled kept rows, so a newly fetched
image is judged against them, but they never change a settled row's verdict or scores: a retry
that recovers nothing writes what the previous run wrote. A new image that duplicates a settled
kept one is the one removed (it points to the settled one, which then heads the group).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from schemas.layout import SHARD_FILE, read_tar_images, shard_stems
from schemas.reasons import is_retryable_failure
from schemas.sample import BATCH_SCHEMA, METADATA_SCHEMA, Sample, Status
from schemas.verdict import BALANCE, Verdict
from transforms.common.errors import InputError
from transforms.common.verdicts import apply_verdicts, copy_order, verdict

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
    return sample.settled


def _fresh(sample: Sample) -> bool:
    return not sample.settled


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
        if sample.status != Status.PENDING:
            sample = sample.evolve(settled=True)
            if row["uid"] in embeddings:
                image_embedding, text_embedding = embeddings[row["uid"]]
                sample = sample.evolve(image_embedding=image_embedding, text_embedding=text_embedding)
        yield sample


def _is_shard_file(path: str) -> bool:
    return bool(SHARD_FILE.match(path.rstrip("/").rsplit("/", 1)[-1]))


class ReadPreviousOutput(beam.PTransform):
    """Every metadata row of a previous output as a `Sample`, ready for the crawl to retry.

    The shards are checked here (`InputError` when there are none) but matched again when the job
    runs: the job graph holds the folder's pattern, not a list of every shard."""

    def __init__(self, output_dir: str):
        super().__init__()
        shard_metadata_files(output_dir)
        self._pattern = f"{output_dir.rstrip('/')}/*.parquet"

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern)
            | "ShardPaths" >> beam.Map(lambda found: found.path)
            | "OnlyShards" >> beam.Filter(_is_shard_file)
            | "Spread" >> beam.Reshuffle()
            | "ReadShard" >> beam.FlatMap(_read_shard)
        )


_DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate", "semantic_duplicate")
#: The step of the retry's own verdicts (`KeepSettled`): applied after every stage's.
RETRY = BALANCE + 1


class Restored(NamedTuple):
    """What `KeepSettled` gives the shard writer: every row once, and the verdicts to apply to them."""

    rows: beam.PCollection
    verdicts: beam.PCollection


#: What a view holds for an embedding it had: the verdicts' candidate tests ask only whether one is
#: there (`embedded`), and a view never reaches the writer.
_HAD_EMBEDDING = np.zeros(0, dtype=np.float32)


def _view(sample: Sample) -> tuple[str, Sample]:
    """(uid, the sample without its image and with empty embeddings where it had some)."""
    return sample.uid, sample.evolve(
        image=None,
        image_embedding=None if sample.image_embedding is None else _HAD_EMBEDDING,
        text_embedding=None if sample.text_embedding is None else _HAD_EMBEDDING,
    )


def _mark(sample: Sample) -> tuple[str, tuple[str, str | None]]:
    """A settled row as the uid join sees it: (uid, (status, dup_group)), no image or embeddings."""
    return sample.uid, (sample.status, sample.dup_group)


def _restore(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """One uid: its light views as the stages saw them, the stages' verdicts of it and, if the
    previous run settled it, its (status, group) then. A uid fetched again keeps its verdicts (main
    output) and gives its judged views, keyed by group (`new`). A settled uid's verdicts are dropped
    (its row is written as it was read), unless a copy of it was fetched again (then the writer
    applies them to the same copies as here); if it is a kept row that the stages removed as a duplicate
    of another row, it claims that one (`claims`) and waits, as a `claimant`, to hear whether the
    claim held."""
    uid, found = element
    views, verdicts, before = found["views"], found["verdicts"], found["before"]
    judged = apply_verdicts(views, verdicts)  # as the writer applies them to the same copies
    if any(not view.settled for view in views):
        yield from verdicts
        for sample in judged:
            if not sample.settled:
                yield beam.pvalue.TaggedOutput("new", (sample.dup_group or sample.uid, sample))
    settled = [sample for sample in judged if sample.settled]
    if before and settled:
        status, group = min(before, key=lambda mark: (mark[0], mark[1] or ""))
        now = min(settled, key=copy_order)
        if status == Status.SUCCESS and now.reason in _DUPLICATE_REASONS and now.duplicate_of:
            yield beam.pvalue.TaggedOutput("claims", (now.duplicate_of, (uid, now.reason)))
            yield beam.pvalue.TaggedOutput("claimants", (uid, group))


def _resolve(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """A group of new rows (light views): if settled kept rows claim its head, the head is the
    removed duplicate of the first of them, and the group's other new rows point to that one too
    (`heads` names it). Out: the verdicts that say so."""
    head, found = element
    claims = sorted(found["claims"])
    if claims and any(sample.uid == head for sample in found["new"]):  # else no claim holds
        yield from _claimed(head, claims[0], found["new"])


def _claimed(head: str, claim: tuple[str, str], new: list[Sample]) -> Iterator[Any]:
    """The verdicts of a group of new rows whose head duplicates the settled kept row `claim` names."""
    keeper, reason = claim
    yield beam.pvalue.TaggedOutput("heads", (keeper, head))
    for sample in new:
        if sample.uid == head:
            after = sample.decided(
                Status.REJECTED, reason, "dedup", f"duplicates the kept image of {keeper}"
            ).evolve(duplicate_of=keeper, dup_group=keeper)
        else:
            pointed = sample.duplicate_of == head
            after = sample.evolve(dup_group=keeper, duplicate_of=keeper if pointed else sample.duplicate_of)
        found_verdict = verdict(sample, after, RETRY, "any")
        if found_verdict is not None:
            yield found_verdict


def _head_group(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Verdict]:
    """A claimant that new rows now point to heads its group: the verdict naming it, if it had none."""
    uid, found = element
    if found["heads"] and any(group is None for group in found["claimant"]):
        yield Verdict(uid, RETRY, "any", (("dup_group", uid),))


class KeepSettled(beam.PTransform):
    """After the stages of a retry: every settled row exactly as it was read, the rows fetched
    again as the stages left them, and the verdicts to apply to those (the stages', and the ones
    that settle a new duplicate of a settled kept image: the new one is removed), for the shard
    writer to apply (`Restored`).

    The stages judge a retry as they judge a full run (verdicts over light views). The settled
    rows go to the writer straight from the read and the others straight from the stages (a
    sample says which it is: `Sample.settled`), so images cross no join here: the uid join that
    tells the stages' verdicts of new rows from those of settled rows, and the group and claim
    joins, carry light views, marks and verdicts only."""

    def __init__(self, previous: beam.PCollection, verdicts: list[beam.PCollection]):
        super().__init__()
        self._previous = previous
        self._verdicts = verdicts

    def expand(self, samples: beam.PCollection) -> Restored:
        settled = self._previous | "Settled" >> beam.Filter(_settled)
        fresh = samples | "Fresh" >> beam.Filter(_fresh)
        stage_verdicts = (
            self._verdicts | "StageVerdicts" >> beam.Flatten()
            if self._verdicts
            else samples.pipeline | "NoStageVerdicts" >> beam.Create([]).with_output_types(Verdict)
        )
        restored = (
            {
                "views": samples | "Views" >> beam.Map(_view),
                "verdicts": stage_verdicts | "KeyVerdicts" >> beam.Map(lambda v: (v.uid, v)),
                "before": settled | "MarkSettled" >> beam.Map(_mark),
            }
            | "JoinByUid" >> beam.CoGroupByKey()
            | "Restore" >> beam.FlatMap(_restore).with_outputs("new", "claims", "claimants", main="verdicts")
        )
        resolved = (
            {"new": restored.new, "claims": restored.claims}
            | "JoinByGroup" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(_resolve).with_outputs("heads", main="verdicts")
        )
        claimed = (
            {"claimant": restored.claimants, "heads": resolved.heads}
            | "JoinClaims" >> beam.CoGroupByKey()
            | "HeadGroups" >> beam.FlatMap(_head_group)
        )
        rows = (settled, fresh) | "AllRows" >> beam.Flatten()
        verdicts = (restored.verdicts, resolved.verdicts, claimed) | "AllVerdicts" >> beam.Flatten()
        return Restored(rows, verdicts)
