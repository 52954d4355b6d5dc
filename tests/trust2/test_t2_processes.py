"""The processes of a run: local workers capped and dying with the launcher, Ctrl-C, unusable
runners and ports.

The runs here crawl a loopback site whose images are held back until the test releases them, so a
crawl lasts exactly as long as the test needs; the `winnow` command runs as a subprocess, as a user
starts it, and every process a test starts is killed in a `finally`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest

from pipeline.cli import main
from tests.conftest import read_output_rows
from tests.hostile import ReplyingHandler, images
from transforms.common.manifest import read_manifest

WINNOW = os.path.join(os.path.dirname(sys.executable), "winnow")
PAIRS = 24
#: Long enough that a fetch still held when the run is interrupted would hold its exit for it.
CRAWL = [
    "crawl.allow_private_networks=true",
    "crawl.max_per_host=0",
    "crawl.thread_count=4",
    "crawl.timeout=60",
    "crawl.deadline=120",
]
WAIT_S = 90.0  # the most any wait here may take (a loaded machine starts Beam's workers slowly)


class _HeldHandler(ReplyingHandler):
    server: _HeldSite

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self.path.startswith("/img/"):
            self.reply(404, b"not found")
            return
        with self.server.lock:
            self.server.requests += 1
        while not self.server.released.wait(0.05):
            if self.client_gone():
                return
        self.reply(200, images()["ok.jpg"], [("Content-Type", "image/jpeg")])


class _HeldSite(ThreadingHTTPServer):
    """Images on loopback that are answered only once `released` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HeldHandler)
        self.lock = threading.Lock()
        self.requests = 0
        self.released = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a crawler that hangs up (its run was stopped) is the point

    def url_list(self, folder: str) -> str:
        path = os.path.join(folder, "urls.tsv")
        port = self.server_address[1]
        with open(path, "w") as handle:
            handle.write("url\tcaption\n")
            for i in range(PAIRS):
                handle.write(
                    f"http://127.0.0.1:{port}/img/{i}.jpg\ta red kite over a green field, photo {i}\n"
                )
        return path


@pytest.fixture
def held_site() -> Iterator[_HeldSite]:
    site = _HeldSite()
    try:
        yield site
    finally:
        site.released.set()
        site.shutdown()
        site.server_close()


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [WINNOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd()
    )


def _poll(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has ended, awaiting its reaper


def _descendants(pid: int) -> dict[int, str]:
    """The processes below `pid` (children, theirs, ...) with their command lines, through /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None:
            parents[int(entry)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                try:
                    with open(f"/proc/{child}/cmdline", "rb") as handle:
                        found[child] = handle.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                frontier.append(child)
    return found


def _kill(process: subprocess.Popen[str], others: list[int] | None = None) -> None:
    """Ends a process this test started, and any of its workers still alive, by their ids."""
    if process.poll() is None:
        process.kill()
    process.communicate()
    for pid in others or []:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_t2_item12_workers_capped_and_dying_with_a_killed_launcher(tmp_path, capsys, held_site):
    urls = held_site.url_list(str(tmp_path))
    # Far more workers than this machine can use: refused before anything is written.
    refused = str(tmp_path / "refused")
    code = main(["run", "--input", urls, "--output", refused, "--stages", "crawl", "--workers", "1000"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(r"^winnow: error: --workers 1000: at most \d+ on this machine \(", err)
    assert not os.path.exists(refused)

    # A launcher killed outright (SIGKILL, as the OOM killer does) takes its workers with it.
    output = str(tmp_path / "out")
    launcher = _start(["run", "--input", urls, "--output", output, "--stages", "crawl", "--workers", "2",
                       *[a for s in CRAWL for a in ("--set", s)]])  # fmt: skip
    workers: dict[int, str] = {}
    try:

        def two_workers() -> bool:
            workers.update(
                {p: c for p, c in _descendants(launcher.pid).items() if "worker" in c and "python" in c}
            )
            assert launcher.poll() is None, launcher.communicate()[1][-2000:]
            return len(workers) >= 2

        _poll(two_workers, "the run's two worker processes start")
        _poll(lambda: held_site.requests >= 1, "the workers crawl")
        everything = {**_descendants(launcher.pid), **workers}
        launcher.kill()
        launcher.wait()
        _poll(lambda: not any(_alive(pid) for pid in everything), "its processes end", timeout=10)
    finally:
        _kill(launcher, list(workers))


def _interrupt_mid_crawl(command: list[str], site: _HeldSite) -> tuple[int, str, dict[int, str]]:
    """Starts `winnow COMMAND`, sends it SIGINT once four more fetches wait on `site`; its exit
    status, its stderr and the processes it had started then."""
    before = site.requests
    run = _start(command)
    started: dict[int, str] = {}
    try:
        _poll(lambda: site.requests >= before + 4 or run.poll() is not None, "the crawl is under way")
        assert run.poll() is None, run.communicate()[1][-2000:]
        started = _descendants(run.pid)
        run.send_signal(signal.SIGINT)
        # Four fetches wait on the site for 60 s (crawl.timeout): the run must not wait for them.
        _, err = run.communicate(timeout=20)
    finally:
        _kill(run, list(started))
    return run.returncode, err, started


def test_t2_item14_ctrl_c_says_interrupted_and_leaves_a_resumable_output(tmp_path, held_site):
    urls = held_site.url_list(str(tmp_path))
    output = str(tmp_path / "out")
    command = ["run", "--input", urls, "--output", output, "--stages", "text,crawl",
               *[a for s in CRAWL for a in ("--set", s)]]  # fmt: skip
    for extra in ([], ["--workers", "2"]):  # in this process; in worker processes
        code, err, started = _interrupt_mid_crawl(command + extra, held_site)
        lines = err.strip().splitlines()
        assert code == 130, err[-3000:]
        assert lines[-1] == "winnow: interrupted", err[-3000:]
        # Before it, at most the progress line (as it stops, and every 10 s): no stack, no warning.
        assert all(line.startswith("read ") for line in lines[:-1]), err[-3000:]
        assert bool(started) == bool(extra)  # the workers, which end with the run
        _poll(lambda pids=list(started): not any(map(_alive, pids)), "the workers end", timeout=10)
        assert read_manifest(output) is not None and read_manifest(output).state == "running"

    # The same command again, into the same folder, is accepted and finishes the output.
    held_site.released.set()
    rerun = _start(command)
    try:
        _, err = rerun.communicate(timeout=WAIT_S * 2)
    finally:
        _kill(rerun)
    assert rerun.returncode == 0, err[-3000:]
    rows = read_output_rows(output)
    assert len(rows) == PAIRS and {row["status"] for row in rows} == {"success"}
    assert read_manifest(output).state == "complete"


def test_t2_item17_unknown_runner_and_busy_port_are_usage_errors(tmp_path, capsys):
    from sampleweb import generate_corpus

    urls = tmp_path / "urls.tsv"
    urls.write_text("url\tcaption\nhttp://127.0.0.1:9/a.jpg\ta red kite\n")
    output = str(tmp_path / "out")
    assert main(["run", "--input", str(urls), "--output", output, "--runner", "Nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("winnow: error: --runner Nope: not a Beam runner; use local (the default), ")
    assert "DataflowRunner" in err and "SparkRunner" in err
    assert not os.path.exists(output)

    web = str(tmp_path / "web")
    generate_corpus(web, samples=3, seed=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", web, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"winnow: error: cannot serve on 127.0.0.1:{port}: the port is in use; "
        "choose another --port (0 = any free one)\n"
    )


def test_t2_item12_the_sample_web_server_ends_with_its_starter_quietly(sample_web) -> None:
    """The sample web's own process (`serve_in_subprocess`, which `winnow demo` runs) stops when
    its starter closes its stdin, and says nothing as it goes: its stdin watch must not hold the
    interpreter's stdin lock at exit (a "Fatal Python error" on the demo's terminal)."""
    from urllib.parse import urlsplit

    served = next(r for r in sample_web.truth_rows() if r["expected_status"] == "success")
    path = urlsplit(served["url"]).path
    script = (
        "from sampleweb import serve_in_subprocess\n"
        "import urllib.request\n"
        "for _ in range(3):\n"
        f"    with serve_in_subprocess({sample_web.dir!r}, host='127.0.0.1', port=0) as url:\n"
        f"        assert urllib.request.urlopen(url + {path!r}, timeout=30).status == 200\n"
        "print('served')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr
    assert "Fatal Python error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
