"""Issue 36, the crawl and faces: 16- and 32-bit images keep their brightness on the URL and pool
paths, `safety.blur_faces` alone blurs faces, library warnings stay off the terminal, a lying
`Content-Encoding` or a 70 KB header line is a lasting failure, and an oversized image names the
limit it broke. Every run is `winnow run` on loopback servers, its Parquet and tars read back."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from pipeline.cli import main
from schemas.layout import read_tar_images
from tests.conftest import TEST_OVERRIDES, read_output_rows
from tests.hostile import ReplyingHandler, _png_header
from transforms.crawl.depth import HIGH_BIT_MODES

WINNOW = os.path.join(os.path.dirname(sys.executable), "winnow")
#: How far a stored image's mean may be from its source's, in 8-bit levels (JPEG at quality 95).
LEVELS = 3.0

# --- loopback server ------------------------------------------------------------------------------

#: What a route answers: bytes (an image, 200), or a function writing the response itself.
Route = bytes | Callable[[ReplyingHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    routes: dict[str, Route]
    hits: dict[str, int]
    lock: threading.Lock


class _Handler(ReplyingHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        route = self.server.routes.get(self.path)
        if route is None:
            self.reply(404, b"not found")
        elif isinstance(route, bytes):
            self.reply(200, route, [("Content-Type", "application/octet-stream")])
        else:
            route(self)


@contextlib.contextmanager
def _serve(routes: dict[str, Route]) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.routes, server.hits, server.lock = routes, {}, threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _raw(response: bytes) -> Callable[[ReplyingHandler], None]:
    """A route writing `response` as it is (status line, headers and body), then hanging up."""

    def send(handler: ReplyingHandler) -> None:
        handler.close_connection = True
        handler.wfile.write(response)

    return send


def _url_list(path: str, urls: list[str]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        for url in urls:
            writer.writerow([url, f"the picture at {url.rsplit('/', 1)[1]}"])
    return path


def _overrides(*settings: str) -> list[str]:
    return [arg for item in (*TEST_OVERRIDES, "output.index=false", *settings) for arg in ("--set", item)]


def _run(list_path: str, output: str, *settings: str, stages: str = "crawl") -> int:
    return main(["run", "--input", list_path, "--output", output, "--stages", stages, *_overrides(*settings)])


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["url"].rsplit("/", 1)[1]: row for row in rows}


def _stored(output: str) -> dict[str, bytes]:
    """uid → stored image bytes of every tar of an output."""
    return {key: data for tar in glob.glob(f"{output}/*.tar") for key, _, data in read_tar_images(tar)}


# --- item 1: generated high-bit images ------------------------------------------------------------


def _ramp(gamma: float, width: int = 96, height: int = 40) -> np.ndarray:
    """A horizontal gradient in [0, 1] bent by `gamma` (each image its own mean)."""
    return np.tile(np.linspace(0.0, 1.0, width) ** gamma, (height, 1))


def _pillow(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt)
    return out.getvalue()


def _png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes no 16-bit RGB, RGBA or LA)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _tiff(samples: np.ndarray, sample_format: int) -> bytes:
    """A one-strip little-endian greyscale TIFF written by hand (Pillow writes no uint32 or int16
    TIFF): `sample_format` 1 unsigned, 2 signed, 3 floating point."""
    height, width = samples.shape
    body = samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    tags = [(256, 4, width), (257, 4, height), (258, 3, samples.dtype.itemsize * 8), (259, 3, 1),
            (262, 3, 1), (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(body)),
            (339, 3, sample_format)]  # fmt: skip
    start = 8 + 2 + 12 * len(tags) + 4
    ifd = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + (struct.pack("<I", start if tag == 273 else value) if kind == 4 else struct.pack("<HH", value, 0))
        for tag, kind, value in tags
    )
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + ifd + b"\0\0\0\0" + body


def _high_bit_images() -> dict[str, tuple[bytes, tuple[float, ...]]]:
    """name → (file, the RGB means its pixels scaled by their type's range give, 0-255)."""
    made: dict[str, tuple[bytes, tuple[float, ...]]] = {}

    def grey(name: str, data: bytes, ramp: np.ndarray) -> None:
        made[name] = (data, (255 * ramp.mean(),) * 3)

    for i, (name, dtype, top, kind) in enumerate(
        [
            ("grey16.png", np.uint16, 65535, "png"),
            ("grey16-other.png", np.uint16, 65535, "png"),  # another 16-bit image: must stay apart
            ("grey16.tif", np.uint16, 65535, "tif"),
            ("int32.tif", np.int32, 2**31 - 1, "tif"),
            ("float.tif", np.float32, 1, "tif"),
        ]
    ):
        ramp = _ramp(0.4 + 0.35 * i)
        fmt = "PNG" if kind == "png" else "TIFF"
        grey(name, _pillow((ramp * top).astype(dtype), fmt), ramp)
    ramp = _ramp(1.7)
    grey("uint32.tif", _tiff((ramp * (2**32 - 1)).astype(np.uint32), 1), ramp)
    ramp = _ramp(2.2)
    grey("int16.tif", _tiff((ramp * 32767).astype(np.int16), 2), ramp)
    ramp = _ramp(0.6)
    grey("grey16.pgm", b"P5 96 40 65535\n" + (ramp * 65535).astype(">u2").tobytes(), ramp)
    channels = np.stack([_ramp(0.5), _ramp(1.0), _ramp(2.0)], axis=-1)
    made["rgb16.png"] = (_png16(channels * 65535, 2), tuple(255 * channels.mean(axis=(0, 1))))
    channels = np.stack([_ramp(0.8), _ramp(1.2), _ramp(3.0)], axis=-1)
    opaque = np.concatenate([channels, np.ones(channels.shape[:2] + (1,))], axis=-1)
    made["rgba16.png"] = (_png16(opaque * 65535, 6), tuple(255 * channels.mean(axis=(0, 1))))
    ramp = _ramp(1.3)
    made["la16.png"] = (_png16(np.stack([ramp, np.ones_like(ramp)], -1) * 65535, 4), (255 * ramp.mean(),) * 3)
    return made


#: Inputs whose range is not what their samples hold: failed with the reason, never guessed.
UNKNOWN_RANGE = {
    "float-0-255.tif": _pillow((_ramp(1.0) * 255).astype(np.float32), "TIFF"),
    "float-nan.tif": _pillow(np.where(_ramp(1.0) > 0.5, np.nan, 0.2).astype(np.float32), "TIFF"),
    "signed-negative.tif": _tiff(((_ramp(1.0) - 0.5) * 60000).astype(np.int16), 2),
}
#: 8-bit controls and broken high-bit files: their reasons as before.
OTHERS = {
    "grey8.png": (_pillow((_ramp(0.8) * 255).astype(np.uint8), "PNG"), "success", None),
    "grey16-truncated.png": (
        _pillow((_ramp(1.0) * 65535).astype(np.uint16), "PNG")[:60],
        "failed",
        "decode_error",
    ),
}


def _means(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


def _check_brightness(rows: dict[str, dict], stored: dict[str, bytes], made: dict) -> None:
    """Each high-bit image stored with its source's brightness (per channel), and no two alike."""
    for name, (_, expected) in made.items():
        row = rows[name]
        assert (row["status"], row["reason"]) == ("success", None), (name, row["error"])
        got = _means(stored[row["uid"]])
        assert np.abs(got - np.array(expected)).max() <= LEVELS, (name, got, expected)
    images = [stored[rows[name]["uid"]] for name in made]
    assert len(set(images)) == len(images)


@pytest.fixture(scope="module")
def high_bit_url_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, dict], dict[str, bytes], dict]:
    """Every generated image served on loopback and crawled at its own size (`resize_mode: no`)."""
    work = tmp_path_factory.mktemp("high-bit")
    made = _high_bit_images()
    files = {name: data for name, (data, _) in made.items()}
    files |= UNKNOWN_RANGE | {name: data for name, (data, _, _) in OTHERS.items()}
    with _serve({f"/img/{name}": data for name, data in files.items()}) as server:
        urls = [f"{_base(server)}/img/{name}" for name in sorted(files)]
        output = str(work / "out")
        assert _run(_url_list(str(work / "list.csv"), urls), output, "crawl.resize_mode=no") == 0
    rows = read_output_rows(output)
    assert len(rows) == len(urls) and {r["url"] for r in rows} == set(urls)  # every row accounted for
    return _by_name(rows), _stored(output), made


def test_t2_item01_high_bit_images_from_urls_keep_their_brightness(high_bit_url_run) -> None:
    rows, stored, made = high_bit_url_run
    _check_brightness(rows, stored, made)
    assert {rows[name]["source_format"] for name in made} == {"PNG", "TIFF", "PPM"}


def test_t2_item01_hostile_high_bit_inputs_each_keep_one_row_with_its_reason(high_bit_url_run) -> None:
    rows, stored, _ = high_bit_url_run
    for name in UNKNOWN_RANGE:
        row = rows[name]
        assert (row["status"], row["reason"], row["stage"]) == ("failed", "unknown_pixel_range", "crawl"), (
            name
        )
        assert "TIFF" in row["error"] and row["uid"] not in stored, row["error"]
    assert "0..255, outside 0..1" in rows["float-0-255.tif"]["error"]
    assert "NaN" in rows["float-nan.tif"]["error"]
    assert "-30000" in rows["signed-negative.tif"]["error"]
    for name, (_, status, reason) in OTHERS.items():
        assert (rows[name]["status"], rows[name]["reason"]) == (status, reason), (name, rows[name]["error"])
    grey8 = rows["grey8.png"]
    assert abs(_means(stored[grey8["uid"]])[0] - 255 * _ramp(0.8).mean()) <= LEVELS


def test_t2_item01_high_bit_images_from_a_pool_tar_keep_their_brightness(tmp_path) -> None:
    """The same images as members of a WebDataset tar, stored as they are (`resize_mode: no`
    keeps a pool's bytes): a 16-bit image is stored as the crawl's 8-bit image instead, since
    every later stage would decode its bytes white (Pillow opens 16-bit RGB(A) as 8-bit: kept)."""
    made = _high_bit_images()
    pool = tmp_path / "pool"
    pool.mkdir()
    keys = {}
    with tarfile.open(pool / "00000.tar", "w") as tar:
        for i, (name, (data, _)) in enumerate(sorted(made.items())):
            key = f"{i:09d}"
            keys[key] = name
            ext = name.rsplit(".", 1)[1]
            meta = json.dumps({"url": f"http://pool.example/{name}", "key": key}).encode()
            for member, body in (
                (f"{key}.{ext}", data),
                (f"{key}.txt", name.encode()),
                (f"{key}.json", meta),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    output = str(tmp_path / "out")
    args = ["run", "--input", str(pool / "00000.tar"), "--output", output, "--stages", "crawl"]
    assert main([*args, "--set", "crawl.resize_mode=no", "--set", "output.index=false"]) == 0
    rows = read_output_rows(output)
    assert len(rows) == len(made)
    by_name = {keys[json.loads(row["extra"])["__key__"]]: row for row in rows}
    stored = _stored(output)
    _check_brightness(by_name, stored, made)
    for name, (data, _) in made.items():
        if Image.open(io.BytesIO(data)).mode in HIGH_BIT_MODES:  # 16-bit RGB(A) opens as 8-bit
            assert stored[by_name[name]["uid"]] != data, name  # the 8-bit image, not the pool's bytes


# --- item 9: blur_faces without a detector ---------------------------------------------------------


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., :3].astype(np.uint8)).save(out, "JPEG", quality=92)
    return out.getvalue()


def _detail(pixels: np.ndarray) -> float:
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float((cv2.Laplacian(grey, cv2.CV_32F) ** 2).mean())


def test_t2_item09_blur_faces_alone_finds_and_blurs_the_faces(tmp_path, capsys) -> None:
    """`safety.blur_faces: true` on a URL list without boxes: OpenCV's detector finds the
    astronaut's face and it is blurred; the summary says how many faces were found and blurred."""
    photos = {"astronaut.jpg": _jpeg(skimage_data.astronaut()), "rocket.jpg": _jpeg(skimage_data.rocket())}
    with _serve({f"/{name}": data for name, data in photos.items()}) as server:
        urls = [f"{_base(server)}/{name}" for name in photos]
        output = str(tmp_path / "out")
        settings = ("safety.blur_faces=true", "crawl.resize_mode=no")
        assert (
            _run(_url_list(str(tmp_path / "list.csv"), urls), output, *settings, stages="crawl,safety") == 0
        )
    printed = capsys.readouterr().out
    rows = _by_name(read_output_rows(output))
    stored = _stored(output)
    astronaut, rocket = rows["astronaut.jpg"], rows["rocket.jpg"]
    assert astronaut["status"] == "success" and len(astronaut["face_bboxes"]) == 1
    x0, y0, x1, y1 = (round(v * 512) for v in astronaut["face_bboxes"][0])
    assert 0.25 < x0 / 512 < 0.45 and 0.05 < y0 / 512 < 0.2  # the face (Eileen Collins), not elsewhere
    plain = np.asarray(Image.open(io.BytesIO(photos["astronaut.jpg"])).convert("RGB"))
    blurred = np.asarray(Image.open(io.BytesIO(stored[astronaut["uid"]])).convert("RGB"))
    assert _detail(blurred[y0:y1, x0:x1]) <= 0.2 * _detail(plain[y0:y1, x0:x1])
    assert rocket["status"] == "success" and rocket["face_bboxes"] == []
    with open(os.path.join(output, "stats.json")) as handle:
        safety = json.load(handle)["safety"]
    assert (safety["face_detector"], safety["faces"], safety["blurred"]) == ("opencv", 1, 1)
    assert safety["searched_for_faces"] == 2
    line = next(line for line in printed.splitlines() if line.strip().startswith("faces:"))
    assert "1 found on 1 of the 2 images searched" in line and "1 image blurred" in line, line


# --- item 15: library warnings ---------------------------------------------------------------------


def _png(value: int) -> bytes:
    return _pillow(np.full((32, 32, 3), value, np.uint8), "PNG")


def _malformed_headers(body: bytes) -> Callable[[ReplyingHandler], None]:
    """An image whose headers hold a line without a colon: urllib3 reads it, and logs a warning
    with a stack trace ("Failed to parse headers")."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nthis line is no header\r\n"
    return _raw(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def test_t2_item15_malformed_headers_leave_no_library_warning_on_the_terminal(tmp_path, capsys) -> None:
    routes: dict[str, Route] = {f"/{i}.png": _malformed_headers(_png(40 * i)) for i in range(3)}
    with _serve(routes) as server:
        urls = [f"{_base(server)}/{i}.png" for i in range(3)]
        listed = _url_list(str(tmp_path / "list.csv"), urls)
        args = ["run", "--input", listed, "--stages", "crawl", *_overrides()]
        ordinary = subprocess.run(
            [WINNOW, *args, "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300
        )
        assert ordinary.returncode == 0, ordinary.stderr
        assert "Failed to parse headers" not in ordinary.stderr, ordinary.stderr
        assert "Traceback" not in ordinary.stderr and "urllib3" not in ordinary.stderr, ordinary.stderr
        rows = read_output_rows(str(tmp_path / "out"))
        assert [r["status"] for r in rows] == ["success"] * 3  # the images themselves were fine
        capsys.readouterr()
        assert main([*args, "--output", str(tmp_path / "verbose"), "-v"]) == 0  # the log: -v shows it
    assert "Failed to parse headers" in capsys.readouterr().err


# --- item 20: a lying Content-Encoding, a 70 KB header line --------------------------------------


def test_t2_item20_lying_encoding_and_huge_header_line_are_lasting_failures(tmp_path) -> None:
    png = _png(128)
    length = b"Content-Length: %d\r\nConnection: close\r\n" % len(png)
    routes: dict[str, Route] = {
        "/gzip-lie.png": _raw(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" + length + b"\r\n" + png),
        "/deflate-lie.png": _raw(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\n" + length + b"\r\n" + png
        ),
        "/long-header.png": _raw(
            b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 70_000 + b"\r\n" + length + b"\r\n" + png
        ),
        "/ok.png": png,
    }
    with _serve(routes) as server:
        urls = [f"{_base(server)}{path}" for path in routes]
        output = str(tmp_path / "out")
        # 3 of 4 failing would be far above crawl.max_failure_rate if they counted as transient.
        code = _run(
            _url_list(str(tmp_path / "list.csv"), urls), output, "crawl.retries=2", "crawl.retry_backoff=0"
        )
        hits = dict(server.hits)
    assert code == 0  # not 3: no alarm
    rows = _by_name(read_output_rows(output))
    assert (rows["gzip-lie.png"]["reason"], rows["deflate-lie.png"]["reason"]) == ("decode_error",) * 2
    assert "content-encoding: gzip" in rows["gzip-lie.png"]["error"]
    assert rows["long-header.png"]["reason"] == "bad_response"
    assert "65536 bytes" in rows["long-header.png"]["error"]
    assert rows["ok.png"]["status"] == "success"
    for path in ("/gzip-lie.png", "/deflate-lie.png", "/long-header.png"):
        assert hits[path] == 1, (path, hits)  # never retried
    with open(os.path.join(output, "stats.json")) as handle:
        assert "alarm" not in json.load(handle)


# --- item 21: which size limit fired ---------------------------------------------------------------


def test_t2_item21_an_oversized_image_names_the_limit_it_broke(tmp_path) -> None:
    """With `crawl.max_image_area` unset, the limit is Pillow's decompression-bomb limit, and the
    row says so with its value; a set key is named with its own."""
    routes: dict[str, Route] = {
        "/bomb.png": _png_header(50_000, 50_000),  # over twice Pillow's limit: refused at open
        "/big.png": _png_header(10_000, 10_000),  # over the limit, under twice it
        "/small.png": _png(10),
    }
    with _serve(routes) as server:
        urls = [f"{_base(server)}{path}" for path in routes]
        listed = _url_list(str(tmp_path / "list.csv"), urls)
        assert _run(listed, str(tmp_path / "unset")) == 0
        assert _run(listed, str(tmp_path / "set"), "crawl.max_image_area=1000000") == 0
    unset, limited = (_by_name(read_output_rows(str(tmp_path / name))) for name in ("unset", "set"))
    for name in ("bomb.png", "big.png"):
        assert unset[name]["reason"] == "image_area_too_large"
        assert "Pillow's decompression-bomb limit of 89,478,485 pixels" in unset[name]["error"], unset[name]
        assert limited[name]["reason"] == "image_area_too_large"
        assert "crawl.max_image_area 1,000,000" in limited[name]["error"], limited[name]
    assert "10000x10000 (100,000,000 pixels)" in unset["big.png"]["error"]
    assert unset["small.png"]["status"] == limited["small.png"]["status"] == "success"
