"""The run configuration: one YAML file whose sections mirror the stages, plus `--set` overrides.

Every section is a frozen dataclass; every key has a default documented next to it (and in the
README). Loading rejects unknown keys, keys given twice and ill-typed values with a `ConfigError`
naming the key, so a typo never passes silently; so is a stage subset that leaves a stage without
its inputs (`IMAGE_STAGES` without the crawl).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from pipeline import STAGE_NAMES
from transforms.balance import BalanceConfig
from transforms.common.checks import control_character
from transforms.crawl import CrawlConfig
from transforms.dedup import DedupConfig
from transforms.embed import EmbedConfig
from transforms.noise import NoiseConfig
from transforms.read import InputConfig
from transforms.safety import SafetyConfig
from transforms.safety.config import is_head
from transforms.text import TextConfig
from transforms.text.config import DATACOMP_IMAGE_RULES
from transforms.write import OutputConfig

#: Integers beyond this fit no Arrow column, numpy array or FAISS call.
_MAX_INT = 2**63 - 1
#: Stages that judge images: without the crawl stage, which gives them, every row stays `pending`.
IMAGE_STAGES = ("safety", "embed", "dedup", "noise")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class RunSection:
    """How the job runs, independent of any one stage."""

    #: Stages to run, in pipeline order, named after their modules in `transforms/`.
    stages: tuple[str, ...] = tuple(s for s in STAGE_NAMES if s != "balance")
    #: Print a live progress line per stage during local runs.
    progress: bool = True
    #: Count the elements and bytes entering every shuffle (`pipeline/shuffles.py`); the returned
    #: stats hold them under `shuffles`. For pilot runs that size a large one.
    measure_shuffles: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown:
            raise ConfigError(f"run.stages: unknown stage(s) {unknown}; known: {list(STAGE_NAMES)}")
        repeated = sorted({s for s in self.stages if self.stages.count(s) > 1})
        if repeated:
            raise ConfigError(f"run.stages: stage(s) {repeated} named more than once")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole configuration of one `winnow run`."""

    input: InputConfig = InputConfig()
    text: TextConfig = TextConfig()
    crawl: CrawlConfig = CrawlConfig()
    safety: SafetyConfig = SafetyConfig()
    embed: EmbedConfig = EmbedConfig()
    dedup: DedupConfig = DedupConfig()
    noise: NoiseConfig = NoiseConfig()
    balance: BalanceConfig = BalanceConfig()
    output: OutputConfig = OutputConfig()
    run: RunSection = RunSection()

    def __post_init__(self) -> None:
        stages = self.run.stages
        if self.text.preset == "datacomp_basic":
            # DataComp's basic filter has image rules too; keys the crawl section sets win.
            defaults = CrawlConfig()
            unset = {
                k: v
                for k, v in DATACOMP_IMAGE_RULES.items()
                if getattr(self.crawl, k) == getattr(defaults, k)
            }
            if unset:
                object.__setattr__(self, "crawl", dataclasses.replace(self.crawl, **unset))
        if "balance" in stages and self.balance.entries is None:
            raise ConfigError(
                "the balance stage needs its metadata entries: set balance.entries "
                "(MetaCLIP's metadata.json, or lang<TAB>entry lines)"
            )
        if "safety" in stages and self.safety.active and "crawl" not in stages:
            raise ConfigError(
                "the safety stage checks the images the crawl stage fetches: add crawl to run.stages "
                "or leave the safety section unset"
            )
        if "safety" in stages and is_head(self.safety.nsfw_model) and "embed" not in stages:
            raise ConfigError(
                "safety.nsfw_model is a CLIP head: it scores the embed stage's image embeddings, "
                "so run.stages needs embed"
            )
        if (
            "dedup" in stages
            and self.dedup.semantic
            and "embed" in stages
            and not self.embed.write_embeddings
        ):
            raise ConfigError(
                "dedup.semantic needs the image embeddings: set embed.write_embeddings=true "
                "or dedup.semantic=false"
            )

        if "noise" in stages and ("embed" not in stages or not self.embed.write_embeddings):
            raise ConfigError(
                "the noise stage needs the embed stage with embed.write_embeddings=true "
                "(it works on the image and text embeddings)"
            )
        without_images = [s for s in IMAGE_STAGES if s in stages] if "crawl" not in stages else []
        if without_images:
            *others, last = without_images
            which = (
                f"the {', '.join(others)} and {last} stages judge" if others else f"the {last} stage judges"
            )
            raise ConfigError(
                f"run.stages: {which} images, which only the crawl stage gives (fetched from the URLs, "
                "or read from a pool's tars): add crawl to run.stages"
            )

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def default_config_text() -> str:
    """The embedded default config (`pipeline/default.yaml`), used by `winnow demo`."""
    return importlib.resources.files("pipeline").joinpath("default.yaml").read_text(encoding="utf-8")


def load_config(
    path: str | None = None, overrides: Sequence[str] = (), base_text: str | None = None
) -> RunConfig:
    """Reads a YAML config (local or any Beam filesystem path), applies `section.key=value` overrides."""
    data: dict[str, Any] = {}
    if base_text is not None:
        data = _parse_yaml(base_text, "embedded default config")
    if path is not None:
        from apache_beam.io.filesystems import FileSystems  # Beam takes a second to import

        try:
            with FileSystems.open(path) as handle:
                text = handle.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
        _merge(data, _parse_yaml(text, path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        _set_path(data, key.strip(), _parse_yaml(raw, f"--set {key}") if raw.strip() else "")
    return build(RunConfig, data, "")


def build(cls: type, data: Any, where: str) -> Any:
    """Builds dataclass `cls` from nested mappings, checking keys and types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            guess = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{_join(where, guess[0])}'?)" if guess else ""
            raise ConfigError(f"unknown config key '{_join(where, str(key))}'{hint}")
    values = {name: _coerce(hints[name], data[name], _join(where, name)) for name in data}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        message = str(err)
        if where and message.startswith(f"{where}."):  # it names its key already
            raise ConfigError(message) from err
        raise ConfigError(f"{where or 'config'}: {message}") from err


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value if value is not None else {}, where)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value is False and "no" in args:  # YAML reads a bare `no` as false (`resize_mode: no`)
            value = "no"
        if value not in args:
            raise ConfigError(f"{where}: invalid value {value!r}; choose one of {list(args)}")
        return value
    if origin is dict:  # a mapping of names to values, e.g. balance.t_per_language: {de: 40000}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            _coerce(args[0], str(k), where): _coerce(args[1], str(v) if args[1] is str else v, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if abs(value) > _MAX_INT:
            raise ConfigError(f"{where}: {value} is out of the 64-bit integer range")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > sys.float_info.max:
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        bad = control_character(value)
        if bad:
            raise ConfigError(f"{where}: {value!r} holds the control character {bad}; remove it")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint!r}")  # pragma: no cover - programming error


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_unique_key_loader(where)) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {err}") from err


def _unique_key_loader(where: str) -> type[yaml.SafeLoader]:
    """YAML's safe loader, refusing a key given twice in one mapping (`ConfigError` naming the key
    and both lines of `where`): plain YAML keeps the last value without a word. Keys a merge
    (`<<: *defaults`) brings in may still be overridden."""

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the constructor says why
                    continue
                if first is not None:
                    raise ConfigError(
                        f"{where}: line {line}: key '{key}' is given twice (first on line {first}); "
                        "YAML would keep only the last value: remove one"
                    )
            return super().construct_mapping(node, deep=deep)

    return Loader


def _merge(into: dict[str, Any], data: Any) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
