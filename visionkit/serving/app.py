"""The HTTP routes, as one Starlette application used by ``visionkit serve`` and Ray Serve.

    GET  /           a page to try the model in a browser (visionkit.serving.page)
    GET  /health     {"status": "ok", ...}: the model is loaded and answering
    GET  /metadata   task, classes, pre-processing, limits
    GET  /options    {"task", "options": [{name, type, min, max, choices, default, help}]}: the query
                     parameters /predict takes, as the model's task runtime declares them (the page's form)
    POST /predict    an image as the raw body (Content-Type image/png, image/jpeg, ...,
                     or application/octet-stream), or one or more files as multipart/form-data;
                     the query string: the task's options (GET /options), e.g. ?top_k=3
                     -> {"predictions": [one result per image, as `visionkit predict` writes it]}

Every error is JSON, ``{"error": "...", "status": N}``: 400 undecodable image or bad parameter,
404/405 unknown route, 408 body too slow, 413 body, image or request's total pixels too large (read
from the headers, before decoding), 415 not an image type, 503 busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from . import page
from .limits import RequestError, bad_request, too_large
from .service import InferenceService
from .uploads import Upload, check_type, media_type

log = logging.getLogger("visionkit.serving")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


#: a body over the limit but under this many times it is read to its end (and dropped) before
#: the 413: a client that sends its whole body before reading (urllib, requests) then gets the
#: answer instead of a reset connection. Larger ones, or with ``Expect: 100-continue`` (curl's
#: large uploads), are answered at once.
DRAIN_FACTOR = 4


async def _reject(request: Request, limit: int, message: str, read: int = 0) -> None:
    if "100-continue" not in request.headers.get("expect", "").lower():
        try:
            async for chunk in request.stream():
                read += len(chunk)
                if read > DRAIN_FACTOR * limit:
                    break
        except RuntimeError:
            pass  # the chunk over the limit was the body's last: nothing left to drain
    raise too_large(message)


async def bounded_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body, chunk by chunk; 413 as soon as it passes ``limit`` (Content-Length or not)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise bad_request(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            message = f"request body of {size:,} bytes; this server takes at most {limit:,}"
            if size > DRAIN_FACTOR * limit:
                raise too_large(message)
            await _reject(request, limit, message)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            await _reject(request, limit, f"request body over {limit:,} bytes; this server takes at most {limit:,}",
                          seen)
        yield chunk


async def read_uploads(request: Request, service: InferenceService) -> list[Upload]:
    limits = service.limits
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        parser = MultiPartParser(request.headers, bounded_stream(request, limits.max_body_bytes),
                                 max_files=limits.max_images, max_fields=16, max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if "too many files" in exc.message.lower():
                raise too_large(f"more than {limits.max_images} images in one request") from None
            raise bad_request(f"malformed multipart body: {exc.message}") from None
        try:
            uploads = []
            for field, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    continue  # plain fields: options go in the query string
                name = (value.filename or field)[:255]
                part_type = media_type(value.content_type)
                check_type(part_type, f"part {name!r}")
                uploads.append(Upload(await value.read(), name, part_type))
        finally:
            await form.close()
        if not uploads:
            raise bad_request("multipart body without a file part; send the image as a file, e.g. "
                              "curl -F image=@photo.jpg")
        return uploads
    check_type(kind, "request body")
    body = b"".join([chunk async for chunk in bounded_stream(request, limits.max_body_bytes)])
    if not body:
        raise bad_request("empty request body; send an image (curl --data-binary @photo.jpg "
                          "-H 'Content-Type: image/jpeg')")
    return [Upload(body, "image 0", kind)]


def create_app(service: InferenceService) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": service.model.path.name, "task": service.model.metadata.task})

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse({**service.describe(), "stats": service.stats()})

    async def demo_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page.HTML, headers=page.HEADERS)

    async def options(request: Request) -> JSONResponse:
        return JSONResponse(service.describe_options())

    async def predict(request: Request) -> JSONResponse:
        service.admit()
        try:
            options = service.options(dict(request.query_params))
            try:
                uploads = await asyncio.wait_for(read_uploads(request, service), service.limits.body_timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(408, f"request body not received within {service.limits.body_timeout_s} s") from None
            results = await service.predict(uploads, options)
        finally:
            service.release()
        return JSONResponse({"predictions": results})

    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own: unknown route (404), wrong method (405)
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error answering %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.close()

    return Starlette(
        routes=[Route("/", demo_page, methods=["GET"]), Route("/health", health, methods=["GET"]),
                Route("/metadata", metadata, methods=["GET"]), Route("/options", options, methods=["GET"]),
                Route("/predict", predict, methods=["POST"])],
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
