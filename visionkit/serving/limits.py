"""Bounds on what one request may cost, and the HTTP errors that enforce them.

A server facing the network must refuse input that would exhaust it before doing the work:
the body is counted while it is read, an image's dimensions are checked from its header before
its pixels are decoded, and the requests in flight are capped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    #: request body, multipart overhead included
    max_body_bytes: int = 16 * 1024 * 1024
    #: width x height of one image, read from its header (a 3 kB PNG can declare 50,000 x 50,000)
    max_pixels: int = 25_000_000
    #: images in one multipart request
    max_images: int = 16
    #: requests being read, decoded or run at once; beyond it: 503 with Retry-After
    max_pending: int = 64
    #: seconds to receive a request's body; a client that trickles it (or stalls) gets 408
    body_timeout_s: int = 30

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")

    @classmethod
    def from_units(cls, max_body_mb: float, max_megapixels: float, max_images: int, max_pending: int,
                   body_timeout_s: int) -> "Limits":
        """From the units people give (MiB, megapixels): ``visionkit serve``'s flags, the Ray Serve app's args."""
        for name, value in (("max_body_mb", max_body_mb), ("max_megapixels", max_megapixels)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        return cls(max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=int(max_megapixels * 1e6),
                   max_images=max_images, max_pending=max_pending, body_timeout_s=body_timeout_s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestError(Exception):
    """A bad request, answered as ``{"error": message, "status": status}``; never a traceback."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def too_large(message: str) -> RequestError:
    return RequestError(413, message)


def unsupported(message: str) -> RequestError:
    return RequestError(415, message)


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)
