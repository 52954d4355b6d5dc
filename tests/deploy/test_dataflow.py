"""The demo pipeline translated by Beam's DataflowRunner with `--dry_run`: the job graph Dataflow
would receive, built offline (nothing is submitted, no Google Cloud call is made)."""

from __future__ import annotations

import importlib.util

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, default_config_text, load_config
from pipeline.jobs import run_job

ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"
DATAFLOW_ARGS = [
    "--dry_run=True",  # untyped in Beam: any non-empty string is true
    "--project=winnow-dry-run",
    "--region=us-central1",
    "--temp_location=gs://winnow-dry-run/tmp",
    "--staging_location=gs://winnow-dry-run/staging",
    "--no_auth",
]


def test_dataflow_job_graph_has_every_stage_and_the_gpu_on_the_model_steps_alone(sample_web):
    config = load_config(base_text=default_config_text(), overrides=[f"embed.accelerator={ACCELERATOR}"])
    stats = run_job(
        config,
        [sample_web.urls],
        "gs://winnow-dry-run/out",
        runner="DataflowRunner",
        beam_args=DATAFLOW_ARGS,
    )
    assert stats["dry_run"] is True
    steps = stats["steps"]
    tops = {name.split("/")[0] for name in steps}
    for stage in ("Read", "Text", "Samples", "Crawl", "Embed", "Dedup", "Noise", "WriteShards", "WriteStats"):
        assert stage in tops, f"{stage} missing from the job graph"
    # The model call itself and the steps around it are inside the hinted step.
    assert "Embed/RunInference" in {"/".join(n.split("/")[:2]) for n in steps}
    hinted = {name for name, hints in steps.items() if hints.get("accelerator")}
    assert all(steps[name]["accelerator"] == ACCELERATOR for name in hinted)
    # The GPU holds the embed stage and the noise stage's model call (the vocabulary through the
    # text tower), nothing else.
    model_steps = ("Embed", "Noise/EncodePrompts")
    assert hinted and all(name.startswith(model_steps) for name in hinted), sorted(hinted)
    assert any(name.startswith("Noise/EncodePrompts") for name in hinted)
    # Every other step stays on CPU workers: the crawl, the text filter, dedup, the writers, and
    # the noise stage's neighbour search, mixtures and decisions.
    unhinted_tops = {name.split("/")[0] for name, hints in steps.items() if not hints}
    assert {"Crawl", "Text", "Dedup", "Noise", "WriteShards"} <= unhinted_tops
    assert not any(hints for name, hints in steps.items() if name.startswith(("Crawl", "Text", "Dedup")))
    noise_on_cpu = [name for name, hints in steps.items() if name.startswith("Noise/") and not hints]
    assert any("Neighbours" in name for name in noise_on_cpu) and any(
        "Decide" in name for name in noise_on_cpu
    )


def _dry_run_cli(urls: str, *extra: str) -> int:
    run = ["run", "--input", urls, "--output", "gs://winnow-dry-run/out", "--runner", "DataflowRunner"]
    return main([*run, *extra, *DATAFLOW_ARGS])


def test_without_an_accelerator_no_step_is_hinted(sample_web, capsys):
    assert _dry_run_cli(sample_web.urls) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: DataflowRunner translated ")
    assert "no resource hints" in out


def test_cli_dry_run_names_the_hinted_step(sample_web, capsys):
    assert _dry_run_cli(sample_web.urls, "--set", f"embed.accelerator={ACCELERATOR}") == 0
    assert f"  Embed: accelerator={ACCELERATOR}" in capsys.readouterr().out.splitlines()


def test_a_malformed_accelerator_is_refused():
    with pytest.raises(ConfigError, match="embed.accelerator"):
        load_config(overrides=["embed.accelerator=nvidia-l4"])


def test_the_flex_template_entry_point_builds_the_same_job(sample_web, capsys):
    # What Dataflow's launcher runs: template parameters plus Dataflow's options, here in dry-run.
    spec = importlib.util.spec_from_file_location("flex_template_main", "deploy/dataflow/main.py")
    assert spec and spec.loader
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    code = launcher.main(
        [
            f"--input={sample_web.urls}",
            "--output=gs://winnow-dry-run/out",
            f"--embed_accelerator={ACCELERATOR}",
            "--overrides=crawl.timeout=3|output.samples_per_shard=500",
            *DATAFLOW_ARGS,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("dry run: DataflowRunner translated ")
    assert f"  Embed: accelerator={ACCELERATOR}" in out.splitlines()


def test_the_job_graph_does_not_grow_with_the_number_of_input_files(sample_web, tmp_path):
    """A glob of 100,000 lists submits the same job graph as a glob of one: the launcher checks the
    inputs, but files are matched again when the job runs, not written into the graph."""
    import time

    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(sample_web.urls).slice(0, 1), tmp_path / "one.parquet")
    data = (tmp_path / "one.parquet").read_bytes()
    folder = tmp_path / "lists"  # the same pattern both times
    folder.mkdir()
    graphs = {}
    for count in (1, 100_000):
        for i in range(count):
            (folder / f"{i:06d}.parquet").write_bytes(data)
        config = load_config(base_text=default_config_text())
        started = time.monotonic()
        stats = run_job(
            config, [f"{folder}/*.parquet"], "gs://winnow-dry-run/out", runner="DataflowRunner",
            beam_args=DATAFLOW_ARGS,
        )  # fmt: skip
        graphs[count] = (stats["graph_bytes"], len(stats["steps"]))
        took = time.monotonic() - started
        print(f"{count:,} files: graph of {graphs[count][0]:,} bytes, {graphs[count][1]} steps, {took:.1f} s")
    assert graphs[1][1] == graphs[100_000][1]  # the same steps
    # The graphs differ only by the random ids Beam gives some parts; 100,000 paths written into
    # the graph would add megabytes.
    assert abs(graphs[1][0] - graphs[100_000][0]) < 4_000, graphs
