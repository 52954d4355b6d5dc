"""The image formats Winnow decodes, and the file extensions that name them: one list for the
image fetched from a URL (identified by its bytes) and the image member of a pool's tar (picked
by its extension), so an image one path decodes is never missing on the other.

The list is Pillow's: every format its installed plugins can decode (AVIF where the Pillow build
has it), without the stub formats that need a handler from elsewhere (BUFR, GRIB, HDF5, WMF),
MPEG (identified, never decoded) and EPS (decoded only through Ghostscript, a program Winnow
does not run on fetched data).
"""

from __future__ import annotations

from PIL import Image, ImageFile

#: Formats Pillow identifies but does not decode on its own.
_NOT_DECODED = frozenset({"MPEG", "EPS"})


def _decoded_formats() -> frozenset[str]:
    Image.init()
    return frozenset(
        name
        for name, (factory, _) in Image.OPEN.items()
        if name not in _NOT_DECODED
        and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    )


#: Pillow's names of the formats Winnow decodes (`Image.open(..., formats=IMAGE_FORMATS)`).
IMAGE_FORMATS: tuple[str, ...] = tuple(sorted(_decoded_formats()))
#: The file extensions of those formats, lower case without the dot (`jpg`, `avif`, `tiff`).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ext.lstrip(".").lower() for ext, name in Image.registered_extensions().items() if name in IMAGE_FORMATS
)
