"""`winnow evaluate --ablate`: one pipeline run per curation configuration, on the same input.

Contract:

* :data:`ABLATIONS` lists the configurations, each a name, the stages it runs and the config keys it
  sets on top of the user's config (``--config``/``--set``, which also carry what the input needs,
  e.g. the crawl's network settings):

  - ``no-filter``: the crawl alone, DataComp's "no filtering" pool;
  - ``text``: the text stage's filters before the crawl;
  - ``clip-top30``: the crawl and the CLIP score, keeping the top 30 % of the pool by score
    (DataComp's CLIP-score baseline, ``embed.keep_fraction=0.3``, on the raw pool);
  - ``dedup``: text, crawl, safety, embed and deduplication, no noise stage;
  - ``default``: Winnow's default stages (``run.stages`` of the user's config);
  - ``repair``: the default with caption repair on (``noise.replace_above=0.5``,
    ``noise.min_coverage=1.0``: noisy captions replaced, partial ones completed);
  - ``balance``: the default plus MetaCLIP balancing, when the user's config names
    ``balance.entries`` (it is skipped otherwise, and the log says so).
* Each run writes ``<workdir>/outputs/<name>``; an output there whose ``stats.json`` records the
  same config is reused (the runs are deterministic), so a second ``--ablate`` only trains; one of
  another config is an error, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import RunConfig, load_config

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ablation:
    """One curation configuration: its name, stages (None: the user's) and extra ``--set`` keys."""

    name: str
    stages: tuple[str, ...] | None
    overrides: tuple[str, ...] = ()


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("no-filter", ("crawl",)),
    Ablation("text", ("text", "crawl")),
    Ablation("clip-top30", ("crawl", "embed"), ("embed.keep_fraction=0.3",)),
    Ablation("dedup", ("text", "crawl", "safety", "embed", "dedup")),
    Ablation("default", None),
    Ablation("repair", None, ("noise.replace_above=0.5", "noise.min_coverage=1.0")),
    Ablation("balance", None),
)


def ablation_configs(
    base_path: str | None,
    overrides: Sequence[str],
    names: Sequence[str] | None = None,
    base_text: str | None = None,
) -> list[tuple[Ablation, RunConfig]]:
    """The configurations to run (all, or those ``names``), each with its effective config; bad
    keys raise ConfigError, an unknown name ValueError."""
    known = [ablation.name for ablation in ABLATIONS]
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ValueError(f"--ablations: unknown {unknown}; known: {','.join(known)}")
    base = load_config(base_path, list(overrides), base_text=base_text)
    found = []
    for ablation in ABLATIONS:
        if names and ablation.name not in names:
            continue
        stages = ablation.stages or base.run.stages
        if ablation.name == "balance":
            if not base.balance.entries:
                LOG.warning("ablation balance skipped: the config names no balance.entries")
                continue
            stages = (*base.run.stages, "balance")
        keys = [*overrides, *ablation.overrides, f"run.stages=[{','.join(stages)}]"]
        found.append((ablation, load_config(base_path, keys, base_text=base_text)))
    return found


def run_ablations(
    configs: Sequence[tuple[Ablation, RunConfig]],
    inputs: Sequence[str],
    workdir: str,
    workers: int | None = None,
) -> list[tuple[str, str]]:
    """Runs every configuration on ``inputs``; returns (name, output folder) pairs, in order."""
    from pipeline.jobs import run_job

    done = []
    for ablation, config in configs:
        output = os.path.join(workdir, "outputs", ablation.name)
        stats_path = os.path.join(output, "stats.json")
        if os.path.exists(stats_path):
            with open(stats_path, encoding="utf-8") as handle:
                recorded = json.load(handle).get("config")
            if recorded != json.loads(json.dumps(config.to_dict())):
                raise FileExistsError(
                    f"{output} holds a run of another config than ablation {ablation.name}'s; "
                    "choose another --workdir"
                )
            LOG.info("ablation %s: reusing %s (same config)", ablation.name, output)
        else:
            LOG.info("ablation %s: stages %s", ablation.name, ",".join(config.run.stages))
            run_job(config, list(inputs), output, workers=workers)
        done.append((ablation.name, output))
    return done
