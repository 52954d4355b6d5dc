"""Config loading: defaults, overrides, and errors that name the key."""

import pytest

from pipeline import STAGE_NAMES
from pipeline.build import STAGES
from pipeline.config import ConfigError, RunConfig, default_config_text, load_config


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
        ("crawl.thread_count=0", "crawl.thread_count must be >= 1"),
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

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for section, keys in RunConfig().to_dict().items():
        for key in keys:
            assert f"`{section}.{key}`" in readme, f"README lacks {section}.{key}"


def test_deploy_configs_load():
    import pathlib

    folder = pathlib.Path(__file__).parent.parent / "deploy" / "configs"
    configs = sorted(folder.glob("*.yaml"))
    assert configs
    for path in configs:
        import open_clip

        config = load_config(str(path))
        # Every production config names a real model and weights from open_clip's registry.
        assert (config.embed.model, config.embed.pretrained) in open_clip.list_pretrained()
