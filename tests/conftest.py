"""Shared fixtures: the sample web, generated once per test session and served on loopback."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists

# Crawl settings for tests: the sample web is on loopback, and its slow route trickles for ~30 s.
TEST_OVERRIDES = [
    "crawl.allow_private_networks=true",  # the sample web is on loopback
    "crawl.max_per_host=0",  # and one host, which may take every crawl thread
    "crawl.timeout=1",
    "crawl.deadline=2",
    "crawl.thread_count=16",
    "output.samples_per_shard=100",
]


@dataclasses.dataclass(frozen=True)
class SampleWeb:
    dir: str
    base_url: str
    urls: str
    truth: str

    def truth_rows(self) -> list[dict]:
        return pq.read_table(self.truth).to_pylist()


@pytest.fixture(scope="session")
def sample_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleWeb]:
    root = str(tmp_path_factory.mktemp("sampleweb"))
    generate_corpus(root, samples=300, seed=7)
    # Its own process, with its own GIL: a busy test process must not stall the slow route's
    # trickle past the crawl's read timeout, or a timeout's message would depend on the load.
    with serve_in_subprocess(root, host="127.0.0.1", port=0) as base_url:
        urls, truth = write_url_lists(root, base_url)
        yield SampleWeb(root, base_url, urls, truth)


def cli_err(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`winnow ARGS` in process: its exit code and what it printed on stderr."""
    from pipeline.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def overrides(*extra: str) -> list[str]:
    """`--set` arguments of `TEST_OVERRIDES` and `extra`."""
    return [arg for o in [*TEST_OVERRIDES, *extra] for arg in ("--set", o)]


def tree_bytes(folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """relative path → bytes of every file below `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


@pytest.fixture(scope="module")
def text_output(sample_web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished `--stages text` output of the sample web (cheap: nothing is fetched), per module."""
    from pipeline.cli import main

    output = str(tmp_path_factory.mktemp("text") / "out")
    assert (
        main(["run", "--input", sample_web.urls, "--output", output, "--stages", "text", *overrides()]) == 0
    )
    return output


def read_output_rows(output: str) -> list[dict]:
    """Every metadata row of an output folder, in shard order."""
    rows: list[dict] = []
    for name in sorted(os.listdir(output)):
        if name.endswith(".parquet"):
            rows += pq.read_table(os.path.join(output, name)).to_pylist()
    return rows


def shard_bytes(output: str) -> dict[str, bytes]:
    """path → bytes of every shard file of an output folder: tar, Parquet, embedding and index files."""
    out = {}
    for folder in ("", "img_emb", "text_emb", "metadata", "index"):
        directory = os.path.join(output, folder)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.endswith((".tar", ".parquet", ".npy", ".index")) or (
                folder == "index" and name.endswith(".json")
            ):
                with open(os.path.join(directory, name), "rb") as handle:
                    out[os.path.join(folder, name)] = handle.read()
    return out


@dataclasses.dataclass(frozen=True)
class ReferenceRun:
    """The default pipeline (`TEST_OVERRIDES`) on the sample web with the local runner, run once.
    It measures its shuffles (`run.measure_shuffles`): `stats["shuffles"]`."""

    dir: str
    stats: dict


@pytest.fixture(scope="session")
def reference_run(sample_web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    # Imported here: the fixture module stays importable without the pipeline's heavy imports.
    from pipeline.config import load_config
    from pipeline.jobs import run_job

    output = str(tmp_path_factory.mktemp("reference"))
    config = load_config(overrides=[*TEST_OVERRIDES, "run.measure_shuffles=true"])
    stats = run_job(config, [sample_web.urls], output)
    return ReferenceRun(output, stats)


def free_port() -> int:
    """A TCP port free on loopback now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
