"""`winnow evaluate`: open_clip's trainer and clip_benchmark, end to end on real outputs."""

from __future__ import annotations

import json
import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.evaluate import describe_output, find_eval_sets
from sampleweb.evalset import background_names, class_names, write_eval_set
from sampleweb.scenes import COLORS, second_tone
from tests.conftest import TEST_OVERRIDES, ReferenceRun, SampleWeb, read_output_rows


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = str(tmp_path_factory.mktemp("evalset") / "eval")
    write_eval_set(folder, seed=0, per_class=1, retrieval_pairs=40)
    return folder


@pytest.fixture(scope="module")
def crawl_only(sample_web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The raw pool of the reference run's input: the crawl alone."""
    from pipeline.config import load_config
    from pipeline.jobs import run_job

    output = str(tmp_path_factory.mktemp("crawl-only"))
    run_job(load_config(overrides=[*TEST_OVERRIDES, "run.stages=[crawl]"]), [sample_web.urls], output)
    return output


def test_eval_set_is_clip_benchmarks_webdataset_layout(eval_dir: str) -> None:
    from clip_benchmark.datasets.builder import build_dataset

    sets = {found.name: found for found in find_eval_sets(eval_dir)}
    assert {name: found.kind for name, found in sets.items()} == {
        "concepts": "classification",
        "backgrounds": "classification",
        "retrieval": "retrieval",
    }
    concepts = build_dataset("wds/concepts", root=eval_dir, split="test", task="zeroshot_classification")
    assert concepts.classes == class_names() and len(concepts.classes) == 100
    assert all("{c}" in template for template in concepts.templates)
    labels = [int(label) for _, label in concepts]
    assert labels == list(range(100))  # one image per class, in class order
    backgrounds = build_dataset(
        "wds/backgrounds", root=sets["backgrounds"].root, split="test", task="zeroshot_classification"
    )
    assert backgrounds.classes == background_names()
    # ten scenes per background colour; the class is the colour of the image's border pixels
    for image, label in backgrounds:
        corner = image.convert("RGB").getpixel((1, 1))
        want = COLORS[background_names()[int(label)].split()[0]]
        tone = second_tone(want)
        assert min(_distance(corner, want), _distance(corner, tone)) < 60, (label, corner)
    retrieval = build_dataset(
        "wds/retrieval", root=sets["retrieval"].root, split="test", task="zeroshot_retrieval"
    )
    pairs = list(retrieval)
    assert len(pairs) == 40
    for image, captions in pairs:
        assert image.size == (256, 256)
        assert len(captions) == 2 and all(caption.strip() for caption in captions)


def _distance(a, b) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


def test_eval_set_is_byte_identical_for_the_same_seed(eval_dir: str, tmp_path) -> None:
    again = str(tmp_path / "eval")
    write_eval_set(again, seed=0, per_class=1, retrieval_pairs=40)
    for relative in ("test/0.tar", "retrieval/test/0.tar", "classnames.txt"):
        with (
            open(os.path.join(eval_dir, relative), "rb") as a,
            open(os.path.join(again, relative), "rb") as b,
        ):
            assert a.read() == b.read(), relative
    other = str(tmp_path / "other")
    write_eval_set(other, seed=1, per_class=1, retrieval_pairs=40)
    with (
        open(os.path.join(eval_dir, "test/0.tar"), "rb") as a,
        open(os.path.join(other, "test/0.tar"), "rb") as b,
    ):
        assert a.read() != b.read()


def test_describe_output_counts_the_kept_samples_and_names_the_input(
    reference_run: ReferenceRun, crawl_only: str, tmp_path
) -> None:
    default, raw = describe_output(reference_run.dir), describe_output(crawl_only)
    rows = read_output_rows(reference_run.dir)
    assert default.pool_size == sum(row["status"] == "success" for row in rows)
    in_tars = 0
    for shard in default.shards:
        with tarfile.open(shard) as tar:
            in_tars += sum(name.endswith(".txt") for name in tar.getnames())
    assert in_tars == default.pool_size
    assert raw.pool_size > default.pool_size
    assert raw.input_digest == default.input_digest  # same pairs curated two ways
    # An output of other pairs: one shard's rows only.
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted(name for name in os.listdir(crawl_only) if name.endswith(".parquet"))[0]
    for name in (first, first.replace(".parquet", ".tar"), "stats.json"):
        shutil.copy(os.path.join(crawl_only, name), partial / name)
    assert describe_output(str(partial)).input_digest != raw.input_digest


@pytest.mark.slow
def test_evaluate_trains_and_scores_each_output(
    reference_run: ReferenceRun, crawl_only: str, eval_dir: str, tmp_path, capsys
) -> None:
    report = tmp_path / "evaluation.json"
    code = main(
        [
            "evaluate", crawl_only, reference_run.dir, "--eval", eval_dir,
            "--samples-seen", "256", "--seeds", "1", "--batch-size", "32",
            "--report", str(report), "--workdir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    document = json.loads(report.read_text())
    rows = document["outputs"]
    assert [row["output"] for row in rows] == [crawl_only, reference_run.dir]
    for row in rows:
        assert row["samples_seen"] == 256 and row["same_input"] is True
        kept = sum(
            status == "success"
            for name in os.listdir(row["output"])
            if name.endswith(".parquet")
            for status in pq.read_table(os.path.join(row["output"], name)).column("status").to_pylist()
        )
        assert row["pool_size"] == kept
        per_set = ("concepts/zeroshot_acc", "backgrounds/zeroshot_acc", "retrieval/image_r5")
        for metric in ("zeroshot_acc", "retrieval_r5", *per_set):
            assert 0.0 <= row[metric]["mean"] <= 1.0
            assert row[metric]["std"] == 0.0  # one seed
        assert len(row["runs"]) == 1
        # open_clip's trainer wrote its checkpoint after one epoch of the samples asked for
        assert os.path.exists(tmp_path / "work" / f"{rows.index(row):02d}-{row['label']}" / "seed0")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["output", "pool", "seen"]
    assert os.path.basename(crawl_only) in lines[1] and os.path.basename(reference_run.dir) in lines[2]
    # Scoring with the eval sets read again (no cache) gives the same metrics as the cached run.
    from pipeline.evaluate.bench import EvalData, score_checkpoint
    from pipeline.evaluate.train import ModelSpec, register, resolve_model

    spec = resolve_model("winnow-tiny-clip")
    register(ModelSpec(spec.name, spec.config), str(tmp_path / "model"))
    checkpoint = tmp_path / "work" / f"00-{rows[0]['label']}" / "seed0" / "logs" / "seed0" / "checkpoints"
    streamed = score_checkpoint(
        spec.name, str(checkpoint / "epoch_1.pt"), EvalData(find_eval_sets(eval_dir), cache_bytes=0)
    )
    assert streamed == pytest.approx(rows[0]["runs"][0])
    # The trainer saw the samples asked for: its log reports the epoch's sample count.
    log = (tmp_path / "work" / f"00-{rows[0]['label']}" / "seed0" / "logs" / "seed0" / "out.log").read_text()
    assert "train_num_samples: 256" in log


def test_evaluate_refuses_a_folder_that_is_no_output(eval_dir: str, tmp_path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    code = main(
        ["evaluate", str(tmp_path / "notes"), "--eval", eval_dir, "--report", str(tmp_path / "e.json")]
    )
    assert code == 2
    assert "is not a Winnow output" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_ablation_configs_set_each_configurations_stages_and_keys(tmp_path) -> None:
    from pipeline.config import default_config_text
    from pipeline.evaluate.ablate import ablation_configs

    found = {a.name: c for a, c in ablation_configs(None, TEST_OVERRIDES, base_text=default_config_text())}
    # no balance.entries in the config: the balance configuration is skipped
    assert list(found) == ["no-filter", "text", "clip-top30", "dedup", "default", "repair"]
    assert found["no-filter"].run.stages == ("crawl",)
    assert found["clip-top30"].run.stages == ("crawl", "embed")
    assert found["clip-top30"].embed.keep_fraction == 0.3
    assert found["default"].run.stages == ("text", "crawl", "safety", "embed", "dedup", "noise")
    assert found["default"].noise == found["dedup"].noise  # only the stages differ
    assert (found["repair"].noise.replace_above, found["repair"].noise.min_coverage) == (0.5, 1.0)
    assert found["default"].noise.replace_above == 1.0  # the default never changes a caption
    for config in found.values():  # the user's keys reach every configuration
        assert config.crawl.allow_private_networks and config.output.samples_per_shard == 100
    entries = tmp_path / "entries.tsv"
    entries.write_text("en\tcircle\n")
    chosen = ablation_configs(None, [f"balance.entries={entries}"], ["default", "balance"])
    assert [a.name for a, _ in chosen] == ["default", "balance"]
    assert chosen[1][1].run.stages[-1] == "balance"


def test_evaluate_rejects_an_unknown_ablation(eval_dir: str, tmp_path, capsys) -> None:
    code = main(
        ["evaluate", "--ablate", "--input", str(tmp_path / "urls.txt"), "--eval", eval_dir,
         "--ablations", "default,everything"]
    )  # fmt: skip
    assert code == 2
    assert "--ablations: unknown ['everything']" in capsys.readouterr().err


def test_training_never_writes_into_a_folder_of_another_plan(tmp_path) -> None:
    from pipeline.evaluate.train import TrainRecipe, resolve_model, train

    spec = resolve_model("winnow-tiny-clip")
    other = tmp_path / "other-plan"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({"seed": 5}))
    with pytest.raises(FileExistsError, match="another plan"):
        train(["a.tar"], spec, 64, 0, str(other), TrainRecipe())
    assert json.loads((other / "plan.json").read_text()) == {"seed": 5}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no Winnow training"):
        train(["a.tar"], spec, 64, 0, str(foreign), TrainRecipe())
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_resolve_model_reads_open_clip_names_and_config_files(tmp_path) -> None:
    from pipeline.evaluate.train import resolve_model

    shipped = resolve_model("winnow-tiny-clip")
    assert shipped.name == "winnow-tiny-clip" and shipped.config["vision_cfg"]["image_size"] == 64
    assert resolve_model("ViT-B-32").config is None  # built into open_clip
    bare = tmp_path / "my-clip.json"
    bare.write_text(json.dumps(shipped.config))
    assert resolve_model(str(bare)).name == "my-clip"
    (tmp_path / "bad.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="not an open_clip model config"):
        resolve_model(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="neither an open_clip model name"):
        resolve_model("no-such-model")


@pytest.mark.slow
def test_ablate_runs_each_configuration_then_reuses_it(
    sample_web: SampleWeb, eval_dir: str, tmp_path
) -> None:
    work, report = tmp_path / "work", tmp_path / "evaluation.json"
    sets = [f"--set={key}" for key in TEST_OVERRIDES]
    command = [
        "evaluate", "--ablate", "--input", sample_web.urls, "--eval", eval_dir,
        "--ablations", "no-filter,text", "--samples-seen", "64", "--seeds", "1", "--batch-size", "32",
        "--workdir", str(work), "--report", str(report), *sets,
    ]  # fmt: skip
    assert main(command) == 0
    rows = json.loads(report.read_text())["outputs"]
    assert [row["label"] for row in rows] == ["no-filter", "text"]
    assert [row["output"] for row in rows] == [
        str(work / "outputs" / "no-filter"),
        str(work / "outputs" / "text"),
    ]
    stats = {
        row["label"]: json.loads((work / "outputs" / row["label"] / "stats.json").read_text()) for row in rows
    }
    assert stats["no-filter"]["config"]["run"]["stages"] == ["crawl"]
    assert stats["text"]["config"]["run"]["stages"] == ["text", "crawl"]
    assert rows[0]["same_input"] and rows[1]["same_input"]
    assert "text" in stats["text"]["stages"] and "text" not in stats["no-filter"]["stages"]
    # Again: the outputs and checkpoints are reused, and the scores are the same.
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*.tar")}
    assert main(command) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.tar")} == before
    assert [row["runs"] for row in json.loads(report.read_text())["outputs"]] == [row["runs"] for row in rows]
    # Another config over the same workdir is refused, and nothing there changes.
    assert main([*command, "--set=text.min_words=3"]) == 2
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.tar")} == before
