"""Encoding and near-duplicate variants of rendered sample-web images.

Contract:

* :func:`encode` turns an RGB image into file bytes with fixed encoder settings (JPEG and WebP at
  the given quality, PNG at compression level 3, GIF as a 64-colour adaptive palette without
  dithering), so the same pixels always give the same bytes.
* :class:`ImageSpec` fully describes one file to write: its id, format, quality and, for
  near-duplicates, the transform (``reencode``, ``resize``, ``crop``, ``brightness``,
  ``text_overlay``) with all its parameters already drawn.  ``width``/``height`` are the
  dimensions of the written file.
* :func:`run_render_task` renders one scene once and writes the original and all its copies
  (``exact`` copies reuse the original's bytes).  It is the unit of work of the generator's
  process pool and returns ``(sample_id, bytes_written)`` pairs.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from sampleweb.layout import file_name
from sampleweb.scenes import Scene, render

NEAR_VARIANTS: tuple[str, ...] = ("reencode", "resize", "crop", "brightness", "text_overlay")
DUP_VARIANTS: tuple[str, ...] = ("original", "exact", *NEAR_VARIANTS)
_PNG_LEVEL = 3
_GIF_COLORS = 64
_WEBP_METHOD = 0


@dataclass(frozen=True)
class ImageSpec:
    """One image file: an original (``variant`` ``None`` or ``"original"``) or a copy of one."""

    sample_id: int
    fmt: str
    quality: int
    width: int
    height: int
    variant: str | None = None
    crop_box: tuple[int, int, int, int] | None = None
    brightness: float = 1.0
    text: str = ""
    text_corner: int = 0


@dataclass(frozen=True)
class RenderTask:
    """Render ``scene`` once, then write ``original`` and every spec in ``copies``."""

    files_dir: str
    scene: Scene
    grain: float
    grain_seed: int
    original: ImageSpec
    copies: tuple[ImageSpec, ...] = ()

    @property
    def cost(self) -> int:
        """Rough relative cost (pixels to encode), used to schedule big tasks first."""
        return sum(spec.width * spec.height for spec in (self.original, *self.copies))


def encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    """Encode an RGB image with fixed, deterministic encoder settings."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=_WEBP_METHOD)
    elif fmt == "png":
        image.save(buffer, "PNG", compress_level=_PNG_LEVEL)
    elif fmt == "gif":
        palette = image.quantize(_GIF_COLORS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        palette.save(buffer, "GIF")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _overlay_text(image: Image.Image, text: str, corner: int) -> Image.Image:
    out = image.copy()
    width, height = out.size
    size = max(9, min(width, height) // 14)
    draw = ImageDraw.Draw(out)
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    margin = max(2, size // 3)
    x = margin if corner in (0, 2) else max(0, width - (right - left) - margin)
    y = margin if corner in (0, 1) else max(0, height - (bottom - top) - margin)
    draw.text(
        (x - left, y - top), text, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0)
    )
    return out


def transform(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """Apply a near-duplicate transform described by ``spec`` to the original's pixels."""
    if spec.variant == "resize":
        return image.resize((spec.width, spec.height), Image.Resampling.BICUBIC)
    if spec.variant == "crop" and spec.crop_box is not None:
        return image.crop(spec.crop_box)
    if spec.variant == "brightness":
        return ImageEnhance.Brightness(image).enhance(spec.brightness)
    if spec.variant == "text_overlay":
        return _overlay_text(image, spec.text, spec.text_corner)
    if spec.variant == "reencode":
        return image
    raise ValueError(f"not a near-duplicate variant: {spec.variant!r}")


def _write(files_dir: str, spec: ImageSpec, data: bytes) -> int:
    with open(os.path.join(files_dir, file_name(spec.sample_id, spec.fmt)), "wb") as handle:
        handle.write(data)
    return len(data)


def run_render_task(task: RenderTask) -> list[tuple[int, int]]:
    """Render, encode and write one scene and its copies; returns ``(sample_id, bytes)`` pairs."""
    spec = task.original
    image = render(task.scene, spec.width, spec.height, grain=task.grain, grain_seed=task.grain_seed)
    data = encode(image, spec.fmt, spec.quality)
    written = [(spec.sample_id, _write(task.files_dir, spec, data))]
    for copy in task.copies:
        copy_data = (
            data if copy.variant == "exact" else encode(transform(image, copy), copy.fmt, copy.quality)
        )
        written.append((copy.sample_id, _write(task.files_dir, copy, copy_data)))
    return written
