"""What the crawl measures for the safety stage while it holds an image's pixels (`ImageProbe`).

- digests of the bytes as fetched (MD5, SHA-1, when a hash blocklist is set; the crawl records
  SHA-256 itself);
- the PDQ hash of the decoded original, before the crawl resizes or crops it (PDQ survives
  resizing and re-encoding, not cropping: the stored centre crop would not match a listed hash);
- faces on the resized image, before it is encoded: the input's boxes when the sample has them
  (mapped by the crawl onto the stored image), else the detector's (`SafetyConfig.detector`:
  OpenCV's when blurring or counting is asked without one); blurred when asked.

The probe returns plain values (`Sample.probes`): `md5`, `sha1`, `pdq`, `pdq_quality`,
`face_bboxes`, `faces_from` (`input` or the detector) and `blurred`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from transforms.safety.blocklists import digests
from transforms.safety.config import SafetyConfig
from transforms.safety.faces import FaceDetector, blur_boxes, parse_boxes
from transforms.safety.pdq import pdq_of_pixels

#: The input column holding boxes (DataComp's).
FACE_COLUMN = "face_bboxes"


class SafetyProbe:
    """The `ImageProbe` of the safety section (picklable: the detector is made on first use)."""

    def __init__(self, config: SafetyConfig, digest_kinds: frozenset[str] = frozenset()):
        self._config = config
        self._kinds = digest_kinds - {"sha256"}
        self._detector: FaceDetector | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}

    def source(self, data: bytes, image: Image.Image) -> dict[str, Any]:
        measured: dict[str, Any] = digests(data, self._kinds) if self._kinds else {}
        if self._config.pdq_blocklist:
            found = pdq_of_pixels(np.asarray(image))
            measured["pdq"] = found.hash.hex()
            measured["pdq_quality"] = found.quality
        return measured

    def given_boxes(self, extra: dict[str, Any]) -> list[list[float]] | None:
        return parse_boxes(extra.get(FACE_COLUMN)) if self._config.faces else None

    def stored(
        self, image: Image.Image, boxes: list[list[float]] | None
    ) -> tuple[Image.Image, dict[str, Any]]:
        config = self._config
        if not config.faces:
            return image, {}
        faces_from = "input"
        detector = config.detector
        if boxes is None and detector is not None:
            if self._detector is None:
                self._detector = FaceDetector(detector)
            boxes = self._detector.detect(np.asarray(image))
            faces_from = detector
        if boxes is None:  # no boxes given and no detector: nothing is known about faces
            return image, {}
        measured: dict[str, Any] = {"face_bboxes": boxes, "faces_from": faces_from, "blurred": False}
        if boxes and config.blur_faces:
            image = Image.fromarray(blur_boxes(np.asarray(image), boxes), "RGB")
            measured["blurred"] = True
        return image, measured
