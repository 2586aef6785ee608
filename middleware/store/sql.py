"""What every store module needs of SQL beside SQLAlchemy: inserts that can say ON
CONFLICT in either database, and times given back in UTC."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table
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
