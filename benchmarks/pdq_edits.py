"""How far common edits move Meta's PDQ hash, on scikit-image's bundled photographs (CC0 /
public domain): the Hamming distance from each photo's hash to each edited copy's, against PDQ's
match threshold of 31 bits. Crops are included: PDQ is not built to survive them.

    .venv/bin/python benchmarks/pdq_edits.py
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance
from skimage import data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transforms.safety.pdq import pdq_hash  # noqa: E402

PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
    "rocket", "text", "cell", "horse", "colorwheel",
)  # fmt: skip
THRESHOLD = 31


def encoded(image: Image.Image, fmt: str = "PNG", **options: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def edits(image: Image.Image) -> dict[str, bytes]:
    w, h = image.size
    texted = image.copy()
    ImageDraw.Draw(texted).text((5, 5), "winnow 2026", fill=(255, 255, 0))
    crop = int(round(min(w, h) * 0.05))
    return {
        "jpeg q30": encoded(image, "JPEG", quality=30),
        "half size": encoded(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "+15% light": encoded(ImageEnhance.Brightness(image).enhance(1.15)),
        "jpeg>png": encoded(Image.open(io.BytesIO(encoded(image, "JPEG", quality=90)))),
        "text": encoded(texted),
        "crop 5%": encoded(image.crop((crop, crop, w - crop, h - crop))),
        "crop 5% left": encoded(image.crop((crop, 0, w, h))),
    }


def distance(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(bytes(x ^ y for x, y in zip(a, b, strict=True)), np.uint8)).sum())


def main() -> int:
    names = list(edits(Image.new("RGB", (64, 64))))
    print(f"{'photo':22s} {'quality':>7s} " + " ".join(f"{n:>12s}" for n in names))
    within = {n: 0 for n in names}
    for photo in PHOTOS:
        pixels = getattr(data, photo)()
        pixels = pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels
        image = Image.fromarray(pixels).convert("RGB")
        base = pdq_hash(encoded(image))
        row = []
        for name, copy in edits(image).items():
            d = distance(base.hash, pdq_hash(copy).hash)
            within[name] += d <= THRESHOLD
            row.append(f"{d:>12d}")
        print(f"{photo:22s} {base.quality:>7d} " + " ".join(row))
    print(f"{'within 31 bits':30s} " + " ".join(f"{within[n]:>9d}/{len(PHOTOS)}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
