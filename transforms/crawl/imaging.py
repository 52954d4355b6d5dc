"""Decode, resize and re-encode one image: pure functions, no Beam.

Resize modes follow img2dataset's semantics exactly (geometry and which side is matched):

| mode | result |
|---|---|
| `no` | original size, re-encoded |
| `keep_ratio` | smallest side = image_size, aspect kept |
| `center_crop` | smallest side = image_size, then the centred image_size² square |
| `keep_ratio_largest` | largest side = image_size, aspect kept |
| `border` | largest side = image_size, padded with white to image_size² (image centred) |
| `fixed` | exactly image_size², aspect not kept |

With `resize_only_if_bigger`, an image whose matched side is not larger than image_size is left
as it is (no crop, no border), as in img2dataset. Sizes are rounded half-to-even like
albumentations; crop offsets use floor division like `albumentations.center_crop`.

Speed: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the target
(`Image.draft`), and crop + resize happen in one resampling pass (`Image.resize(box=...)`),
so a 2,000 px photo never exists at full size in memory. Still WebP images are decoded by
OpenCV, which releases the GIL (Pillow's WebP decoder does not); everything else by Pillow.
16- and 32-bit images are scaled to 8 bits by their format's range (`transforms/crawl/depth.py`),
or fail as `unknown_pixel_range` when their samples do not fit it.

Size limits: `crawl.max_image_area` when set, and always Pillow's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`, 89,478,485 pixels); `image_area_too_large`'s message names the
limit that fired and its value.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from schemas.images import IMAGE_FORMATS
from transforms.crawl.config import ImageOptions
from transforms.crawl.depth import PixelRangeError, SampleRange, sample_range, to_eight_bit

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "lanczos4": Image.Resampling.LANCZOS,
}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
cv2.setNumThreads(1)  # parallelism comes from the crawl threads; OpenCV's own pool would oversubscribe

# Oversized images are rejected explicitly (`image_area_too_large`); Pillow's warning adds nothing.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(Exception):
    """An image that cannot be used; `reason` is the status reason code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


#: A box in normalised image coordinates, [x0, y0, x1, y1] in [0, 1] (DataComp's `face_bboxes`).
Box = Sequence[float]


class ImageProbe(Protocol):
    """What a later stage measures of an image while the crawl holds its pixels (the safety stage's
    hashes and faces): the crawl decodes each image once, and a hash of the original must see the
    original, not the stored crop. The crawl records what the probe returns in `Sample.probes`."""

    def source(self, data: bytes, image: Image.Image) -> dict[str, Any]:
        """Measures the bytes as fetched and the decoded original (EXIF orientation applied, RGB)."""
        ...

    def given_boxes(self, extra: dict[str, Any]) -> list[list[float]] | None:
        """Boxes the input gives for this sample (on the original), or None."""
        ...

    def stored(
        self, image: Image.Image, boxes: list[list[float]] | None
    ) -> tuple[Image.Image, dict[str, Any]]:
        """The image to store instead of `image` (resized, not yet encoded) and what was measured;
        `boxes` are the given boxes mapped onto `image`."""
        ...


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    source_format: str
    #: What the probe measured (`ImageProbe`); empty without one.
    probed: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The source has more than 8 bits per sample (`transforms/crawl/depth.py`): its bytes are
    #: no image a plain 8-bit decode would show as it is.
    high_bit: bool = False


@dataclasses.dataclass(frozen=True)
class ResizePlan:
    """Where the (oriented) original goes: scaled to `scaled`, then `crop` taken, then `canvas`."""

    scaled: tuple[int, int] | None  # None: keep the original size
    crop: tuple[int, int, int, int] | None  # (left, top, right, bottom) in scaled coordinates
    canvas: int | None  # pad to a canvas² white square (border mode)
    downscale: bool


def plan_resize(width: int, height: int, options: ImageOptions) -> ResizePlan:
    """The geometry img2dataset's Resizer produces for a `width`×`height` image."""
    size, mode = options.image_size, options.resize_mode
    if mode in ("keep_ratio", "center_crop"):
        downscale = min(width, height) > size
        if options.resize_only_if_bigger and not downscale:
            return ResizePlan(None, None, None, downscale)
        scale = size / min(width, height)
        scaled = (round(width * scale), round(height * scale))
        crop = None
        if mode == "center_crop":
            left, top = (scaled[0] - size) // 2, (scaled[1] - size) // 2
            crop = (left, top, left + size, top + size)
        return ResizePlan(scaled, crop, None, downscale)
    if mode in ("keep_ratio_largest", "border", "fixed"):
        downscale = max(width, height) > size
        if options.resize_only_if_bigger and not downscale:
            return ResizePlan(None, None, None, downscale)
        if mode == "fixed":
            return ResizePlan((size, size), None, None, downscale)
        scale = size / max(width, height)
        # At least one pixel: a 1×100000 strip scaled to 256 would otherwise be 0 pixels wide.
        scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
        return ResizePlan(scaled, None, size if mode == "border" else None, downscale)
    return ResizePlan(None, None, None, False)


def process_image(
    data: bytes,
    options: ImageOptions,
    probe: ImageProbe | None = None,
    extra: dict[str, Any] | None = None,
) -> ProcessedImage:
    """Decodes `data`, applies EXIF orientation, alpha on white, the resize plan, and re-encodes.

    A `probe` sees the fetched bytes and the decoded original, then the resized image before it is
    encoded, which it may replace (a face blurred); `extra` is the sample's input columns."""
    try:
        opened = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # the pool path's list too
    except UnidentifiedImageError as err:
        raise ImageError("not_an_image", "the bytes are not an image Pillow can identify") from err
    except Image.DecompressionBombError as err:
        raise _bomb_error(str(err), options) from err
    except (OSError, SyntaxError, ValueError) as err:  # a known format whose header is broken
        raise ImageError("decode_error", f"cannot open image: {err}") from err
    source_format = opened.format or "unknown"
    orientation = _orientation(opened)
    width, height = opened.size
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    check_shape(width, height, options)
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ImageError("image_area_too_large", f"{_area(width, height)} exceeds {_pillow_limit()}")
    plan = plan_resize(width, height, options)
    # keep_ratio scales the short side to image_size: a thin strip would become enormous.
    target = plan.scaled if plan.crop is None else None
    if target is not None and Image.MAX_IMAGE_PIXELS and target[0] * target[1] > Image.MAX_IMAGE_PIXELS:
        raise ImageError(
            "image_area_too_large",
            f"{width}x{height} resized to {_area(*target)} exceeds {_pillow_limit()} "
            "(set crawl.max_aspect_ratio to reject such strips earlier)",
        )
    depth = sample_range(opened)  # 16- and 32-bit samples: scaled to 8 bits below, not clipped
    if opened.format == "WEBP" and not getattr(opened, "is_animated", False):
        image = _decode_webp(data, has_alpha=opened.mode == "RGBA")
    else:
        _draft(opened, width, height, plan)
        try:
            opened.load()
        except (OSError, SyntaxError, ValueError) as err:  # Pillow reports broken data as these
            raise ImageError("decode_error", f"cannot decode {source_format}: {err}") from err
        image = opened if depth is None else _eight_bit(opened, depth)
    original = _to_rgb(_orient(image, orientation))
    out = _apply_plan(original, plan, options)
    probed: dict[str, Any] = {}
    if probe is not None:
        probed = probe.source(data, original)
        given = probe.given_boxes(extra or {})
        boxes = None if given is None else stored_boxes(given, width, height, plan)
        out, measured = probe.stored(out, boxes)
        probed.update(measured)
    return ProcessedImage(
        _encode(out, options), out.width, out.height, width, height, source_format, probed, depth is not None
    )


def stored_boxes(boxes: Sequence[Box], width: int, height: int, plan: ResizePlan) -> list[list[float]]:
    """Normalised boxes on a `width`×`height` original mapped onto the image the plan stores:
    clipped to it, and dropped when none of a box is left (a centre crop cut it off)."""
    if plan.scaled is None:
        scaled_w, scaled_h = width, height
    else:
        scaled_w, scaled_h = plan.scaled
    left, top, right, bottom = plan.crop or (0, 0, scaled_w, scaled_h)
    out_w, out_h = right - left, bottom - top
    pad_x = pad_y = 0
    if plan.canvas is not None:
        pad_x, pad_y = (plan.canvas - out_w) // 2, (plan.canvas - out_h) // 2
        out_w = out_h = plan.canvas
    mapped = []
    for x0, y0, x1, y1 in boxes:
        box = [
            min(max((x0 * scaled_w - left + pad_x) / out_w, 0.0), 1.0),
            min(max((y0 * scaled_h - top + pad_y) / out_h, 0.0), 1.0),
            min(max((x1 * scaled_w - left + pad_x) / out_w, 0.0), 1.0),
            min(max((y1 * scaled_h - top + pad_y) / out_h, 0.0), 1.0),
        ]
        if box[2] > box[0] and box[3] > box[1]:
            mapped.append(box)
    return mapped


def _decode_webp(data: bytes, has_alpha: bool) -> Image.Image:
    """Still WebP through OpenCV: it releases the GIL, so crawl threads decode in parallel.

    Pillow decodes WebP through libwebp's animation API while holding the GIL, which serialises
    every WebP image of a worker; OpenCV's decoder is also about 10 % faster on one core.
    """
    flag = cv2.IMREAD_UNCHANGED if has_alpha else cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as err:
        raise ImageError("decode_error", f"cannot decode WEBP: {err}") from err
    if pixels is None:
        raise ImageError("decode_error", "cannot decode WEBP: corrupt or truncated data")
    if has_alpha and pixels.ndim == 3 and pixels.shape[2] == 4:
        return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA), "RGBA")
    if has_alpha:  # declared alpha but decoded without: treat as opaque colour
        return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), "RGB")
    return Image.fromarray(pixels, "RGB")


def _orient(image: Image.Image, orientation: int | None) -> Image.Image:
    """Applies an EXIF orientation (2–8) so the pixels stand as the camera meant them."""
    op = _ORIENTATION_OPS.get(orientation or 1)
    return image.transpose(op) if op is not None else image


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag, or None when absent or unreadable.

    JPEG, PNG and WebP carry EXIF as raw bytes in `image.info` once opened; without them there is
    no orientation to read, and `getexif()` (which for PNG decodes the whole image) is skipped.
    """
    if image.format in ("JPEG", "MPO", "PNG", "WEBP", "GIF") and "exif" not in image.info:
        return None
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):
        return None
    return value if isinstance(value, int) else None


def check_shape(width: int, height: int, options: ImageOptions) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("decode_error", f"image has an empty size {width}x{height}")
    if min(width, height) < options.min_image_size:
        raise ImageError(
            "image_too_small", f"{width}x{height} is below min_image_size {options.min_image_size}"
        )
    if options.max_image_area is not None and width * height > options.max_image_area:
        raise ImageError(
            "image_area_too_large",
            f"{_area(width, height)} exceeds crawl.max_image_area {options.max_image_area:,.0f}",
        )
    if (
        options.max_aspect_ratio is not None
        and max(width, height) / min(width, height) > options.max_aspect_ratio
    ):
        raise ImageError("aspect_ratio_too_large", f"{width}x{height} exceeds max_aspect_ratio")


def _area(width: int, height: int) -> str:
    return f"{width}x{height} ({width * height:,} pixels)"


def _pillow_limit() -> str:
    """Which limit a too large image met when `crawl.max_image_area` did not stop it first."""
    return (
        f"Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS, applied to every decoded image whatever crawl.max_image_area says)"
    )


_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def _bomb_error(message: str, options: ImageOptions) -> ImageError:
    """The `image_area_too_large` of an image Pillow refused to open (over twice its limit),
    naming the limit the image broke: `crawl.max_image_area` when set and broken, else Pillow's."""
    found = _BOMB_SIZE.search(message)
    pixels = int(found.group(1)) if found else None
    size = f"{pixels:,} pixels" if pixels is not None else "the image"
    limit = options.max_image_area
    if limit is not None and (pixels is None or pixels > limit):
        return ImageError("image_area_too_large", f"{size} exceeds crawl.max_image_area {limit:,.0f}")
    return ImageError("image_area_too_large", f"{size} exceeds {_pillow_limit()}")


def _eight_bit(image: Image.Image, depth: SampleRange) -> Image.Image:
    """A decoded 16- or 32-bit image scaled to 8 bits by its range (`transforms/crawl/depth.py`)."""
    try:
        return to_eight_bit(image, depth)
    except PixelRangeError as err:
        raise ImageError("unknown_pixel_range", f"{image.format} {image.mode}: {err}") from err


def _draft(image: Image.Image, width: int, height: int, plan: ResizePlan) -> None:
    """Asks the JPEG decoder for the smallest DCT scale that still covers the scaled size."""
    if image.format != "JPEG" or plan.scaled is None or not plan.downscale:
        return
    target_w, target_h = plan.scaled
    if image.size != (width, height):  # EXIF rotation: the stored image is transposed
        target_w, target_h = target_h, target_w
    image.draft("RGB", (target_w, target_h))


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def content_box(
    original_width: int, original_height: int, options: ImageOptions
) -> tuple[int, int, int, int] | None:
    """Where the picture sits in a stored image padded onto a `border` canvas (None: no padding)."""
    plan = plan_resize(original_width, original_height, options)
    if plan.canvas is None or plan.scaled is None or plan.scaled == (plan.canvas, plan.canvas):
        return None
    width, height = plan.scaled
    left, top = (plan.canvas - width) // 2, (plan.canvas - height) // 2
    return left, top, left + width, top + height


def _apply_plan(image: Image.Image, plan: ResizePlan, options: ImageOptions) -> Image.Image:
    if plan.scaled is None:
        return image
    resample = _RESAMPLE[options.downscale_interpolation if plan.downscale else options.upscale_interpolation]
    scaled_w, scaled_h = plan.scaled
    if plan.crop is not None:
        # The decoded image may be smaller than the original (JPEG draft): map the crop onto it.
        left, top, right, bottom = plan.crop
        ratio_x, ratio_y = image.width / scaled_w, image.height / scaled_h
        box = (left * ratio_x, top * ratio_y, right * ratio_x, bottom * ratio_y)
        return image.resize((right - left, bottom - top), resample, box=box)
    out = image.resize((scaled_w, scaled_h), resample) if image.size != (scaled_w, scaled_h) else image
    if plan.canvas is not None and out.size != (plan.canvas, plan.canvas):
        canvas = Image.new("RGB", (plan.canvas, plan.canvas), (255, 255, 255))
        canvas.paste(out, ((plan.canvas - out.width) // 2, (plan.canvas - out.height) // 2))
        return canvas
    return out


def _encode(image: Image.Image, options: ImageOptions) -> bytes:
    buffer = io.BytesIO()
    fmt = _PIL_FORMAT[options.encode_format]
    if fmt == "PNG":
        image.save(buffer, format=fmt, compress_level=options.encode_quality)
    else:
        image.save(buffer, format=fmt, quality=options.encode_quality)
    return buffer.getvalue()
