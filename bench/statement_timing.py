"""Every SQL statement the daemon runs, timed: those SQLAlchemy runs (its cursor events)
and those run on the driver's cursor (``middleware.store.direct``), for the benches that
say where the writer's time goes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from middleware.store import direct


def time_statements(told: Callable[[str, float], None]) -> None:
    """From now on, ``told(statement, seconds)`` after each statement, in its thread."""

    @event.listens_for(Engine, "before_cursor_execute")
    def before(conn: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        told(statement, time.perf_counter() - conn.info.pop("bench_started"))

    on_the_driver = direct._driver_errors

    @contextmanager
    def timed(conn: Any, text: str) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with on_the_driver(conn, text) as raw:
                yield raw
        finally:
            told(text, time.perf_counter() - started)

    direct._driver_errors = timed  # type: ignore[assignment]
