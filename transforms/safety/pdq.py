"""Meta's PDQ perceptual hash of an image, as the 32 bytes of its 64-hex-digit form.

PDQ (Meta's ThreatExchange) hashes the luminance of an image to 256 bits that stay within a few
bits through re-encoding, resizing and small edits; hash-sharing programmes distribute lists of
PDQ hashes as 64 hex digits, and 31 bits is Meta's documented match threshold. `pdqhash` wraps
Meta's C++ code; its bit vector is most significant bit first, so packing it gives the bytes of
the hex form (`bytes.fromhex(listed) == pdq_hash(...).hash`).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps


@dataclasses.dataclass(frozen=True)
class PdqHash:
    #: The 256 bits, most significant first: `hash.hex()` is the form lists use.
    hash: bytes
    #: PDQ's quality score, 0-100 (below about 50 the image is too flat to hash reliably).
    quality: int


def pdq_of_pixels(pixels: np.ndarray) -> PdqHash:
    """The PDQ hash of an RGB uint8 array (height, width, 3)."""
    import pdqhash

    vector, quality = pdqhash.compute(np.ascontiguousarray(pixels, dtype=np.uint8))
    return PdqHash(np.packbits(vector.astype(np.uint8)).tobytes(), int(quality))


def pdq_hash(data: bytes) -> PdqHash:
    """The PDQ hash of an encoded image, EXIF orientation applied, alpha over white."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, image)
        return pdq_of_pixels(np.asarray(image.convert("RGB")))
