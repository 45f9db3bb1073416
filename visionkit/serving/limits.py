"""Bounds on what one request may cost, and the HTTP errors that enforce them.

A server facing the network must refuse input that would exhaust it before doing the work:
the body is counted while it is read, an image's dimensions are checked from its header before
its pixels are decoded, a request's images are summed the same way against a per-request pixel
budget (a 9 kB PNG can decode to 75 MB), the requests in flight are capped, and so are the
decoded pixels in flight across requests (:class:`PixelGate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator

#: how many requests' worth of decoded pixels (``max_request_pixels``) may be held at once across
#: all requests: one being decoded while another runs through the graph or waits for its batch.
REQUESTS_OF_PIXELS_IN_FLIGHT = 2


@dataclass(frozen=True)
class Limits:
    #: request body, multipart overhead included
    max_body_bytes: int = 16 * 1024 * 1024
    #: width x height of one image, read from its header (a 3 kB PNG can declare 50,000 x 50,000)
    max_pixels: int = 25_000_000
    #: images in one multipart request
    max_images: int = 16
    #: width x height summed over a request's images, from their headers, before any is decoded.
    #: A decoded pixel costs 3 bytes as RGB, and about 10 at peak on the way (Pillow's 4-byte
    #: buffer, the RGB copy, the resize), 15 for a model that takes the full-size image (float32
    #: CxHxW): 40 MP is 120 MB kept and 400-600 MB at peak per request, while 16 full-HD frames
    #: (33 MP) or one image at max_pixels still fit. Without it, 16 images at max_pixels (a
    #: 150 kB body) decode to 1.2 GB of RGB alone.
    max_request_pixels: int = 40_000_000
    #: requests being read, decoded or run at once; beyond it: 503 with Retry-After
    max_pending: int = 64
    #: seconds to receive a request's body; a client that trickles it (or stalls) gets 408
    body_timeout_s: int = 30

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.max_request_pixels < self.max_pixels:
            raise ValueError(f"max_request_pixels {self.max_request_pixels:,} is below max_pixels {self.max_pixels:,}: "
                             f"a request could not hold one image of the largest size (--max-request-megapixels "
                             f"must be at least --max-megapixels)")

    @property
    def max_pixels_in_flight(self) -> int:
        """Decoded pixels held at once across all requests (:class:`PixelGate`'s capacity)."""
        return REQUESTS_OF_PIXELS_IN_FLIGHT * self.max_request_pixels

    @classmethod
    def from_units(cls, max_body_mb: float, max_megapixels: float, max_images: int, max_pending: int,
                   body_timeout_s: int, max_request_megapixels: float = 40.0) -> "Limits":
        """From the units people give (MiB, megapixels): ``visionkit serve``'s flags, the Ray Serve app's args."""
        for name, value in (("max_body_mb", max_body_mb), ("max_megapixels", max_megapixels),
                            ("max_request_megapixels", max_request_megapixels)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        return cls(max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=int(max_megapixels * 1e6),
                   max_images=max_images, max_request_pixels=int(max_request_megapixels * 1e6),
                   max_pending=max_pending, body_timeout_s=body_timeout_s)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_pixels_in_flight": self.max_pixels_in_flight}


class PixelGate:
    """A first-come-first-served budget of decoded pixels shared by all requests.

    ``max_pending`` caps the requests in flight, but each may hold up to ``max_request_pixels``
    decoded (waiting for the decoding threads, the batcher or the graph), so memory would grow with
    the request count. A request takes its pixels (known from the headers) before decoding and
    gives them back when its answer is ready; small images pass many at a time, large ones queue.
    First come first served: a large request is not starved by a stream of small ones.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity: expected a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = max(0, min(pixels, self.capacity))  # more could never be granted; limits refuse it first
        if self._waiters or self.in_use + pixels > self.capacity:
            entry = (pixels, asyncio.get_running_loop().create_future())
            self._waiters.append(entry)
            try:
                await entry[1]
            except BaseException:  # cancelled (client gone, timeout): leave the queue, or hand back a grant
                if entry[1].done() and not entry[1].cancelled():
                    self._release(pixels)
                else:
                    with contextlib.suppress(ValueError):  # _wake may have dropped it already
                        self._waiters.remove(entry)
                    self._wake()
                raise
        else:
            self.in_use += pixels
        try:
            yield
        finally:
            self._release(pixels)

    def _release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            pixels, future = self._waiters[0]
            if future.done():  # cancelled, its task not yet resumed: it will not take a grant
                self._waiters.popleft()
                continue
            if self.in_use + pixels > self.capacity:
                break
            self._waiters.popleft()
            self.in_use += pixels  # granted here, so that no later request overtakes it
            future.set_result(None)


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
