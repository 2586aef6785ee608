"""The store writer: one thread that commits work from the asyncio loop in batches.

Connections hand it units of work and await them; a unit's future resolves only after
the transaction holding it has committed, so the link can acknowledge then and not
before. Work waiting together shares one commit (group commit), which is what lets a
durable SQLite keep up with many analysers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine

log = structlog.get_logger("middleware.store")

T = TypeVar("T")
Work = Callable[[Connection], Any]


@dataclass(slots=True)
class _Job:
    work: Work
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class StoreWriter:
    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.commits = 0

    def start(self) -> None:
        self._thread.start()

    async def submit(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction; returns its value once that has committed."""
        return await self.enqueue(work)

    def enqueue(self, work: Callable[[Connection], T]) -> asyncio.Future[T]:
        """Queue ``work`` now, behind everything queued before it; the future resolves
        once its transaction has committed (or failed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Job] = [first]  # type: ignore[list-item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(batch)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(write=True)
                with conn.begin():
                    values = [job.work(conn) for job in batch]
        except Exception as exc:
            if len(batch) == 1:
                log.error("store write failed", error=repr(exc))
                batch[0].loop.call_soon_threadsafe(_resolve, batch[0].future, None, exc)
                return
            # One bad unit must not fail the others: take them one transaction each.
            for job in batch:
                self._commit([job])
            return
        self.commits += 1
        for job, value in zip(batch, values, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, value, None)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
