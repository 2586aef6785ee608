"""The records of quality control people and auditors read: the evaluation of every
control result, corrective actions and the results listed for review, approved limits,
QC events (calibration, maintenance, unlock).

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Context, Decimal
from fractions import Fraction

from sqlalchemy import Connection, Table, func, select

from middleware.domain import (
    ControlResult,
    ReagentUse,
    Result,
)
from middleware.engine.qc import QcOutcome
from middleware.store import notices
from middleware.store.direct import Direct
from middleware.store.release import result_of
from middleware.store.schema import (
    control_limits,
    control_results,
    corrective_actions,
    decisions,
    qc_evaluations,
    qc_events,
    qc_reviews,
    reagent_lots,
    reagent_uses,
    results,
)
from middleware.store.sql import utc

_INSERT_EVALUATIONS = Direct(qc_evaluations.insert())
_FOUR_PLACES = Decimal("0.0001")


def _four_places(z: Fraction) -> Decimal | None:
    """z to four places; a z too far out for any limit is still stored, not refused."""
    try:
        value = Decimal(float(z))
    except OverflowError:
        return None
    return value.quantize(_FOUR_PLACES, context=Context(prec=400))


def record_evaluations(
    conn: Connection, evaluated: Sequence[tuple[int, ControlResult, QcOutcome]], at: datetime
) -> None:
    rows = []
    told = []
    for control_id, control, outcome in evaluated:
        evaluation, target = outcome.evaluation, outcome.target
        z = _four_places(evaluation.z) if evaluation else None
        told.append(
            notices.QcEvaluated(
                instrument=control.result.instrument,
                test_code=control.result.test_code,
                run=outcome.run,
                level=outcome.level,
                status=evaluation.status if evaluation else "unevaluated",
                violations=tuple(evaluation.violations) if evaluation else (),
                warnings=tuple(evaluation.warnings) if evaluation else (),
                z=None if z is None else str(z),
                at=at,
            )
        )
        rows.append(
            {
                "control_result_id": control_id,
                "instrument": control.result.instrument,
                "test_code": control.result.test_code,
                "run": outcome.run,
                "level": outcome.level,
                "z": z,
                "target_mean": target.mean if target else None,
                "target_sd": target.sd if target else None,
                "provisional": outcome.provisional,
                "status": evaluation.status if evaluation else "unevaluated",
                "violations": ",".join(evaluation.violations) if evaluation else "",
                "warnings": ",".join(evaluation.warnings) if evaluation else outcome.problem,
                "evaluated_at": at,
            }
        )
    if rows:
        _INSERT_EVALUATIONS.executemany(conn, rows)
        notices.tell(conn, *told)


def open_corrective_action(
    conn: Connection,
    instrument: str,
    test_code: str,
    reason: str,
    at: datetime,
    review_since: datetime | None,
) -> tuple[int, list[int]]:
    """Q9: open the record; list for review the results released since the last good QC.
    The action's id, and the results listed."""
    action_id = int(
        conn.execute(
            corrective_actions.insert().returning(corrective_actions.c.id),
            {"instrument": instrument, "test_code": test_code, "reason": reason, "opened_at": at},
        ).scalar_one()
    )
    released = select(decisions.c.result_id).where(
        decisions.c.instrument == instrument,
        decisions.c.test_code == test_code,
        decisions.c.action == "release",
    )
    if review_since is not None:
        released = released.where(decisions.c.decided_at >= review_since)
    ids = sorted({row.result_id for row in conn.execute(released)})
    notices.tell(
        conn,
        notices.CorrectiveActionChanged(
            action_id, instrument, test_code, "opened", reason, "engine", at
        ),
    )
    if ids:
        conn.execute(
            qc_reviews.insert(),
            [{"corrective_action_id": action_id, "result_id": i, "listed_at": at} for i in ids],
        )
    return action_id, ids


@dataclass(frozen=True, slots=True)
class OpenCorrectiveAction:
    id: int
    instrument: str
    test_code: str
    reason: str
    opened_at: datetime


def open_corrective_actions(conn: Connection) -> list[OpenCorrectiveAction]:
    rows = conn.execute(
        select(
            corrective_actions.c.id,
            corrective_actions.c.instrument,
            corrective_actions.c.test_code,
            corrective_actions.c.reason,
            corrective_actions.c.opened_at,
        )
        .where(corrective_actions.c.closed_at.is_(None))
        .order_by(corrective_actions.c.id)
    )
    return [
        OpenCorrectiveAction(r.id, r.instrument, r.test_code, r.reason, _at(r.opened_at))
        for r in rows
    ]


def _at(moment: datetime) -> datetime:
    return utc(moment) or moment


def mark_corrective_action_closed(
    conn: Connection, action_id: int, by: str, action_taken: str, at: datetime
) -> None:
    """Who closed it, when, what was done, and the QC evaluation that showed it fixed."""
    action = conn.execute(
        select(corrective_actions.c.instrument, corrective_actions.c.test_code).where(
            corrective_actions.c.id == action_id
        )
    ).one()
    closing = conn.execute(
        select(func.max(qc_evaluations.c.id)).where(
            qc_evaluations.c.instrument == action.instrument,
            qc_evaluations.c.test_code == action.test_code,
            qc_evaluations.c.status != "reject",
        )
    ).scalar_one_or_none()
    conn.execute(
        corrective_actions.update()
        .where(corrective_actions.c.id == action_id)
        .values(
            closed_at=at, closed_by=by, action_taken=action_taken, closing_evaluation_id=closing
        )
    )
    notices.tell(
        conn,
        notices.CorrectiveActionChanged(
            action_id, action.instrument, action.test_code, "closed", action_taken, by, at
        ),
    )


def approve_limits(
    conn: Connection,
    instrument: str,
    test_code: str,
    lot: str,
    mean: Decimal,
    sd: Decimal,
    results_count: int,
    by: str,
    at: datetime,
) -> None:
    conn.execute(
        control_limits.insert(),
        {
            "instrument": instrument,
            "test_code": test_code,
            "lot": lot,
            "mean": mean,
            "sd": sd,
            "results": results_count,
            "approved_by": by,
            "approved_at": at,
        },
    )


@dataclass(frozen=True, slots=True)
class ApprovedLimits:
    instrument: str
    test_code: str
    lot: str
    mean: Decimal
    sd: Decimal
    results: int
    approved_by: str
    approved_at: datetime


def approved_limits(conn: Connection) -> list[ApprovedLimits]:
    rows = conn.execute(select(control_limits).order_by(control_limits.c.id))
    return [
        ApprovedLimits(
            r.instrument,
            r.test_code,
            r.lot,
            # Approved limits have four places; SQLite gives them back as binary floats.
            Decimal(r.mean).quantize(_FOUR_PLACES),
            Decimal(r.sd).quantize(_FOUR_PLACES),
            r.results,
            r.approved_by,
            _at(r.approved_at),
        )
        for r in rows
    ]


def record_qc_event(
    conn: Connection, instrument: str, test_code: str, kind: str, at: datetime, by: str
) -> None:
    conn.execute(
        qc_events.insert(),
        {
            "instrument": instrument,
            "test_code": test_code,
            "kind": kind,
            "at": at,
            "recorded_by": by,
        },
    )


@dataclass(frozen=True, slots=True)
class QcEvent:
    instrument: str
    test_code: str
    kind: str
    """calibration, maintenance or unlock"""
    at: datetime
    recorded_by: str


def qc_events_since(conn: Connection, since: datetime) -> list[QcEvent]:
    rows = conn.execute(select(qc_events).where(qc_events.c.at >= since).order_by(qc_events.c.id))
    return [QcEvent(r.instrument, r.test_code, r.kind, _at(r.at), r.recorded_by) for r in rows]


def measurements(conn: Connection) -> Iterator[tuple[Result, ControlResult | None, datetime]]:
    """Every patient and control result stored, in the order they arrived (a message's
    controls before its patient results), with the reagent lots each used, and when each
    was stored; read as a stream, so memory does not grow with the history (to make the QC
    state of a database kept before it was)."""
    streams = (_stored(conn, results, 1), _stored(conn, control_results, 0))
    for _, _, _, result, control, at in heapq.merge(*streams, key=lambda item: item[:3]):
        yield result, control, at


def _stored(
    conn: Connection, table: Table, kind: int
) -> Iterator[tuple[int, int, int, Result, ControlResult | None, datetime]]:
    column = "result_id" if table is results else "control_result_id"
    query = (
        select(
            table,
            reagent_lots.c.reagent.label("used_reagent"),
            reagent_lots.c.lot.label("used_lot"),
        )
        .outerjoin(reagent_uses, reagent_uses.c[column] == table.c.id)
        .outerjoin(reagent_lots, reagent_lots.c.id == reagent_uses.c.reagent_lot_id)
        .order_by(table.c.id, reagent_uses.c.id)
    )
    # Per statement: on a connection, the option would stay for every later statement.
    rows = conn.execute(query.execution_options(stream_results=True, yield_per=2000))
    for _, same in itertools.groupby(rows, key=lambda row: row.id):
        group = list(same)
        row = group[0]
        used = tuple(ReagentUse(r.used_reagent, r.used_lot) for r in group if r.used_lot)
        result = replace(result_of(row), reagents=used)
        control = None
        if table is control_results:
            control = ControlResult(result, row.control_material, row.lot, row.level)
        stored_at = utc(row.stored_at) or row.stored_at
        yield row.message_id, kind, row.id, result, control, stored_at
