"""URL layout of the Winnow sample web, shared by the corpus generator and the server.

Contract: a sample's URL path alone says how the server answers it, so the server needs no
state beyond the corpus directory.  Image bytes live in ``<out_dir>/files/<name>`` where
``<name>`` is the sample id zero-padded to at least six digits plus the format's extension.

===================================  ==========================================================
path                                 response
===================================  ==========================================================
``/img/<name>``                      200, the file, ``Content-Type`` of its format
``/fault/404/<name>``                404
``/fault/500/<name>``                500
``/fault/slow/<name>``               200 headers, then the body trickles ~1 byte / 0.5 s, ~30 s
``/fault/truncated/<name>``          200, the first half of the file (Content-Length matches)
``/fault/html/<name>``               200, an HTML page served as ``image/jpeg``
``/fault/noai/<form>/<name>``        200, the file plus an ``X-Robots-Tag`` opt-out header
``/fault/oversize/<name>``           200, the file padded with zeros to :data:`OVERSIZE_BYTES`
===================================  ==========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "gif")
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
CONTENT_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
}

FAULTS: tuple[str, ...] = ("http_404", "http_500", "slow", "truncated", "html", "noai", "oversize")
FAULT_REASONS: dict[str, str] = {
    "http_404": "http_404",
    "http_500": "http_500",
    "slow": "timeout",
    "truncated": "decode_error",
    "html": "not_an_image",
    "noai": "opted_out_x_robots_tag",
    "oversize": "too_large",
}
FAULT_SEGMENTS: dict[str, str] = {
    "http_404": "404",
    "http_500": "500",
    "slow": "slow",
    "truncated": "truncated",
    "html": "html",
    "noai": "noai",
    "oversize": "oversize",
}
# Faults whose response carries the sample's image bytes (so the generator writes a file).
FAULTS_WITH_FILE: frozenset[str] = frozenset({"truncated", "noai", "oversize"})
# ``X-Robots-Tag`` value sent for each ``/fault/noai/<form>/`` path form.
ROBOTS_FORMS: dict[str, str] = {
    "noai": "noai",
    "noimageai": "noimageai",
    "noai-noimageai": "noai, noimageai",
    "noindex": "noindex",
}
OVERSIZE_BYTES = 12 * 1024 * 1024
SLOW_INTERVAL_S = 0.5
SLOW_DURATION_S = 30.0
SLOW_DECLARED_BYTES = 65536

_NAME = re.compile(r"^[0-9]{6,}\.(jpg|png|webp|gif)$")


def file_name(sample_id: int, fmt: str) -> str:
    """File name (relative to ``files/``) of a sample's image."""
    return f"{sample_id:06d}.{EXTENSIONS[fmt]}"


def url_path(sample_id: int, fmt: str, fault: str | None = None, robots_form: str | None = None) -> str:
    """URL path of a sample; faults are encoded in the path."""
    name = file_name(sample_id, fmt)
    if fault is None:
        return f"/img/{name}"
    segment = FAULT_SEGMENTS[fault]
    if fault == "noai":
        if robots_form not in ROBOTS_FORMS:
            raise ValueError(f"unknown robots form {robots_form!r}")
        return f"/fault/{segment}/{robots_form}/{name}"
    return f"/fault/{segment}/{name}"


@dataclass(frozen=True)
class Route:
    """How the server answers a path: ``kind`` is ``"image"`` or a fault name."""

    kind: str
    name: str
    robots: str | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.name.rsplit(".", 1)[1]]


_SEGMENT_FAULTS = {segment: fault for fault, segment in FAULT_SEGMENTS.items()}


def resolve(path: str) -> Route | None:
    """Parse a URL path (query string ignored); ``None`` when it is not a sample-web path."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) == 3 and parts[:2] == ["", "img"] and _NAME.match(parts[2]):
        return Route("image", parts[2])
    if len(parts) < 4 or parts[:2] != ["", "fault"] or not _NAME.match(parts[-1]):
        return None
    fault = _SEGMENT_FAULTS.get(parts[2])
    if fault == "noai" and len(parts) == 5 and parts[3] in ROBOTS_FORMS:
        return Route(fault, parts[4], ROBOTS_FORMS[parts[3]])
    if fault is not None and fault != "noai" and len(parts) == 4:
        return Route(fault, parts[3])
    return None
