"""Purging (D9, D10): deleting the records past their retention, and only those a
verified archive holds. Every copy of each archive concerned is checked first (signature,
every file, the manifest the one recorded); one that does not check out stops the purge
before anything is deleted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, literal, select

from middleware import archive
from middleware.store import archives as recorded_archives
from middleware.store.archives import ArchiveRecord
from middleware.store.audit import audit, chain_start
from middleware.store.records import RECORD_TABLES
from middleware.store.retention import delete_archived


class PurgeRefused(Exception):
    """An archive the purge needs does not check out; nothing was deleted."""


@dataclass
class Purged:
    deleted: dict[str, int] = field(default_factory=dict)
    archives: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def needed_archives(engine: Engine, limits: dict[str, datetime]) -> list[ArchiveRecord]:
    """The archives of months of which the database still holds rows past retention:
    months purged already are not read again (each check reads every copy whole)."""
    latest = max(limits.values())
    with engine.connect() as conn:
        return [
            held
            for held in recorded_archives.recorded(conn)
            if held.period.start < latest and _rows_left(conn, held, limits)
        ]


def _rows_left(conn: Connection, held: ArchiveRecord, limits: dict[str, datetime]) -> bool:
    start, end = held.period.start, held.period.end
    return any(
        conn.execute(
            select(literal(1))
            .select_from(record.table)
            .where(record.in_period(start, end), record.older_than(limits[record.kind]))
            .limit(1)
        ).first()
        is not None
        for record in RECORD_TABLES
    )


def purge(
    engine: Engine, key: bytes, limits: dict[str, datetime], now: datetime, by: str
) -> Purged:
    """Deletes what is past ``limits`` (per kind) and in a verified archive, rows that
    refer to others first, a few hundred rows per transaction so that the daemon's writes
    are never kept waiting long."""
    chosen = needed_archives(engine, limits)
    for held in chosen:
        problems = archive.check_recorded(held, key)
        if problems:
            raise PurgeRefused(f"archive {held.period}: {problems[0]}")
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            for held in chosen:
                recorded_archives.mark_verified(conn, held.id, now)
    done = Purged(archives=[str(a.period) for a in chosen])
    for record in reversed(RECORD_TABLES):
        cutoff = limits[record.kind]
        count = 0
        for held in chosen:
            if held.period.start >= cutoff:
                continue
            for ids in archive.ids(held.directories()[0], record):
                with engine.connect() as conn:
                    conn.execution_options(write=True)
                    with conn.begin():
                        count += delete_archived(conn, record, ids, cutoff, now)
        done.deleted[record.name] = count
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            detail = {
                "deleted": {name: n for name, n in done.deleted.items() if n},
                "before": {kind: limit.isoformat() for kind, limit in limits.items()},
                "archives": done.archives,
                # Where the audit log's chain now starts: entries gone from its start later
                # than this purge are then found by audit verify.
                "audit_resumes_from": chain_start(conn),
            }
            audit(conn, now, by, "retention.purge", "", detail)
    return done


__all__ = ["PurgeRefused", "Purged", "needed_archives", "purge"]
