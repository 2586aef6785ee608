"""The store writer runs again a unit the database ended for another transaction's sake,
and only such a unit; work with a deadline waits for a lock only until then; a lock not
had in time is said as such (StoreBusy), once for a whole batch."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import psycopg
import pytest
from sqlalchemy import Connection, exc, text

from middleware.store import Store
from middleware.store.writer import TRIES, StoreBusy
from tests.test_ingest_integrity import write_lock


def _probe_table(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO probe (id) VALUES (1), (2)"))


def test_a_deadlocks_victim_is_run_again(store: Store, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no deadlock to end: a writer holds the whole database")
    _probe_table(store)
    tries: list[float] = []
    holds_2 = threading.Event()

    def work(conn: Connection) -> str:
        tries.append(time.monotonic())
        conn.execute(text("SELECT id FROM probe WHERE id = 2 FOR UPDATE"))
        holds_2.set()
        conn.execute(text("SELECT id FROM probe WHERE id = 1 FOR UPDATE"))
        return "kept"

    def other(url: str) -> None:
        # Another transaction takes the rows the other way round. Its deadlock_timeout
        # is the longer: the writer's transaction is the one PostgreSQL ends.
        with psycopg.connect(url) as conn:
            conn.execute("SET deadlock_timeout = '20s'")
            conn.execute("SELECT id FROM probe WHERE id = 1 FOR UPDATE")
            holding_1.set()
            assert holds_2.wait(20)
            time.sleep(0.2)  # the writer now waits for row 1
            conn.execute("SELECT id FROM probe WHERE id = 2 FOR UPDATE")
            time.sleep(0.3)
        # Leaving the block commits: the writer's next try goes through.

    holding_1 = threading.Event()
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    thread = threading.Thread(target=other, args=(url,))
    thread.start()
    try:
        assert holding_1.wait(20)
        assert asyncio.run(asyncio.wait_for(store.write(work), 60)) == "kept"
    finally:
        thread.join(30)
    # Run again, once or, when its first retry took row 2 before the other transaction
    # was woken to take it (a loaded machine), twice: never given up within TRIES.
    assert 2 <= len(tries) <= TRIES


def test_any_other_failure_is_given_at_once(store: Store) -> None:
    _probe_table(store)
    tries: list[int] = []

    def work(conn: Connection) -> None:
        tries.append(1)
        conn.execute(text("INSERT INTO probe (id) VALUES (1)"))  # taken

    with pytest.raises(exc.IntegrityError):
        asyncio.run(store.write(work))
    assert tries == [1]


def test_work_past_its_deadline_is_not_run_and_its_lock_wait_is_bounded(
    store: Store, database_url: str
) -> None:
    ran: list[int] = []

    async def late() -> None:
        await store.write_soon(lambda conn: ran.append(1), deadline=time.monotonic() - 1)

    with pytest.raises(StoreBusy):
        asyncio.run(late())
    assert ran == []  # its turn came after its deadline: not run at all

    async def waits() -> float:
        began = time.monotonic()
        with pytest.raises(StoreBusy):
            await store.write_soon(
                lambda conn: conn.execute(text("INSERT INTO messages (instrument) VALUES ('x')")),
                deadline=time.monotonic() + 1,
            )
        return time.monotonic() - began

    with write_lock(database_url):  # held by another process longer than the deadline
        waited = asyncio.run(waits())
    # The lock waited for until the deadline, not the store's lock timeout (10 s).
    assert 0.5 < waited < 5, waited


def test_a_batch_that_found_the_database_locked_fails_at_once_not_unit_by_unit(
    database_url: str,
) -> None:
    if database_url.startswith("postgresql"):
        # Its lock is per table and row: one unit of a batch may wait where the others would not.
        pytest.skip("on SQLite the write lock is the whole database's, taken before any unit")
    store = Store(database_url, lock_timeout=1.0)

    def insert(conn: Connection) -> None:
        conn.execute(text("INSERT INTO messages (instrument) VALUES ('x')"))

    async def batch() -> tuple[list[BaseException | None], float]:
        units = [store.write_soon(insert) for _ in range(3)]
        # The first waits the lock timeout, alone or with the others; those behind it
        # then come together in the next batch, or failed with it.
        with contextlib.suppress(StoreBusy):
            await units[0]
        began = time.monotonic()
        failed = await asyncio.gather(*units[1:], return_exceptions=True)
        took = time.monotonic() - began
        return [f if isinstance(f, BaseException) else None for f in failed], took

    try:
        with write_lock(database_url):
            failed, took = asyncio.run(batch())
    finally:
        store.close()
    assert all(isinstance(f, StoreBusy) for f in failed), failed
    assert isinstance(failed[0].__cause__, exc.OperationalError)
    # One lock timeout for the batch at most: unit by unit, it would be two or three.
    assert took < 1.9, took
