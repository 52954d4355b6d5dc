"""Config loading: defaults, overrides, and errors that name the key."""

import typing

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import BeamIOError

from pipeline import STAGE_NAMES
from pipeline.build import STAGES
from pipeline.cli import _parser, failure_cause, main, plain_message
from pipeline.config import ConfigError, RunConfig, default_config_text, load_config
from schemas.sample import Sample, Status
from tests.pipeline.test_cli import assert_user_error, winnow
from transforms.noise.concepts import Concepts
from transforms.noise.config import NoiseConfig
from transforms.noise.policy import repair
from transforms.noise.signals import Estimate


def test_defaults_match_the_dataclasses():
    assert load_config() == RunConfig()


def test_embedded_default_config_loads_and_differs_from_bare_defaults():
    config = load_config(base_text=default_config_text())
    assert config.crawl.resize_mode == "center_crop"
    assert config.output.samples_per_shard == 1000


def test_file_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crawl:\n  image_size: 128\n  timeout: 3\noutput:\n  samples_per_shard: 7\n")
    config = load_config(str(path), ["crawl.image_size=64", "crawl.encode_format=webp", "run.stages=crawl"])
    assert config.crawl.image_size == 64
    assert config.crawl.timeout == 3.0 and isinstance(config.crawl.timeout, float)
    assert config.crawl.encode_format == "webp"
    assert config.output.samples_per_shard == 7
    assert config.run.stages == ("crawl",)


def test_list_override_accepts_yaml_and_commas():
    a = load_config(overrides=["input.save_additional_columns=[a, b]"])
    b = load_config(overrides=["input.save_additional_columns=a,b"])
    assert a.input.save_additional_columns == b.input.save_additional_columns == ("a", "b")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("crawl.imge_size=3", "unknown config key 'crawl.imge_size' (did you mean 'crawl.image_size'?)"),
        ("crawl.image_size=big", "crawl.image_size: expected an integer, got 'big'"),
        ("crawl.resize_mode=stretch", "crawl.resize_mode: invalid value 'stretch'"),
        ("crawl.thread_count=0", "crawl.thread_count (0) must be >= 1"),
        ("crawl.encode_quality=12", None),  # valid for jpg
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("run.stages=[crawl, teleport]", "unknown stage(s) ['teleport']"),
        ("crawl", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    if message is None:
        load_config(overrides=[override])
        return
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_png_quality_is_a_compression_level():
    with pytest.raises(ConfigError, match="0..9"):
        load_config(overrides=["crawl.encode_format=png", "crawl.encode_quality=95"])


def test_invalid_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("crawl: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config(str(path))


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.yaml"))


def test_every_stage_name_has_a_transform():
    assert set(STAGE_NAMES) == set(STAGES)
    assert tuple(STAGES) == STAGE_NAMES  # same order: the pipeline order


def test_to_dict_round_trips():
    config = load_config(overrides=["crawl.image_size=99"])
    import yaml

    assert load_config(overrides=[]) != config
    again = load_config(base_text=yaml.safe_dump(config.to_dict()))
    assert again == config


def test_readme_documents_every_key():
    import pathlib

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for section, keys in RunConfig().to_dict().items():
        for key in keys:
            assert f"`{section}.{key}`" in readme, f"README lacks {section}.{key}"


def test_deploy_configs_load():
    import pathlib

    folder = pathlib.Path(__file__).parents[2] / "deploy" / "configs"
    configs = sorted(folder.glob("*.yaml"))
    assert configs
    for path in configs:
        import open_clip

        config = load_config(str(path))
        if "embed" not in config.run.stages:
            continue
        # Every production config that embeds names a real model and weights from open_clip's registry.
        assert (config.embed.model, config.embed.pretrained) in open_clip.list_pretrained()


# Impossible settings: each would reject (or fail) every sample while the run exits 0. Each row is
# the `--set` overrides and the start of the one-line error, which names the key and its value.
IMPOSSIBLE = [
    (["text.min_words=5", "text.max_words=3"], "text.min_words (5) must be <= text.max_words (3)"),
    (["text.preset=align", "text.max_words=2"], "text.min_words (3) must be <= text.max_words (2)"),
    (
        ["text.min_chars=50", "text.max_caption_chars=20"],
        "text.min_chars (50) must be <= text.max_caption_chars",
    ),
    (["text.min_lang_score=5"], "text.min_lang_score (5.0) must be between 0 and 1"),
    (["text.vocab_size=-1"], "text.vocab_size (-1) must be >= 0"),
    (["text.min_words=-2"], "text.min_words (-2) must be >= 0"),
    (["text.boilerplate_max_urls=-1"], "text.boilerplate_max_urls (-1) must be >= 0"),
    (["text.allowed_schemes=[]"], "text.allowed_schemes (()) must be a list of at least one entry"),
    (["text.languages=['en', '']"], "text.languages (('en', '')) must be a list of non-empty names"),
    (["text.languages=[english]"], "text.languages: ['english'] are not language codes of the bundled"),
    (["text.allowed_schemes=[https, ftp]"], "text.allowed_schemes (['https', 'ftp']) may only hold http and"),
    (["crawl.max_image_area=-1"], "crawl.max_image_area (-1.0) must be > 0"),
    (["crawl.max_aspect_ratio=0.5"], "crawl.max_aspect_ratio (0.5) must be >= 1"),
    (["crawl.min_image_size=-4"], "crawl.min_image_size (-4) must be >= 0"),
    (["crawl.min_image_size=100", "crawl.max_image_area=5000"], "crawl.min_image_size (100) squared"),
    (["crawl.image_size=-256"], "crawl.image_size (-256) must be between 1 and 65535"),
    (
        ["crawl.encode_format=webp", "crawl.image_size=20000"],
        "crawl.image_size (20000) must be between 1 and 16383",
    ),
    (["crawl.timeout=.nan"], "crawl.timeout: expected a finite number, got nan"),
    ([f"crawl.image_size={10**30}"], f"crawl.image_size: {10**30} is out of the 64-bit integer range"),
    (["crawl.max_image_bytes=0"], "crawl.max_image_bytes (0) must be > 0"),
    (["crawl.timeout=-1"], "crawl.timeout (-1.0) must be > 0"),
    (["crawl.deadline=.inf"], "crawl.deadline: expected a finite number, got inf"),
    (["crawl.deadline=1.0e+12"], "crawl.deadline (1000000000000.0) must be <= 86400"),
    (["crawl.retries=-1"], "crawl.retries (-1) must be >= 0"),
    (["crawl.max_failure_rate=1.5"], "crawl.max_failure_rate (1.5) must be between 0 and 1"),
    (
        ['crawl.user_agent="bot\\r\\nX-Evil: 1"'],
        "crawl.user_agent: 'bot\\r\\nX-Evil: 1' holds the control character U+000D",
    ),
    (['crawl.user_agent="bot (café)"'], "crawl.user_agent ('bot (café)') must be printable ASCII"),
    (["crawl.user_agent_token=my bot"], "crawl.user_agent_token ('my bot') must be a product token"),
    (
        ['input.caption_col="alt\\ttext"'],
        "input.caption_col: 'alt\\ttext' holds the control character U+0009",
    ),
    (["input.url_col="], "input.url_col ('') must be non-empty"),
    (["input.max_record_bytes=0"], "input.max_record_bytes (0) must be >= 1"),
    (["embed.min_clip_score=5"], "embed.min_clip_score (5.0) must be between -1 and 1"),
    (["embed.keep_fraction=0"], "embed.keep_fraction (0.0) must be in (0, 1]"),
    (["embed.batch_size=0"], "embed.batch_size (0) must be >= 1"),
    (["dedup.epsilon=-0.1"], "dedup.epsilon (-0.1) must be in [0, 1)"),
    (["dedup.min_thumbnail_similarity=2"], "dedup.min_thumbnail_similarity (2.0) must be between -1 and 1"),
    (["dedup.seed=-1"], "dedup.seed (-1) must be between 0 and 2147483647"),
    (["noise.drop_above=1.5"], "noise.drop_above (1.5) must be between 0 and 1"),
    (["noise.min_concept_score=3"], "noise.min_concept_score (3.0) must be between -1 and 1"),
    (["noise.pseudo_min_similarity=-2"], "noise.pseudo_min_similarity (-2.0) must be between -1 and 1"),
    (["noise.bow_subsample=0"], "noise.bow_subsample (0.0) must be > 0"),
    (["noise.vocabulary_min_count=0"], "noise.vocabulary_min_count (0) must be >= 1"),
    (["noise.weights=[1, -1, 0]"], "noise.weights ([1.0, -1.0, 0.0]) must be three numbers >= 0"),
    (["output.samples_per_shard=-5"], "output.samples_per_shard (-5) must be >= 1"),
    (["output.index_memory_gb=0"], "output.index_memory_gb (0.0) must be a number > 0"),
    (["run.stages=[text, text]"], "run.stages: stage(s) ['text'] named more than once"),
]


@pytest.mark.parametrize(("overrides", "message"), IMPOSSIBLE, ids=[" ".join(o) for o, _ in IMPOSSIBLE])
def test_item12_impossible_settings_exit_2_naming_the_key(overrides, message, capsys):
    # The `winnow config` command in process (each `winnow` process spends seconds importing Beam):
    # the same parsing, loading, exit status and one-line error as on the command line.
    status = main(["config", *(arg for item in overrides for arg in ("--set", item))])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith(f"winnow: error: {message}"), err


def test_item12_a_range_check_per_numeric_key():
    # Every int or float key of `winnow config` (nullable ones too) refuses a value far below any
    # sensible range, so no numeric key is left without a check when one is added.
    checked, unchecked = 0, []
    for section, cls in typing.get_type_hints(RunConfig).items():
        for name, hint in typing.get_type_hints(cls).items():
            if not {int, float} & set(typing.get_args(hint) or (hint,)):
                continue
            checked += 1
            try:
                load_config(overrides=[f"{section}.{name}=-1000000000000"])
            except ConfigError as err:
                assert str(err).startswith(f"{section}.{name}"), err
            else:
                unchecked.append(f"{section}.{name}")
    assert checked > 60 and unchecked == []


def test_item12_the_shipped_configs_pass_the_checks():
    load_config(base_text=default_config_text())
    load_config()


#: The keys of pipeline/default.yaml, the demo's config: each is the demo's own setting, not a
#: default. Every other key takes the code's default, so the two can never disagree.
DEMO_ONLY = {
    "text.languages",  # the sample web's languages
    "text.min_words",  # the demo's text filters
    "text.boilerplate_max_urls",
    "crawl.thread_count",  # the sample web is served on loopback
    "crawl.timeout",
    "crawl.deadline",
    "crawl.resize_mode",
    "noise.drop_above",  # measured for the shipped model on the sample web's ground truth
    "output.samples_per_shard",  # a 2,000-sample demo
}


def test_item05_the_demo_config_sets_only_its_own_keys_and_never_a_default():
    written = yaml.safe_load(default_config_text())
    assert {f"{section}.{key}" for section, keys in written.items() for key in keys} == DEMO_ONLY
    demo, code = load_config(base_text=default_config_text()).to_dict(), RunConfig().to_dict()
    for section, keys in code.items():
        for key, default in keys.items():
            if f"{section}.{key}" in DEMO_ONLY:
                assert demo[section][key] != default, f"{section}.{key} restates the default"
            else:
                assert demo[section][key] == default, f"{section}.{key}"


def test_item05_the_code_defaults_never_change_a_caption():
    # Whatever the estimate and the concepts, the default policy ships the caption as it came.
    config = NoiseConfig()
    found = Concepts("en", [("red circle", 0.5)], ["red circle", "blue square"], [("blue square", 0.4)])
    source = (0.99, "u9", "A blue square next to a red circle", "en")
    caption = "A cat on a sofa."
    for noise_prob in (0.0, 0.2, 0.5, 0.8, 0.99, 1.0):
        sample = Sample("u1", "http://x/1.jpg", caption, caption_clean=caption, status=Status.SUCCESS)
        estimate = Estimate("u1", noise_prob, (0.8, 0.5, 0.5), (), None, "en")
        for generates in (False, True):
            out = repair(sample, estimate, source, found, config, generates)
            assert out.status == Status.SUCCESS and out.caption_source == "original"
            assert out.chosen_caption() == caption and out.caption_completed is None


def test_item12_a_run_with_an_impossible_setting_exits_2_before_writing(tmp_path):
    urls = tmp_path / "list.csv"
    urls.write_text("url,caption\nhttp://example.com/a.jpg,a red circle\n")
    output = tmp_path / "out"
    result = winnow(
        "run", "--input", str(urls), "--output", str(output), "--stages", "text,crawl",
        "--set", 'crawl.user_agent="winnow\\nX-Evil: 1"',
    )  # fmt: skip
    assert_user_error(result, "crawl.user_agent", "control character U+000A")
    assert not output.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--input", "x.csv", "--output", "out"],
        ["demo"],
        ["search", "out", "--text", "a cat"],
        ["audit", "out"],
        ["corpus", "--out", "web"],
        ["serve", "web"],
        ["config"],
    ],
)
def test_item18_verbose_is_taken_after_every_subcommand(command):
    parser = _parser()
    for argv in ([*command, "-v"], [*command, "--verbose"], ["-v", *command]):
        args, extra = parser.parse_known_args(argv)
        assert args.verbose is True and extra == [], argv
    args, _ = parser.parse_known_args(command)
    assert args.verbose is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "web", "--port", "70000"], "--port (70000) must be in 0..65535"),
        (["corpus", "--out", "web", "--seed", "-1"], "--seed (-1) must be >= 0"),
        (["demo", "--seed", "-3"], "--seed (-3) must be >= 0"),
        (["corpus", "--out", "web", "--samples", "0"], "--samples (0) must be >= 1"),
    ],
)
def test_item12_impossible_arguments_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"winnow: error: {message}\n"


def test_item18_run_dash_v_as_the_error_suggests(tmp_path):
    result = winnow("run", "--input", str(tmp_path / "absent.csv"), "--output", str(tmp_path / "o"), "-v")
    assert_user_error(result, "no input files match", "absent.csv")


def test_item18_errors_say_what_is_wrong_without_class_names():
    denied = BeamIOError("Match operation failed", {"s3://b/x": S3ClientError("Access Denied", 403)})
    assert (
        failure_cause(denied)
        == "Match operation failed with exceptions {'s3://b/x': Access Denied (status 403)}"
    )
    assert failure_cause(S3ClientError("Access Denied", 403)) == "Access Denied (status 403)"
    denied_output = f"output 's3://b/x' is not writable: {S3ClientError('Access Denied', 403)}"
    assert plain_message(denied_output) == "output 's3://b/x' is not writable: Access Denied (status 403)"
    assert failure_cause(KeyError("caption")) == "key error 'caption'"
    try:
        pq.read_table(pa.BufferReader(b"PAR1 not a parquet file"))
    except pa.ArrowInvalid as err:
        shown = failure_cause(err)
        assert shown.startswith("Could not open Parquet input source") and "Arrow" not in shown
        assert plain_message(f"pyarrow.lib.ArrowInvalid: {err}") == str(err)


def test_item18_an_empty_input_has_nothing_to_report(tmp_path):
    urls = tmp_path / "list.csv"
    urls.write_text("url,caption\n")
    result = winnow("run", "--input", str(urls), "--output", str(tmp_path / "out"), "--stages", "text")
    assert result.returncode == 0, result.stderr
    assert "nothing to report" in result.stderr and "winnow audit" not in result.stderr + result.stdout


def test_item05_the_readme_states_each_default_as_the_code_has_it():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    cells = dict(re.findall(r"^\| `(\w+\.\w+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    for section, keys in RunConfig().to_dict().items():
        for key, default in keys.items():
            assert yaml.safe_load(cells[f"{section}.{key}"]) == default, f"README: {section}.{key}"
