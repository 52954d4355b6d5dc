"""Decode/resize/encode: img2dataset's resize geometry, orientation, alpha, failures."""

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import ImageError, plan_resize, process_image


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def thirds(width: int, height: int) -> Image.Image:
    """Red, green and blue vertical thirds."""
    image = Image.new("RGB", (width, height))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (i * width // 3, 0, (i + 1) * width // 3, height))
    return image


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("keep_ratio", (1000, 500), (512, 256)),
        ("keep_ratio", (100, 50), (512, 256)),  # upscales unless resize_only_if_bigger
        ("center_crop", (1000, 500), (256, 256)),
        ("keep_ratio_largest", (1000, 500), (256, 128)),
        ("border", (1000, 500), (256, 256)),
        ("fixed", (1000, 500), (256, 256)),
        ("no", (1000, 500), (1000, 500)),
        ("keep_ratio", (333, 1000), (256, 769)),  # 1000 * 256/333 = 768.77 → 769
    ],
)
def test_output_geometry(mode, size, expected):
    options = ImageOptions(image_size=256, resize_mode=mode)
    out = process_image(encode(thirds(*size)), options)
    assert (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == size
    assert Image.open(io.BytesIO(out.data)).size == expected


def test_center_crop_plan_uses_floor_offsets():
    plan = plan_resize(1001, 512, ImageOptions(image_size=256, resize_mode="center_crop"))
    assert plan.scaled == (500, 256)  # 1001 * 0.5 = 500.5 → 500 (half to even, like albumentations)
    assert plan.crop == (122, 0, 378, 256)


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest"])
def test_resize_only_if_bigger_leaves_small_images_alone(mode):
    options = ImageOptions(image_size=256, resize_mode=mode, resize_only_if_bigger=True)
    out = process_image(encode(thirds(200, 100)), options)
    assert (out.width, out.height) == (200, 100)


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _close(pixel, colour, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def test_center_crop_keeps_the_middle_with_jpeg_draft():
    # 1,200 × 600: the crop is x 300..900 of the original, i.e. red | green | blue over 100/400/100 px,
    # which at 256 px is about 43 | 171 | 43 px.
    options = ImageOptions(image_size=256, resize_mode="center_crop")
    out = _decode(process_image(encode(thirds(1200, 600), quality=95), options).data)
    assert out.size == (256, 256)
    assert _close(out.getpixel((10, 128)), (255, 0, 0))
    assert _close(out.getpixel((128, 128)), (0, 255, 0))
    assert _close(out.getpixel((245, 128)), (0, 0, 255))


def test_draft_decode_matches_full_decode():
    """Reduce-on-decode must not change what the image looks like."""
    ramp = Image.linear_gradient("L").resize((1600, 1200))
    source = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90).resize((1600, 1200)), ramp))
    draw = ImageDraw.Draw(source)
    draw.ellipse((300, 300, 900, 900), fill=(255, 0, 0))
    draw.rectangle((1000, 200, 1500, 700), fill=(0, 0, 255))
    jpeg = encode(source, quality=95)
    options = ImageOptions(image_size=256, resize_mode="keep_ratio", encode_format="png", encode_quality=1)
    drafted = _decode(process_image(jpeg, options).data)
    full = _decode(jpeg).resize((341, 256), Image.Resampling.BOX)  # full-size decode, then area resize
    assert drafted.size == full.size
    pairs = zip(drafted.get_flattened_data(), full.get_flattened_data(), strict=True)
    diff = [abs(a - b) for pa, pb in pairs for a, b in zip(pa, pb, strict=True)]
    assert sum(diff) / len(diff) < 1.5


def test_border_pads_with_white_around_the_centred_image():
    options = ImageOptions(image_size=256, resize_mode="border", encode_format="png", encode_quality=1)
    out = _decode(process_image(encode(Image.new("RGB", (1000, 500), (0, 0, 0)), "PNG"), options).data)
    assert out.getpixel((128, 10)) == (255, 255, 255)  # top band: (256 - 128) // 2 = 64 px
    assert out.getpixel((128, 63)) == (255, 255, 255)
    assert out.getpixel((128, 64)) == (0, 0, 0)
    assert out.getpixel((128, 191)) == (0, 0, 0)
    assert out.getpixel((128, 192)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = thirds(400, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = process_image(encode(image, exif=exif), ImageOptions(resize_mode="no"))
    assert (out.original_width, out.original_height) == (200, 400)
    assert (out.width, out.height) == (200, 400)
    decoded = _decode(out.data)
    assert _close(decoded.getpixel((100, 20)), (255, 0, 0))  # the red left third is now on top


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (100, 100, 200, 200))
    out = _decode(
        process_image(
            encode(image, "PNG"), ImageOptions(resize_mode="no", encode_format="png", encode_quality=1)
        ).data
    )
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((150, 150)) == (0, 0, 255)


def test_palette_gif_and_webp_decode():
    gif = encode(thirds(300, 150).convert("P"), "GIF")
    webp = encode(thirds(300, 150), "WEBP")
    for data, fmt in ((gif, "GIF"), (webp, "WEBP")):
        out = process_image(data, ImageOptions(image_size=64, resize_mode="keep_ratio_largest"))
        assert out.source_format == fmt
        assert (out.width, out.height) == (64, 32)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body>not found</body></html>", "not_an_image"),
        (b"", "not_an_image"),
        (encode(thirds(800, 600))[:4000], "decode_error"),
    ],
)
def test_broken_bytes_give_a_reason(data, reason):
    with pytest.raises(ImageError) as err:
        process_image(data, ImageOptions())
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (ImageOptions(min_image_size=300), "image_too_small"),
        (ImageOptions(max_image_area=10_000), "image_area_too_large"),
        (ImageOptions(max_aspect_ratio=1.5), "aspect_ratio_too_large"),
    ],
)
def test_shape_limits(options, reason):
    with pytest.raises(ImageError) as err:
        process_image(encode(thirds(800, 200)), options)
    assert err.value.reason == reason


@pytest.mark.parametrize(("fmt", "magic"), [("jpg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    quality = 6 if fmt == "png" else 80
    out = process_image(encode(thirds(300, 300)), ImageOptions(encode_format=fmt, encode_quality=quality))
    assert out.data.startswith(magic)


def test_same_input_same_bytes():
    data = encode(thirds(900, 700))
    assert process_image(data, ImageOptions()).data == process_image(data, ImageOptions()).data


def test_webp_with_alpha_and_broken_webp():
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (50, 0, 150, 100))
    options = ImageOptions(resize_mode="no", encode_format="png", encode_quality=1)
    out = _decode(process_image(encode(image, "WEBP", lossless=True), options).data)
    assert out.getpixel((10, 50)) == (255, 255, 255)
    assert out.getpixel((100, 50)) == (0, 0, 255)
    data = encode(thirds(600, 400), "WEBP", quality=90)
    with pytest.raises(ImageError) as err:
        process_image(data[: len(data) // 2], ImageOptions())
    assert err.value.reason == "decode_error"


def test_rotated_webp_is_oriented():
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise on display
    out = process_image(encode(thirds(400, 200), "WEBP", exif=exif), ImageOptions(resize_mode="no"))
    assert (out.width, out.height) == (200, 400)
    assert _close(_decode(out.data).getpixel((100, 380)), (255, 0, 0))  # red left third ends at the bottom


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`×`height` (a decompression bomb's first bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00" * 64)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 30), 1)
    image.info["transparency"] = 0
    return image


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_png_claiming(50_000, 50_000), "image_area_too_large"),
        (SVG, "not_an_image"),  # never rendered
        (bytes(random.Random(7).randrange(256) for _ in range(20_000)), "not_an_image"),
    ],
    ids=["png-50000x50000", "svg", "random-bytes"],
)
def test_hostile_bytes_fail_with_their_reason(data, reason):
    with pytest.raises(ImageError) as err:
        process_image(data, ImageOptions())
    assert err.value.reason == reason


def test_a_thin_strip_is_not_blown_up_by_keep_ratio():
    strip = encode(Image.new("L", (1, 100_000), 128), "PNG")
    with pytest.raises(ImageError) as err:  # 256 × 25,600,000 pixels if scaled as asked
        process_image(strip, ImageOptions(image_size=256, resize_mode="keep_ratio"))
    assert err.value.reason == "image_area_too_large"


def test_a_gif_of_many_frames_uses_the_first_without_decoding_the_rest():
    frames = [Image.new("P", (2, 2), i % 256) for i in range(20_000)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    out = process_image(data, ImageOptions(image_size=16))
    assert out.source_format == "GIF" and (out.width, out.height) == (16, 16)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        (Image.new("I;16", (40, 30), 40_000), "PNG"),
        (_palette_with_transparency(), "PNG"),
        (Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        (Image.new("L", (1, 100_000), 128), "PNG"),
    ],
    ids=["cmyk-jpeg", "16-bit-png", "palette-alpha-png", "1x1", "1x100000"],
)
def test_unusual_modes_and_shapes_decode_to_rgb(image, fmt):
    out = process_image(encode(image, fmt), ImageOptions(image_size=32, resize_mode="border"))
    assert (out.width, out.height) == (32, 32)
    decoded = Image.open(io.BytesIO(out.data))
    assert decoded.mode == "RGB" and (out.original_width, out.original_height) == image.size
