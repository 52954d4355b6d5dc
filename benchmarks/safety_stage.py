"""The safety stage's cost per core and PDQ's precision on unrelated images.

1. Precision: the PDQ hashes of scikit-image's 19 bundled photographs (the list of
   `tests/safety/test_pdq.py`) are the blocklist; every distinct image of a generated sample web
   (`--samples` pairs, about 0.9 distinct images per pair) is an unrelated image. Reports how many
   fall within `--threshold` bits of a listed hash (the precision target: none) and the closest.
2. Cost per core, one thread, on the sample web's images as downloaded (PNG / JPEG / WebP originals)
   and as the crawl stores them (256 px centre crop, JPEG 95), each step alone, side by side:
   digests (MD5 + SHA-1 of the bytes), PDQ of the decoded original, face detection (OpenCV Haar
   cascade) on the stored image, blurring when a face is found, and Open-NSFW in ONNX Runtime
   (the wheel's preprocessing + the model, batches of 32) on the stored image.

    .venv/bin/python benchmarks/safety_stage.py --samples 2300
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from sampleweb import generate_corpus  # noqa: E402
from transforms.crawl.imaging import process_image  # noqa: E402
from transforms.safety.blocklists import digests  # noqa: E402
from transforms.safety.faces import FaceDetector, blur_boxes  # noqa: E402
from transforms.safety.hashindex import HammingIndex  # noqa: E402
from transforms.safety.nsfw import NsfwModelHandler, preprocess  # noqa: E402
from transforms.safety.pdq import pdq_hash  # noqa: E402

PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
    "rocket", "text", "cell", "horse",
)  # fmt: skip


def photo_png(name: str) -> bytes:
    pixels = getattr(data, name)()
    pixels = pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels
    out = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def timed(label: str, n: int, work) -> float:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"  {label:44s} {n / seconds:9.1f} images/s  ({1e3 * seconds / n:6.2f} ms each)")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2300)
    parser.add_argument("--threshold", type=int, default=31)
    parser.add_argument("--nsfw-images", type=int, default=256, help="images scored by the NSFW model")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory() as web:
        generate_corpus(web, samples=args.samples, seed=11)
        paths = sorted(p for p in glob.glob(f"{web}/files/**/*", recursive=True) if os.path.isfile(p))
        originals = []
        for path in paths:
            with open(path, "rb") as handle:
                originals.append(handle.read())
    unique = list(dict.fromkeys(originals))
    print(f"sample web: {args.samples:,} pairs, {len(unique):,} distinct image files")

    listed = np.frombuffer(b"".join(pdq_hash(photo_png(n)).hash for n in PHOTOS), np.uint8).reshape(-1, 32)
    index = HammingIndex(listed, max_distance=args.threshold)
    loose = HammingIndex(listed, max_distance=95)
    hashes = [pdq_hash(d).hash for d in unique]
    matched = sum(index.nearest(h) is not None for h in hashes)
    closest = min((loose.nearest(h) or (0, 96))[1] for h in hashes)
    print(
        f"precision: {matched} of {len(unique):,} unrelated images within {args.threshold} bits of the "
        f"{len(PHOTOS)} listed photographs (closest: {closest} bits)"
    )

    options = load_config(overrides=["crawl.resize_mode=center_crop", "crawl.image_size=256"]).crawl
    stored = [process_image(d, options).data for d in unique]
    n = len(unique)
    print(f"cost per core (one thread), {n:,} images:")
    pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in stored]
    timed(
        "crawl imaging alone (decode, crop, encode)", n, lambda: [process_image(d, options) for d in unique]
    )
    timed(
        "digests MD5 + SHA-1 of the bytes",
        n,
        lambda: [digests(d, frozenset({"md5", "sha1"})) for d in unique],
    )
    timed("PDQ of the decoded original", n, lambda: [pdq_hash(d) for d in unique])
    timed("PDQ lookup, 19-hash list", n, lambda: [index.nearest(h) for h in hashes])
    detector = FaceDetector()
    found: list[list[list[float]]] = []
    timed(
        "faces: OpenCV Haar cascade, 256 px stored",
        n,
        lambda: found.extend(detector.detect(p) for p in pixels),
    )
    with_faces = [(p, b) for p, b in zip(pixels, found, strict=True) if b]
    print(f"    faces found on {len(with_faces)} of {n:,} images (the sample web draws no people)")
    face = np.asarray(Image.open(io.BytesIO(photo_png("astronaut"))).convert("RGB").resize((256, 256)))
    box = detector.detect(face)
    timed(
        "blur one face box (img2dataset's blurrer)", 200, lambda: [blur_boxes(face, box) for _ in range(200)]
    )
    handler = NsfwModelHandler("open-nsfw", 32)
    model = handler.load_model()
    subset = stored[: args.nsfw_images]
    inputs: list[np.ndarray] = []
    timed(
        "NSFW preprocessing (the wheel's own)",
        len(subset),
        lambda: inputs.extend(preprocess(d) for d in subset),
    )
    timed(
        "NSFW model, ONNX Runtime, batches of 32",
        len(subset),
        lambda: [handler.run_inference(inputs[i : i + 32], model) for i in range(0, len(inputs), 32)],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
