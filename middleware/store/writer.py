"""The store writer: one thread that commits work from the asyncio loop in batches.

Connections hand it units of work and await them; a unit's future resolves only after
the transaction holding it has committed, so the link can acknowledge then and not
before. Work waiting together shares one commit (group commit), which is what lets a
durable SQLite keep up with many analysers.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine

from middleware.store import notices
from middleware.store.notices import Notice

log = structlog.get_logger("middleware.store")

T = TypeVar("T")
Work = Callable[[Connection], Any]


@dataclass(slots=True)
class _Job:
    work: Work
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None
    """``time.monotonic()`` after which the work is not worth committing (its analyser
    has stopped waiting for the reply); None for work that waits as long as it takes."""


class StoreBusy(Exception):
    """Work not committed: the database was locked by another (a backup, another daemon, a
    person's query) for longer than the work could wait, its deadline or the lock timeout.
    Nothing of it was written; the same work may be tried again."""


def lock_not_had(exc: BaseException) -> bool:
    """Whether ``exc`` says a lock was not had in time: PostgreSQL's lock_not_available
    (the engine's ``lock_timeout``), SQLite's SQLITE_BUSY (its busy timeout)."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) == "55P03":
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


_STOP = object()

#: PostgreSQL's codes for a transaction it ended so that another could go on (chosen as
#: a deadlock's victim, or a serialization failure): the same work again succeeds.
_TRY_AGAIN = frozenset({"40P01", "40001"})
#: How many times in all a unit ended so is run before its failure is given.
TRIES = 3


def _try_again(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) in _TRY_AGAIN


@dataclass(frozen=True, slots=True)
class Committed:
    """One transaction of the writer, once committed: what it told, and how long it took
    from its start to the end of its commit."""

    notices: Sequence[Notice]
    seconds: float
    units: int


#: Called on the event loop's thread after each commit; it must not block.
CommitListener = Callable[[Committed], None]


class StoreWriter:
    def __init__(self, engine: Engine, max_batch: int = 256, lock_timeout: float = 10.0) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.lock_timeout = lock_timeout
        """How long a transaction waits for a lock (the engine's setting), at most."""
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.commits = 0
        self.listeners: list[CommitListener] = []
        self.busy_since: float | None = None
        """When (``time.monotonic``) the batch being committed was taken off the queue;
        None while the writer waits for work. Written by the writer thread alone, read
        lock-free by :meth:`stuck`."""
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    async def submit(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction; returns its value once that has committed."""
        return await self.enqueue(work)

    def enqueue(
        self, work: Callable[[Connection], T], deadline: float | None = None
    ) -> asyncio.Future[T]:
        """Queue ``work`` now, behind everything queued before it; the future resolves
        once its transaction has committed (or failed). With a ``deadline``
        (``time.monotonic()``) its transaction waits for a lock only until then, and it
        fails with :class:`StoreBusy` if its turn comes after."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop, deadline))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop."""
        self._closed = True
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
            # Per batch, not per unit: the health signal costs nothing on the hot path.
            self.busy_since = time.monotonic()
            try:
                self._commit(batch)
            finally:
                self.busy_since = None

    def stuck(self, now: float, limit: float) -> str | None:
        """Why the writer is not taking work, None while it is: a batch in hand for longer
        than ``limit`` seconds (everything queued behind it waits as long), or the thread
        gone before :meth:`close`. ``now`` is ``time.monotonic()``; any thread may ask."""
        since = self.busy_since
        if since is not None and now - since > limit:
            return f"store writer busy with one batch for {now - since:.0f} s"
        if self._thread.ident is not None and not self._thread.is_alive() and not self._closed:
            return "store writer thread ended"
        return None

    def _commit(self, batch: list[_Job], tries: int = TRIES) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        late = [job for job in batch if job.deadline is not None and job.deadline <= now]
        if late:
            log.warning("store write not started before its deadline: the database is busy",
                        units=len(late))  # fmt: skip
            for job in late:
                error = StoreBusy("the database stayed busy past the time the reply could wait")
                job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
            batch = [job for job in batch if job not in late]
            if not batch:
                return
        deadlines = [job.deadline for job in batch if job.deadline is not None]
        wait = min([self.lock_timeout, *(d - now for d in deadlines)])
        running = False
        try:
            with self.engine.connect() as conn:
                conn.execution_options(write=True)
                if wait < self.lock_timeout:
                    # No longer than the most pressed of the batch can wait.
                    _limit_lock_wait(conn, wait)
                try:
                    with conn.begin():
                        if wait < self.lock_timeout:
                            _limit_lock_wait(conn, wait)
                        notices.begin(conn)
                        running = True
                        values = [job.work(conn) for job in batch]
                finally:
                    if wait < self.lock_timeout:
                        _limit_lock_wait(conn, self.lock_timeout)
                told = notices.take(conn)
        except Exception as exc:
            if len(batch) == 1 and tries > 1 and _try_again(exc):
                # A message NAKed for it would come again; a person's act would fail.
                log.warning("store write ended by the database for another; again",
                            error=repr(exc))  # fmt: skip
                self._commit(batch, tries - 1)
                return
            busy = lock_not_had(exc)
            if busy and (len(batch) == 1 or (not running and wait >= self.lock_timeout)):
                # Before any unit ran, the lock was waited for as long as any of them may
                # (no deadline cut it short): taken one by one, each would wait as long again.
                log.warning("store write not done: the database is busy", units=len(batch),
                            error=repr(exc))  # fmt: skip
                for job in batch:
                    error = StoreBusy(f"the database stayed locked past {wait:.1f} s")
                    error.__cause__ = exc
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
                return
            if len(batch) == 1:
                log.error("store write failed", error=repr(exc))
                batch[0].loop.call_soon_threadsafe(_resolve, batch[0].future, None, exc)
                return
            # One bad unit must not fail the others: take them one transaction each.
            for job in batch:
                self._commit([job])
            return
        self.commits += 1
        if self.listeners:
            committed = Committed(told, time.perf_counter() - started, len(batch))
            for listener in self.listeners:
                batch[0].loop.call_soon_threadsafe(_tell, listener, committed)
        for job, value in zip(batch, values, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, value, None)


def _limit_lock_wait(conn: Connection, seconds: float) -> None:
    """How long this connection's next lock waits: SQLite's busy timeout is set outside
    its transaction (it applies to the BEGIN IMMEDIATE), PostgreSQL's lock timeout inside
    it, for it alone; each call does what its database takes at that point."""
    milliseconds = max(1, int(seconds * 1000))
    if conn.dialect.name == "sqlite":
        if not conn.in_transaction():
            raw = conn.connection.dbapi_connection
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={milliseconds}")
    elif conn.in_transaction():
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


def _tell(listener: CommitListener, committed: Committed) -> None:
    try:
        listener(committed)
    except Exception:
        # Whoever listens (events, metrics) must never stop what the store does.
        log.exception("commit listener failed")
