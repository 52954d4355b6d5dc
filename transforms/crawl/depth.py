"""High-bit images to 8 bits per sample, scaled by the range their format gives: pure functions.

Pillow opens 16-bit greyscale (PNG, TIFF, PPM, JPEG 2000) as `I;16` (`I;16B`, `I;16L`, `I;16N`),
32-bit integer TIFFs (and 16-bit signed ones) as `I` and floating-point TIFFs as `F`; its own
conversion to RGB clips every value above 255, so a mid-grey 16-bit photograph becomes white.
Here black is the range's low end and white its high end:

| mode | range |
|---|---|
| `I;16*` | 0–65,535 |
| `I` from a TIFF | 0–2^bits − 1 unsigned, 0–2^(bits−1) − 1 signed (`BitsPerSample`, `SampleFormat`) |
| `I` from PNG, PPM, JPEG 2000 | 0–65,535 (their 16-bit samples) |
| `I` from anything else | 0–2^31 − 1 (the mode's own) |
| `F` | 0–1 (the convention of floating-point images) |

A value the range cannot hold (a negative signed sample, a float outside 0–1, NaN) means the
range is not what the image means: `PixelRangeError`, and the sample fails (`unknown_pixel_range`)
rather than being stored with a guessed brightness. 16-bit RGB(A) PNGs are opened by Pillow as
8-bit `RGB`/`RGBA` already (the high byte of each sample) and need nothing here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

#: Pillow's modes with more than 8 bits per sample.
HIGH_BIT_MODES = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339
_SIGNED, _FLOAT = 2, 3
#: Formats whose integer samples are at most 16 bits: Pillow's `I` holds them unscaled.
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "PPM", "JPEG2000"})
#: Pixels converted at once: the float copy stays a few MB whatever the image's size.
_BLOCK_PIXELS = 1 << 20


class PixelRangeError(ValueError):
    """An image whose samples do not fit the range its format gives (the message says how)."""


@dataclasses.dataclass(frozen=True)
class SampleRange:
    """The values a high-bit image's samples span, black to white."""

    low: float
    high: float
    #: The samples are unsigned 32-bit integers that Pillow holds in a signed `I` (wrapped).
    unsigned_32: bool = False

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}"


def sample_range(image: Image.Image) -> SampleRange | None:
    """The range of an opened image's samples (read from its header, before its pixels are
    decoded), or None for a mode of 8 bits per sample or fewer."""
    mode = image.mode
    if mode not in HIGH_BIT_MODES:
        return None
    if mode.startswith("I;16"):
        return SampleRange(0.0, 65535.0)
    if mode == "F":
        return SampleRange(0.0, 1.0)
    if image.format == "TIFF":
        tags = getattr(image, "tag_v2", {})
        bits = _first(tags.get(_TIFF_BITS), 32)
        signed = _first(tags.get(_TIFF_SAMPLE_FORMAT), 1) == _SIGNED
        if signed:
            return SampleRange(0.0, float(2 ** (bits - 1) - 1))
        return SampleRange(0.0, float(2**bits - 1), unsigned_32=bits == 32)
    if image.format in _SIXTEEN_BIT_FORMATS:
        return SampleRange(0.0, 65535.0)
    return SampleRange(0.0, float(2**31 - 1))


def to_eight_bit(image: Image.Image, span: SampleRange) -> Image.Image:
    """The decoded high-bit `image` as an `L` image, `span.low` black and `span.high` white
    (rounded to the nearest level); a 16-bit image's transparent key colour becomes white, as
    transparency is put on white everywhere. `PixelRangeError` for a value outside `span`."""
    pixels = np.asarray(image)
    if span.unsigned_32:
        pixels = pixels.view(np.uint32)
    _check_inside(pixels, span, image.mode)
    out = np.empty(pixels.shape, np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, pixels.shape[1]))
    scale = 255.0 / (span.high - span.low)
    for top in range(0, pixels.shape[0], rows):
        block = (pixels[top : top + rows].astype(np.float64) - span.low) * scale
        out[top : top + rows] = np.clip(np.rint(block), 0, 255)
    key = image.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):
        out[pixels == key] = 255
    return Image.fromarray(out, "L")


def _check_inside(pixels: np.ndarray, span: SampleRange, mode: str) -> None:
    if pixels.size == 0:
        return
    if mode == "F" and not np.isfinite(pixels).all():
        raise PixelRangeError("a floating-point image holds NaN or infinite samples")
    low, high = pixels.min(), pixels.max()
    if low < span.low or high > span.high:
        kind = "floating-point" if mode == "F" else "signed integer"
        raise PixelRangeError(
            f"a {kind} image with samples in {low:g}..{high:g}, outside {span.describe()}: "
            "what its black and white are is unknown (save it with 8 or 16 bits per sample)"
        )


def _first(value: object, default: int) -> int:
    """The first number of a TIFF tag's value (a tuple per sample, or one number)."""
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int | float) else default
