"""What the status page shows of QC, instruments, quarantine and the LIS link, read in
bounded, indexed queries: a page costs the same after ten years as on the first day."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from middleware.store.figures import Figures, qc_state, read_figures
from middleware.store.outbox import DEAD, STOPPED, Entry, entries
from middleware.store.qc_state import kept
from middleware.store.schema import (
    control_results,
    messages,
    outbox,
    qc_evaluations,
    qc_lots,
    qc_tests,
    quarantine,
)
from middleware.store.sql import utc


@dataclass(frozen=True, slots=True)
class Evaluation:
    id: int
    at: datetime
    lot: str
    level: str
    value: str
    units: str
    z: Decimal | None
    target_mean: Decimal | None
    target_sd: Decimal | None
    provisional: bool
    status: str
    violations: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QcTest:
    instrument: str
    test_code: str
    state: str
    """corrective-action, method-locked, voided or in-control (store/figures.py); the
    page adds what the rules in force say (expired, unevaluated...)."""
    detail: str
    """Why it blocks results, in the words stored with the state."""
    last_in_control_at: datetime | None
    lots: tuple[str, ...]
    recent: tuple[Evaluation, ...] = ()
    unusable: tuple[tuple[str, str], ...] = ()
    """Levels whose latest control could not be evaluated, and why."""


@dataclass(frozen=True, slots=True)
class ControlLot:
    lot: str
    material: str
    results: int
    approved_mean: str | None
    approved_sd: str | None


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part for part in (text or "").split(",") if part)


def _when(moment: datetime) -> datetime:
    """A time of a NOT NULL column, in UTC."""
    return utc(moment) or moment


def _evaluation(r: Any) -> Evaluation:
    return Evaluation(
        id=r.id,
        at=_when(r.evaluated_at),
        lot=r.lot or r.control_material,
        level=r.level,
        value=r.value_text,
        units=r.units,
        z=r.z,
        target_mean=r.target_mean,
        target_sd=r.target_sd,
        provisional=bool(r.provisional),
        status=r.status,
        violations=_split(r.violations),
        warnings=_split(r.warnings),
    )


_EVALUATIONS = select(
    qc_evaluations.c.id,
    qc_evaluations.c.evaluated_at,
    qc_evaluations.c.level,
    qc_evaluations.c.z,
    qc_evaluations.c.target_mean,
    qc_evaluations.c.target_sd,
    qc_evaluations.c.provisional,
    qc_evaluations.c.status,
    qc_evaluations.c.violations,
    qc_evaluations.c.warnings,
    control_results.c.lot,
    control_results.c.control_material,
    control_results.c.value_text,
    control_results.c.units,
).join(control_results, control_results.c.id == qc_evaluations.c.control_result_id)


def evaluations(
    conn: Connection,
    instrument: str,
    test: str,
    *,
    lot: str | None = None,
    material: str = "",
    limit: int = 60,
) -> list[Evaluation]:
    """The latest ``limit`` evaluations of a test (of one control lot, of ``material``),
    oldest first."""
    query = _EVALUATIONS.where(
        qc_evaluations.c.instrument == instrument, qc_evaluations.c.test_code == test
    )
    if lot is not None:
        # As the QC gate finds a control's lot: its lot number, else a sample id that is
        # the lot number, else the name of a material that has that one lot.
        unnamed = control_results.c.control_material.in_([lot, material] if material else [lot])
        query = query.where(
            or_(control_results.c.lot == lot, and_(control_results.c.lot == "", unnamed))
        )
    rows = conn.execute(query.order_by(qc_evaluations.c.id.desc()).limit(limit))
    return [_evaluation(row) for row in reversed(list(rows))]


def qc_tests_view(
    conn: Connection, recent: int = 4, only: tuple[str, str] | None = None
) -> list[QcTest]:
    """Every instrument test the QC state knows (``only`` one: instrument and test), with
    its latest evaluations."""
    query = (
        select(
            qc_tests.c.instrument,
            qc_tests.c.test_code,
            qc_tests.c.corrective_action_since,
            qc_tests.c.corrective_action_reason,
            qc_tests.c.locked,
            qc_tests.c.void_reason,
            qc_tests.c.last_in_control_at,
            qc_tests.c.lots_in_use,
            qc_tests.c.levels,
        )
        .where(kept(qc_tests))
        .order_by(qc_tests.c.instrument, qc_tests.c.test_code)
    )
    if only is not None:
        query = query.where(qc_tests.c.instrument == only[0], qc_tests.c.test_code == only[1])
    rows = conn.execute(query).all()
    tests = []
    for row in rows:
        state = qc_state(row.corrective_action_since, row.locked, row.void_reason)
        detail = {
            "corrective-action": row.corrective_action_reason,
            "method-locked": row.locked,
            "voided": row.void_reason,
        }.get(state, "")
        lots = tuple(json.loads(row.lots_in_use)) if row.lots_in_use else ()
        tests.append(
            QcTest(
                instrument=row.instrument,
                test_code=row.test_code,
                state=state,
                detail=detail,
                last_in_control_at=utc(row.last_in_control_at),
                lots=tuple(str(lot) for lot in lots),
                recent=tuple(evaluations(conn, row.instrument, row.test_code, limit=recent)),
                unusable=tuple(
                    (name, level["unusable"])
                    for name, level in sorted(json.loads(row.levels or "{}").items())
                    if level.get("unusable")
                ),
            )
        )
    return tests


def control_lots(conn: Connection, instrument: str, test: str) -> list[ControlLot]:
    rows = conn.execute(
        select(
            qc_lots.c.lot,
            qc_lots.c.material,
            qc_lots.c.results,
            qc_lots.c.approved_mean,
            qc_lots.c.approved_sd,
        )
        .where(qc_lots.c.instrument == instrument, qc_lots.c.test_code == test, kept(qc_lots))
        .order_by(qc_lots.c.lot)
    )
    return [ControlLot(r.lot, r.material, r.results, r.approved_mean, r.approved_sd) for r in rows]


@dataclass(frozen=True, slots=True)
class InstrumentDay:
    messages_today: int = 0
    last_message_at: datetime | None = None
    quarantined_today: int = 0


def instruments_today(conn: Connection, since: datetime) -> dict[str, InstrumentDay]:
    """Per instrument, what it sent since ``since`` (the start of the lab's day): a range of
    the time indexes, however long the history."""
    days: dict[str, InstrumentDay] = {}
    for row in conn.execute(
        select(
            messages.c.instrument,
            func.count().label("n"),
            func.max(messages.c.received_at).label("last"),
        )
        .where(messages.c.received_at >= since)
        .group_by(messages.c.instrument)
    ):
        days[row.instrument] = InstrumentDay(int(row.n), utc(row.last))
    for row in conn.execute(
        select(quarantine.c.instrument, func.count().label("n"))
        .where(quarantine.c.received_at >= since)
        .group_by(quarantine.c.instrument)
    ):
        day = days.get(row.instrument, InstrumentDay())
        days[row.instrument] = InstrumentDay(day.messages_today, day.last_message_at, int(row.n))
    return days


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    instrument: str
    connection: str
    reason: str
    received_at: datetime
    size: int
    resolved_at: datetime | None
    data: bytes = b""


def quarantined(conn: Connection, instrument: str, limit: int = 50) -> list[Quarantined]:
    """The latest messages of an instrument kept in quarantine, newest first (no bytes)."""
    rows = conn.execute(
        select(
            quarantine.c.id,
            quarantine.c.instrument,
            quarantine.c.connection,
            quarantine.c.reason,
            quarantine.c.received_at,
            func.length(quarantine.c.data).label("size"),
            quarantine.c.resolved_at,
        )
        .where(quarantine.c.instrument == instrument)
        .order_by(quarantine.c.id.desc())
        .limit(limit)
    )
    return [
        Quarantined(
            r.id,
            r.instrument,
            r.connection,
            r.reason,
            _when(r.received_at),
            int(r.size or 0),
            utc(r.resolved_at),
        )
        for r in rows
    ]


def quarantined_entry(conn: Connection, quarantine_id: int) -> Quarantined | None:
    row = conn.execute(select(quarantine).where(quarantine.c.id == quarantine_id)).first()
    if row is None:
        return None
    return Quarantined(
        row.id,
        row.instrument,
        row.connection,
        row.reason,
        _when(row.received_at),
        len(row.data),
        utc(row.resolved_at),
        bytes(row.data),
    )


@dataclass(frozen=True, slots=True)
class LisLink:
    figures: Figures
    last_answer_at: datetime | None
    waiting: list[Entry] = field(default_factory=list)
    """Entries stopped by an error answer, and the dead letters."""


def lis_link(conn: Connection) -> LisLink:
    last = conn.execute(
        select(func.max(outbox.c.answered_at)).where(and_(outbox.c.answered_at.is_not(None)))
    ).scalar_one_or_none()
    return LisLink(read_figures(conn), utc(last), entries(conn, (STOPPED, DEAD)))
