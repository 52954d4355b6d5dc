"""The command line where a user meets it: an img2dataset folder audited, a full disk, stage subsets
that cannot work, the progress line and summary, help texts, YAML and flag typos, empty queries.

Runs are real (`pipeline.cli.main`, Beam's local runner) on a few rows; the full disk is a real
small filesystem (a tmpfs mounted for the test), or, where mounting is not allowed, a real file
size limit (RLIMIT_FSIZE) on a `winnow` subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import _parser, main
from pipeline.progress import ProgressPrinter
from sampleweb import generate_corpus
from sampleweb.pool import write_datacomp_pool
from tests.conftest import read_output_rows
from transforms.read.config import InputFormat

ROOT = Path(__file__).parents[2]
IMG2DATASET_POOL = ROOT / "tests" / "data" / "img2dataset-pool"
CONFIGS = ROOT / "deploy" / "configs"
WINNOW = str(Path(sys.executable).parent / "winnow")
_PAGE = 4096


@dataclasses.dataclass(frozen=True)
class Call:
    """What one `winnow` command returned and printed, and the wall time it took."""

    code: int
    out: str
    err: str
    wall_s: float = 0.0


def _main(args: list[str]) -> Call:
    """`winnow ARGS` in this process, its stdout and stderr captured (the progress printer and the
    log handler take the stderr of the moment they start)."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return Call(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


def _blocked_list(folder: Path) -> Path:
    """Ten pairs on a loopback address: six with captions the text stage keeps (their fetch is
    refused: `forbidden_address`), four with a one-word caption (`text.min_words=2` rejects them)."""
    rows = ["url\tcaption"]
    rows += [
        f"http://127.0.0.1:9/img{i}.jpg\ta red bicycle leaning on a stone wall, photo {i}" for i in range(6)
    ]
    rows += [f"http://127.0.0.1:9/short{i}.jpg\tbicycle" for i in range(4)]
    path = folder / "blocked.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@dataclasses.dataclass(frozen=True)
class BlockedRun:
    listed: Path
    output: Path
    call: Call


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory: pytest.TempPathFactory) -> BlockedRun:
    """The ten pairs crawled as a new user would, without `crawl.allow_private_networks`."""
    folder = tmp_path_factory.mktemp("blocked")
    listed = _blocked_list(folder)
    output = folder / "out"
    call = _main(["run", "--input", str(listed), "--output", str(output), "--stages", "text,crawl",
                  "--set", "text.min_words=2"])  # fmt: skip
    return BlockedRun(listed, output, call)


# ---------------------------------------------------------------------------------------- item 13


def test_t2_item13_audit_of_an_img2dataset_folder_is_exit_2_not_a_winnow_output(
    blocked_run: BlockedRun, tmp_path: Path
) -> None:
    pool = tmp_path / "img2dataset"
    shutil.copytree(IMG2DATASET_POOL, pool)
    before = sorted(os.listdir(pool))

    call = _main(["audit", str(pool), "--out", str(tmp_path / "a.html")])
    assert call.code == 2
    lines = call.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winnow: error: "), call.err
    assert f"{pool}/00000.parquet" in lines[0] and "not a Winnow output" in lines[0]
    assert "winnow run --input" in lines[0]  # how to make it one
    assert "NoneType" not in call.err

    assert blocked_run.call.code == 0  # a Winnow output, compared with the download
    call = _main(
        ["audit", str(blocked_run.output), "--out", str(tmp_path / "b.html"), "--compare", str(pool)]
    )
    assert call.code == 2
    assert "not a Winnow output" in call.err and f"{pool}/00000.parquet" in call.err
    assert len(call.err.strip().splitlines()) == 1

    assert sorted(os.listdir(pool)) == before  # nothing written into the download
    assert not (tmp_path / "a.html").exists() and not (tmp_path / "b.html").exists()


# ---------------------------------------------------------------------------------------- item 16


@contextlib.contextmanager
def _small_filesystem(where: Path, size: int) -> Iterator[Path | None]:
    """A real filesystem of `size` bytes mounted at `where` (a tmpfs), or None where this process
    may not mount one (the caller limits the file size of a subprocess instead)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, check=False).returncode == 0  # fmt: skip
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(where)], check=True)


def _size_limited(args: list[str], limit: int) -> Call:
    """`winnow ARGS` in a subprocess whose files cannot grow past `limit` bytes (RLIMIT_FSIZE, with
    SIGXFSZ ignored, so a write that goes past it fails with an OSError, as on a full disk)."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([WINNOW, *args], capture_output=True, text=True, preexec_fn=limited, check=False)
    return Call(done.returncode, done.stdout, done.stderr)


def _temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith("_tmp-")]


def _pages(path: Path) -> int:
    return -(-path.stat().st_size // _PAGE)


def _one_failure_line(call: Call, what: str) -> str:
    """The one line a failed command printed (no stack trace), checked to say the disk is full."""
    assert call.code == 1, call
    assert "Traceback" not in call.err and 'File "' not in call.err, call.err
    lines = call.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"winnow: {what} failed: "), call.err
    assert re.search(r"No space left on device|File too large", lines[0]), lines[0]
    return lines[0]


def test_t2_item16_a_full_disk_is_one_line_exit_1_and_leaves_no_temporary_file(
    blocked_run: BlockedRun, tmp_path: Path
) -> None:
    quiet = ["--stages", "text", "--set", "run.progress=false", "--set", "output.samples_per_shard=4"]
    run = ["run", "--input", str(blocked_run.listed), *quiet]
    # The same run on a roomy disk: the sizes of what it writes.
    roomy = tmp_path / "roomy"
    assert _main([*run, "--output", str(roomy)]).code == 0
    report = roomy / "report.html"
    others = [p for p in roomy.iterdir() if p.is_file() and p.name != "report.html"]
    shards = [p for p in others if p.suffix == ".parquet"]
    assert len(shards) == 3 and _pages(report) >= 4

    # 1. The shards do not fit.
    with _small_filesystem(tmp_path / "tiny", 2 * _PAGE) as disk:
        if disk is not None:
            call = _main([*run, "--output", str(disk / "out")])
        else:
            limit = min(p.stat().st_size for p in shards) - 1
            call = _size_limited([*run, "--output", str(tmp_path / "tiny" / "out")], limit=limit)
        _one_failure_line(call, "pipeline")
        assert _temp_files(tmp_path / "tiny") == []
    # The same with worker processes: each worker's stack of the failed step stays off the terminal.
    limit = min(p.stat().st_size for p in shards) - 1
    call = _size_limited([*run, "--workers", "2", "--output", str(tmp_path / "workers" / "out")], limit=limit)
    _one_failure_line(call, "pipeline")
    assert _temp_files(tmp_path / "workers") == []

    # 2. Everything fits but the report: the run is not a success (its output is not complete).
    fits = sum(_pages(p) for p in others) + 3  # stats.json is rewritten beside itself (2 pages)
    with _small_filesystem(tmp_path / "small", fits * _PAGE) as disk:
        if disk is not None:
            call = _main([*run, "--output", str(disk / "out")])
        else:
            limit = max(p.stat().st_size for p in others) + 1
            assert limit < report.stat().st_size
            call = _size_limited([*run, "--output", str(tmp_path / "small" / "out")], limit=limit)
        line = _one_failure_line(call, "pipeline")
        assert "the audit report could not be written" in line and "not complete" in line
        out = tmp_path / "small" / "out"
        assert _temp_files(tmp_path / "small") == [] and not (out / "report.html").exists()
        assert sorted(p.name for p in out.glob("*.parquet")) == sorted(p.name for p in shards)

    # 3. `winnow audit --out` on a disk too small for the report, twice: no temporary file stays.
    with _small_filesystem(tmp_path / "reports", 2 * _PAGE) as disk:
        for _ in range(2):
            if disk is not None:
                call = _main(["audit", str(roomy), "--out", str(disk / "report.html")])
            else:
                target = str(tmp_path / "reports" / "report.html")
                call = _size_limited(["audit", str(roomy), "--out", target], limit=2 * _PAGE)
            _one_failure_line(call, "audit")
        assert _temp_files(tmp_path / "reports") == [] and os.listdir(tmp_path / "reports") == []


# ---------------------------------------------------------------------------------------- item 18


def test_t2_item18_a_stage_without_the_images_it_judges_is_refused(
    blocked_run: BlockedRun, tmp_path: Path
) -> None:
    for stages, named in [
        ("dedup", "the dedup stage judges"),
        ("embed", "the embed stage judges"),
        ("safety", "the safety stage judges"),
        ("text,dedup", "the dedup stage judges"),
        ("text,embed,dedup,noise", "the embed, dedup and noise stages judge"),
        ("text,safety,embed", "the safety and embed stages judge"),
    ]:
        output = tmp_path / stages.replace(",", "-")
        call = _main(["run", "--input", str(blocked_run.listed), "--output", str(output), "--stages", stages])
        assert call.code == 2, (stages, call)
        lines = call.err.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and "add crawl to run.stages" in lines[0], call.err
        assert not output.exists()  # refused before anything was written
    # A pool's images come through the crawl stage too: without it, the same refusal.
    pool = tmp_path / "pool"
    shutil.copytree(IMG2DATASET_POOL, pool)
    call = _main(["run", "--input", f"{pool}/*.tar", "--output", str(tmp_path / "p"), "--stages", "dedup"])
    assert call.code == 2 and "add crawl to run.stages" in call.err

    # What works stays accepted: the crawl with the stages after it, the text or balance stages alone.
    for stages in ("crawl,dedup", "crawl,safety", "crawl,embed", "text", "balance", "text,balance", "crawl"):
        call = _main(["config", "--stages", stages, "--set", "balance.entries=auto"])
        assert call.code == 0, (stages, call.err)
    # And a pool curated with the crawl stage runs, every row decided (none left pending).
    call = _main(["run", "--input", f"{pool}/*.tar", "--output", str(tmp_path / "q"),
                  "--stages", "crawl,dedup", "--set", "run.progress=false"])  # fmt: skip
    assert call.code == 0, call.err
    rows = read_output_rows(str(tmp_path / "q"))
    assert {r["status"] for r in rows} <= {"success", "failed", "rejected"}
    downloaded = sum(r["status"] == "success" or r["stage"] == "dedup" for r in rows)
    assert f"dedup stage: {downloaded} downloaded pairs compared" in call.out


# ---------------------------------------------------------------------------------------- item 22


def _progress_file(folder: Path, stage: str, done: int, rejected: int = 0, failed: int = 0) -> None:
    body = {"stage": stage, "done": done, "rejected": rejected, "failed": failed}
    (folder / f"{stage}.1.0.json").write_text(json.dumps(body), encoding="utf-8")


def test_t2_item22_progress_and_summary_say_what_the_user_saw(
    blocked_run: BlockedRun, tmp_path: Path
) -> None:
    call = blocked_run.call
    assert call.code == 0, call.err
    # The summary's time is the wall time the user waited, the pipeline's own share beside it.
    found = re.match(r"10 samples in ([\d.]+)s \(pipeline ([\d.]+)s\) → ", call.out)
    assert found, call.out
    wall, pipeline = float(found.group(1)), float(found.group(2))
    assert pipeline < wall <= call.wall_s + 0.05 and call.wall_s - wall < 0.5
    # The progress line's words are the summary's: the text stage rejected 4, the crawl failed 6.
    rows = read_output_rows(str(blocked_run.output))
    assert (
        sum(r["status"] == "rejected" for r in rows) == 4 and sum(r["status"] == "failed" for r in rows) == 6
    )
    final = call.err.strip().splitlines()[-1]
    segments = dict(part.split(" ", 1) for part in final.split(" | "))
    assert segments["text"].endswith("4 rejected") and "failed" not in segments["text"], final
    assert segments["crawl"].endswith("6 failed") and "rejected" not in segments["crawl"], final
    assert "failed" not in segments["write"] and "rejected" not in segments["write"], final

    # No ETA from a stage's first seconds (a crawl's threads still connecting); one once measured.
    now = [0.0]
    progress = tmp_path / "progress"
    progress.mkdir()
    printer = ProgressPrinter(str(progress), ["read", "crawl"], io.StringIO(), clock=lambda: now[0])
    _progress_file(progress, "read", 1000)
    for second, done in [(0, 2), (1, 3), (2, 30), (4, 80)]:
        now[0] = float(second)
        _progress_file(progress, "crawl", done, failed=1)
        assert "ETA" not in printer.line(), (second, printer.line())
    for second, done in [(6, 120), (8, 160)]:
        now[0] = float(second)
        _progress_file(progress, "crawl", done, failed=1)
        line = printer.line()
    rate = (160 - 2) / 8  # the window's samples per second
    assert (
        f"ETA 0:00:{round((1000 - 160) / rate):02d}" in line
        or f"ETA 0:00:{int((1000 - 160) / rate):02d}" in line
    )
    assert line.endswith("1 failed")


# ---------------------------------------------------------------------------------------- item 23


def test_t2_item23_corpus_prints_a_summary_not_a_repr(tmp_path: Path) -> None:
    call = _main(["corpus", "--out", str(tmp_path / "web"), "--samples", "12", "--seed", "2"])
    assert call.code == 0, call.err
    assert "CorpusSummary(" not in call.out and "EvalSetSummary(" not in call.out
    first = call.out.splitlines()[0]
    assert first.startswith("wrote 12 samples: ") and str(tmp_path / "web") in first
    assert re.search(r"^  fault: \d+ none", call.out, re.M)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_t2_item23_help_names_every_command_option_and_input_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    commands = _subcommands()
    assert "evaluate" in commands
    for name in commands:
        assert re.search(rf"\b{name}\b", description), (name, description)
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"winnow {name} {action.option_strings or action.dest} has no help"
    for name in ("run", "config", "evaluate"):
        (action,) = [a for a in commands[name]._actions if "--input-format" in a.option_strings]
        for value in typing.get_args(InputFormat):
            assert re.search(rf"\b{value}\b", str(action.help)), (name, value)


def test_t2_item23_a_key_given_twice_in_the_yaml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("text:\n  min_words: 2\ncrawl:\n  timeout: 5\n  timeout: 9\n", encoding="utf-8")
    call = _main(["config", "--config", str(config)])
    assert call.code == 2
    assert call.err.strip() == (
        f"winnow: error: {config}: line 5: key 'timeout' is given twice (first on line 4); "
        "YAML would keep only the last value: remove one"
    )
    config.write_text("text: {min_words: 2}\ncrawl: {timeout: 5}\ntext: {max_words: 9}\n", encoding="utf-8")
    call = _main(["config", "--config", str(config)])
    assert call.code == 2 and "line 3: key 'text' is given twice (first on line 1)" in call.err
    # A merge key may still bring values that the mapping overrides.
    config.write_text("crawl: &c {timeout: 5}\ntext: {min_words: 2}\n", encoding="utf-8")
    assert _main(["config", "--config", str(config)]).code == 0


def test_t2_item23_an_unknown_flag_is_exit_2_naming_it(blocked_run: BlockedRun, tmp_path: Path) -> None:
    listed, output = str(blocked_run.listed), str(tmp_path / "out")
    for args, named, guess in [
        (["run", "--input", listed, "--output", output, "--workrs=2"], "--workrs", "--workers"),
        (
            ["run", "--input", listed, "--output", output, "--retry_failed=x"],
            "--retry_failed",
            "--retry-failed",
        ),
        (["run", "--input", listed, "--output", output, "--no-such-flag"], "--no-such-flag", None),
        (["audit", str(blocked_run.output), "--s3-endpoint=http://x"], "--s3-endpoint", "--s3_endpoint_url"),
        (["search", str(blocked_run.output), "--text", "cat", "--kk=3"], "--kk", None),
    ]:
        call = _main(args)
        assert call.code == 2, (args, call)
        lines = call.err.strip().splitlines()
        assert len(lines) == 1 and f"unknown option(s) {named}:" in lines[0], call.err
        if guess:
            assert f"did you mean {guess}?" in lines[0]
        assert not os.path.exists(output)
    # A Beam pipeline option still passes through (here to the filesystems of `winnow audit`).
    call = _main(
        ["audit", str(blocked_run.output), "--out", str(tmp_path / "r.html"), "--s3_region_name=eu-west-1"]
    )
    assert call.code == 0, call.err
    assert (tmp_path / "r.html").exists()


def test_t2_item23_an_empty_or_control_character_query_is_exit_2(blocked_run: BlockedRun) -> None:
    for text, why in [
        ("", "has no words"),
        ("   ", "has no words"),
        ("cat\x07", "U+0007"),
        ("a\nb", "U+000A"),
    ]:
        call = _main(["search", str(blocked_run.output), "--text", text])
        assert call.code == 2, (text, call)
        lines = call.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("winnow: error: --text ") and why in lines[0], call.err
        assert call.out == ""


def test_t2_item23_a_run_blocked_from_private_addresses_names_the_setting(blocked_run: BlockedRun) -> None:
    call = blocked_run.call
    assert call.code == 0
    rows = read_output_rows(str(blocked_run.output))
    assert {r["reason"] for r in rows if r["status"] == "failed"} == {"forbidden_address"}
    hint = [line for line in call.out.splitlines() if "crawl.allow_private_networks" in line]
    assert len(hint) == 1 and "6 of 6 failures are forbidden_address" in hint[0], call.out


def test_t2_item23_reused_embeddings_are_called_reused(tmp_path: Path) -> None:
    web = str(tmp_path / "web")
    generate_corpus(web, samples=24, seed=5)
    pool = str(tmp_path / "pool")
    write_datacomp_pool(web, pool, shards=1, seed=1)
    output = str(tmp_path / "out")
    call = _main(["run", "--config", str(CONFIGS / "datacomp-clip-score.yaml"), "--input", f"{pool}/*.tar",
                  "--output", output, "--set", "output.index=false",
                  "--set", "run.progress=false"])  # fmt: skip
    assert call.code == 0, call.err
    stats = json.loads(Path(output, "stats.json").read_text())
    reused = stats["metrics"]["embed/embeddings_reused"]
    assert reused > 0
    (line,) = [line for line in call.out.splitlines() if line.startswith("  embed stage:")]
    assert f"embeddings reused for {reused:,}, computed for 0" in line and "embedded" not in line
