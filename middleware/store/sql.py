"""What every store module needs of SQL beside SQLAlchemy: inserts that can say ON
CONFLICT in either database, times given back in UTC, and lookups run in padded rounds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite


def upsert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can say ON CONFLICT DO NOTHING or DO UPDATE in this database's
    dialect."""
    return upsert_in(conn.dialect.name, table)


def upsert_in(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def utc(moment: datetime | None) -> datetime | None:
    """Times are stored in UTC; SQLite gives them back without their zone."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@functools.lru_cache(maxsize=16)
def new_only(dialect: str, table: Table, *keys: str) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING, built once per database and table; the
    keys are the primary key's columns when none are named."""
    elements = list(keys) or [c.name for c in table.primary_key.columns]
    return upsert_in(dialect, table).on_conflict_do_nothing(index_elements=elements)


def utcnow() -> datetime:
    return datetime.now(UTC)


T = TypeVar("T")


def shared_clock(conn: Connection, now: datetime) -> Any:
    """The time claims shared between daemons (instrument leases, outbox claims) are
    written and judged in, for a statement to use: PostgreSQL's ``clock_timestamp()``, the
    one clock of every node that shares it, at the statement (``now()`` is the
    transaction's start, which a unit sharing a group commit may run well after); else
    ``now`` (SQLite is shared by the daemons of one host only)."""
    return func.clock_timestamp() if conn.dialect.name == "postgresql" else now


def shared_now(conn: Connection, now: datetime) -> datetime:
    """:func:`shared_clock` as a value, for what is judged here rather than in SQL."""
    if conn.dialect.name != "postgresql":
        return now
    return utc(conn.execute(select(shared_clock(conn, now))).scalar_one()) or now


def padded(length: int) -> int:
    """The power of two a count of items is padded up to (0 stays 0): statements shaped
    by a count are then a handful, whatever the counts."""
    return 1 << (length - 1).bit_length() if length else 0


class Lookup(Protocol):
    """A SELECT run with its parameters (``store.direct.Direct``)."""

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]: ...


def in_padded_rounds(
    conn: Connection,
    items: Sequence[T],
    statement: Callable[[int], Lookup],
    params: Callable[[int, T | None], dict[str, object]],
    per_statement: int,
    shared: Mapping[str, object] | None = None,
) -> list[Any]:
    """The rows of one lookup per item, ``per_statement`` items to a statement, each round
    padded up to a power of two: ``statement(size)`` (built once per size) serves every
    count with a handful of statements. ``params(i, item)`` gives the ``i``-th lookup's
    parameters; for padding (``item`` None) ones that find nothing."""
    rows: list[Any] = []
    for start in range(0, len(items), per_statement):
        chunk = items[start : start + per_statement]
        size = padded(len(chunk))
        values: dict[str, object] = dict(shared or {})
        for i in range(size):
            values |= params(i, chunk[i] if i < len(chunk) else None)
        rows += statement(size).rows(conn, values)
    return rows
