"""Training one CLIP model on an output's shards with open_clip's own trainer (`open_clip_train.main`).

Contract:

* :func:`train` runs ``python -m pipeline.evaluate.train`` in a child process (the trainer sets up
  logging, a distributed device and data-loader workers of its own) and returns the path of the
  checkpoint it saved.  Every output of one evaluation is trained with the same
  :class:`TrainRecipe`, model and seed, for the same number of samples seen: only the data differs
  (DataComp's rule).
* The data is the output's WebDataset tars as they are (`<uid>.jpg` image, `<uid>.txt` the shipped
  caption), read by the trainer's ``--dataset-type webdataset`` loader; one epoch of
  ``samples_seen`` samples cycles over a pool smaller than that.
* The architecture is trained from random weights: an open_clip model name (``ViT-B-32``), or a
  JSON file of an open_clip model config (bare, or the ``model_cfg`` of an ``open_clip_config.json``
  as in a ``local-dir:`` folder).  The child registers it under its name
  (``open_clip.add_model_config``) before the trainer starts.
* ``workdir/plan.json`` records what was trained (shards, model, recipe, samples seen, seed).  A
  checkpoint of the same plan is reused (an interrupted evaluation resumes) and an unfinished
  training of it is started again; a workdir of another plan, or with files but no plan, is a
  ``FileExistsError``: nothing Winnow did not write for this plan is overwritten.
* A trainer that fails raises :class:`TrainingError` with the last lines of its log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

#: The shipped small model's folder: its architecture is the CPU configuration's.
SHIPPED_MODEL_DIR = (
    Path(__file__).resolve().parents[2] / "transforms" / "embed" / "models" / "winnow-tiny-clip"
)
DEFAULT_MODEL = "winnow-tiny-clip"


class TrainingError(RuntimeError):
    """open_clip's trainer exited with an error."""


@dataclass(frozen=True)
class TrainRecipe:
    """The fixed hyper-parameters of every training in one evaluation (open_clip_train's flags)."""

    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.1
    warmup_fraction: float = 0.1
    workers: int = 1
    #: ``fp32`` on CPU; ``amp`` on a GPU.
    precision: str = "fp32"

    def trainer_args(self, samples_seen: int) -> list[str]:
        steps = max(1, -(-samples_seen // self.batch_size))
        return [
            f"--batch-size={self.batch_size}",
            f"--lr={self.lr}",
            f"--wd={self.wd}",
            f"--warmup={max(1, int(steps * self.warmup_fraction))}",
            f"--workers={self.workers}",
            f"--precision={self.precision}",
        ]


@dataclass(frozen=True)
class ModelSpec:
    """The architecture: its open_clip name, and the JSON config registered under it (if not built in)."""

    name: str
    config: dict | None = None


def missing_requirements() -> list[str]:
    """What the trainer and clip_benchmark need and this environment lacks (the ``eval`` extra)."""
    from importlib import metadata, util

    missing = [
        name
        for name in ("open_clip_train", "clip_benchmark", "pandas", "braceexpand")
        if not util.find_spec(name)
    ]
    try:
        version = metadata.version("webdataset")
    except metadata.PackageNotFoundError:
        return [*missing, "webdataset<=0.2.86"]
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts > (0, 2, 86):
        missing.append(f"webdataset<=0.2.86 (found {version}: open_clip's loader fails on it)")
    return missing


def resolve_model(model: str) -> ModelSpec:
    """``winnow-tiny-clip`` (the shipped architecture), an open_clip model name, or a JSON config file."""
    if model == DEFAULT_MODEL:
        model = str(SHIPPED_MODEL_DIR / "open_clip_config.json")
    if model.endswith(".json"):
        try:
            with open(model, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except (OSError, ValueError) as err:
            raise ValueError(f"--model: cannot read {model}: {err}") from err
        config = loaded.get("model_cfg", loaded) if isinstance(loaded, dict) else None
        if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
            raise ValueError(f"--model: {model} is not an open_clip model config (no vision_cfg/text_cfg)")
        name = Path(model).parent.name if Path(model).name == "open_clip_config.json" else Path(model).stem
        return ModelSpec(name=name, config=config)
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"--model: {model!r} is neither an open_clip model name nor a config .json file")
    return ModelSpec(name=model)


def register(spec: ModelSpec, folder: str) -> None:
    """Makes ``spec.name`` known to open_clip in this process (a config file in ``folder``)."""
    if spec.config is None:
        return
    import open_clip

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{spec.name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(spec.config, handle, indent=1, sort_keys=True)
    open_clip.add_model_config(path)


def train(
    shards: Sequence[str],
    spec: ModelSpec,
    samples_seen: int,
    seed: int,
    workdir: str,
    recipe: TrainRecipe,
) -> str:
    """Trains ``spec`` on ``shards`` for ``samples_seen`` samples; returns the checkpoint's path."""
    logs = os.path.join(workdir, "logs")
    name = f"seed{seed}"
    checkpoint = os.path.join(logs, name, "checkpoints", "epoch_1.pt")
    plan = {
        "shards": list(shards),
        "model": spec.name,
        "model_config": spec.config,
        "samples_seen": samples_seen,
        "seed": seed,
        "recipe": asdict(recipe),
    }
    plan_path = os.path.join(workdir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as handle:
            if json.load(handle) != json.loads(json.dumps(plan)):
                raise FileExistsError(f"{workdir} holds a training of another plan; choose another --workdir")
        if os.path.exists(checkpoint):  # trained by an earlier, interrupted evaluation of this plan
            return checkpoint
        shutil.rmtree(logs, ignore_errors=True)  # this plan's unfinished training: Winnow wrote it
    elif os.path.isdir(workdir) and os.listdir(workdir):
        raise FileExistsError(f"{workdir} holds files of no Winnow training; choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    with open(plan_path, "w", encoding="utf-8") as handle:
        json.dump(plan, handle, indent=1, sort_keys=True)
    os.makedirs(logs)
    args = [
        f"--train-data={'::'.join(shards)}",
        "--dataset-type=webdataset",
        f"--train-num-samples={samples_seen}",
        "--epochs=1",
        f"--model={spec.name}",
        f"--seed={seed}",
        f"--logs={logs}",
        f"--name={name}",
        "--save-frequency=1",
        "--zeroshot-frequency=0",
        "--val-frequency=0",
        "--report-to=",
        "--log-every-n-steps=1000000",
        *recipe.trainer_args(samples_seen),
    ]
    config_dir = os.path.join(workdir, "model")
    command = [sys.executable, "-m", "pipeline.evaluate.train", json.dumps(spec.config), config_dir, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": _python_path()}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not os.path.exists(checkpoint):
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise TrainingError(f"open_clip_train exited {done.returncode} training {workdir}:\n{tail}")
    return checkpoint


def _python_path() -> str:
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


def main(argv: Sequence[str]) -> int:
    """Child process: register the model config, then hand the flags to open_clip's trainer."""
    config_json, config_dir, *trainer_args = argv
    config = json.loads(config_json)
    name = next(a.split("=", 1)[1] for a in trainer_args if a.startswith("--model="))
    register(ModelSpec(name=name, config=config), config_dir)
    from open_clip_train.main import main as trainer_main

    trainer_main(list(trainer_args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
