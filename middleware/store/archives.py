"""The archives written, as the ``archives`` table keeps them, and the months they cover.

Each function takes an open ``Connection`` inside a transaction its caller owns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from middleware.store.records import RecordTable
from middleware.store.schema import archives
from middleware.store.sql import utc


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month in UTC: the period an archive holds."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """``2026-10``; ValueError otherwise."""
        try:
            year, month = (int(part) for part in text.split("-"))
            datetime(year, month, 1)
        except ValueError:
            raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
        if len(text) != 7:
            raise ValueError(f"{text!r} is not a month (YYYY-MM)")
        return cls(year, month)

    @classmethod
    def of(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def months_between(first: Month, last: Month) -> Iterator[Month]:
    """``first`` to ``last``, both included."""
    month = first
    while month <= last:
        yield month
        month = month.next()


@dataclass(frozen=True)
class ArchiveRecord:
    id: int
    period: Month
    destinations: tuple[Path, ...]
    manifest_sha256: str
    key_id: str
    row_count: int
    created_at: datetime
    created_by: str
    verified_at: datetime | None

    def directories(self) -> list[Path]:
        """Where each copy's files are."""
        return [destination / str(self.period) for destination in self.destinations]


def recorded(conn: Connection) -> list[ArchiveRecord]:
    """Every archive written, oldest month first."""
    rows = conn.execute(select(archives).order_by(archives.c.period_start))
    return [
        ArchiveRecord(
            id=row.id,
            period=Month.parse(row.period),
            destinations=tuple(Path(d) for d in json.loads(row.destinations)),
            manifest_sha256=row.manifest_sha256,
            key_id=row.key_id,
            row_count=row.row_count,
            created_at=utc(row.created_at) or row.created_at,
            created_by=row.created_by,
            verified_at=utc(row.verified_at),
        )
        for row in rows
    ]


def record(
    conn: Connection,
    period: Month,
    destinations: list[Path],
    manifest_sha256: str,
    key_id: str,
    row_count: int,
    at: datetime,
    by: str,
) -> int:
    """An archive written to ``destinations`` and checked there at ``at``."""
    inserted = conn.execute(
        archives.insert()
        .values(
            period=str(period),
            period_start=period.start,
            period_end=period.end,
            destinations=json.dumps([str(d) for d in destinations]),
            manifest_sha256=manifest_sha256,
            key_id=key_id,
            row_count=row_count,
            created_at=at,
            created_by=by,
            verified_at=at,
        )
        .returning(archives.c.id)
    )
    return int(inserted.scalar_one())


def mark_verified(conn: Connection, archive_id: int, at: datetime) -> None:
    conn.execute(archives.update().where(archives.c.id == archive_id).values(verified_at=at))


def period_rows(conn: Connection, record: RecordTable, month: Month) -> Iterator[Any]:
    """The rows of ``record`` that ``month`` holds, by id, read as a stream."""
    query = record.period_rows(month.start, month.end)
    # Per statement: on a connection, the option would stay for every later statement.
    yield from conn.execute(query.execution_options(stream_results=True, yield_per=1000))


__all__ = [
    "ArchiveRecord",
    "Month",
    "mark_verified",
    "months_between",
    "period_rows",
    "record",
    "recorded",
]
