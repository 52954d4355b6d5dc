"""`winnow evaluate`: train a CLIP model on each output and score it (a DataComp in miniature).

Contract:

* In: outputs of ``winnow run`` (local folders), an eval folder in clip_benchmark's WebDataset
  layout (:mod:`pipeline.evaluate.bench`), an :class:`EvaluateConfig`.
* For each output and each seed, open_clip's trainer trains the same architecture with the same
  recipe for the same number of samples seen on the output's tars (:mod:`pipeline.evaluate.train`);
  clip_benchmark scores the checkpoint.  Only the data differs between rows.
* Out: one :class:`OutputScores` per output (pool size, samples seen, per metric mean and standard
  deviation over the seeds, and each seed's values), printed as a table by :func:`format_table` and
  written as JSON by :func:`write_json` (to a path :func:`check_targets` allowed before training).
* Outputs are compared only when they curated the same pairs: every output keeps a row for every
  input pair, so the digest of its uids names its input (:func:`describe_output`).  An output whose
  digest differs from the first's is flagged (``same_input: false``) and a warning is logged.
* Training files (checkpoints, trainer logs) go to ``workdir``, under one folder per output and
  seed; a checkpoint already there is reused, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.parquet as pq

from pipeline.evaluate.bench import EvalData, find_eval_sets, score_checkpoint
from pipeline.evaluate.train import DEFAULT_MODEL, TrainRecipe, register, resolve_model, train
from transforms.common.files import write_atomically
from transforms.common.manifest import output_holding

LOG = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "check_targets",
    "OutputInfo",
    "OutputScores",
    "describe_output",
    "evaluate_outputs",
    "find_eval_sets",
    "format_table",
    "write_json",
]


@dataclass(frozen=True)
class EvaluateConfig:
    """What every training of one evaluation shares."""

    samples_seen: int = 20_000
    seeds: int = 3
    model: str = DEFAULT_MODEL
    recipe: TrainRecipe = field(default_factory=TrainRecipe)

    def __post_init__(self) -> None:
        if self.samples_seen < 1:
            raise ValueError(f"--samples-seen ({self.samples_seen}) must be >= 1")
        if self.seeds < 1:
            raise ValueError(f"--seeds ({self.seeds}) must be >= 1")


@dataclass(frozen=True)
class OutputInfo:
    """An output as the trainer sees it."""

    output: str
    shards: tuple[str, ...]
    pool_size: int
    rows: int
    input_digest: str


@dataclass
class OutputScores:
    """One output's row of the table."""

    output: str
    label: str
    pool_size: int
    samples_seen: int
    rows: int
    input_digest: str
    same_input: bool
    metrics: dict[str, dict[str, float]]
    runs: list[dict[str, float]]

    def to_json(self) -> dict:
        found = asdict(self)
        metrics = found.pop("metrics")
        return {**found, **metrics}


def describe_output(output: str) -> OutputInfo:
    """The tars, pool size (kept samples) and input digest of a local output folder."""
    if "://" in output:
        raise ValueError(f"{output}: evaluate reads local outputs; copy it here first")
    parquet = sorted(glob.glob(os.path.join(output, "*.parquet")))
    if not parquet or not os.path.exists(os.path.join(output, "stats.json")):
        raise ValueError(f"{output} is not a Winnow output (no stats.json and shard Parquet files)")
    uids: list[str] = []
    kept = 0
    for path in parquet:
        table = pq.read_table(path, columns=["uid", "status"])
        uids.extend(table.column("uid").to_pylist())
        kept += sum(1 for status in table.column("status").to_pylist() if status == "success")
    digest = hashlib.sha256("\n".join(sorted(set(uids))).encode()).hexdigest()[:16]
    shards = tuple(sorted(glob.glob(os.path.join(output, "*.tar"))))
    if not shards:
        raise ValueError(f"{output} kept no sample (no .tar shard): there is nothing to train on")
    return OutputInfo(output=output, shards=shards, pool_size=kept, rows=len(uids), input_digest=digest)


def evaluate_outputs(
    outputs: Sequence[str],
    eval_dir: str,
    config: EvaluateConfig,
    workdir: str,
    labels: Sequence[str] | None = None,
) -> list[OutputScores]:
    """Trains and scores every output (see the module); returns one row per output, in order."""
    data = EvalData(find_eval_sets(eval_dir))
    spec = resolve_model(config.model)
    register(
        spec, os.path.join(workdir, "model")
    )  # for scoring in this process; the trainer registers its own
    infos = [describe_output(output) for output in outputs]
    names = list(labels) if labels else [_label(info.output) for info in infos]
    rows = []
    for index, (info, label) in enumerate(zip(infos, names, strict=True)):
        same = info.input_digest == infos[0].input_digest
        if not same:
            LOG.warning(
                "%s curated other pairs than %s (input digest %s, not %s): its row is not comparable",
                info.output, infos[0].output, info.input_digest, infos[0].input_digest,
            )  # fmt: skip
        runs = []
        for seed in range(config.seeds):
            folder = os.path.join(workdir, f"{index:02d}-{label}", f"seed{seed}")
            LOG.info("training on %s (%d samples kept), seed %d", info.output, info.pool_size, seed)
            checkpoint = train(info.shards, spec, config.samples_seen, seed, folder, config.recipe)
            runs.append(score_checkpoint(spec.name, checkpoint, data))
        rows.append(
            OutputScores(
                output=info.output,
                label=label,
                pool_size=info.pool_size,
                samples_seen=config.samples_seen,
                rows=info.rows,
                input_digest=info.input_digest,
                same_input=same,
                metrics=_summarise(runs),
                runs=runs,
            )
        )
    return rows


def _summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of each metric over the seeds."""
    summary = {}
    for metric in runs[0]:
        values = np.array([run[metric] for run in runs], dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[metric] = {"mean": float(values.mean()), "std": std}
    return summary


def _label(output: str) -> str:
    return os.path.basename(os.path.normpath(output)) or output


def format_table(rows: Sequence[OutputScores]) -> str:
    """Rows = outputs; columns = pool size, samples seen, the mean zero-shot accuracy and each
    classification set's, and retrieval recall@5 (mean ± std over the seeds)."""
    per_set = sorted({m for row in rows for m in row.metrics if m.endswith("/zeroshot_acc")})
    columns = [("zeroshot_acc", "zeroshot_acc")]
    columns += [(metric, f"{metric.split('/')[0]} acc") for metric in per_set] if len(per_set) > 1 else []
    columns += [(m, m) for m in ("retrieval_r5", "image_r5", "text_r5")]
    columns = [(metric, title) for metric, title in columns if any(metric in row.metrics for row in rows)]
    width = max([len("output")] + [len(row.label) for row in rows])
    head = f"{'output':<{width}}  {'pool':>7}  {'seen':>7}  " + "  ".join(f"{t:>15}" for _, t in columns)
    lines = [head]
    for row in rows:
        cells = []
        for metric, _ in columns:
            found = row.metrics.get(metric)
            cells.append(f"{found['mean']:>7.3f} ± {found['std']:.3f}" if found else f"{'-':>15}")
        flag = "" if row.same_input else "  (other input)"
        lines.append(
            f"{row.label:<{width}}  {row.pool_size:>7,}  {row.samples_seen:>7,}  " + "  ".join(cells) + flag
        )
    seeds = len(rows[0].runs) if rows else 0
    lines.append(f"mean ± std over {seeds} training seed(s); pool = samples kept, seen = samples trained on")
    return "\n".join(lines)


#: Marks an evaluation report as Winnow's, so that ``--report`` replaces only its own reports.
GENERATOR = "winnow evaluate"
#: The keys of every report ``winnow evaluate`` writes (the earlier ones carry no ``generator``).
_REPORT_KEYS = frozenset({"eval", "model", "samples_seen", "seeds", "recipe", "outputs"})


def _is_report(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and (found.get("generator") == GENERATOR or set(found) >= _REPORT_KEYS)


def check_targets(report: str, workdir: str) -> None:
    """``ValueError`` unless ``report`` may be written and ``workdir`` used, checked before any
    training, by the rules of ``winnow audit --out``: a folder or a file that is not an evaluation
    report Winnow wrote is never replaced, and nothing is written inside a Winnow output folder
    (the next run there would find a file its manifest does not name; its ``stats.json`` is what
    ``--retry-failed`` reads)."""
    for flag, path in (("--report", report), ("--workdir", workdir)):
        output = output_holding(path)
        if output is not None:
            raise ValueError(
                f"{flag} {path} is inside the Winnow output {output}; write the evaluation elsewhere"
            )
    if os.path.isdir(report):
        raise ValueError(f"--report {report} is a folder; give the path of the JSON file to write")
    if os.path.exists(report) and not _is_report(report):
        raise ValueError(f"--report {report} exists and is not a report Winnow wrote; it is left as it is")


def write_json(rows: Sequence[OutputScores], path: str, eval_dir: str, config: EvaluateConfig) -> None:
    """``evaluation.json``: the plan and one object per output (see :meth:`OutputScores.to_json`),
    written atomically; `check_targets` says beforehand whether ``path`` may be written."""
    document = {
        "generator": GENERATOR,
        "eval": eval_dir,
        "model": config.model,
        "samples_seen": config.samples_seen,
        "seeds": config.seeds,
        "recipe": asdict(config.recipe),
        "outputs": [row.to_json() for row in rows],
    }
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    write_atomically(os.path.abspath(path), text.encode("utf-8"))
