"""Durable storage: SQLite by default, PostgreSQL by URL. The modules beside this one
are the only way the rest of the code reads or writes it, each for one job: ingest,
release (decisions and holds), qc_state, qc_records, orders, audit, reading."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine

from middleware.store.database import migrate, open_engine
from middleware.store.writer import StoreWriter

T = TypeVar("T")


class Store:
    """The database of one daemon: migrated on open, written by one committing thread."""

    def __init__(self, url: str, lock_timeout: float = 10.0) -> None:
        self.url = url
        self.engine: Engine = open_engine(url, lock_timeout)
        migrate(self.engine)
        self.writer = StoreWriter(self.engine, lock_timeout=lock_timeout)
        self.writer.start()

    async def write(self, work: Callable[[Connection], T]) -> T:
        return await self.writer.submit(work)

    def write_soon(
        self, work: Callable[[Connection], T], deadline: float | None = None
    ) -> asyncio.Future[T]:
        """Queue ``work`` at once, in order with later writes, without waiting for it;
        ``deadline`` as :meth:`StoreWriter.enqueue` takes it."""
        return self.writer.enqueue(work, deadline)

    def read(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return work(conn)

    async def read_async(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self.read, work)

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()


__all__ = ["Store"]
