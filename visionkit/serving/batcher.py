"""Micro-batching: single images from concurrent requests, run through the graph together.

One onnxruntime call on 8 images costs much less than 8 calls on one, so under load the first
image waits up to ``max_wait_s`` for others to join it. A lone request pays at most that wait.
Batches run one at a time: onnxruntime already spreads one call over the cores.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Optional, Sequence


class MicroBatcher:
    def __init__(self, run: Callable[[Sequence[Any]], list[Any]], max_batch: int, max_wait_s: float,
                 executor: Optional[Executor] = None):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.batches = 0
        self.items = 0
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Task] = None

    async def submit(self, item: Any) -> Any:
        """``run([item, ...])``'s answer for ``item``; its exception if the batch failed."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            # Created in the loop that serves requests (a Ray Serve replica has its own).
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._loop())
        future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # clients gone: skip
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as exc:  # every waiting request gets the error, the loop goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
