"""Retention (D9): which records are past the time they must be kept, and deleting those
an archive holds. Each function takes an open ``Connection`` inside a transaction its
caller owns; the times are given, never read from the clock here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, or_, select

from middleware.store.archives import Month
from middleware.store.records import KINDS, RECORD_TABLES, RecordTable
from middleware.store.schema import purge_permit
from middleware.store.sql import utc


def years_before(moment: datetime, years: int) -> datetime:
    """The same day and time ``years`` earlier (28 February for a 29th)."""
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:
        return moment.replace(year=moment.year - years, day=28)


def cutoffs(years: Mapping[str, int], now: datetime) -> dict[str, datetime]:
    """Per kind of record, the time before which its rows are past retention."""
    return {kind: years_before(now, years[kind]) for kind in KINDS}


@dataclass(frozen=True)
class Overdue:
    """Rows of one archive file's table past retention."""

    kind: str
    name: str
    rows: int
    oldest: datetime | None
    newest: datetime | None
    archived: int
    """How many of them are in months an archive holds."""


def _ranges(months: Iterable[Month]) -> list[tuple[datetime, datetime]]:
    """Consecutive months as one [start, end) range each."""
    out: list[tuple[datetime, datetime]] = []
    for month in sorted(months):
        if out and out[-1][1] == month.start:
            out[-1] = (out[-1][0], month.end)
        else:
            out.append((month.start, month.end))
    return out


def overdue(
    conn: Connection, limits: Mapping[str, datetime], archived: Iterable[Month]
) -> list[Overdue]:
    """Per table, the rows past retention: how many, the oldest and newest time, and how
    many of them are in archived months. Aggregates only: nothing is read row by row."""
    ranges = _ranges(archived)
    found = []
    for record in RECORD_TABLES:
        past = record.older_than(limits[record.kind])
        placed = record.placed_at()
        rows, oldest, newest = conn.execute(
            select(func.count(), func.min(placed), func.max(placed))
            .select_from(record.table)
            .where(past)
        ).one()
        in_archives = 0
        if rows and ranges:
            held = or_(*(record.in_period(start, end) for start, end in ranges))
            in_archives = conn.execute(
                select(func.count()).select_from(record.table).where(past, held)
            ).scalar_one()
        found.append(Overdue(record.kind, record.name, rows, utc(oldest), utc(newest), in_archives))
    return found


def delete_archived(
    conn: Connection, record: RecordTable, ids: list[int], cutoff: datetime, at: datetime
) -> int:
    """Deletes, of the rows ``ids`` names (read from an archive checked just before), those
    past ``cutoff``, not still needed, and no row refers to; gives how many. The permit
    lets the append-only tables' triggers take the delete; it is gone at commit."""
    conn.execute(purge_permit.insert().values(granted_at=at))
    deleted = conn.execute(
        delete(record.table).where(
            record.table.c.id.in_(ids), record.older_than(cutoff), record.deletable()
        )
    ).rowcount
    conn.execute(purge_permit.delete())
    return int(deleted)


__all__ = ["Overdue", "cutoffs", "delete_archived", "overdue", "years_before"]
