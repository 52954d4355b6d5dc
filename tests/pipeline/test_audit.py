"""`winnow audit` on a real run of the sample web: counts read back from the HTML equal the Parquet's,
untrusted text is inert, and the page opens in headless Chromium without errors or network requests."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import default_config_text, load_config
from pipeline.jobs import run_job
from pipeline.output.audit import Histogram, audit_output, funnel, thresholds
from pipeline.output.report import CSP, render_report, write_report
from pipeline.summary import format_summary
from tests.conftest import TEST_OVERRIDES

# A CLIP-score threshold, so that the report draws it on the CLIP-score chart.
CONFIG = load_config(None, [*TEST_OVERRIDES, "embed.min_clip_score=0.3"], base_text=default_config_text())
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(sample_web, tmp_path_factory):
    """The sample web plus hostile rows (each with its own reason, so the report shows all of them)."""
    root = tmp_path_factory.mktemp("audit")
    urls = pq.read_table(sample_web.urls).select(["url", "caption"])
    hostile = pa.table({"url": ["ftp://example.com/a.jpg", "javascript:alert(1)"], "caption": HOSTILE})
    pq.write_table(pa.concat_tables([urls, hostile]), root / "urls.parquet")
    output = str(root / "out")
    stats = run_job(CONFIG, [str(root / "urls.parquet")], output)
    with open(os.path.join(output, "report.html"), encoding="utf-8") as handle:
        return output, stats, handle.read()


def parquet_rows(output: str, columns: list[str]) -> list[dict]:
    return [
        r
        for p in sorted(glob.glob(f"{output}/*.parquet"))
        for r in pq.read_table(p, columns=columns).to_pylist()
    ]


def report_counts(page: str) -> dict[str, int]:
    found = re.findall(r'data-key="([^"]*)" data-count="(\d+)"', page)
    return {key.replace("&amp;", "&"): int(n) for key, n in found}


def test_report_counts_equal_the_parquet(run):
    output, stats, page = run
    rows = parquet_rows(output, ["status", "stage", "reason", "lang"])
    counts = report_counts(page)
    assert counts["samples"] == len(rows) == stats["samples"]
    for status, n in Counter(r["status"] for r in rows).items():
        assert counts[f"status:{status}"] == n
    dropped = Counter((r["stage"], r["reason"]) for r in rows if r["status"] != "success")
    assert {k: v for k, v in counts.items() if k.startswith("reason:")} == {
        f"reason:{stage}:{reason}": n for (stage, reason), n in dropped.items()
    }
    assert counts["stage:read:in"] == len(rows)
    assert counts["stage:write:kept"] == counts["status:success"]
    for stage, entry in stats["stages"].items():  # the funnel agrees with the run's own stats
        assert (counts[f"stage:{stage}:in"], counts[f"stage:{stage}:kept"]) == (entry["total"], entry["kept"])
    assert counts["domain:127.0.0.1"] == len(rows) - 2  # the two hostile rows have other hosts
    assert "min_clip_score = 0.3" in page  # the configured threshold, drawn on the CLIP-score chart


def test_hostile_text_is_escaped_and_inert(run):
    _, _, page = run
    for text in HOSTILE:
        assert text not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attrs = Counter(), []

        def handle_starttag(self, tag, attrs):
            self.tags[tag] += 1
            self.attrs += [(tag, name, value or "") for name, value in attrs]

    parser = Tags()
    parser.feed(page)
    assert not {"script", "iframe", "object", "embed", "link", "base", "form"} & set(parser.tags)
    assert not [a for a in parser.attrs if a[1].startswith("on")]
    assert all(v.startswith("data:image/jpeg;base64,") for t, n, v in parser.attrs if n == "src")
    hrefs = [v for t, n, v in parser.attrs if n == "href"]
    assert hrefs and all(v.startswith(("http://", "https://")) for v in hrefs)


def test_thumbnails_only_for_the_samples_shown(run):
    output, _, page = run
    audit = audit_output(output)
    assert 0 < len(audit.thumbnails) <= len(audit.rows)
    for uri in audit.thumbnails.values():
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "JPEG" and max(image.size) <= 128
    kept = [row["uid"] for row in audit.samples["kept"]]
    assert len(kept) == 24 and all(f'data-uid="{uid}"' in page for uid in kept)
    assert audit.samples == audit_output(output).samples  # deterministic sampling
    assert audit.groups and all(g[0]["status"] == "success" for g in audit.groups)


def test_cli_audit_compare_and_errors(run, tmp_path, capsys):
    output, stats, _ = run
    assert f"report: {output}/report.html" in format_summary(stats, output)  # written by every run
    out = str(tmp_path / "cmp" / "report.html")
    assert main(["audit", output, "--compare", output, "--out", out]) == 0
    assert out in capsys.readouterr().out
    with open(out, encoding="utf-8") as handle:
        counts = report_counts(handle.read())
    a = {k[2:]: v for k, v in counts.items() if k.startswith("a/")}
    assert a and a == {k[2:]: v for k, v in counts.items() if k.startswith("b/")}
    assert main(["audit", str(tmp_path)]) == 2
    assert "no Parquet shards" in capsys.readouterr().err


def test_report_without_recorded_config(run, tmp_path):
    output, _, _ = run
    copy = str(tmp_path / "copy")
    shutil.copytree(output, copy)
    with open(f"{copy}/stats.json") as handle:
        stats = json.load(handle)
    del stats["config"]
    with open(f"{copy}/stats.json", "w") as handle:
        json.dump(stats, handle)
    page = render_report(audit_output(copy))
    assert "config: not recorded" in page and "min_clip_score" not in page
    os.remove(f"{copy}/stats.json")
    with open(write_report(copy), encoding="utf-8") as handle:
        assert "stats.json is missing" in handle.read()


def test_pure_helpers():
    hist = Histogram.empty(0.0, 0.5, 3)
    hist.add(np.array([0.1, 0.7, 9.0, float("nan")]), np.array([1, 0, 1, 1], bool))
    assert (hist.kept, hist.other) == ([1, 0, 1], [0, 1, 0])
    outcomes = Counter(
        {("success", "", ""): 5, ("failed", "crawl", "timeout"): 2, ("rejected", "text", "x"): 3}
    )
    steps = funnel(outcomes, 10, {"write": {}, "crawl": {}, "text": {}})
    assert [(s.stage, s.entering, s.kept) for s in steps] == [
        ("text", 10, 7),
        ("crawl", 7, 5),
        ("write", 5, 5),
    ]
    assert thresholds({"embed": {"min_clip_score": 0.3}, "text": {"min_words": 0}}) == {
        "clip_score": [(0.3, "embed.min_clip_score = 0.3")]
    }
    assert thresholds(None) == {}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_report_opens_in_headless_chromium(run, tmp_path):
    output, _, _ = run
    errors, requests, png, text, _ = visit(os.path.join(output, "report.html"), str(tmp_path / "profile"))
    assert errors == [] and requests == []
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert HOSTILE[0] in text and HOSTILE[1] in text  # shown as text, never run
    # The same harness does see a page that loads from the network and logs an error.
    control = tmp_path / "control.html"
    control.write_text('<img src="http://127.0.0.1:9/x.png"><script>console.error("seen")</script>')
    errors, requests, _, _, _ = visit(str(control), str(tmp_path / "profile2"))
    assert requests == ["http://127.0.0.1:9/x.png"] and any("seen" in e for e in errors)


def visit(
    path: str, profile: str, fonts_of: str | None = None
) -> tuple[list[str], list[str], bytes, str, list[dict]]:
    """Opens a file in headless Chromium over the DevTools protocol: console errors, exceptions and
    log errors, the network requests it made (other than data: and file:), a PNG screenshot, the
    page's visible text, and the platform fonts (family, glyph count) that rendered the text of the
    element `fonts_of` selects."""
    import websocket

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ]
    args += [
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--window-size=1280,2000",
        "about:blank",
    ]
    browser = subprocess.Popen([CHROMIUM, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(profile)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=20)
        events: list[dict] = []
        ids = iter(range(1, 1_000))

        def call(method: str, **params) -> dict:
            sent = next(ids)
            ws.send(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == sent:
                    return message.get("result", {})
                events.append(message)

        for domain in ("Runtime", "Log", "Network", "Page"):
            call(f"{domain}.enable")
        call("Page.navigate", url="file://" + os.path.abspath(path))
        deadline = time.monotonic() + 20
        while (
            not any(e.get("method") == "Page.loadEventFired" for e in events) and time.monotonic() < deadline
        ):
            events.append(json.loads(ws.recv()))
        text = call("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]
        png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        fonts: list[dict] = []
        if fonts_of is not None:
            call("DOM.enable")
            call("CSS.enable")
            root = call("DOM.getDocument", depth=-1)["root"]["nodeId"]
            node = call("DOM.querySelector", nodeId=root, selector=fonts_of)["nodeId"]
            fonts = call("CSS.getPlatformFontsForNode", nodeId=node)["fonts"]
        ws.close()
    finally:
        browser.terminate()
        browser.wait(timeout=10)
    errors, requests = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(str(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("data:", "file:")):
                requests.append(url)
    return errors, requests, png, text, fonts


def _devtools_port(profile: str) -> int:
    marker = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(marker):
            with open(marker) as handle:
                first = handle.readline().strip()
            if first.isdigit():
                return int(first)
        time.sleep(0.05)
    raise TimeoutError(f"Chromium wrote no {marker}")
