"""What Winnow writes and where, under contention and crashes: `evaluate --report` and `corpus --out`
never replace a file Winnow did not write, one run at a time holds an output (locally and on S3),
`complete` is the last word of a run, and a run refused at its start leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from tests.conftest import TEST_OVERRIDES, cli_err, overrides, read_output_rows, tree_bytes
from tests.pipeline.test_s3 import BUCKET, monkeypatch_module, s3  # noqa: F401 (fixtures)
from transforms.common.manifest import LOCK_FILE, MANIFEST_FILE, read_manifest

ROOT = Path(__file__).resolve().parents[2]
WINNOW = str(ROOT / ".venv" / "bin" / "winnow")


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("winnow: error: "), err
    return err


def _dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------- item 2


def test_t2_item02_evaluate_report_never_replaces_what_winnow_did_not_write(text_output, tmp_path, capsys):
    from pipeline.evaluate import EvaluateConfig, check_targets, write_json

    evalset = tmp_path / "evalset"
    evalset.mkdir()
    before = tree_bytes(text_output)
    base = ["evaluate", text_output, "--eval", str(evalset), "--seeds", "1", "--samples-seen", "8"]
    # Inside the output: its stats.json (what --retry-failed reads), a new report, a workdir.
    for extra in (
        ["--report", f"{text_output}/stats.json"],
        ["--report", f"{text_output}/evaluation.json"],
        ["--report", str(tmp_path / "e.json"), "--workdir", f"{text_output}/work"],
    ):
        code, err = cli_err(capsys, *base, *extra)
        assert code == 2 and "is inside the Winnow output" in _one_line(err), (extra, err)
    assert tree_bytes(text_output) == before  # nothing replaced, no evaluation/ folder left in it
    # `winnow audit --out` follows the same rule: inside an output, only its own report.html.
    code, err = cli_err(capsys, "audit", text_output, "--out", f"{text_output}/other.html")
    assert code == 2 and "is inside the Winnow output" in _one_line(err), err
    assert tree_bytes(text_output) == before
    # A folder, and a file of the user's: refused before any training (no workdir appears).
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    code, err = cli_err(capsys, *base, "--report", str(mine))
    assert code == 2 and "not a report Winnow wrote" in _one_line(err)
    assert mine.read_text() == '{"mine": true}'
    code, err = cli_err(capsys, *base, "--report", str(evalset))
    assert code == 2 and "is a folder" in _one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["evalset", "notes.json"]
    # A report Winnow wrote may be replaced: it is marked, and written atomically.
    ours = tmp_path / "ours.json"
    write_json([], str(ours), str(evalset), EvaluateConfig(seeds=1))
    assert json.loads(ours.read_text())["generator"] == "winnow evaluate"
    check_targets(str(ours), str(tmp_path / "work"))
    assert sorted(os.listdir(tmp_path)) == ["evalset", "notes.json", "ours.json"]


# ---------------------------------------------------------------------------------------- item 3


def test_t2_item03_corpus_follows_the_manifest_rule(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    (theirs / "files").mkdir(parents=True)
    pq.write_table(pa.table({"id": [0], "path": ["/img/000000.jpg"]}), theirs / "manifest.parquet")
    (theirs / "files" / "000000.jpg").write_bytes(b"their photo")
    before = tree_bytes(theirs)
    code, err = cli_err(capsys, "corpus", "--out", str(theirs), "--samples", "5")
    assert code == 2 and "is not a generated sample web's" in _one_line(err)
    assert tree_bytes(theirs) == before

    web = tmp_path / "web"
    assert cli_err(capsys, "corpus", "--out", str(web), "--samples", "5", "--seed", "1")[0] == 0
    manifest = read_manifest(str(web))
    assert manifest is not None and manifest.state == "complete"
    assert sorted(tree_bytes(web)) == sorted([*manifest.files, MANIFEST_FILE])
    assert "manifest.parquet" in manifest.files and any(f.startswith("eval/") for f in manifest.files)
    # The URL lists `winnow serve` writes are recorded too: the sample web is regenerated as a whole.
    from sampleweb import write_url_lists

    write_url_lists(str(web), "http://127.0.0.1:1")
    first = tree_bytes(web)
    assert cli_err(capsys, "corpus", "--out", str(web), "--samples", "3", "--seed", "1")[0] == 0
    again = read_manifest(str(web))
    assert again is not None and again.state == "complete"
    assert sorted(tree_bytes(web)) == sorted([*again.files, MANIFEST_FILE])
    assert "urls.parquet" not in again.files and len(pq.read_table(web / "manifest.parquet")) == 3
    assert len([f for f in again.files if f.startswith("files/")]) < len(
        [f for f in first if f.startswith("files/")]
    )
    # A file added by hand makes it someone else's folder.
    (web / "files" / "mine.jpg").write_bytes(b"mine")
    before = tree_bytes(web)
    code, err = cli_err(capsys, "corpus", "--out", str(web), "--samples", "3")
    assert code == 2 and "files/mine.jpg" in _one_line(err)
    assert tree_bytes(web) == before


# ---------------------------------------------------------------------------------------- item 4


class _HeldSite:
    """Loopback images, each held back until `release()`: a run that fetches them is busy, for
    as long as the test needs, at a point the test knows."""

    def __init__(self) -> None:
        self.release_event = threading.Event()
        self.asked = threading.Event()
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
        image = buffer.getvalue()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                site.asked.set()
                site.release_event.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release_event.set()
        self.server.shutdown()
        self.server.server_close()


def _lock_holder(path) -> dict:
    return json.loads(Path(path).read_text())


def test_t2_item04_two_runs_into_one_output(tmp_path, capsys):
    site = _HeldSite()
    try:
        urls = tmp_path / "urls.csv"
        urls.write_text(
            "url,caption\n" + "".join(f"{site.base}/img/{i}.png,a red square number {i}\n" for i in range(6))
        )
        output = tmp_path / "out"
        first = subprocess.Popen(
            [WINNOW, "run", "--input", str(urls), "--output", str(output), "--stages", "crawl",
             *overrides("crawl.timeout=60", "crawl.deadline=120")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The first run is fetching (the site holds its images): it holds the lock now.
        assert site.asked.wait(120), first.communicate()
        holder = _lock_holder(output / LOCK_FILE)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        manifest_before = (output / MANIFEST_FILE).read_bytes()
        # A second run into the same output, and a retry into it: refused, naming the holder.
        code, err = cli_err(capsys, "run", "--input", str(urls), "--output", str(output), "--stages", "crawl",
                         *overrides())  # fmt: skip
        assert code == 2 and f"pid {first.pid} on {socket.gethostname()}" in _one_line(err)
        assert "is locked by another run" in err
        assert (output / MANIFEST_FILE).read_bytes() == manifest_before
        # Search and audit of the folder being written say so.
        code, err = cli_err(capsys, "audit", str(output))
        assert code == 2 and "a run is writing it now" in _one_line(err)
        site.release_event.set()
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        site.close()
    # The first run's output is whole: complete, every row, its files exactly, no lock left.
    manifest = read_manifest(str(output))
    assert manifest is not None and manifest.state == "complete"
    assert sorted(tree_bytes(output)) == sorted([*manifest.files, MANIFEST_FILE])
    rows = read_output_rows(str(output))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"success"}


def test_t2_item04_stale_and_foreign_locks(text_output, sample_web, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    # Another host's lock cannot be checked from here: refused, and left as it is.
    foreign = {"host": "elsewhere.example", "pid": 1, "since": "2025-01-01T00:00:00Z", "token": "x"}
    (output / LOCK_FILE).write_text(json.dumps(foreign))
    run = ["run", "--input", sample_web.urls, "--output", str(output), "--stages", "text", *overrides()]
    code, err = cli_err(capsys, *run)
    assert code == 2 and "pid 1 on elsewhere.example" in _one_line(err) and LOCK_FILE in err
    assert tree_bytes(output) == {LOCK_FILE: json.dumps(foreign).encode()}
    # A lock of a process of this host that is gone (a launcher killed with SIGKILL): taken over.
    stale = {**foreign, "host": socket.gethostname(), "pid": _dead_pid()}
    (output / LOCK_FILE).write_text(json.dumps(stale))
    code, err = cli_err(capsys, *run)
    assert code == 0 and f"took over the lock of a run that is gone (pid {stale['pid']}" in err
    assert not (output / LOCK_FILE).exists()
    manifest = read_manifest(str(output))
    assert manifest is not None and manifest.state == "complete"
    # --retry-failed takes the lock of its output, and refuses a source a live run is writing.
    retry = tmp_path / "retry"
    retry.mkdir()
    retry_args = [
        "run",
        "--retry-failed",
        text_output,
        "--output",
        str(retry),
        "--stages",
        "text",
        *overrides(),
    ]
    live = {**foreign, "host": socket.gethostname(), "pid": os.getppid()}
    (retry / LOCK_FILE).write_text(json.dumps(live))
    code, err = cli_err(capsys, *retry_args)
    assert code == 2 and f"pid {os.getppid()}" in _one_line(err)
    os.remove(retry / LOCK_FILE)
    source_lock = Path(text_output) / LOCK_FILE
    source_lock.write_text(json.dumps(live))
    try:
        code, err = cli_err(capsys, *retry_args)
        assert code == 2 and "a run is writing it now" in _one_line(err)
    finally:
        os.remove(source_lock)
    assert os.listdir(retry) == []


def test_t2_item04_the_lock_on_s3_is_a_conditional_create(sample_web, s3, capsys):  # noqa: F811
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.lock import OutputLock, OutputLockedError

    endpoint, client = s3
    args = [
        f"--s3_endpoint_url={endpoint}",
        "--s3_access_key_id=testing",
        "--s3_secret_access_key=testing",
        "--s3_region_name=us-east-1",
    ]
    options = PipelineOptions(args)
    output = f"s3://{BUCKET}/out"
    key = f"out/{LOCK_FILE}"
    with OutputLock(output, options) as held:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert json.loads(body)["token"] == held.holder["token"]
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            OutputLock(output, options).acquire()  # If-None-Match: * refused the second create
        code, err = cli_err(capsys, "run", "--input", sample_web.urls, "--output", output, "--stages", "text",
                         *overrides(), *args)  # fmt: skip
        assert code == 2 and "is locked by another run" in _one_line(err)
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body  # untouched
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=key)  # released
    # A stale lock (a dead process of this host) is replaced only as it was read (If-Match).
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "since": "?", "token": "old"}
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(stale).encode())
    code, err = cli_err(capsys, "run", "--input", sample_web.urls, "--output", output, "--stages", "text",
                     *overrides(), *args)  # fmt: skip
    assert code == 0 and "took over the lock" in err
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"]]
    assert key not in listed
    manifest = read_manifest(output)
    assert manifest is not None and manifest.state == "complete"
    assert sorted(listed) == sorted(f"out/{name}" for name in [*manifest.files, MANIFEST_FILE])


# ---------------------------------------------------------------------------------------- item 5

#: Runs `winnow` in a child process that SIGKILLs itself when the launcher starts the index build
#: (after the shards and stats.json are written): a launcher killed at that point, every time.
_KILLED_AT_INDEX = """
import os, signal, sys
import pipeline.jobs
from pipeline.cli import main

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

pipeline.jobs.build_output_index = killed
sys.exit(main(sys.argv[1:]))
"""


def test_t2_item05_a_run_killed_at_the_index_is_not_complete(sample_web, tmp_path, capsys):
    urls = tmp_path / "urls.parquet"
    rows = pq.read_table(sample_web.urls).slice(0, 24)
    pq.write_table(rows, urls)
    output = str(tmp_path / "out")
    run = ["run", "--input", str(urls), "--output", output, "--stages", "crawl,embed", *overrides()]
    assert main(run) in (0, 3)
    capsys.readouterr()
    finished = read_manifest(output)
    assert finished is not None and finished.state == "complete" and "report.html" in finished.files
    assert "index/index.json" in finished.files
    # The same run again, its launcher killed (SIGKILL) as it starts the index build.
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_INDEX, *run], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = read_manifest(output)
    assert manifest is not None and manifest.state == "running"  # not `complete`: no index, no report
    assert not os.path.exists(os.path.join(output, "report.html"))
    # Search, audit and a retry say it is unfinished and how to finish it, in one line.
    for command in (["search", output, "--text", "a red circle"], ["audit", output]):
        code, err = cli_err(capsys, *command)
        assert code == 2 and "the output is unfinished" in _one_line(err), err
        assert f"winnow run ... --output {output}` again to finish it" in err
    code, err = cli_err(capsys, "run", "--retry-failed", output, "--output", str(tmp_path / "r"))
    assert code == 2 and "did not finish" in _one_line(err)
    # The stale lock of the killed launcher is taken over; the rerun the message names finishes it.
    assert os.path.exists(os.path.join(output, LOCK_FILE))
    assert main(run) in (0, 3)
    assert "took over the lock" in capsys.readouterr().err
    again = read_manifest(output)
    assert again is not None and again.state == "complete" and again.files == finished.files
    assert sorted(tree_bytes(output)) == sorted([*again.files, MANIFEST_FILE])
    assert main(["search", output, "--text", "a red circle", "-k", "2"]) == 0
    assert main(["audit", output]) == 0


def test_t2_item05_complete_is_the_last_write(sample_web, tmp_path, monkeypatch):
    """The order of a run's writes into its manifest, seen from the manifest's writer: every
    write before the last says `running`, and the last, after the index and the report, `complete`."""
    import transforms.common.manifest as manifest_module

    seen: list[tuple[str, tuple[str, ...]]] = []
    real = manifest_module.write_manifest

    def recording(output_dir, state, files):
        seen.append((state, tuple(sorted(files))))
        real(output_dir, state, files)

    monkeypatch.setattr(manifest_module, "write_manifest", recording)
    urls = tmp_path / "urls.parquet"
    pq.write_table(pq.read_table(sample_web.urls).slice(0, 12), urls)
    output = str(tmp_path / "out")
    from pipeline.config import load_config
    from pipeline.jobs import run_job

    run_job(load_config(overrides=[*TEST_OVERRIDES, "run.stages=[crawl, embed]"]), [str(urls)], output)
    states = [state for state, _ in seen]
    assert states[-1] == "complete" and set(states[:-1]) == {"running"}
    last = seen[-1][1]
    assert "report.html" in last and "index/index.json" in last
    assert all("report.html" not in files for _, files in seen[:-2])  # the report comes just before


# --------------------------------------------------------------------------------------- item 19


def test_t2_item19_a_run_refused_at_its_start_leaves_nothing(text_output, sample_web, tmp_path, capsys):
    for override, message in (
        ("embed.model=nope", "embed.model 'nope' is not an open_clip model"),
        ("dedup.eval_images=/nonexistent", "dedup.eval_images: no images"),
    ):
        fresh = tmp_path / override.split("=")[0]
        code, err = cli_err(capsys, "run", "--input", sample_web.urls, "--output", str(fresh),
                         *overrides(override))  # fmt: skip
        assert code == 2 and message in _one_line(err)
        assert not fresh.exists()  # no folder, no `running` manifest
        # An earlier output stays as it was, `complete`, byte for byte.
        before = tree_bytes(text_output)
        code, err = cli_err(capsys, "run", "--input", sample_web.urls, "--output", text_output,
                         *overrides(override))  # fmt: skip
        assert code == 2 and message in _one_line(err)
        assert tree_bytes(text_output) == before
    # A failure once the folder is claimed but before the job starts writing undoes the claim.
    import pipeline.jobs

    empty = tmp_path / "empty"
    with pytest.MonkeyPatch.context() as patch:

        def refused(*args, **kwargs):
            raise pipeline.jobs.InputError("refused at the start")

        patch.setattr(pipeline.jobs, "_run_claimed", refused)
        run = ["run", "--input", sample_web.urls, "--output", str(empty), "--stages", "text"]
        code, err = cli_err(capsys, *run, *overrides())
    assert code == 2 and "refused at the start" in err
    assert not empty.exists()
