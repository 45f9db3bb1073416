"""Uploaded bytes -> RGB pixels, with the decoder limited to the formats training reads.

The bytes are decoded exactly as the runtime decodes bytes (``Image.open(...).convert("RGB")``,
which is what training does), so a served prediction equals ``visionkit predict``'s. The
differences are for safety: Pillow may only use the formats below (not, say, EPS, which
would call Ghostscript), and the declared sizes (each image's, and their sum over the request)
are checked before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .limits import bad_request, too_large, unsupported

#: Pillow format names for the runtime's IMAGE_SUFFIXES (PPM also reads .pgm)
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "PPM")
#: Content-Type values accepted for an image, raw or as a multipart part
CONTENT_TYPES = {
    "image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/bmp", "image/x-ms-bmp", "image/webp",
    "image/tiff", "image/x-portable-pixmap", "image/x-portable-graymap", "image/x-portable-anymap",
    "application/octet-stream",
}


@dataclass
class Upload:
    data: bytes
    name: str  # the part's file name, or "image <i>" for a raw body
    content_type: str


def media_type(header: Optional[str]) -> str:
    """``image/PNG; charset=x`` -> ``image/png``; no header counts as ``application/octet-stream``."""
    if not header:
        return "application/octet-stream"
    return header.split(";", 1)[0].strip().lower()


def check_type(content_type: str, what: str) -> None:
    if content_type not in CONTENT_TYPES:
        raise unsupported(f"{what}: Content-Type {content_type!r} is not an image type this server reads "
                          f"(PNG, JPEG, BMP, WebP, TIFF, PPM/PGM; or application/octet-stream)")


@contextlib.contextmanager
def _opened(upload: Upload) -> Iterator[Any]:
    """The upload as a lazy Pillow image (header read, no pixel decoded); decoding errors as 400/413."""
    from PIL import Image, UnidentifiedImageError

    if not upload.data:
        raise bad_request(f"{upload.name}: empty image")
    try:
        with Image.open(io.BytesIO(upload.data), formats=FORMATS) as img:
            yield img
    except Image.DecompressionBombError as exc:  # Pillow's own bound, should max_pixels exceed it
        raise too_large(f"{upload.name}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            detail = "not a PNG, JPEG, BMP, WebP, TIFF or PPM/PGM image"
        raise bad_request(f"{upload.name}: cannot decode image ({detail})") from None


def _check_size(upload: Upload, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise too_large(f"{upload.name}: image is {width}x{height} = {width * height:,} pixels; "
                        f"this server takes at most {max_pixels:,} (--max-megapixels)")


def measure(upload: Upload, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, so that a request's cost is known before any decoding;
    400 for bytes that are not an image, 413 for an image over ``max_pixels``."""
    with _opened(upload) as img:
        width, height = img.size
    _check_size(upload, width, height, max_pixels)
    return width, height


def decode(upload: Upload, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 RGB; 400 for bytes that are not an image, 413 for an image too large."""
    with _opened(upload) as img:
        _check_size(upload, *img.size, max_pixels)  # from the header: nothing decoded yet
        return np.asarray(img.convert("RGB"))


def check_request(sizes: Sequence[tuple[int, int]], max_request_pixels: int) -> int:
    """The request's decoded pixels; 413 over ``max_request_pixels``, before anything is decoded."""
    total = sum(w * h for w, h in sizes)
    if total > max_request_pixels:
        w, h = max(sizes, key=lambda s: s[0] * s[1])
        raise too_large(f"request of {len(sizes)} image(s) (largest {w}x{h}) decodes to {total:,} pixels; this "
                        f"server decodes at most {max_request_pixels:,} per request (--max-request-megapixels; "
                        f"Ray Serve: max_request_megapixels)")
    return total
