"""Worklist downloads: the LIS's orders, and their cancellations, waiting to be sent to
the analysers that take a downloaded worklist, queued in the transaction that keeps the
orders, sent in order per instrument by the daemon that serves it, marked once the
analyser has them.

Each function takes an open ``Connection`` inside a transaction its caller owns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from middleware.domain import Order
from middleware.store.orders import codes_of, codes_text
from middleware.store.schema import worklist_downloads
from middleware.store.sql import utc

PENDING, SENT, REFUSED = "pending", "sent", "refused"
NEW, CANCEL = "new", "cancel"


@dataclass(frozen=True, slots=True)
class Download:
    id: int
    instrument: str
    order: Order
    action: str
    """``new`` (the order as it now stands) or ``cancel`` (its tests are cancelled)."""
    state: str
    attempts: int
    last_error: str = ""
    sent_at: datetime | None = None


def enqueue(
    conn: Connection,
    order: Order,
    action: str,
    runs: Mapping[str, frozenset[str]],
    at: datetime,
) -> list[int]:
    """For each instrument of ``runs`` (instrument: the tests it runs) that runs some of
    the order's tests, a download of those tests; none for the others."""
    ids = []
    for instrument, tests in sorted(runs.items()):
        mine = tuple(code for code in order.test_codes if code in tests)
        if not mine:
            continue
        row = {
            "instrument": instrument,
            "specimen_id": order.specimen_id,
            "patient_id": order.patient_id,
            "test_codes": codes_text(mine),
            "priority": order.priority,
            "action": action,
            "state": PENDING,
            "attempts": 0,
            "last_error": "",
            "created_at": at,
        }
        inserted = conn.execute(worklist_downloads.insert().returning(worklist_downloads.c.id), row)
        ids.append(int(inserted.scalar_one()))
    return ids


def pending(conn: Connection, instrument: str, limit: int = 20) -> list[Download]:
    """The oldest downloads not yet sent to an instrument, in the order they came."""
    rows = conn.execute(
        select(worklist_downloads)
        .where(
            worklist_downloads.c.instrument == instrument,
            worklist_downloads.c.state == PENDING,
        )
        .order_by(worklist_downloads.c.id)
        .limit(limit)
    )
    return [_download(row) for row in rows]


def mark_sent(conn: Connection, download_id: int, at: datetime) -> None:
    conn.execute(
        worklist_downloads.update()
        .where(worklist_downloads.c.id == download_id)
        .values(
            state=SENT,
            sent_at=at,
            attempts=worklist_downloads.c.attempts + 1,
            last_error="",
        )
    )


def mark_failed(conn: Connection, download_id: int, error: str) -> None:
    """Not delivered this time: still pending, with the attempt and why it failed."""
    conn.execute(
        worklist_downloads.update()
        .where(worklist_downloads.c.id == download_id)
        .values(attempts=worklist_downloads.c.attempts + 1, last_error=error[:500])
    )


def mark_refused(conn: Connection, download_id: int, error: str) -> None:
    """Never to be sent (the analyser cannot take it as it is), kept with why."""
    conn.execute(
        worklist_downloads.update()
        .where(worklist_downloads.c.id == download_id)
        .values(state=REFUSED, last_error=error[:500])
    )


def _download(row: Any) -> Download:
    return Download(
        id=row.id,
        instrument=row.instrument,
        order=Order(
            specimen_id=row.specimen_id,
            test_codes=codes_of(row.test_codes),
            priority=row.priority,
            patient_id=row.patient_id,
        ),
        action=row.action,
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
        sent_at=utc(row.sent_at),
    )
