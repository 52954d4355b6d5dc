"""The `winnow` command as a user runs it: exit codes, one-line errors, the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import TEST_OVERRIDES

WINNOW = os.path.join(os.path.dirname(sys.executable), "winnow")


def winnow(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WINNOW, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def overrides() -> list[str]:
    return [arg for item in TEST_OVERRIDES for arg in ("--set", item)]


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("winnow: error:")]
    assert len(message) == 1, result.stderr
    for fragment in fragments:
        assert fragment in message[0]


def test_missing_input(tmp_path):
    result = winnow("run", "--input", str(tmp_path / "nothing.parquet"), "--output", str(tmp_path / "out"))
    assert_user_error(result, "no input files match", "nothing.parquet")


def test_unreadable_input(tmp_path):
    bad = tmp_path / "list.parquet"
    bad.write_bytes(b"garbage")
    result = winnow("run", "--input", str(bad), "--output", str(tmp_path / "out"))
    assert_user_error(result, "list.parquet", "cannot read input file")


def test_missing_url_column(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("link,caption\nhttp://x/a.jpg,hello\n")
    result = winnow("run", "--input", str(path), "--output", str(tmp_path / "out"))
    assert_user_error(result, "list.csv", "missing column(s) ['url']")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("crawl.image_sise=64", "unknown config key 'crawl.image_sise'"), ("crawl.timeout=-1", "crawl.timeout")],
)
def test_bad_config(tmp_path, override, fragment):
    path = tmp_path / "list.csv"
    path.write_text("url,caption\nhttp://x/a.jpg,hello\n")
    result = winnow("run", "--input", str(path), "--output", str(tmp_path / "out"), "--set", override)
    assert_user_error(result, fragment)


def test_unknown_config_file_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("crawl:\n  resize_mod: border\n")
    result = winnow("config", "--config", str(config))
    assert_user_error(result, "crawl.resize_mod", "did you mean 'crawl.resize_mode'")


def test_config_prints_every_key_with_overrides():
    result = winnow("config", "--set", "crawl.image_size=64", "--stages", "crawl")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["crawl"]["image_size"] == 64
    assert printed["run"]["stages"] == ["crawl"]
    assert set(printed) == {
        "input",
        "text",
        "crawl",
        "safety",
        "embed",
        "dedup",
        "noise",
        "balance",
        "output",
        "run",
    }


def test_run_on_a_user_list_with_extra_columns(sample_web, tmp_path):
    rows = pq.read_table(sample_web.urls).slice(0, 40).to_pylist()
    listed = [{"link": r["url"], "alt": r["caption"], "page": f"p{i}"} for i, r in enumerate(rows)]
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist(listed), path)
    out = tmp_path / "out"
    result = winnow(
        "run", "--input", str(path), "--output", str(out), *overrides(),
        "--set", "input.url_col=link", "--set", "input.caption_col=alt",
        "--set", "input.save_additional_columns=[page]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "40 samples" in result.stdout
    written = [
        r
        for name in sorted(os.listdir(out))
        if name.endswith(".parquet")
        for r in pq.read_table(out / name).to_pylist()
    ]
    assert sorted(r["url"] for r in written) == sorted(r["link"] for r in listed)
    assert {yaml.safe_load(r["extra"])["page"] for r in written} == {r["page"] for r in listed}


def test_demo_runs_end_to_end(tmp_path):
    result = winnow("demo", "--workdir", str(tmp_path), "--samples", "120")
    assert result.returncode == 0, result.stderr
    assert "120 samples" in result.stdout
    matched = [line for line in result.stdout.splitlines() if "ground truth, download:" in line]
    agree, fetched = re.search(r"([\d,]+)/([\d,]+) fetched", matched[0]).groups()
    assert agree == fetched and int(fetched) > 90
    assert "pairs rejected before any fetch (0 of them with a clean caption)" in result.stdout
    assert any(name.endswith(".tar") for name in os.listdir(tmp_path / "shards"))


def test_corpus_then_serve(tmp_path):
    web = tmp_path / "web"
    result = winnow("corpus", "--out", str(web), "--samples", "30", "--seed", "5")
    assert result.returncode == 0, result.stderr
    # the held-out eval sets of `winnow evaluate`, in clip_benchmark's layout
    assert (web / "eval" / "classnames.txt").read_text().splitlines()[0] == "red circle"
    assert (web / "eval" / "test" / "nshards.txt").read_text() == "1\n"
    assert (web / "eval" / "retrieval" / "dataset_type.txt").read_text() == "retrieval\n"
    assert "eval: 1000 images of 100 concepts" in result.stdout
    server = subprocess.Popen(
        [WINNOW, "serve", str(web), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()  # "serving DIR at URL (...)": printed once the lists are written
        assert line.startswith("serving"), line + server.stderr.read()
        base_url = line.split(" at ", 1)[1].split(" ", 1)[0]
        urls = pq.read_table(web / "urls.parquet").to_pylist()
        truth = pq.read_table(web / "truth.parquet").to_pylist()
        assert len(urls) == len(truth) == 30
        assert all(row["url"].startswith(base_url) for row in urls)
        first_ok = next(t for t in truth if t["expected_status"] == "success")
        with urllib.request.urlopen(first_ok["url"], timeout=10) as response:
            assert response.status == 200 and len(response.read()) > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_a_folder_without_a_corpus(tmp_path):
    assert_user_error(winnow("serve", str(tmp_path)), "manifest.parquet")
