"""Pools of downloaded shards, as a user of webdataset and DataComp writes them: compressed
shards, a key written twice, every image format the crawl decodes, a shard Parquet without `key`.

One generated pool (`write_pool`) is read by one `winnow run --stages crawl`; every member set of
every tar, and every row of a Parquet that names no member set, ends as exactly one output row
with the status and reason written down here (`EXPECTED`). The other tests drive the CLI where a
user meets each case.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from schemas.images import IMAGE_EXTENSIONS, IMAGE_FORMATS
from schemas.pools import is_image
from tests.conftest import read_output_rows
from tests.pipeline.test_cli import assert_user_error, winnow

HOST = "http://pool.example"
IMG2DATASET_POOL = Path(__file__).parents[1] / "data" / "img2dataset-pool"
#: The extension a member of each format is written with (else the first Pillow registers).
_PREFERRED = {"JPEG": "jpg", "PPM": "ppm", "SGI": "sgi", "TIFF": "tiff", "JPEG2000": "jp2"}


def image(seed: int, fmt: str = "PNG") -> bytes:
    """A 64x64 gradient, different for each seed, in `fmt` (a mode the format can store)."""
    base = Image.linear_gradient("L").resize((64, 64)).rotate(seed * 37 % 360)
    rgb = Image.merge(
        "RGB", (base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("L", (64, 64), seed))
    )
    for mode in ("RGB", "L", "1"):
        buffer = io.BytesIO()
        try:
            rgb.convert(mode).save(buffer, format=fmt)
        except (OSError, ValueError, KeyError):
            continue
        return buffer.getvalue()
    raise ValueError(f"Pillow cannot save {fmt}")


def savable_formats() -> dict[str, str]:
    """Format → member extension, for each format the crawl decodes that Pillow can also write."""
    Image.init()
    found: dict[str, str] = {}
    for ext, fmt in sorted(Image.registered_extensions().items()):
        if fmt in IMAGE_FORMATS and fmt in Image.SAVE:
            found.setdefault(fmt, _PREFERRED.get(fmt, ext.lstrip(".")))
    return {fmt: ext for fmt, ext in found.items() if _savable(fmt)}


def _savable(fmt: str) -> bool:
    try:
        image(1, fmt)
    except ValueError:
        return False
    return True


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sample(
    key: str, jpg: bytes | None, caption: str, ext: str = "jpg", **metadata: object
) -> list[tuple[str, bytes]]:
    """The members of one sample: its image (when given), `.txt` and `.json`."""
    meta = {"url": f"{HOST}/{key}/{caption.replace(' ', '-')}.jpg", "key": key, **metadata}
    members = [(f"{key}.{ext}", jpg)] if jpg is not None else []
    return members + [(f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps(meta).encode())]


def uid(n: int) -> str:
    return hashlib.md5(f"uid-{n}".encode()).hexdigest()


#: shard file → [(key, caption, status, reason)] of the rows it must give, in any order
#: (key None: a Parquet row naming no member set). The truncated shard is checked on its own.
EXPECTED: dict[str, list[tuple[str | None, str | None, str, str | None]]] = {}


def write_pool(folder: str) -> dict[str, list[tuple[str, bytes]]]:
    """The generated pool; returns each shard's members (before compression)."""
    shards: dict[str, list[tuple[str, bytes]]] = {}
    expected: dict[str, list[tuple[str | None, str | None, str, str | None]]] = {}

    def plain(name: str, keys: list[str], seed: int) -> None:
        members = [m for i, key in enumerate(keys) for m in sample(key, image(seed + i), f"{name} {key}")]
        shards[name] = members
        expected[name] = [(key, f"{name} {key}", "success", None) for key in keys]

    # Compressed shards, as webdataset reads them; 00001 has img2dataset's Parquet beside it.
    plain("00000.tar", ["a0", "a1", "a2"], 0)
    plain("00001.tar.gz", ["b0", "b1", "b2", "b3"], 10)
    plain("00002.tgz", ["c0", "c1", "c2"], 20)
    plain("00003.tar.bz2", ["d0", "d1"], 30)
    keys = ["b0", "b1", "b2", "b3"]
    parquet = {
        "key": keys,
        "url": [f"{HOST}/{k}/00001.tar.gz-{k}.jpg" for k in keys],
        "caption": [f"00001.tar.gz {k}" for k in keys],
        "status": ["success", "success", "success", "failed_to_download"],
        "error_message": [None, None, None, "http 404"],
    }
    pq.write_table(pa.table(parquet), os.path.join(folder, "00001.parquet"))
    expected["00001.tar.gz"][3] = ("b3", "00001.tar.gz b3", "failed", "not_downloaded")

    # One key twice: adjacent (a repeated extension starts the next set), apart, and the same
    # pair written twice (same url and caption, so the same uid).
    twice = (
        sample("k", image(40), "k first")
        + sample("k", image(41), "k second")
        + sample("m", image(42), "m first")
        + sample("n", image(43), "n only")
        + sample("m", image(44), "m second")
        + sample("p", image(45), "p same")
        + sample("p", image(46), "p same")
    )
    shards["00004.tar"] = twice
    expected["00004.tar"] = [
        ("k", "k first", "success", None),
        ("k", "k second", "failed", "duplicate_key"),
        ("m", "m first", "success", None),
        ("m", "m second", "failed", "duplicate_key"),
        ("n", "n only", "success", None),
        ("p", "p same", "success", None),
        ("p", "p same", "failed", "duplicate_key"),
    ]

    # Every format the crawl decodes that Pillow can write (AVIF among them), by its extension;
    # a sample without an image, and one with a caption that is not UTF-8.
    formats = savable_formats()
    members = [
        m
        for i, (fmt, ext) in enumerate(sorted(formats.items()))
        for m in sample(f"f{i:02d}", image(50 + i, fmt), fmt, ext)
    ]
    members += sample("noimage", None, "no image") + [
        ("bad.jpg", image(90, "JPEG")),
        ("bad.txt", b"\xff\xfe caption"),
    ]
    shards["00005.tar"] = members
    expected["00005.tar"] = [(f"f{i:02d}", fmt, "success", None) for i, fmt in enumerate(sorted(formats))]
    expected["00005.tar"] += [
        ("noimage", "no image", "failed", "image_missing"),
        ("bad", None, "rejected", "caption_not_text"),
    ]

    # A shard Parquet without `key` (DataComp's metadata beside a tar): joined by the `.json` uid.
    joined = [m for i in range(4) for m in sample(f"j{i}", image(60 + i), f"tar j{i}", uid=uid(i))]
    shards["00007.tar"] = joined
    metadata = {
        "uid": [uid(0), uid(1), uid(2), uid(9)],
        "url": [f"{HOST}/meta/{i}.jpg" for i in (0, 1, 2, 9)],
        "text": [f"meta {i}" for i in (0, 1, 2, 9)],
        "clip_l14_similarity_score": [0.1, 0.2, 0.3, 0.9],
    }
    pq.write_table(pa.table(metadata), os.path.join(folder, "00007.parquet"))
    expected["00007.tar"] = [
        ("j0", "meta 0", "success", None),
        ("j1", "meta 1", "success", None),
        ("j2", "meta 2", "success", None),
        (None, "meta 9", "failed", "image_missing"),
        ("j3", "tar j3", "success", None),  # a member set no Parquet row names keeps its row
    ]

    # A gzip shard cut in the middle: the sets read before the cut, then one `unreadable_file`.
    cut = [m for i in range(12) for m in sample(f"t{i:02d}", image(70 + i), f"cut t{i:02d}")]
    shards["00006.tar.gz"] = cut

    for name, members in shards.items():
        data = tar_of(members)
        if name.endswith((".tar.gz", ".tgz")):
            data = gzip.compress(data)
        elif name.endswith(".bz2"):
            data = bz2.compress(data)
        if name == "00006.tar.gz":
            data = data[: len(data) // 2]
        Path(folder, name).write_bytes(data)
    EXPECTED.clear()
    EXPECTED.update(expected)
    return shards


@pytest.fixture(scope="module")
def pool_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, list[tuple[str, bytes]]], list[dict]]:
    """The generated pool, read as a folder by one `winnow run --stages crawl`: its rows."""
    folder = str(tmp_path_factory.mktemp("pool"))
    shards = write_pool(folder)
    output = str(tmp_path_factory.mktemp("pool-out") / "out")
    code = main(
        ["run", "--input", folder, "--output", output, "--stages", "crawl", "--set", "output.index=false"]
    )
    assert code == 0
    return folder, shards, read_output_rows(output)


def rows_of(run: tuple[str, dict, list[dict]], shard: str) -> list[dict]:
    folder, _, rows = run
    return [r for r in rows if json.loads(r["extra"] or "{}").get("__shard__") == os.path.join(folder, shard)]


def key_of(row: dict) -> str | None:
    return json.loads(row["extra"]).get("__key__")


def summary(rows: list[dict]) -> list[tuple[str | None, str | None, str, str | None]]:
    return sorted(((key_of(r), r["caption"], r["status"], r["reason"]) for r in rows), key=str)


def member_sha256(members: list[tuple[str, bytes]], name: str, nth: int = 0) -> str:
    found = [data for member, data in members if member == name]
    return hashlib.sha256(found[nth]).hexdigest()


def test_t2_item10_every_member_set_is_one_row_with_its_reason(pool_run) -> None:
    """The hostile pool: every shard's rows are exactly its member sets (and Parquet rows naming
    none), each with the status and reason expected; no uid twice; one row per cut shard."""
    for shard, expected in EXPECTED.items():
        assert summary(rows_of(pool_run, shard)) == sorted(expected, key=str), shard
    cut = rows_of(pool_run, "00006.tar.gz")
    broken = [r for r in cut if r["reason"] == "unreadable_file"]
    assert len(broken) == 1 and broken[0]["error"].startswith(os.path.join(pool_run[0], "00006.tar.gz"))
    read = [r for r in cut if r is not broken[0]]
    assert 0 < len(read) < 12  # the sets before the cut keep their rows
    assert sorted(key_of(r) for r in read) == [f"t{i:02d}" for i in range(len(read))]
    assert all(r["status"] in ("success", "failed") for r in read)
    rows = pool_run[2]
    assert len(rows) == sum(len(e) for e in EXPECTED.values()) + len(cut)
    assert len({r["uid"] for r in rows}) == len(rows)


def test_t2_item10_compressed_shards_are_read_as_webdataset_reads_them(pool_run) -> None:
    """`.tar.gz`, `.tgz` and `.tar.bz2` shards: each image read from the compressed stream, the
    img2dataset Parquet beside `00001.tar.gz` read as that shard's metadata (not as an input)."""
    _, shards, _ = pool_run
    for shard in ("00001.tar.gz", "00002.tgz", "00003.tar.bz2"):
        rows = rows_of(pool_run, shard)
        assert rows and all(r["reason"] != "unreadable_file" for r in rows)
        for row in rows:
            if row["status"] == "success":
                assert row["sha256"] == member_sha256(shards[shard], f"{key_of(row)}.jpg")
    by_key = {key_of(r): r for r in rows_of(pool_run, "00001.tar.gz")}
    assert by_key["b0"]["url"] == f"{HOST}/b0/00001.tar.gz-b0.jpg"  # from the Parquet
    assert "http 404" in by_key["b3"]["error"]
    assert not [
        r for r in pool_run[2] if (r["error"] or "").startswith(os.path.join(pool_run[0], "00001.parquet"))
    ]


def test_t2_item10_a_key_twice_gives_two_rows_and_the_first_keeps_its_image(pool_run) -> None:
    _, shards, _ = pool_run
    rows = rows_of(pool_run, "00004.tar")
    members = shards["00004.tar"]
    for key in ("k", "m", "p"):
        first, second = sorted((r for r in rows if key_of(r) == key), key=lambda r: r["status"] != "success")
        assert first["status"] == "success"
        assert first["sha256"] == member_sha256(members, f"{key}.jpg", 0)  # the first set's image
        assert (second["status"], second["reason"], second["stage"]) == ("failed", "duplicate_key", "read")
        assert f"has key '{key}'" in second["error"] and first["uid"] != second["uid"]
    same = [r for r in rows if key_of(r) == "p"]
    assert same[0]["url"] == same[1]["url"] and same[0]["caption"] == same[1]["caption"]


def test_t2_item10_avif_and_every_decoded_format_is_an_image_on_both_paths(pool_run, tmp_path: Path) -> None:
    """One list: every format the URL path decodes is an image member of a pool, and the same
    bytes give the same stored image fetched from a URL or read from the tar."""
    assert "avif" in IMAGE_EXTENSIONS and is_image("AVIF") and is_image("seg.jp2")
    assert not is_image("txt") and not is_image("json")
    _, shards, _ = pool_run
    pool_rows = {r["caption"]: r for r in rows_of(pool_run, "00005.tar") if r["status"] == "success"}
    formats = savable_formats()
    assert "AVIF" in formats and set(pool_rows) == set(formats)
    assert pool_rows["AVIF"]["source_format"] == "AVIF"

    site = tmp_path / "site"
    site.mkdir()
    for i, (_, ext) in enumerate(sorted(formats.items())):
        (site / f"f{i:02d}.{ext}").write_bytes(dict(shards["00005.tar"])[f"f{i:02d}.{ext}"])
    with _Serve(str(site)) as base:
        lines = ["url,caption"] + [
            f"{base}/f{i:02d}.{ext},{fmt}" for i, (fmt, ext) in enumerate(sorted(formats.items()))
        ]
        (tmp_path / "urls.csv").write_text("\n".join(lines) + "\n")
        output = str(tmp_path / "out")
        args = ["run", "--input", str(tmp_path / "urls.csv"), "--output", output, "--stages", "crawl"]
        args += ["--set", "crawl.allow_private_networks=true", "--set", "output.index=false"]
        assert main(args) == 0
    url_rows = {r["caption"]: r for r in read_output_rows(output)}
    for fmt in formats:
        fetched, read = url_rows[fmt], pool_rows[fmt]
        assert fetched["status"] == "success", (fmt, fetched["error"])
        assert (fetched["sha256"], fetched["source_format"]) == (read["sha256"], read["source_format"])
        assert (fetched["width"], fetched["height"], fetched["image_bytes"]) == (
            read["width"],
            read["height"],
            read["image_bytes"],
        )


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Serve:
    """A folder served over HTTP on loopback, for the URL path."""

    def __init__(self, folder: str):
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder)
        )

    def __enter__(self) -> str:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_t2_item10_a_shard_parquet_without_key_is_joined_by_uid_or_refused(pool_run, tmp_path: Path) -> None:
    """DataComp's metadata Parquet beside a tar: joined by the `.json` uid (the pool's columns
    carried); without a uid either, exit 2 naming the file and the column, before any output."""
    rows = {key_of(r): r for r in rows_of(pool_run, "00007.tar")}
    assert rows["j1"]["uid"] == uid(1) and rows["j1"]["url"] == f"{HOST}/meta/1.jpg"
    assert json.loads(rows["j2"]["extra"])["clip_l14_similarity_score"] == 0.3
    assert rows[None]["uid"] == uid(9) and "has its uid" in rows[None]["error"]

    pool = tmp_path / "pool"
    shutil.copytree(IMG2DATASET_POOL, pool)
    table = pq.read_table(pool / "00000.parquet")
    pq.write_table(table.drop_columns(["key"]), pool / "00000.parquet")
    output = tmp_path / "out"
    result = winnow("run", "--input", str(pool), "--output", str(output), "--stages", "crawl")
    assert_user_error(result, str(pool / "00000.parquet"), "missing column 'key'")
    assert not output.exists()
    result = winnow("run", "--input", str(pool / "00000.tar"), "--output", str(output), "--stages", "crawl")
    assert_user_error(result, str(pool / "00000.parquet"), "'uid'")
