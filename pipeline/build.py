"""Assembles the Beam pipeline: read → the selected stages, in order → shards → stats.

Rows travel as Arrow record batches from the reader through the text stage, which works on
whole batches, and as one `Sample` per row from the crawl on (it fetches one image at a time).

The crawl and embed stages work sample by sample, without a shuffle. The deciding stages (dedup,
noise) judge light views of the samples and emit verdicts (`transforms/common/verdicts.py`); the
samples, with their image bytes and embeddings, go from the embed stage straight to the shard
grouping, where they meet every verdict: their heavy bytes cross one shuffle. The noise stage
judges the dedup stage's survivors: its views are the light samples with dedup's verdicts applied.
A retry (`retry_from`) judges the same way; `KeepSettled` then sends the rows a retry read back
settled to the shard grouping as they were read, with the stages' verdicts of the other rows and
its own: no images cross a join there either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import apache_beam as beam

from pipeline.config import RunConfig
from schemas.pools import datacomp_embeddings
from schemas.sample import Sample, samples_from_batch
from transforms.balance import BalanceConcepts, JudgeBalance
from transforms.balance.stage import candidate as balance_candidate
from transforms.common.outputs import WithSummary
from transforms.common.routing import downloaded
from transforms.common.verdicts import ApplyVerdicts, light
from transforms.crawl import DownloadImages
from transforms.crawl.metadata import MetadataScores, PoolMetadata
from transforms.read import KeepSettled, ReadPreviousOutput, ReadUrlBatches
from transforms.safety.config import is_head
from transforms.safety.probe import SafetyProbe
from transforms.text import FilterText
from transforms.write import WriteShards, WriteStats
from transforms.write.shards import ROWS_READ

StageFactory = Callable[[RunConfig, "str | None"], beam.PTransform]

# The model stages (safety's checks, embed, dedup's decontamination, noise) import their modules
# when a run has them: those load torch and Beam's RunInference, seconds of start-up that a run
# without them (a plain download, a text filter) does not pay.


def _safety(config: RunConfig, progress: str | None) -> beam.PTransform:
    from transforms.safety import CheckSafety

    return CheckSafety(config.safety, progress)


def _embed(config: RunConfig, progress: str | None) -> beam.PTransform:
    from transforms.embed import EmbedImages

    return EmbedImages(config.embed, progress)


def _dedup(config: RunConfig, progress: str | None, judge: bool = False) -> beam.PTransform:
    from transforms.dedup import DeduplicateImages, JudgeDuplicates

    embed = config.embed if "embed" in config.run.stages else None
    return (JudgeDuplicates if judge else DeduplicateImages)(config.dedup, config.crawl, embed, progress)


def _noise(config: RunConfig, progress: str | None, judge: bool = False) -> beam.PTransform:
    from transforms.noise import JudgeCaptions, RepairCaptions

    return (JudgeCaptions if judge else RepairCaptions)(config.noise, config.embed, progress)


#: Stages in pipeline order, named after their modules in `transforms/`.
STAGES: dict[str, StageFactory] = {
    "text": lambda config, progress: FilterText(config.text, progress),
    "crawl": lambda config, progress: DownloadImages(config.crawl, progress, probe=_probe(config)),
    "safety": _safety,
    "embed": _embed,
    "dedup": _dedup,
    "noise": _noise,
    "balance": lambda config, progress: BalanceConcepts(config.balance, progress),
}
#: Stages that take and give row batches (they come first).
BATCH_STAGES = ("text",)
#: The deciding stages as judges: samples (or (light views, samples)) → verdicts.
JUDGES: dict[str, StageFactory] = {
    "dedup": lambda config, progress: _dedup(config, progress, judge=True),
    "noise": lambda config, progress: _noise(config, progress, judge=True),
    "balance": lambda config, progress: JudgeBalance(config.balance, progress),
}


def resource_hints(name: str, config: RunConfig) -> dict[str, str]:
    """Beam resource hints of a stage: the accelerator sits on the embedding step alone, so that a
    runner that fits resources per step (Dataflow) keeps the crawl and text steps on CPU workers."""
    if name == "embed" and config.embed.accelerator:
        return {"accelerator": config.embed.accelerator}
    return {}


def build_pipeline(
    pipeline: beam.Pipeline,
    config: RunConfig,
    inputs: Sequence[str],
    output_dir: str,
    progress_dir: str | None = None,
    retry_from: str | None = None,
    archives: bool | None = None,
    pool: PoolSource | None = None,
    complete: bool = False,
) -> beam.PCollection:
    """Adds Winnow's transforms to `pipeline`; returns the PCollection holding the stats dict.

    `inputs` are the paths, folders or globs given, matched when the job runs; `archives` says
    whether they hold web archives (None: matched here to find out). With `retry_from` (a previous
    output folder) its rows are the input instead of `inputs`,
    and the row-batch stages, which those rows already passed, do not run again. `pool` says
    the inputs are a pool of downloaded shards: the crawl stage reads their images from the tars.
    `complete`: the job marks the output finished itself (no launcher waits to add the index and
    the report, `--no-wait`); otherwise it leaves the manifest `running` for the launcher.
    """
    rows = None  # row batches written as they are (see `WriteShards`)
    if retry_from is not None:
        previous = samples = pipeline | "ReadPrevious" >> ReadPreviousOutput(retry_from)
        total = samples | "CountSamples" >> beam.combiners.Count.Globally()
    else:
        reader = ReadUrlBatches(inputs, config.input, progress_dir, config.crawl, archives=archives)
        read = pipeline | "Read" >> reader
        batches = read.rows
        # Stages decide but never drop rows, so the shard count is fixed once the lists are read.
        total = (
            batches
            | "RowsPerBatch" >> beam.Map(lambda batch: batch.num_rows)
            | "CountSamples" >> beam.CombineGlobally(sum)
        )
        for name in BATCH_STAGES:
            if name in config.run.stages:
                batches = batches | name.capitalize() >> STAGES[name](config, progress_dir)
        if any(name not in BATCH_STAGES for name in config.run.stages):
            samples = batches | "Samples" >> beam.FlatMap(samples_from_batch)
        else:  # no stage works sample by sample: the rows go to their shards as Arrow batches
            rows = batches
            samples = pipeline | "NoSamples" >> beam.Create([]).with_output_types(Sample)
    # Every row read must reach a shard: stats.json says how many were read, and the launcher
    # fails the run when fewer (or more) were written (`pipeline.jobs.check_rows`).
    summaries = [total | "RowsReadSummary" >> beam.Map(lambda n: (ROWS_READ, n))]
    if retry_from is None:  # pairs harvested from web archives or pages
        summaries.append(read.summary | "HarvestSummary" >> beam.Map(lambda s: ("harvest", s)))
    verdicts: list[beam.PCollection] = []
    for name in STAGES:
        if name not in config.run.stages or name in BATCH_STAGES:
            continue
        label = name.capitalize()
        hints = resource_hints(name, config)
        if name == "crawl" and _screens_urls(config):  # the URL blocklist, before anything is fetched
            from transforms.safety import ScreenUrls

            samples = samples | "ScreenUrls" >> ScreenUrls(config.safety, progress_dir)
        if name in JUDGES:
            judged = _judge(name, config, progress_dir, samples, verdicts)
            verdicts.append(judged.rows if isinstance(judged, WithSummary) else judged)
        else:
            stage = _stage(name, config, progress_dir, pool)
            judged = samples | label >> (stage.with_resource_hints(**hints) if hints else stage)
            samples = judged.rows if isinstance(judged, WithSummary) else judged
            if name == "embed" and "safety" in config.run.stages and is_head(config.safety.nsfw_model):
                from transforms.safety import ScoreNsfwFromEmbeddings

                samples = samples | "SafetyNsfwHead" >> ScoreNsfwFromEmbeddings(config.safety, progress_dir)
        if isinstance(judged, WithSummary):  # a summary for stats.json under the stage's name
            summaries.append(judged.summary | f"{label}Summary" >> beam.Map(lambda s, n=name: (n, s)))
    if retry_from is not None:  # rows the previous run settled are written as they were
        restored = samples | "KeepSettled" >> KeepSettled(previous, verdicts)
        samples = restored.rows
        verdicts = [restored.verdicts]  # the stages' verdicts of settled rows are dropped there
    writer = WriteShards(output_dir, config.output, progress_dir, total, verdicts, rows)
    shards = samples | "WriteShards" >> writer
    extra = summaries | "StageSummaries" >> beam.Flatten() if summaries else None
    stages = [s for s in config.run.stages if retry_from is None or s not in BATCH_STAGES]
    return shards | "WriteStats" >> WriteStats(output_dir, ["read", *stages], extra, complete)


@dataclasses.dataclass(frozen=True)
class PoolSource:
    """The run reads a pool of downloaded shards (`schemas/pools.py`)."""

    #: The model identity whose embeddings the pool carries and the embed stage reuses; None
    #: when the embed stage computes them.
    embeddings: str | None = None
    #: The clip-retrieval output holding them (`input.embeddings`), or None: beside the shards.
    clip_retrieval: str | None = None
    #: The pool's metadata files (`input.metadata`: a folder or a glob), joined by uid, or None.
    metadata: str | None = None


def _probe(config: RunConfig) -> SafetyProbe | None:
    """What the crawl measures for the safety stage (hashes of the original, faces), if anything."""
    if "safety" not in config.run.stages or not config.safety.probes_images:
        return None
    kinds = frozenset({"md5", "sha1"}) if config.safety.hash_blocklist else frozenset()
    return SafetyProbe(config.safety, kinds)


def _screens_urls(config: RunConfig) -> bool:
    return "safety" in config.run.stages and config.safety.url_blocklist is not None


def _stage(
    name: str, config: RunConfig, progress_dir: str | None, pool: PoolSource | None
) -> beam.PTransform:
    """The stage `name`; with a pool, the crawl reads its tars and the embed stage its embeddings."""
    if pool is not None and name == "crawl":
        metadata = (
            PoolMetadata(pool.metadata, config.input.save_additional_columns) if pool.metadata else None
        )
        return DownloadImages(
            config.crawl,
            progress_dir,
            pool=True,
            embeddings=pool.embeddings,
            clip_retrieval=pool.clip_retrieval,
            probe=_probe(config),
            metadata=metadata,
        )
    if pool is not None and name == "embed":
        from transforms.embed import EmbedImages

        reuse_only = pool.embeddings is not None
        return EmbedImages(config.embed, progress_dir, reuse_only=reuse_only, ranked=_pool_scores(pool))
    return STAGES[name](config, progress_dir)


def _pool_scores(pool: PoolSource) -> beam.PTransform | None:
    """The scores `embed.keep_fraction` ranks when the pool's metadata holds them for the model
    whose embeddings are reused: every metadata row's, as DataComp's `apply_filter.py` ranks."""
    datacomp = datacomp_embeddings(pool.embeddings) if pool.embeddings else None
    if pool.metadata is None or datacomp is None:
        return None
    return MetadataScores(pool.metadata, datacomp.score_column)


def _judge(
    name: str,
    config: RunConfig,
    progress_dir: str | None,
    samples: beam.PCollection,
    verdicts: list[beam.PCollection],
) -> beam.PCollection | WithSummary:
    """A deciding stage on `samples`. Dedup fingerprints the images before its first shuffle, so it
    takes the samples; noise judges light views of the downloaded samples with the verdicts
    before it applied, and is given the samples too for the steps that need the pixels."""
    label = name.capitalize()
    judge = JUDGES[name](config, progress_dir)
    if name == "dedup":
        return samples | label >> judge
    if name == "balance":  # captions only: the samples kept so far, or not yet fetched
        views = samples | f"{label}Candidates" >> beam.Filter(balance_candidate)
        views = views | f"{label}Light" >> beam.Map(light)  # the noise verdicts find embedded copies
        if verdicts:
            views = (
                views
                | f"{label}Views" >> ApplyVerdicts(list(verdicts))
                | f"{label}Still" >> beam.Filter(balance_candidate)
            )
        return views | label >> judge
    views = samples | f"{label}Downloaded" >> beam.Filter(downloaded) | f"{label}Light" >> beam.Map(light)
    if verdicts:
        views = views | f"{label}Views" >> ApplyVerdicts(list(verdicts))
    return (views, samples) | label >> judge
