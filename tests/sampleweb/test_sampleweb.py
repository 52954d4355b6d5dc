"""Tests of the sample web: deterministic corpus generation, ground truth and the loopback server."""

from __future__ import annotations

import http.client
import io
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sampleweb import CorpusConfig, SampleWebServer, generate_corpus, serve_in_subprocess, write_url_lists
from sampleweb.captions import BOILERPLATE, FILE_NAMES, TOO_SHORT
from sampleweb.corpus import MANIFEST_SCHEMA
from sampleweb.layout import CONTENT_TYPES, OVERSIZE_BYTES, ROBOTS_FORMS, file_name
from sampleweb.urllists import TRUTH_COLUMNS

SAMPLES = 300
SEED = 7
SMALL = 120
EXTENSIONS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("web")
    generate_corpus(str(out), SAMPLES, SEED)
    return out


@pytest.fixture(scope="module")
def rows(corpus: Path) -> list[dict]:
    return pq.read_table(corpus / "manifest.parquet").to_pylist()


@pytest.fixture(scope="module")
def server(corpus: Path):
    with SampleWebServer(corpus) as srv:
        yield srv


def _file(corpus: Path, row: dict) -> Path:
    return corpus / "files" / file_name(row["id"], row["format"])


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _first(rows: list[dict], **match: object) -> dict:
    return next(row for row in rows if all(row[key] == value for key, value in match.items()))


# --------------------------------------------------------------------------- generation


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted((out / "files").iterdir())}
    return {"manifest": (out / "manifest.parquet").read_bytes(), **files}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    serial = CorpusConfig(median_long_side=240, max_long_side=480, workers=1)
    pooled = replace(serial, workers=2)
    generate_corpus(str(tmp_path / "a"), SMALL, SEED, serial)
    generate_corpus(str(tmp_path / "b"), SMALL, SEED, pooled)
    generate_corpus(str(tmp_path / "c"), SMALL, SEED + 1, pooled)
    first, second, other = (_snapshot(tmp_path / name) for name in "abc")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert first["manifest"] != other["manifest"]
    shared = set(first) & set(other) - {"manifest"}
    assert any(first[name] != other[name] for name in shared)


def test_manifest_schema_and_rates(rows: list[dict], corpus: Path) -> None:
    assert pq.read_schema(corpus / "manifest.parquet").names == MANIFEST_SCHEMA.names
    assert [row["id"] for row in rows] == list(range(SAMPLES))
    noise = Counter(row["noise"] for row in rows)
    config = CorpusConfig()
    for name, rate in config.noise_rates.items():
        assert noise[name] == pytest.approx(rate * SAMPLES, abs=1), name
    faults = Counter(row["fault"] for row in rows if row["fault"])
    assert set(faults) == set(config.faults)
    assert sum(faults.values()) == round(config.fault_rate * SAMPLES)
    variants = Counter(row["dup_variant"] for row in rows)
    assert variants["exact"] == round(config.exact_dup_rate * SAMPLES)
    assert sum(variants[v] for v in config.near_dup_variants) == round(config.near_dup_rate * SAMPLES)
    assert Counter(row["split"] for row in rows)["heldout"] / SAMPLES == pytest.approx(0.1, abs=0.03)
    formats = Counter(row["format"] for row in rows)
    assert set(formats) == {"jpeg", "png", "webp", "gif"}
    assert formats["jpeg"] / SAMPLES == pytest.approx(0.7, abs=0.1)


def test_every_language_is_present(rows: list[dict]) -> None:
    described = Counter(row["lang"] for row in rows if row["noise"] == "none")
    assert {"en", "fr", "de", "es", "zh", "it", "pt"} <= set(described)
    assert described["en"] / sum(described.values()) == pytest.approx(0.7, abs=0.08)


def test_captions_match_their_noise_type(rows: list[dict]) -> None:
    boilerplate = {text for phrases in BOILERPLATE.values() for text in phrases} | set(FILE_NAMES)
    for row in rows:
        caption, noise = row["caption"], row["noise"]
        if noise in ("none", "mismatched", "partial"):
            assert caption and 10 < len(caption) < 400 and row["lang"]
        elif noise == "boilerplate":
            assert caption in boilerplate
        elif noise == "empty":
            assert caption is None or not caption.strip()
        elif noise == "too_short":
            assert caption in TOO_SHORT and 1 <= len(caption) <= 2
        else:
            assert noise == "too_long" and len(caption) > 1000
        assert row["concepts"][-1].endswith(" background") and 2 <= len(row["concepts"]) <= 5


def test_english_captions_name_every_object(rows: list[dict]) -> None:
    english = [row for row in rows if row["lang"] == "en" and row["noise"] == "none"]
    assert english
    for row in english:
        for concept in row["concepts"]:
            color, shape = concept.split()
            assert color in row["caption"].lower() and (shape == "background" or shape in row["caption"])
    for row in (row for row in rows if row["lang"] == "en" and row["noise"] == "partial"):
        named = [c for c in row["concepts"][:-1] if all(word in row["caption"].lower() for word in c.split())]
        assert 1 <= len(named) < len(row["concepts"]) - 1


def test_duplicate_groups_are_consistent(rows: list[dict], corpus: Path) -> None:
    groups: dict[int, list[dict]] = {}
    for row in rows:
        if row["dup_group"] >= 0:
            groups.setdefault(row["dup_group"], []).append(row)
    assert groups
    for group_id, members in groups.items():
        original = _first(members, dup_variant="original")
        assert original["id"] == group_id == min(m["id"] for m in members) and len(members) >= 2
        data = _file(corpus, original).read_bytes()
        for member in members:
            assert member["fault"] is None and member["expected_status"] == "success"
            assert member["concepts"] == original["concepts"] and member["split"] == original["split"]
            if member["dup_variant"] == "exact":
                assert _file(corpus, member).read_bytes() == data
            elif member["dup_variant"] != "original":
                assert _file(corpus, member).read_bytes() != data
            if member["dup_variant"] in ("resize", "crop"):
                assert member["width"] < original["width"] and member["height"] < original["height"]
    assert all(row["dup_variant"] is None for row in rows if row["dup_group"] == -1)


def test_files_match_the_manifest(rows: list[dict], corpus: Path) -> None:
    long_sides = []
    for row in rows:
        path = _file(corpus, row)
        if row["width"] is None:
            assert not path.exists() and row["fault"] in ("http_404", "http_500", "slow", "html")
            continue
        with Image.open(path) as image:
            assert image.format == EXTENSIONS[row["format"]]
            assert image.size == (row["width"], row["height"])
        long_sides.append(max(row["width"], row["height"]))
    assert min(long_sides) >= 64 and max(long_sides) <= 2000
    assert 500 <= sorted(long_sides)[len(long_sides) // 2] <= 1100


def test_expected_status_follows_the_fault(rows: list[dict]) -> None:
    for row in rows:
        assert (row["expected_status"] == "success") == (row["fault"] is None)
        assert (row["expected_reason"] is None) == (row["fault"] is None)


def test_config_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        CorpusConfig(mismatched_rate=1.5)
    with pytest.raises(ValueError):
        CorpusConfig(mismatched_rate=0.5, boilerplate_rate=0.6)
    with pytest.raises(ValueError):
        CorpusConfig(languages=(("xx", 1.0),))


# --------------------------------------------------------------------------- server


def test_server_serves_images_with_their_content_type(server: SampleWebServer, rows, corpus) -> None:
    for fmt in ("jpeg", "png", "webp", "gif"):
        row = _first(rows, format=fmt, fault=None)
        status, headers, body = _get(server.base_url + row["path"])
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPES[file_name(0, fmt).rsplit(".", 1)[1]]
        assert int(headers["Content-Length"]) == len(body)
        assert body == _file(corpus, row).read_bytes()


def test_server_keeps_connections_alive(server: SampleWebServer, rows, corpus) -> None:
    url = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(url.netloc, timeout=5)
    try:
        normal = [row for row in rows if row["fault"] is None][:20]
        for row in normal:
            connection.request("GET", row["path"])
            response = connection.getresponse()
            assert response.status == 200 and response.read() == _file(corpus, row).read_bytes()
        connection.request("HEAD", normal[0]["path"])
        response = connection.getresponse()
        assert int(response.headers["Content-Length"]) == _file(corpus, normal[0]).stat().st_size
        assert response.read() == b""
    finally:
        connection.close()


def test_server_error_statuses(server: SampleWebServer, rows) -> None:
    assert _get(server.base_url + _first(rows, fault="http_404")["path"])[0] == 404
    assert _get(server.base_url + _first(rows, fault="http_500")["path"])[0] == 500
    assert _get(server.base_url + "/img/../manifest.parquet")[0] == 404
    assert _get(server.base_url + "/img/999999.jpg")[0] == 404


def test_server_sends_the_opt_out_header(server: SampleWebServer, rows, corpus) -> None:
    for row in (row for row in rows if row["fault"] == "noai"):
        status, headers, body = _get(server.base_url + row["path"])
        assert status == 200 and body == _file(corpus, row).read_bytes()
        assert headers["X-Robots-Tag"] in ROBOTS_FORMS.values()
        assert row["expected_reason"] == "opted_out_x_robots_tag"


def test_server_serves_html_as_jpeg(server: SampleWebServer, rows) -> None:
    row = _first(rows, fault="html")
    status, headers, body = _get(server.base_url + row["path"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body.startswith(b"<!DOCTYPE html>")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body))


def test_server_truncates_the_body(server: SampleWebServer, rows, corpus) -> None:
    for row in (row for row in rows if row["fault"] == "truncated"):
        status, headers, body = _get(server.base_url + row["path"])
        full = _file(corpus, row).read_bytes()
        assert status == 200 and int(headers["Content-Length"]) == len(body) == len(full) // 2
        assert body == full[: len(full) // 2]
        with pytest.raises(OSError), Image.open(io.BytesIO(body)) as image:
            image.load()


def test_server_sends_an_oversize_body(server: SampleWebServer, rows, corpus) -> None:
    row = _first(rows, fault="oversize")
    status, headers, body = _get(server.base_url + row["path"])
    assert status == 200 and int(headers["Content-Length"]) == len(body) == OVERSIZE_BYTES
    assert body.startswith(_file(corpus, row).read_bytes())


def test_server_slow_route_times_out(server: SampleWebServer, rows) -> None:
    row = _first(rows, fault="slow")
    started = time.monotonic()
    with (
        pytest.raises((TimeoutError, socket.timeout)),
        urllib.request.urlopen(server.base_url + row["path"], timeout=0.3) as response,
    ):
        response.read()
    assert time.monotonic() - started < 2.0


def test_serve_in_subprocess_and_url_lists(corpus: Path, rows) -> None:
    with serve_in_subprocess(corpus) as base_url:
        urls_path, truth_path = write_url_lists(str(corpus), base_url)
        urls = pq.read_table(urls_path).to_pylist()
        truth = pq.read_table(truth_path).to_pylist()
        row = _first(rows, fault=None)
        status, _, body = _get(urls[row["id"]]["url"])
        assert status == 200 and body == _file(corpus, row).read_bytes()
    assert pq.read_schema(urls_path).names == ["url", "caption"]
    assert pq.read_schema(truth_path).names == ["url", *TRUTH_COLUMNS]
    assert len(urls) == len(truth) == SAMPLES
    for manifest_row, url_row, truth_row in zip(rows, urls, truth, strict=True):
        assert url_row["url"] == truth_row["url"] == base_url + manifest_row["path"]
        assert url_row["caption"] == manifest_row["caption"]
        assert all(truth_row[name] == manifest_row[name] for name in TRUTH_COLUMNS)
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()
