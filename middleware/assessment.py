"""Applying the engine to a stored message, in the transaction that stored it.

Controls are evaluated first, in the order the analyser sent them, then every patient
result is decided; a control that brings QC back in control makes the test's held results
be looked at again. Decisions are appended, never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from middleware.domain import InstrumentMessage, Result
from middleware.engine.context import PreviousResult, ResultContext
from middleware.engine.decision import Action, Decision
from middleware.engine.engine import Engine
from middleware.store import repository as repo


@dataclass(slots=True)
class Assessment:
    decisions: list[tuple[int, Decision]] = field(default_factory=list)
    evaluations: int = 0
    corrective_actions: list[int] = field(default_factory=list)
    released_later: list[int] = field(default_factory=list)
    """Held results that a new QC released."""


def _context(
    conn: Connection,
    result_id: int,
    result: Result,
    reading: InstrumentMessage | None,
    now: datetime,
) -> ResultContext:
    previous = repo.previous_result(conn, result.patient_id, result.test_code, result_id)
    specimen = (
        next((s for s in reading.specimens if s.specimen_id == result.specimen_id), None)
        if reading
        else None
    )
    patient = (
        next((p for p in reading.patients if p.patient_id == result.patient_id), None)
        if reading
        else None
    )
    return ResultContext(
        result,
        now,
        specimen=specimen,
        patient=patient,
        previous=PreviousResult(*previous) if previous else None,
        other_patient_ids=repo.specimen_patients(conn, result.specimen_id),
    )


def assess_message(
    conn: Connection, engine: Engine, stored: repo.Stored, reading: InstrumentMessage, now: datetime
) -> Assessment:
    out = Assessment()
    patient_ids = dict(zip((id(r) for r in reading.results), stored.result_ids, strict=True))
    control_ids = dict(zip((id(c) for c in reading.controls), stored.control_ids, strict=True))
    touched: set[tuple[str, str]] = set()
    for result, control in reading.measurements():
        if control is not None:
            outcome = engine.record_control(control, now)
            repo.record_evaluation(conn, control_ids[id(control)], control, outcome.qc, now)
            out.evaluations += 1
            touched.add((result.instrument, result.test_code))
            if outcome.qc.opened_corrective_action:
                reason = "qc-rejected:" + ",".join(
                    outcome.qc.evaluation.violations if outcome.qc.evaluation else ()
                )
                out.corrective_actions.append(
                    repo.open_corrective_action(
                        conn,
                        result.instrument,
                        result.test_code,
                        reason,
                        now,
                        outcome.qc.review_since,
                    )
                )
            continue
        result_id = patient_ids[id(result)]
        decision = engine.decide(_context(conn, result_id, result, reading, now))
        repo.record_decision(conn, result_id, result, decision, now)
        out.decisions.append((result_id, decision))
    for instrument, test in sorted(touched):
        out.released_later += redecide_held(conn, engine, instrument, test, now)
    return out


def redecide_held(
    conn: Connection, engine: Engine, instrument: str, test: str, now: datetime
) -> list[int]:
    """Look again at the held results of a test; record the decisions that changed."""
    released = []
    for result_id, result in repo.held_results(conn, instrument, test):
        decision = engine.redecide(_context(conn, result_id, result, None, now))
        if decision.action is not Action.HOLD:
            repo.record_decision(conn, result_id, result, decision, now)
            released.append(result_id)
    return released


def rebuild(conn: Connection, engine: Engine, since: datetime) -> int:
    """Bring a new engine's QC state up to what the database holds: replay the control and
    patient results stored since ``since`` in the order they came, and reopen the
    corrective actions still open. Returns how many control results were replayed."""
    replayed = 0
    for result, control, stored_at in repo.measurements_since(conn, since):
        if control is None:
            engine.gate.note_patient(result.instrument, result.test_code)
            engine.lot_changes.observe(result)
        else:
            engine.record_control(control, stored_at)
            replayed += 1
    for action in repo.open_corrective_actions(conn):
        engine.gate.reopen_corrective_action(
            action["instrument"], action["test_code"], action["reason"], action["opened_at"]
        )
    return replayed
