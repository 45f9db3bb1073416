"""``InferenceService``: one model, one onnxruntime session, shared by every request.

onnxruntime's ``InferenceSession.run`` may be called from several threads at once, and the
runtime's pre/post-processing keeps no state, so the session is loaded once and requests run
on a small thread pool (decoding and resizing release the GIL). The event loop only moves
bytes. A request's pixels are counted from the image headers first: over ``max_request_pixels``
it is refused unread, and across requests at most ``max_pixels_in_flight`` decoded pixels are
held at once (:class:`~visionkit.serving.limits.PixelGate`), so memory does not grow with the
number of large requests in flight. With ``max_batch > 1`` images from concurrent requests
share graph runs (:class:`~visionkit.serving.batcher.MicroBatcher`).
"""

from __future__ import annotations

import asyncio
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Optional, Sequence

from ..errors import UserError
from ..runtime import Model, OptionError
from ..runtime.options import names
from ..runtime.preprocess import Prepared
from .batcher import MicroBatcher
from .limits import Limits, PixelGate, RequestError
from .uploads import Upload, check_request, decode, measure


class InferenceService:
    def __init__(self, model: Model, limits: Optional[Limits] = None, max_batch: int = 1,
                 batch_wait_ms: float = 2.0, workers: Optional[int] = None):
        if max_batch < 1 or not (math.isfinite(batch_wait_ms) and batch_wait_ms >= 0) or (workers is not None and workers < 1):
            raise UserError(f"serve: expected max_batch >= 1, batch_wait_ms >= 0 and workers >= 1, got {max_batch}, "
                            f"{batch_wait_ms} and {workers}")
        self.model = model
        self.limits = limits or Limits()
        self.max_batch = int(max_batch)
        self.batch_wait_ms = float(batch_wait_ms)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="visionkit-serve")
        self.batcher = (MicroBatcher(self._run_graph, self.max_batch, self.batch_wait_ms / 1000.0, self.executor)
                        if self.max_batch > 1 else None)
        self.gate = PixelGate(self.limits.max_pixels_in_flight)
        self.pending = 0
        self.counts = {"requests": 0, "images": 0, "rejected": 0}

    @classmethod
    def load(cls, path: str, threads: Optional[int] = None, **kwargs: Any) -> "InferenceService":
        """``threads``: onnxruntime's intra-op threads (default: all cores)."""
        return cls(Model.load(path, threads=threads), **kwargs)

    # --- admission ------------------------------------------------------------------------------
    def admit(self) -> None:
        """Counts a request in; 503 when ``max_pending`` are already in flight. Pair with :meth:`release`."""
        if self.pending >= self.limits.max_pending:
            self.counts["rejected"] += 1
            raise RequestError(503, f"server busy: {self.pending} requests in flight (limit "
                                    f"{self.limits.max_pending}); retry shortly", {"Retry-After": "1"})
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    # --- options --------------------------------------------------------------------------------
    def options(self, query: dict[str, str]) -> dict[str, Any]:
        """The query parameters as the task's options (its runtime declares them), every one
        resolved. Anything else is refused: a typo such as ``topk=3`` would otherwise be ignored."""
        declared = {o.name: o for o in self.model.options}
        given: dict[str, Any] = {}
        for key, text in query.items():
            if key not in declared:
                raise RequestError(400, f"unknown query parameter {key!r}; this {self.model.metadata.task} model's "
                                        f"/predict takes {names(self.model.options)}")
            try:
                given[key] = declared[key].parse(text)
            except OptionError as exc:
                raise RequestError(400, f"{key}={text!r}: {exc}") from None
        return self.model.resolve(given)

    def describe_options(self) -> dict[str, Any]:
        """``GET /options``: what a client (or the demo page) may put in /predict's query string."""
        return {"task": self.model.metadata.task, "options": [o.to_json() for o in self.model.options]}

    # --- the work -------------------------------------------------------------------------------
    def _measure(self, uploads: Sequence[Upload]) -> int:
        """The request's decoded pixels, from the headers only; 413 before any decoding if too many."""
        return check_request([measure(u, self.limits.max_pixels) for u in uploads], self.limits.max_request_pixels)

    def _prepare(self, uploads: Sequence[Upload]) -> list[Prepared]:
        pixels = [decode(u, self.limits.max_pixels) for u in uploads]
        try:
            prepared = self.model.preprocess(pixels)
        except UserError as exc:  # e.g. a fixed-size graph given another size: the client's image
            raise RequestError(400, str(exc).splitlines()[0]) from None
        for item, upload in zip(prepared, uploads):
            item.name = upload.name
        return prepared

    def _run_graph(self, prepared: Sequence[Prepared]) -> list[dict]:
        return self.model.outputs_per_image(prepared, self.max_batch)

    def _finish(self, prepared: Sequence[Prepared], outputs: Sequence[dict], options: dict[str, Any]) -> list[dict]:
        return [self.model.task.to_json(r) for r in self.model.postprocess(outputs, prepared, options)]

    async def predict(self, uploads: Sequence[Upload], options: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-able result per upload (the task runtime's ``to_json``: e.g. a segmentation
        mask as base64 PNG under ``mask_png``); ``options``: the task's, by name."""
        loop = asyncio.get_running_loop()
        options = self.model.resolve(options)  # defaults filled in (a no-op for :meth:`options`' answer)
        uploads = list(uploads)
        pixels = await loop.run_in_executor(self.executor, self._measure, uploads)
        async with self.gate.hold(pixels):  # the decoded images live from here to the answer
            prepared = await loop.run_in_executor(self.executor, self._prepare, uploads)
            if self.batcher is not None:
                outputs = await asyncio.gather(*(self.batcher.submit(p) for p in prepared))
            else:
                outputs = await loop.run_in_executor(self.executor, self._run_graph, prepared)
            results = await loop.run_in_executor(self.executor, self._finish, prepared, outputs, options)
            del prepared, outputs  # freed before their pixels are handed back
        self.counts["requests"] += 1
        self.counts["images"] += len(results)
        return results

    # --- description ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the model; no training-side paths (data, run dir)."""
        meta = asdict(self.model.metadata)
        meta.pop("data", None)
        source = meta.pop("source", {}) or {}
        meta["source"] = {k: v for k, v in source.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        server = {"limits": self.limits.to_json(), "max_batch": self.max_batch, "batch_wait_ms": self.batch_wait_ms,
                  "workers": self.workers, "providers": self.model.session.get_providers()}
        return {"model": self.model.path.name, "summary": self.model.metadata.summary(), "metadata": meta,
                "options": self.describe_options()["options"], "server": server}

    def stats(self) -> dict[str, Any]:
        out = dict(self.counts, pending=self.pending, pixels_in_flight=self.gate.in_use)
        if self.batcher is not None:
            out.update(batches=self.batcher.batches, batched_images=self.batcher.items)
        return out

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
