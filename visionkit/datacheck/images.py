"""Reading image files cheaply and in parallel: headers (format, size), a verify, a content hash.

``PIL.Image.open`` reads only the header: the format and the size, from the first bytes. That
finds a zero-byte file, a file that is not an image, and a size that disagrees with the
annotations, at a fraction of the cost of decoding. A file cut short (an interrupted copy or
download) keeps its header, so :func:`inspect` also reads the file's last bytes, where each
format ends in a known way (:func:`missing_end`): only a file whose end looks wrong is decoded,
and the decode decides (a file PIL decodes trains). It adds ``verify()`` (PNG: every chunk's
CRC, without decoding pixels) and a content hash, or a full decode when asked.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TypeVar

from PIL import Image, UnidentifiedImageError

from ..errors import DataError

T = TypeVar("T")
R = TypeVar("R")

_PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def threads() -> int:
    """File reads wait on the disk (or a network filesystem) more than on the CPU: more threads
    than cores pay off, up to a point."""
    return min(32, 4 * (os.cpu_count() or 1))


#: per item, below which a thread pool only adds overhead (files in the page cache: PIL's header
#: read is ~50 us of Python under the GIL; 8 threads made 2000 headers 4x slower than a loop)
INLINE_BELOW_S = 0.0005
PROBE = 32


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: Optional[int] = None) -> list[R]:
    """``[fn(x) for x in items]``, in order; the first exception (in item order) propagates.

    The first items run inline and are timed: when they are quick (local, cached files) the rest
    does too; when they wait on the disk or a network filesystem, the rest goes to a thread pool,
    where the waits overlap."""
    items = list(items)
    tic = time.perf_counter()
    head = [fn(x) for x in items[:PROBE]]
    if len(items) <= PROBE or (time.perf_counter() - tic) / PROBE < INLINE_BELOW_S:
        return head + [fn(x) for x in items[PROBE:]]
    with ThreadPoolExecutor(max_workers=workers or threads()) as pool:
        return head + list(pool.map(fn, items[PROBE:], chunksize=16))


def _problem(path: Path, exc: BaseException) -> str:
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file (0 bytes), not an image"
    except OSError:
        return f"{path}: image file not found"
    if isinstance(exc, UnidentifiedImageError):  # its message names the open file object, not the path
        return f"{path}: cannot decode image (UnidentifiedImageError: not in a format PIL reads)"
    return f"{path}: cannot decode image ({type(exc).__name__}: {exc})"


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone; DataError naming the file when there is none."""
    try:
        with Image.open(path) as img:
            return img.size
    except _PIL_ERRORS as exc:
        raise DataError(_problem(Path(path), exc)) from None


def header_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    return parallel_map(header_size, list(paths))


#: bytes read from a file's end: a JPEG's end marker may be followed by padding or a camera
#: maker's trailer, which libjpeg (and so PIL) ignores
TAIL = 4096
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TIFF_STRIPS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def missing_end(fh, img: Image.Image, size: int) -> Optional[str]:
    """What the end of the open file ``fh`` (``size`` bytes) lacks for ``img``'s format, as the
    rest of a sentence ("ends without ..."); None when it ends as the format does, or for a format
    without a cheap test (the header is all it gets). A JPEG's FFD9 cannot occur inside its
    entropy-coded data (an FF there is followed by 00 or a restart marker), so one in the last
    4 KiB marks the end of the scan: a file cut inside the scan lacks it."""
    where = fh.tell()  # where PIL left the file: its later reads (verify) start there
    try:
        return _missing_end(fh, img, size)
    finally:
        fh.seek(where)


def _missing_end(fh, img: Image.Image, size: int) -> Optional[str]:
    fmt = img.format
    if fmt in ("JPEG", "MPO", "PNG", "GIF"):
        fh.seek(max(0, size - TAIL))
        tail = fh.read(TAIL)
        if fmt == "PNG":
            return None if _PNG_IEND in tail else "ends without its IEND chunk"
        if fmt == "GIF":
            return None if tail.rstrip(b"\0").endswith(b";") else "ends without its trailer byte (3B)"
        return None if _JPEG_EOI in tail else "ends without its end-of-image marker (FFD9)"
    if fmt == "BMP":
        fh.seek(2)
        declared = int.from_bytes(fh.read(4), "little")  # bfSize; 0 in some writers' files
        return f"is shorter than the {declared} bytes its header gives" if declared > size else None
    if fmt == "TIFF":
        tags = getattr(img, "tag_v2", {})
        for offsets_tag, counts_tag in _TIFF_STRIPS:
            offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
            if offsets is not None and counts is not None:
                offsets = offsets if isinstance(offsets, tuple) else (offsets,)
                counts = counts if isinstance(counts, tuple) else (counts,)
                end = max((o + c for o, c in zip(offsets, counts)), default=0)
                return f"is shorter than the {end} bytes its image data needs" if end > size else None
    return None  # WebP: PIL's open decodes the whole file already; PPM and others: the header only


@dataclass
class ImageFacts:
    path: Path
    size: Optional[tuple[int, int]] = None  # (width, height); None when unreadable
    format: Optional[str] = None
    digest: Optional[str] = None  # sha1 of the file's bytes, when hashed
    error: Optional[str] = None  # one line, naming the file


def _decodes(fh) -> Optional[BaseException]:
    fh.seek(0)
    try:
        with Image.open(fh) as img:
            img.load()
    except _PIL_ERRORS as exc:
        return exc
    return None


def inspect(path: Path, verify: bool = False, digest: bool = False, decode: bool = False) -> ImageFacts:
    """The header and the file's end always (see :func:`missing_end`); ``verify``: PIL's verify
    (PNG CRCs) too; ``decode``: every pixel; ``digest``: the sha1 of the bytes (exact
    duplicates). Never raises for a bad file."""
    facts = ImageFacts(Path(path))
    try:
        with open(path, "rb") as fh:
            if digest:
                facts.digest = hashlib.file_digest(fh, "sha1").hexdigest() if hasattr(hashlib, "file_digest") \
                    else hashlib.sha1(fh.read()).hexdigest()
                fh.seek(0)
            size = os.fstat(fh.fileno()).st_size
            with Image.open(fh) as img:
                facts.size, facts.format = img.size, img.format
                if decode:
                    img.load()
                    return facts
                lack = missing_end(fh, img, size)
                if lack is None:
                    if verify:
                        img.verify()
                    return facts
            # The end looks wrong: the decode decides (data past the tail read, a reader that
            # stops before the format's end marker: such a file trains).
            failure = _decodes(fh)
            if failure is not None:
                facts.error = (f"{facts.path}: truncated image: the {facts.format} file ({size} bytes) {lack} "
                               f"and does not decode ({failure})")
            elif verify:
                fh.seek(0)
                with Image.open(fh) as img:
                    img.verify()
    except _PIL_ERRORS as exc:
        facts.error = _problem(Path(path), exc)
    return facts


def inspect_all(paths: Iterable[Path], **kw) -> list[ImageFacts]:
    return parallel_map(lambda p: inspect(p, **kw), list(paths))
