"""The deployment files under deploy/: the Dataflow image's Dockerfile (linted with a real parser,
its pins held to pyproject.toml), the Flex Template's parameters (held to `winnow run`'s parser and
the config's keys), and the launch scripts (syntax, shellcheck when installed, and the commands
they print with --print, parsed back by the winnow CLI)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import tomllib
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline import STAGE_NAMES
from pipeline.cli import _parser as winnow_parser

ROOT = Path(__file__).resolve().parents[2]
DATAFLOW = ROOT / "deploy" / "dataflow"
DOCKERFILE = DATAFLOW / "Dockerfile"
SCRIPTS = [
    DATAFLOW / "build.sh",
    DATAFLOW / "launch.sh",
    ROOT / "deploy" / "spark" / "submit.sh",
    ROOT / "deploy" / "spark" / "install-winnow.sh",
    ROOT / "deploy" / "flink" / "submit.sh",
    ROOT / "deploy" / "portable.sh",
]
BOOT = "/opt/apache/beam/boot"
IMAGE = "us-central1-docker.pkg.dev/my-project/winnow/winnow:1.2.3"
ARGV = ("--input", "a", "--output", "b")
HINT = "type:nvidia-l4;count:1;machine_type:g2-standard-4;install-nvidia-driver"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """pyproject's dependencies pinned with ==, by canonical name."""
    pins = {}
    for dep in _pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


# --- Dockerfile -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(fileobj=DOCKERFILE.open("rb"))


def _global_args(parser: DockerfileParser) -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones a FROM line may use)."""
    args = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            args[name.strip()] = default.strip()
    return args


def _stage_args(parser: DockerfileParser) -> dict[str, str]:
    """Every ARG default, by name (for the ${VAR}s of RUN lines)."""
    args = {}
    for item in parser.structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            name, _, default = item["value"].partition("=")
            args[name.strip()] = default.strip()
    return args


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, split on &&, ||, ; and |, as shell words."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def _pip_installs(parser: DockerfileParser) -> list[list[str]]:
    args = _stage_args(parser)
    installs = []
    for item in parser.structure:
        if item["instruction"] != "RUN":
            continue
        for words in _commands(_expand(item["value"], args)):
            if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                installs.append(words)
    return installs


def _images(parser: DockerfileParser) -> list[str]:
    """Every image the build pulls: FROM lines and COPY --from of an image (not of a stage)."""
    args = _global_args(parser)
    stages = set()
    images = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            images.append(_expand(words[0], args))
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif item["instruction"] == "COPY":
            found = re.search(r"--from=(\S+)", item["value"])
            if found and found[1] not in stages:
                images.append(_expand(found[1], args))
    return images


def test_every_image_is_pinned_to_a_tag(dockerfile):
    images = _images(dockerfile)
    assert len(images) >= 2
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no explicit tag"
        assert "$" not in image, f"{image}: unresolved build argument"
        assert tag != "latest", f"{image}: pinned to latest"


def test_beam_base_image_matches_the_installed_and_pinned_beam(dockerfile):
    base = dockerfile.baseimage  # the final stage's FROM, build arguments resolved
    assert base.startswith("apache/beam_python3.11_sdk:"), base
    tag = base.rpartition(":")[2]
    assert tag == _pins()["apache-beam"] == importlib.metadata.version("apache-beam")


def test_entrypoint_is_beams_boot(dockerfile):
    entrypoints = [i["value"] for i in dockerfile.structure if i["instruction"] == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == [BOOT]
    envs = [i["value"] for i in dockerfile.structure if i["instruction"] == "ENV"]
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/winnow/deploy/dataflow/main.py" in envs


def test_pip_installs_are_pinned_and_uncached(dockerfile):
    installs = _pip_installs(dockerfile)
    assert installs
    for words in installs:
        assert "--no-cache-dir" in words, words
        packages = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
        assert packages, words
        for package in packages:
            exact = package != "." and any(s.operator == "==" for s in Requirement(package).specifier)
            assert package == "." or exact, f"{package}: neither the project nor pinned with =="


def test_no_remote_add_and_tidy_apt(dockerfile):
    for item in dockerfile.structure:
        if item["instruction"] == "ADD":
            assert not re.search(r"\bhttps?://", item["value"]), item["value"]
        if item["instruction"] == "RUN" and "apt-get install" in item["value"]:
            assert "--no-install-recommends" in item["value"]
            assert "rm -rf /var/lib/apt/lists/*" in item["value"]


def test_image_pins_match_pyproject(dockerfile):
    pins = _pins()
    pinned = {}
    for words in _pip_installs(dockerfile):
        for word in words:
            if "==" in word:
                req = Requirement(word)
                pinned[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    shared = set(pinned) & set(pins)
    assert {"torch", "torchvision"} <= shared
    for name in shared:
        assert pinned[name] == pins[name], f"{name}: image {pinned[name]}, pyproject {pins[name]}"
    assert _global_args(dockerfile)["BEAM_VERSION"] == pins["apache-beam"]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` within a path element, `**` across them."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        else:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(regex + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent folder wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        regex = _pattern(pattern.removeprefix("!").rstrip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_what_the_image_copies(dockerfile):
    lines = (DATAFLOW / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = []
    for item in dockerfile.structure:
        if item["instruction"] == "COPY" and "--from" not in item["value"]:
            sources += item["value"].split()[:-1]
    assert "transforms/" in sources and "pyproject.toml" in sources  # the shipped model is package data
    assert "models/" not in sources  # only its training script lives there
    for source in sources:
        for path in [p for p in (ROOT / source).rglob("*") if p.is_file()] or [ROOT / source]:
            relative = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not _ignored(relative, patterns), f"{relative} is left out of the build context"
    for left_out in [
        ".venv/bin/python",
        "tests/pipeline/test_cli.py",
        "build/demo/x",
        "pipeline/__pycache__/cli.pyc",
    ]:
        assert _ignored(left_out, patterns), left_out


# --- Flex Template --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("winnow_flex_template_main", DATAFLOW / "main.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads((DATAFLOW / "metadata.json").read_text())


def _run_parser():
    parser = winnow_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["run"]


def _config_keys() -> set[str]:
    """SECTION.KEY of every config key (the config modules are light: no torch, no Beam)."""
    import dataclasses

    from pipeline.config import RunConfig

    config = RunConfig()
    return {
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(config)
        for key in dataclasses.fields(getattr(config, section.name))
    }


def test_metadata_parameters_are_well_formed(metadata):
    assert metadata["name"] and metadata["description"]
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names))
    for param in metadata["parameters"]:
        assert param["label"] and param["helpText"], param["name"]
        assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", param["name"])
        for regex in param.get("regexes", []):
            re.compile(regex)
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional")}
    assert required == {"input", "output"}


def test_metadata_parameters_are_what_the_launcher_maps(metadata, launcher):
    names = {p["name"] for p in metadata["parameters"]}
    assert names == {*launcher.RUN_FLAGS, *launcher.OVERRIDES, launcher.EXTRA_OVERRIDES}
    keys = _config_keys()
    assert "embed.accelerator" in keys and "crawl.thread_count" in keys
    for name, key in launcher.OVERRIDES.items():
        assert key in keys, f"{name} sets {key}, which is no config key"


@pytest.mark.parametrize(
    ("name", "value", "matches"),
    [
        ("input", "gs://b/lists/*.parquet", True),
        ("input", "gs://b/a.parquet|s3://c/b.csv", True),
        ("input", "/local/file.parquet", False),
        ("output", "gs://b/out", True),
        ("config", "/opt/winnow/deploy/configs/laion-style.yaml", True),
        ("stages", "text|crawl|embed", True),
        ("stages", "text,crawl,paint", False),
        ("embed_accelerator", HINT, True),
        ("embed_accelerator", "nvidia-l4", False),
        ("overrides", "dedup.epsilon=0.05|text.languages=[en]", True),
        ("embed_device", "tpu", False),
    ],
)
def test_metadata_regexes(metadata, name, value, matches):
    param = next(p for p in metadata["parameters"] if p["name"] == name)
    assert all(bool(re.fullmatch(r, value)) == matches for r in param["regexes"])


def test_stage_regex_names_every_stage(metadata):
    stages = next(p for p in metadata["parameters"] if p["name"] == "stages")
    assert re.fullmatch(stages["regexes"][0], "|".join(STAGE_NAMES))


def test_launcher_flags_exist_in_winnow_run(launcher):
    run = {opt: action for action in _run_parser()._actions for opt in action.option_strings}
    for action in launcher._run_parser()._actions:
        for option in action.option_strings:
            if option in ("-h", "--help"):
                continue
            assert option in run, f"{option} is no `winnow run` flag"
            assert type(action) is type(run[option]), f"{option}: a different kind of argument"


def test_launcher_turns_parameters_into_a_winnow_run(launcher):
    accelerator = "type:nvidia-l4;count:1;install-nvidia-driver"
    argv = [
        "--runner=DataflowRunner",
        "--input=gs://b/a/*.parquet|gs://b/c.csv",
        "--output=gs://b/out",
        "--config=/opt/winnow/deploy/configs/laion-style.yaml",
        "--stages=text|crawl|embed",
        f"--embed_accelerator={accelerator}",
        "--crawl_thread_count=64",
        "--overrides=dedup.epsilon=0.05|text.languages=[en]",
        "--project=p",
        "--template_location=gs://b/staging/template_launches/1/job_object",
        "--sdk_container_image=" + IMAGE,
    ]
    args = launcher.winnow_run_args(argv)
    parsed, beam = _run_parser().parse_known_args(args)
    assert parsed.input == ["gs://b/a/*.parquet", "gs://b/c.csv"]
    assert parsed.output == "gs://b/out" and parsed.stages == "text,crawl,embed"
    assert parsed.config == "/opt/winnow/deploy/configs/laion-style.yaml"
    assert parsed.runner == "DataflowRunner" and args.count("--runner") == 1
    assert parsed.set == [
        "crawl.thread_count=64",
        f"embed.accelerator={accelerator}",
        "dedup.epsilon=0.05",
        "text.languages=[en]",
    ]
    assert beam == argv[-3:]


# --- scripts --------------------------------------------------------------------------------------


def _script(path: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        ["bash", str(path), *args], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _printed(path: Path, *args: str, **env: str) -> list[list[str]]:
    out = _script(path, "--print", *args, **env).stdout
    return [shlex.split(line) for line in out.splitlines()]


def _winnow_run(words: list[str]):
    """A printed `winnow run` parsed by winnow's own parser: (its arguments, the Beam options)."""
    assert words[1] == "run"
    return _run_parser().parse_known_args(words[2:])


def test_scripts_parse():
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_scripts_pass_shellcheck():
    assert shutil.which("shellcheck"), "shellcheck is not installed (`make setup` installs Debian's package)"
    result = subprocess.run(
        ["shellcheck", "-x", *map(str, SCRIPTS)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("engine", ["spark", "flink"])
def test_submit_with_a_job_endpoint(engine):
    script = ROOT / "deploy" / engine / "submit.sh"
    argv = ["--input", "gs://b/*.parquet", "--output", "gs://b/out"]
    (words,) = _printed(script, *argv, JOB_ENDPOINT="h:8099")
    args, beam = _winnow_run(words)
    assert words[0] == "winnow" and args.runner == "PortableRunner"
    assert args.input == ["gs://b/*.parquet"] and args.output == "gs://b/out"
    assert "--job_endpoint=h:8099" in beam and "--environment_type=PROCESS" in beam
    config = next(b for b in beam if b.startswith("--environment_config="))
    assert json.loads(config.partition("=")[2]) == {"command": BOOT}


def test_spark_submit_starts_a_job_server_for_a_master():
    script = ROOT / "deploy" / "spark" / "submit.sh"
    jar = "/jars/beam-runners-spark-3-job-server-2.77.0.jar"
    env = {"SPARK_MASTER_URL": "spark://m:7077", "SPARK_JOB_SERVER_JAR": jar}
    env["WORKER_VENV"] = "/opt/winnow/venv"
    (words,) = _printed(script, "--input", "a", "--output", "b", "--set", "embed.batch_size=8", **env)
    args, beam = _winnow_run(words)
    assert args.runner == "SparkRunner" and args.set == ["embed.batch_size=8"]
    assert "--spark_master_url=spark://m:7077" in beam and f"--spark_job_server_jar={jar}" in beam
    config = json.loads(next(b for b in beam if b.startswith("--environment_config=")).partition("=")[2])
    assert config["command"] == BOOT and config["env"]["PATH"].startswith("/opt/winnow/venv/bin:")


def test_flink_submit_starts_a_job_server_for_a_master():
    script = ROOT / "deploy" / "flink" / "submit.sh"
    env = {"FLINK_MASTER": "jm:8081", "FLINK_VERSION": "1.20", "WINNOW": "/venv/bin/winnow"}
    (words,) = _printed(script, "--input", "a", "--output", "b", **env)
    args, beam = _winnow_run(words)
    assert words[0] == "/venv/bin/winnow" and args.runner == "FlinkRunner"
    assert "--flink_master=jm:8081" in beam and "--flink_version=1.20" in beam


@pytest.mark.parametrize("engine", ["spark", "flink"])
def test_submit_environments(engine):
    script = ROOT / "deploy" / engine / "submit.sh"
    common = {"JOB_ENDPOINT": "h:8099"}
    (docker,) = _printed(script, *ARGV, ENVIRONMENT_TYPE="DOCKER", IMAGE=IMAGE, **common)
    assert {"--environment_type=DOCKER", f"--environment_config={IMAGE}"} <= set(docker)
    (built,) = _printed(
        script, "--input", "a", "--output", "b", ENVIRONMENT_TYPE="docker", PROJECT="p", REGION="r", **common
    )
    version = _pyproject()["project"]["version"]
    assert f"--environment_config=r-docker.pkg.dev/p/winnow/winnow:{version}" in built
    (loopback,) = _printed(script, "--input", "a", "--output", "b", ENVIRONMENT_TYPE="LOOPBACK", **common)
    assert "--environment_type=LOOPBACK" in loopback and not any("environment_config" in w for w in loopback)
    for env in [{}, {"ENVIRONMENT_TYPE": "EXTERNAL", **common}, {"ENVIRONMENT_TYPE": "DOCKER", **common}]:
        failed = _script(script, "--print", "--input", "a", "--output", "b", check=False, **env)
        assert failed.returncode == 2 and "submit.sh:" in failed.stderr


def test_build_prints_image_and_template_commands():
    env = {"PROJECT": "my-project", "REGION": "us-central1", "BUCKET": "gs://bkt", "TAG": "1.2.3"}
    build, push, template = _printed(DATAFLOW / "build.sh", **env)
    assert build[:4] == ["env", "DOCKER_BUILDKIT=1", "docker", "build"]
    assert build[build.index("--file") + 1] == str(DOCKERFILE) and build[-1] == str(ROOT)
    assert build[build.index("--tag") + 1] == IMAGE and push == ["docker", "push", IMAGE]
    assert template[:4] == ["gcloud", "dataflow", "flex-template", "build"]
    assert template[4] == "gs://bkt/templates/winnow-1.2.3.json"
    metadata_file = f"--metadata-file={DATAFLOW / 'metadata.json'}"
    assert {f"--image={IMAGE}", "--sdk-language=PYTHON", metadata_file} <= set(template)
    missing = _script(DATAFLOW / "build.sh", "--print", check=False)
    assert missing.returncode == 2 and "set PROJECT" in missing.stderr


LAUNCH_ENV = {
    "PROJECT": "my-project",
    "REGION": "us-central1",
    "BUCKET": "gs://bkt",
    "TAG": "1.2.3",
    "INPUT": "gs://bkt/lists/*.parquet",
    "OUTPUT": "gs://bkt/out",
    "CONFIG": "deploy/configs/laion-style.yaml",
    "ACCELERATOR": HINT,
    "JOB_NAME": "winnow-test",
}


def test_launch_runs_the_flex_template(metadata):
    (words,) = _printed(DATAFLOW / "launch.sh", "--", "--subnetwork=sub", **LAUNCH_ENV)
    assert words[:5] == ["gcloud", "dataflow", "flex-template", "run", "winnow-test"]
    assert "--template-file-gcs-location=gs://bkt/templates/winnow-1.2.3.json" in words
    assert "--additional-experiments=use_runner_v2" in words and words[-1] == "--subnetwork=sub"
    given = [w.removeprefix("--parameters=") for w in words if w.startswith("--parameters=")]
    params = dict(p.split("=", 1) for p in given)
    assert params == {
        "input": LAUNCH_ENV["INPUT"],
        "output": LAUNCH_ENV["OUTPUT"],
        "config": "/opt/winnow/deploy/configs/laion-style.yaml",
        "embed_accelerator": LAUNCH_ENV["ACCELERATOR"],
        "sdk_container_image": IMAGE,
    }
    assert set(params) - {"sdk_container_image"} <= {p["name"] for p in metadata["parameters"]}
    assert (ROOT / "deploy" / "configs" / "laion-style.yaml").exists()


def test_launch_direct_is_a_winnow_run_on_dataflow():
    (words,) = _printed(DATAFLOW / "launch.sh", "--direct", "--", "--num_workers=3", **LAUNCH_ENV)
    args, beam = _winnow_run(words)
    assert args.runner == "DataflowRunner" and args.input == [LAUNCH_ENV["INPUT"]]
    assert args.config == str(ROOT / "deploy" / "configs" / "laion-style.yaml")
    assert args.set == [f"embed.accelerator={LAUNCH_ENV['ACCELERATOR']}"]
    assert {
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://bkt/tmp",
        f"--sdk_container_image={IMAGE}",
        "--experiments=use_runner_v2",
        "--job_name=winnow-test",
    } <= set(beam)
    assert beam[-1] == "--num_workers=3"


def test_install_winnow_prints_its_steps():
    words = _printed(ROOT / "deploy" / "spark" / "install-winnow.sh", "gs://b/winnow.tar.gz", "s3://b/boot")
    assert ["gcloud", "storage", "cp", "gs://b/winnow.tar.gz", "/tmp/winnow-source.tar.gz"] in words
    assert ["aws", "s3", "cp", "s3://b/boot", "/tmp/beam-boot"] in words
    assert ["/opt/winnow/venv/bin/pip", "install", "--no-cache-dir", "/opt/winnow/src"] in words
    assert words[-1] == ["install", "-m", "0755", "/tmp/beam-boot", BOOT]
