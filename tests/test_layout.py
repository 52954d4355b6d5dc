"""The architecture the tree promises: stage packages, one-way imports, no cycles, a light CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "transforms", "schemas")
STAGES = ("read", "text", "crawl", "safety", "embed", "dedup", "noise", "balance", "write")

#: The only imports from one stage package into another, and why each is there.
STAGE_EXCEPTIONS = {
    ("read", "crawl"): "page mode fetches the listed pages with the crawl's fetcher and its settings",
    ("dedup", "crawl"): "fingerprints undo the crawl's padding, and evaluation images go through the "
    "crawl's own image path, so both sides of a comparison are made alike",
    ("dedup", "embed"): "decontamination embeds the evaluation images with the run's CLIP model",
    ("dedup", "safety"): "`dedup.hash: pdq` hashes with the safety stage's PDQ wrapper, the one its "
    "blocklists match with, so both stages compute the same hash of an image",
    ("noise", "embed"): "the concept vocabulary and generated captions use the run's CLIP model",
}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports anywhere in its file (top level, functions, type
    checking), resolved to the longest existing module name."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    found.add(name)
        graph[module] = found
    return graph


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "transforms" and len(parts) > 1 else None


def test_the_project_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
    assert len(graph) > 60  # the walk saw the whole tree


def test_data_flows_one_way_between_the_layers():
    graph = import_graph()
    wrong = []
    for module, imported in graph.items():
        for other in imported:
            if module.startswith(("transforms", "schemas")) and other.startswith("pipeline"):
                wrong.append(f"{module} -> {other}")
            if module.startswith("schemas") and other.startswith("transforms"):
                wrong.append(f"{module} -> {other}")
            if _stage(module) == "common" and _stage(other) not in (None, "common"):
                wrong.append(f"{module} -> {other} (common/ serves every stage and knows none)")
    assert not wrong, wrong


def test_a_stage_imports_only_common_schemas_itself_and_the_named_exceptions():
    graph = import_graph()
    seen: set[tuple[str, str]] = set()
    wrong = []
    for module, imported in graph.items():
        stage = _stage(module)
        if stage not in STAGES:
            continue
        for other in imported:
            target = _stage(other)
            if other.startswith(("schemas", "pipeline")) or target in ("common", stage):
                continue  # pipeline/ imports are caught by the layering test
            if (stage, target) in STAGE_EXCEPTIONS:
                seen.add((stage, target))
                continue
            wrong.append(f"{module} -> {other}")
    assert not wrong, wrong
    assert seen == set(STAGE_EXCEPTIONS), f"exceptions no longer needed: {set(STAGE_EXCEPTIONS) - seen}"


def test_each_stage_package_exports_its_transform_and_its_config():
    import importlib

    expected = {
        "read": ("ReadUrlBatches", "InputConfig"),
        "text": ("FilterText", "TextConfig"),
        "crawl": ("DownloadImages", "CrawlConfig"),
        "embed": ("EmbedImages", "EmbedConfig"),
        "dedup": ("DeduplicateImages", "DedupConfig"),
        "noise": ("RepairCaptions", "NoiseConfig"),
        "write": ("WriteShards", "OutputConfig"),
    }
    import apache_beam as beam

    for stage, (transform, config) in expected.items():
        package = importlib.import_module(f"transforms.{stage}")
        assert issubclass(getattr(package, transform), beam.PTransform), stage
        assert getattr(package, config)().__class__.__name__ == config  # every key has a default
        assert {transform, config} <= set(package.__all__)


def _loaded_after(argv: list[str]) -> list[str]:
    """The heavy libraries a `winnow` command has imported when it ends."""
    code = (
        "import sys, io, contextlib\n"
        "from pipeline.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'faiss', 'apache_beam', 'open_clip', 'cv2') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_config_and_help_start_without_the_heavy_libraries():
    assert _loaded_after(["config"]) == []
    assert _loaded_after(["--help"]) == []
    assert _loaded_after(["run", "--help"]) == []
