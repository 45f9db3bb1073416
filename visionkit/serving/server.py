"""``visionkit serve``: the Starlette app on uvicorn, one process, one model.

The socket is bound here, before uvicorn starts, so ``--port 0`` can print the port the system
chose (tests use it: no race for a "free" port) and a port in use is a one-line error.
"""

from __future__ import annotations

import errno
import socket
from typing import Optional

from ..errors import UserError
from .limits import Limits


def require_packages() -> None:
    """The ``serve`` extra's packages, checked up front: a one-line error, not a failure per request."""
    try:
        import starlette.formparsers as formparsers
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(f"serve: the {exc.name or exc} package is missing; pip install 'visionkit[serve]'") from None
    if getattr(formparsers, "multipart", None) is None:
        raise UserError("serve: the python-multipart package is missing; pip install 'visionkit[serve]'")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        if isinstance(exc, OverflowError):
            why = "a port is 0-65535"
        else:
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise UserError(f"--host {host} --port {port}: cannot listen there ({why})") from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, threads: Optional[int] = None,
          workers: Optional[int] = None, max_batch: int = 1, batch_wait_ms: float = 2.0,
          limits: Optional[Limits] = None, log_level: str = "warning") -> None:
    import uvicorn

    from .app import create_app
    from .service import InferenceService

    service = InferenceService.load(model, threads=threads, limits=limits, max_batch=max_batch,
                                    batch_wait_ms=batch_wait_ms, workers=workers)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    # limit_concurrency: a backstop on open connections (uvicorn answers a plain 503 past it);
    # the JSON 503 of max_pending comes first for requests that reach /predict.
    config = uvicorn.Config(create_app(service), log_level=log_level, access_log=log_level in ("info", "debug"),
                            timeout_keep_alive=5, server_header=False, lifespan="on",
                            limit_concurrency=max(256, 4 * service.limits.max_pending))
    print(f"[visionkit] serving {service.model.path.name} ({service.model.metadata.summary()}) on "
          f"http://{shown}:{sock.getsockname()[1]}  (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
