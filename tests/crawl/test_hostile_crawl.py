"""The whole crawl against a hostile web: every case keeps its row with the right reason, the shard
is written, no server sees a request it should not, and the run's memory stays bounded.

The run is `winnow run --stages crawl` in a child process, with the SSRF guard on. No public
address exists here, so 127.0.0.2 stands in for the public web (the child treats it as public, as
`tests/crawl/test_netguard.py` does); 127.0.0.1 is the inside, where a canary server must see nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import read_output_rows
from tests.hostile import TDMREP_RULES, HostileSite, gzip_bomb, images

_CHILD = """
import ipaddress, sys
import transforms.crawl.netguard as netguard
real = netguard.forbidden_reason
public = ipaddress.ip_address("127.0.0.2")
netguard.forbidden_reason = lambda ip: None if ip == public else real(ip)
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""
PUBLIC = "127.0.0.2"
#: How much more resident memory the hostile crawl may take than a crawl of ten honest images. Its
#: bodies add up to tens of GB (10 GB declared, an endless stream, a 1 GiB gzip bomb, a 10 MB
#: robots.txt); held in memory, any one of them would blow past this.
MAX_EXTRA_RSS_MIB = 256


def _cases(main: HostileSite, canary: HostileSite, port: int) -> dict[str, tuple[str, str | None]]:
    """url → (status, reason) the crawl must record."""
    ok, failed = "success", "failed"
    cases = {
        # Images, honest and hostile.
        **{
            main.url(f"/img/{name}"): (ok, None)
            for name in [
                "ok.jpg",
                "exif-rotated.jpg",
                "cmyk.jpg",
                "16bit.png",
                "palette-alpha.png",
                "1x1.png",
                "1x100000.png",
                "frames-100k.gif",
            ]
        },
        main.url("/img/bomb-50000.png"): (failed, "image_area_too_large"),
        main.url("/img/truncated.jpg"): (failed, "decode_error"),
        main.url("/img/random.bin"): (failed, "not_an_image"),
        main.url("/img/image.svg"): (failed, "not_an_image"),
        # Redirects.
        main.url("/hostile/chain/3"): (ok, None),
        main.url("/hostile/chain/11"): (failed, "too_many_redirects"),
        main.url("/hostile/loop-a"): (failed, "redirect_loop"),
        main.url("/hostile/to-file"): (failed, "invalid_url"),
        main.url("/hostile/to-ftp"): (failed, "invalid_url"),
        main.url("/hostile/to-data"): (failed, "invalid_url"),
        main.url("/hostile/to-canary"): (failed, "forbidden_address"),
        main.url("/hostile/to-metadata"): (failed, "forbidden_address"),
        # The inside, spelled every way.
        **{
            f"http://{host}:{port}/img/ok.jpg": (failed, "forbidden_address")
            for host in [
                "127.0.0.1",
                "2130706433",
                "0x7f000001",
                "0x7f.1",
                "0177.0.0.1",
                "127.1",
                "[::ffff:127.0.0.1]",
                "[::ffff:7f00:1]",
                "localhost",
            ]
        },
        "http://169.254.169.254/latest/meta-data/": (failed, "forbidden_address"),
        # Bodies that never end, never start or lie.
        main.url("/hostile/huge-declared"): (failed, "too_large"),
        main.url("/hostile/endless"): (failed, "too_large"),
        main.url("/hostile/gzip-bomb"): (failed, "too_large"),
        main.url("/hostile/drip"): (failed, "timeout"),
        main.url("/hostile/silent"): (failed, "timeout"),
        main.url("/hostile/drip-headers"): (failed, "timeout"),
        main.url("/hostile/short"): (failed, "connection_error"),
        # Backoff.
        main.url("/hostile/retry-after-2"): (ok, None),
        main.url("/hostile/retry-after-86400"): (failed, "http_429"),
        main.url("/hostile/flaky"): (ok, None),
        # Opt-outs.
        main.url("/private/a.jpg"): (failed, "opted_out_robots_txt"),
        main.url("/no-winnow/a.jpg"): (failed, "opted_out_robots_txt"),
        main.url("/hostile/to-private"): (failed, "opted_out_robots_txt"),
        main.url("/reserved/a.jpg"): (failed, "opted_out_tdmrep"),
        main.url("/hostile/tdm-header"): (failed, "opted_out_tdmrep"),
        main.url("/hostile/content-usage"): (failed, "opted_out_content_usage"),
        main.url("/hostile/x-robots-noai"): (failed, "opted_out_x_robots_tag"),
        main.url("/hostile/x-robots-ours"): (failed, "opted_out_x_robots_tag"),
        main.url("/hostile/x-robots-theirs"): (ok, None),
    }
    return cases


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    images(), gzip_bomb()
    with (
        HostileSite("rules", tdmrep=TDMREP_RULES, host=PUBLIC) as main,
        HostileSite("error", host=PUBLIC) as down,
        HostileSite("huge", host=PUBLIC) as huge,
        HostileSite("redirect", host=PUBLIC) as moved,
        HostileSite("html", host=PUBLIC) as html,
        HostileSite("missing") as canary,
    ):
        port = int(canary.base.rsplit(":", 1)[1])
        main.canary = canary.url("/img/ok.jpg")
        cases = _cases(main, canary, port)
        cases |= {
            down.url("/free/a.jpg"): ("failed", "robots_unreachable"),
            down.url("/free/b.jpg"): ("failed", "robots_unreachable"),
            huge.url("/free/a.jpg"): ("success", None),  # its `Disallow: /` lies past 500 KiB
            huge.url("/private/a.jpg"): ("failed", "opted_out_robots_txt"),
            moved.url("/private/a.jpg"): ("failed", "opted_out_robots_txt"),
            moved.url("/free/a.jpg"): ("success", None),
            html.url("/private/a.jpg"): ("success", None),  # a web page has no rules
        }
        output, peak = _crawl(sorted(cases), tmp / "hostile")
        sites = {"main": main, "down": down, "huge": huge, "moved": moved, "html": html, "canary": canary}
        with HostileSite("missing", host=PUBLIC) as honest:
            _, honest_peak = _crawl([honest.url(f"/free/{i}.jpg") for i in range(10)], tmp / "honest")
        yield cases, read_output_rows(output), sites, (peak, honest_peak), output


def _crawl(urls: list[str], folder) -> tuple[str, float]:
    """Runs the crawl over `urls` in a child process; returns the output folder and its peak RSS in MiB."""
    folder.mkdir()
    table = pa.table({"url": urls, "caption": [f"hostile case {i}" for i in range(len(urls))]})
    pq.write_table(table, folder / "urls.parquet")
    output = str(folder / "out")
    command = [
        sys.executable, "-c", _CHILD, "run",
        "--input", str(folder / "urls.parquet"), "--output", output, "--stages", "crawl",
        "--set", "crawl.timeout=2", "--set", "crawl.deadline=4", "--set", "crawl.retries=1",
        "--set", "crawl.retry_backoff=0", "--set", "crawl.thread_count=16",
        "--set", "output.samples_per_shard=1000",
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)  # the resources of this child alone
    assert os.waitstatus_to_exitcode(status) == 0, log
    return output, usage.ru_maxrss / 1024


def test_every_case_keeps_its_row_with_its_reason(hostile_run):
    cases, rows, _, _, _ = hostile_run
    got = {row["url"]: (row["status"], row["reason"]) for row in rows}
    assert len(rows) == len(cases)
    wrong = {url: (got.get(url), want) for url, want in cases.items() if got.get(url) != want}
    assert not wrong, json.dumps(wrong, indent=1)
    rotated = next(r for r in rows if r["url"].endswith("/img/exif-rotated.jpg"))
    assert (rotated["original_width"], rotated["original_height"]) == (64, 96)  # EXIF orientation applied


def test_the_shard_is_written_with_every_success(hostile_run):
    import tarfile

    cases, _, _, _, output = hostile_run
    with tarfile.open(os.path.join(output, "00000.tar")) as tar:
        images_in_tar = [m.name for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert len(images_in_tar) == sum(status == "success" for status, _ in cases.values())


def test_no_server_saw_a_request_it_should_not_have(hostile_run):
    _, _, sites, _, _ = hostile_run
    assert sites["canary"].requests == []  # the inside was never reached, by any spelling or redirect
    forbidden = ("/private/", "/no-winnow/", "/reserved/")
    assert not [p for p in sites["main"].requests if p.startswith(forbidden)]
    assert [p for p in sites["down"].requests if p != "/robots.txt"] == []  # a 503 robots.txt: nothing else
    for name in ("main", "down", "huge", "moved", "html"):
        assert sites[name].requests.count("/robots.txt") == 1, name
    main = sites["main"]
    assert len(main.times["/hostile/retry-after-86400"]) == 1  # a day's Retry-After: not retried
    retried = main.times["/hostile/retry-after-2"]
    assert len(retried) == 2 and retried[1] - retried[0] >= 2.0  # Retry-After honoured
    assert len(main.times["/hostile/flaky"]) == 2


def test_memory_stays_bounded(hostile_run):
    _, _, _, (peak, honest_peak), _ = hostile_run
    assert peak - honest_peak < MAX_EXTRA_RSS_MIB, f"peak RSS {peak:.0f} MiB against {honest_peak:.0f} MiB"
