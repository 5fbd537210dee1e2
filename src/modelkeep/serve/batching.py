"""Opt-in request batching: concurrent requests merged into one ``predict`` and split back.

Requests for the same loaded version, method and columns wait up to ``wait`` seconds (or
until ``max_rows`` rows are queued), then run as one call on a worker thread; each gets
its own rows back, in order. When the merged call fails, each request is run on its own,
so an error stays with the request that caused it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from starlette.concurrency import run_in_threadpool


@dataclass
class _Item:
    X: Any
    rows: int
    future: asyncio.Future[Any]


class Batcher:
    """Merges concurrent predict calls (one per event loop)."""

    def __init__(self, max_rows: int, wait: float) -> None:
        self.max_rows = max_rows
        self.wait = wait
        self._queues: dict[tuple[Any, ...], list[_Item]] = {}

    async def submit(self, key: tuple[Any, ...], fn: Callable[[Any], Any], X: Any) -> Any:
        """``fn(X)``, possibly as part of a bigger call; ``key`` groups calls that may be merged."""
        rows = len(X)
        if rows >= self.max_rows:
            return await run_in_threadpool(fn, X)
        loop = asyncio.get_running_loop()
        item = _Item(X, rows, loop.create_future())
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = [item]
            loop.call_later(self.wait, lambda: self._flush(key, queue, fn))
        else:
            queue.append(item)
            if sum(i.rows for i in queue) >= self.max_rows:
                self._flush(key, queue, fn)
        return await item.future

    def _flush(self, key: tuple[Any, ...], queue: list[_Item], fn: Callable[[Any], Any]) -> None:
        if self._queues.get(key) is not queue:
            return  # already flushed
        del self._queues[key]
        asyncio.get_running_loop().create_task(self._run(queue, fn))

    async def _run(self, items: list[_Item], fn: Callable[[Any], Any]) -> None:
        if len(items) > 1:
            try:
                merged = (
                    pd.concat([i.X for i in items], ignore_index=True)
                    if isinstance(items[0].X, pd.DataFrame)
                    else (np.concatenate([i.X for i in items]))
                )
                out = await run_in_threadpool(fn, merged)
                if len(out) == len(merged):
                    start = 0
                    for i in items:
                        part = out.iloc[start : start + i.rows] if hasattr(out, "iloc") else out[start : start + i.rows]
                        i.future.set_result(part)
                        start += i.rows
                    return
            except Exception:
                pass  # run each on its own, so each gets its own error
        for i in items:
            try:
                i.future.set_result(await run_in_threadpool(fn, i.X))
            except Exception as exc:
                i.future.set_exception(exc)
