"""A daemon task never stops silently: it is logged, under what it serves, and started again."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, text

from middleware.daemon import _keep_running
from middleware.transport.reconnect import Backoff


async def _kept_running(
    run: Callable[[], Awaitable[None]],
    ready: asyncio.Event,
    *,
    within: float = 2,
    settle: float = 0.0,
    **about: str,
) -> tuple[list[dict[str, Any]], asyncio.Task[None]]:
    """``run`` kept running until ``ready`` is set (within ``within`` s) and ``settle`` s
    more, then cancelled: what was logged meanwhile, and the task."""
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(
            _keep_running(run, Backoff(initial=0.01, maximum=0.02, jitter=0), **about)
        )
        await asyncio.wait_for(ready.wait(), within)
        await asyncio.sleep(settle)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return logs, task


async def test_a_failing_instrument_task_is_logged_and_restarted_with_backoff() -> None:
    calls = 0
    third_run = asyncio.Event()

    async def run() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError(f"serial port vanished ({calls})")
        third_run.set()
        await asyncio.Event().wait()  # the third run serves until cancelled

    logs, task = await _kept_running(run, third_run, instrument="an1")
    assert task.cancelled()
    restarts = [entry for entry in logs if entry["event"] == "task restarts"]
    assert [r["reason"] for r in restarts] == [
        "RuntimeError('serial port vanished (1)')",
        "RuntimeError('serial port vanished (2)')",
    ]
    assert [r["retry_in"] for r in restarts] == [0.01, 0.02]
    assert all(r["instrument"] == "an1" for r in restarts)


async def test_a_task_other_than_an_instruments_is_logged_as_what_it_is() -> None:
    ran = asyncio.Event()

    async def run() -> None:
        if ran.is_set():
            await asyncio.Event().wait()
        ran.set()
        raise ConnectionError("store gone")

    logs, _ = await _kept_running(run, ran, settle=0.05, task="lis sender")
    [failed] = [entry for entry in logs if entry["event"] == "task failed"]
    assert failed["task"] == "lis sender" and "instrument" not in failed


async def test_a_task_the_database_stops_is_said_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another process's lock, held
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    tries = 0
    again = asyncio.Event()

    async def run() -> None:
        nonlocal tries
        tries += 1
        if tries > 1:
            again.set()
            await asyncio.Event().wait()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))

    try:
        logs, _ = await _kept_running(run, again, within=5, task="lis sender")
    finally:
        holder.close()
        engine.dispose()
    [stopped] = [entry for entry in logs if entry["event"] == "task stopped by the database"]
    assert stopped["log_level"] == "warning" and "locked" in stopped["error"]
    assert not [entry for entry in logs if entry["event"] == "task failed"]


async def test_a_broken_database_still_shows_its_traceback(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'broken.db'}")
    ran = asyncio.Event()

    async def run() -> None:
        if ran.is_set():
            await asyncio.Event().wait()
        ran.set()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    try:
        logs, _ = await _kept_running(run, ran, settle=0.05, task="lis sender")
    finally:
        engine.dispose()
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"][:1] == [
        "task failed"
    ]
