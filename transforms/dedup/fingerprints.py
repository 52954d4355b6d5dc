"""A downloaded sample's fingerprint: what the dedup levels compare (`types.Fingerprint`).

Its stored image is decoded once: the pixel digest (exact level), the perceptual hash of
`dedup.hash` and the thumbnail signature (near level), with the image embedding and CLIP score
carried along (semantic level, and the keep rule of every level). dHash and pHash are 64-bit ints
(`perceptual.py`); PDQ is Meta's 256-bit hash (`transforms/safety/pdq.py`, the one the safety
stage matches blocklists with) as an int, most significant bit first, with its quality
(`Fingerprint.hash_quality`; `types.comparable` says whether the hash levels compare it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from PIL import Image

from schemas.sample import Sample
from transforms.crawl.config import ImageOptions
from transforms.crawl.imaging import content_box
from transforms.dedup.perceptual import dhash, phash, pixel_digest, thumbnail_signature
from transforms.dedup.types import Fingerprint
from transforms.safety.pdq import pdq_of_pixels


def perceptual_hash(image: Image.Image, hash_kind: str) -> tuple[int, int | None]:
    """(hash as an unsigned int, quality or None) of an RGB image for `dedup.hash` = `hash_kind`."""
    if hash_kind == "pdq":
        found = pdq_of_pixels(np.asarray(image))
        return int.from_bytes(found.hash, "big"), found.quality
    if hash_kind not in ("dhash", "phash"):
        raise ValueError(f"unknown perceptual hash {hash_kind!r}")
    return (phash if hash_kind == "phash" else dhash)(image), None


def fingerprint(sample: Sample, hash_kind: str, options: ImageOptions) -> Fingerprint:
    """The fingerprint of a downloaded sample: its stored image decoded once, without the white
    padding of the `border` resize mode (which would make every padded image look alike)."""
    with Image.open(io.BytesIO(sample.image or b"")) as opened:
        image = opened.convert("RGB")
    if sample.original_width and sample.original_height:
        box = content_box(sample.original_width, sample.original_height, options)
        if box is not None and image.size == (options.image_size, options.image_size):
            image = image.crop(box)
    value, quality = perceptual_hash(image, hash_kind)
    return Fingerprint(
        uid=sample.uid,
        sha256=sample.sha256,
        pixels=pixel_digest(image),
        hash64=value,
        hash_quality=quality,
        signature=thumbnail_signature(image),
        area=(sample.original_width or image.width) * (sample.original_height or image.height),
        clip_score=sample.clip_score,
        embedding=sample.image_embedding,
    )


class FingerprintFn(beam.DoFn):
    """Sample → (sample, its Fingerprint)."""

    def __init__(self, hash_kind: str, options: ImageOptions):
        self._hash = hash_kind
        self._options = options

    def process(self, sample: Sample) -> Iterator[tuple[Sample, Fingerprint]]:
        yield sample, fingerprint(sample, self._hash, self._options)
