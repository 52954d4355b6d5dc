"""Winnow's Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE of deploy/dataflow/Dockerfile).

Dataflow's template launcher runs `python main.py --NAME=VALUE ...` with the template parameters
of metadata.json and Dataflow's own pipeline options (`--project`, `--region`, `--temp_location`,
`--template_location`, `--sdk_container_image`, ...). The parameters become a `winnow run` command
line: `input`, `output`, `config` and `stages` are its flags of the same name, each other parameter
sets one config key (`--set SECTION.KEY=VALUE`), and `overrides` holds further `SECTION.KEY=VALUE`
pairs. Everything else is a Beam option and goes to Beam untouched.

A Flex Template launcher cannot wait for the job: Dataflow gives it a `--template_location`, so
`run()` only writes the job's description, and Dataflow starts the job once the launcher has
returned. So this is `winnow run --runner DataflowRunner --no-wait`: the same checks of the config,
the input lists and the buckets as any run, then the job graph is written and the launcher
returns. What `winnow run` does after a job finishes is then the job's own last steps
(`pipeline.jobs.FinishOutput`, the same `finish_output`): after the shards and `stats.json`, the
same job builds the search index in `index/` (`output.index` with the embed stage), renders
`report.html` from its `audit.json` and marks the output `complete`. Only Beam's counters, which a
launcher reads from the finished job, are not in `stats.json`; deploy/dataflow/launch.sh --direct
runs `winnow run` itself, which adds them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

#: Template parameters that are `winnow run` flags of the same name.
RUN_FLAGS = ("input", "output", "config", "stages")
#: Template parameters that set one config key each, as `winnow run --set KEY=VALUE`.
OVERRIDES = {
    "text_preset": "text.preset",
    "crawl_thread_count": "crawl.thread_count",
    "embed_model": "embed.model",
    "embed_pretrained": "embed.pretrained",
    "embed_device": "embed.device",
    "embed_batch_size": "embed.batch_size",
    "embed_large_model": "embed.large_model",
    "embed_min_clip_score": "embed.min_clip_score",
    "embed_accelerator": "embed.accelerator",
    "output_samples_per_shard": "output.samples_per_shard",
}
#: The template parameter with any further `SECTION.KEY=VALUE` overrides.
EXTRA_OVERRIDES = "overrides"
#: Separates several values of `input`, `stages` and `overrides` (gcloud's --parameters splits on
#: commas, so a comma in a value needs gcloud's alternative delimiter syntax).
SEPARATOR = "|"
RUNNER = "DataflowRunner"
#: As `winnow run`: the first input lists are opened and their columns checked before submitting.
CHECKED_FILES = 20

LOG = logging.getLogger("winnow.flex_template")


def _values(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(SEPARATOR) if part.strip()]


def winnow_run_args(argv: Sequence[str]) -> list[str]:
    """The `winnow run` arguments (after `run`) for the launcher's command line."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in (*RUN_FLAGS, *OVERRIDES, EXTRA_OVERRIDES, "runner"):
        parser.add_argument(f"--{name}")
    params, beam_args = parser.parse_known_args(list(argv))
    args: list[str] = []
    for path in _values(params.input):
        args += ["--input", path]
    for name in RUN_FLAGS[1:]:
        value = getattr(params, name)
        if value:
            args += [f"--{name}", value.replace(SEPARATOR, ",") if name == "stages" else value]
    for name, key in OVERRIDES.items():
        value = getattr(params, name)
        if value is not None and value.strip():
            args += ["--set", f"{key}={value.strip()}"]
    for item in _values(getattr(params, EXTRA_OVERRIDES)):
        args += ["--set", item]
    # Any --runner the launcher gives is dropped: a template always runs on Dataflow.
    return [*args, "--runner", RUNNER, *beam_args]


def _run_parser() -> argparse.ArgumentParser:
    """The `winnow run` flags this entry point passes (tests/deploy/test_deploy.py holds them to
    pipeline/cli.py's parser)."""
    parser = argparse.ArgumentParser(prog="winnow run (Flex Template)", allow_abbrev=False)
    parser.add_argument("--input", action="append", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--stages")
    parser.add_argument("--runner", default=RUNNER)
    parser.add_argument("--no-wait", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`winnow run ... --no-wait`: the same checks of the config, the input lists and the buckets
    as any run, then the job, which ends with the index, the report and the output's `complete`,
    is submitted (on the launcher: its graph written) without waiting."""
    from pipeline.cli import main as winnow

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    run_args = winnow_run_args(sys.argv[1:] if argv is None else argv)
    winnow_part = run_args[: run_args.index("--runner") + 2]  # Beam options may hold credentials
    LOG.info("winnow run %s --no-wait (+ the launcher's Beam options)", shlex.join(winnow_part))
    return winnow(["run", *run_args, "--no-wait"])


if __name__ == "__main__":
    sys.exit(main())
