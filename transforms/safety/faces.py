"""Faces: found on the stored image, and blurred as img2dataset blurs them. Pure functions, no Beam.

Boxes are normalised [x0, y0, x1, y1] in [0, 1] of the image's width and height, DataComp's
`face_bboxes` convention (img2dataset's "albumentations" format).

- `FaceDetector`: OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml` (shipped with
  `opencv-python-headless` 4.x; of OpenCV's frontal cascades it found the astronaut of
  `skimage.data` and no face on its other photographs, where the default cascade finds some on
  coins and the moon), or a YuNet ONNX model through `cv2.FaceDetectorYN` when a path is given.
  Images are searched at most `DETECT_SIDE` pixels on their longer side.
- `blur_boxes`: img2dataset's `BoundingBoxBlurrer`: each box grown by 10 % of its longer side on
  every side, one Gaussian blur of the whole image with sigma = 0.1 × the longest box side
  (kernel 2⌈4σ⌉ + 1), and the blurred image blended in through the same blur of the boxes' mask,
  so the edges fade. Unlike img2dataset, a box grown past the image edge is clipped to it
  (img2dataset's negative index wraps around and can skip the box).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from transforms.safety.config import OPENCV_FACES

#: The longest side searched; larger images are scaled down for the search (boxes are relative).
DETECT_SIDE = 512
CASCADE = "haarcascade_frontalface_alt2.xml"


class FaceError(ValueError):
    """A face detector that cannot be loaded (the message names it)."""


def parse_boxes(value: Any) -> list[list[float]] | None:
    """The boxes an input column gives (a list of 4-number lists, or its JSON text), clipped to
    [0, 1]; None when the value is absent or not boxes (a box with no area is dropped)."""
    if value is None:
        return None
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list | tuple):
        return None
    boxes = []
    for box in value:
        if not isinstance(box, list | tuple) or len(box) != 4:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            return None
        x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
        if x1 > x0 and y1 > y0:
            boxes.append([x0, y0, x1, y1])
    return boxes


class FaceDetector:
    """Finds faces on RGB uint8 arrays; one OpenCV detector per thread (they hold scratch state)."""

    def __init__(self, model: str = OPENCV_FACES):
        self.model = model
        self._local = threading.local()
        self._detector()  # fail early, naming the model

    def _detector(self) -> Any:
        detector = getattr(self._local, "detector", None)
        if detector is not None:
            return detector
        if self.model == OPENCV_FACES:
            detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]
            if detector.empty():
                raise FaceError(f"safety.face_detector: OpenCV's {CASCADE} cannot be loaded")
        else:
            try:
                detector = cv2.FaceDetectorYN.create(self.model, "", (320, 320), 0.9, 0.3, 5000)
            except cv2.error as err:
                raise FaceError(f"safety.face_detector: cannot load {self.model}: {err}") from None
        self._local.detector = detector
        return detector

    def detect(self, pixels: np.ndarray) -> list[list[float]]:
        """Normalised boxes of the faces on `pixels` (height, width, 3), sorted by position."""
        height, width = pixels.shape[:2]
        scale = min(1.0, DETECT_SIDE / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        h, w = pixels.shape[:2]
        detector = self._detector()
        if self.model == OPENCV_FACES:
            gray = cv2.equalizeHist(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY))
            side = max(20, min(h, w) // 16)
            found = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
            rects = [tuple(map(float, r)) for r in found] if len(found) else []
        else:
            detector.setInputSize((w, h))
            _, faces = detector.detect(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            rects = [tuple(map(float, f[:4])) for f in faces] if faces is not None else []
        boxes = []
        for x, y, bw, bh in rects:
            box = [max(x / w, 0.0), max(y / h, 0.0), min((x + bw) / w, 1.0), min((y + bh) / h, 1.0)]
            boxes.append([round(v, 6) for v in box])
        return sorted(boxes)


def blur_boxes(pixels: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """`pixels` (height, width, 3 uint8) with every box blurred, as img2dataset blurs (module doc)."""
    if not boxes:
        return pixels
    height, width = pixels.shape[:2]
    image = pixels.astype(np.float32) / 255.0
    mask = np.zeros_like(image)
    longest = 0
    for x0, y0, x1, y1 in boxes:
        box = [int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)]
        side = max(box[2] - box[0], box[3] - box[1])
        longest = max(longest, side)
        grown = [
            max(int(box[0] - 0.1 * side), 0),
            max(int(box[1] - 0.1 * side), 0),
            int(box[2] + 0.1 * side),
            int(box[3] + 0.1 * side),
        ]
        mask[grown[1] : grown[3], grown[0] : grown[2], :] = 1
    if longest == 0:
        return pixels
    sigma = 0.1 * longest
    size = int(2 * np.ceil(4 * sigma)) + 1
    blurred = cv2.GaussianBlur(image, (size, size), sigmaX=sigma, sigmaY=sigma)
    soft = cv2.GaussianBlur(mask, (size, size), sigmaX=sigma, sigmaY=sigma)
    result = ((image * (1 - soft) + blurred * soft) * 255.0).astype(np.uint8)
    return np.where(soft > 0, result, pixels)  # outside the fade, the pixels are left exactly as they were
