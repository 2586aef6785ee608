"""The figures an operator watches (outbox, open holds, QC states), read in a few
indexed queries whose cost follows what is open now, never the history."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, func, select

from middleware.store.outbox import DEAD, PENDING, STOPPED
from middleware.store.qc_state import kept
from middleware.store.schema import open_holds, outbox, qc_tests
from middleware.store.sql import utc

#: The QC state of an instrument's test, as the gauges and events name it.
QC_STATES = ("corrective-action", "method-locked", "voided", "in-control")


@dataclass(frozen=True, slots=True)
class Figures:
    outbox: dict[str, int] = field(default_factory=dict)
    """Entries by state: pending, stopped, dead."""
    oldest_pending_at: datetime | None = None
    open_holds: int = 0
    qc: dict[str, int] = field(default_factory=dict)
    """Instrument tests by QC state (QC_STATES)."""


def qc_state(corrective_action_since: datetime | None, locked: str, void_reason: str) -> str:
    """What blocks a test's results first: an open corrective action, a method lock, QC
    voided (by calibration or maintenance); otherwise its QC lets results through."""
    if corrective_action_since is not None:
        return "corrective-action"
    if locked:
        return "method-locked"
    if void_reason:
        return "voided"
    return "in-control"


def read_figures(conn: Connection) -> Figures:
    by_state = {
        row.state: (int(row.entries), row.oldest)
        for row in conn.execute(
            select(
                outbox.c.state,
                func.count().label("entries"),
                func.min(outbox.c.created_at).label("oldest"),
            )
            .where(outbox.c.state.in_((PENDING, STOPPED, DEAD)))
            .group_by(outbox.c.state)
        )
    }
    held = int(conn.execute(select(func.count()).select_from(open_holds)).scalar_one())
    qc = dict.fromkeys(QC_STATES, 0)
    states = select(qc_tests.c.corrective_action_since, qc_tests.c.locked, qc_tests.c.void_reason)
    for row in conn.execute(states.where(kept(qc_tests))):
        qc[qc_state(row.corrective_action_since, row.locked, row.void_reason)] += 1
    pending = by_state.get(PENDING)
    return Figures(
        outbox={state: by_state.get(state, (0, None))[0] for state in (PENDING, STOPPED, DEAD)},
        oldest_pending_at=utc(pending[1]) if pending is not None else None,
        open_holds=held,
        qc=qc,
    )
