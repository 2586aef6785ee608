"""Applying the engine to a stored message, in the transaction that stored it.

Controls are evaluated first, in the order the analyser sent them, then every patient
result is decided; a control that brings QC back in control makes the test's held results
be looked at again. Decisions are appended, never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import Connection

from middleware.domain import InstrumentMessage, Result
from middleware.engine.context import PreviousResult, ResultContext, SampleCondition
from middleware.engine.decision import Action, Decision
from middleware.engine.engine import Engine
from middleware.engine.qc import LimitsProposal
from middleware.store import repository as repo


@dataclass(slots=True)
class Assessment:
    decisions: list[tuple[int, Decision]] = field(default_factory=list)
    evaluations: int = 0
    corrective_actions: list[int] = field(default_factory=list)
    released_later: list[int] = field(default_factory=list)
    """Held results that a new QC released."""


@dataclass(slots=True)
class _Lookups:
    """What the checks need from earlier messages, fetched once for a whole batch."""

    previous: dict[tuple[str, str], list[tuple[int, Decimal, datetime]]]
    patients_of: dict[str, tuple[str, ...]]

    @classmethod
    def fetch(cls, conn: Connection, items: list[tuple[int, Result]]) -> _Lookups:
        if not items:
            return cls({}, {})
        return cls(
            repo.previous_results(
                conn, ((r.patient_id, r.test_code) for _, r in items), max(i for i, _ in items)
            ),
            repo.specimen_patients(conn, (r.specimen_id for _, r in items)),
        )

    def context(
        self, result_id: int, result: Result, reading: InstrumentMessage | None, now: datetime
    ) -> ResultContext:
        earlier = [
            (value, moment)
            for stored_id, value, moment in self.previous.get(
                (result.patient_id, result.test_code), ()
            )
            if stored_id < result_id
        ]
        previous = earlier[-1] if earlier else None
        specimen = patient = None
        condition = SampleCondition()
        if reading is not None:
            condition = SampleCondition.from_results(
                r for r in reading.results if r.specimen_id == result.specimen_id
            )
            specimen = next(
                (s for s in reading.specimens if s.specimen_id == result.specimen_id), None
            )
            patient = next((p for p in reading.patients if p.patient_id == result.patient_id), None)
        return ResultContext(
            result,
            now,
            specimen=specimen,
            patient=patient,
            previous=PreviousResult(*previous) if previous else None,
            condition=condition,
            other_patient_ids=self.patients_of.get(result.specimen_id, ()),
        )


def assess_message(
    conn: Connection, engine: Engine, stored: repo.Stored, reading: InstrumentMessage, now: datetime
) -> Assessment:
    out = Assessment()
    patient_ids = dict(zip((id(r) for r in reading.results), stored.result_ids, strict=True))
    control_ids = dict(zip((id(c) for c in reading.controls), stored.control_ids, strict=True))
    lookups = _Lookups.fetch(conn, [(patient_ids[id(r)], r) for r in reading.results])
    decided: list[tuple[int, Result, Decision]] = []
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
        decision = engine.decide(lookups.context(result_id, result, reading, now))
        decided.append((result_id, result, decision))
        out.decisions.append((result_id, decision))
    repo.record_decisions(conn, decided, now)
    for instrument, test in sorted(touched):
        out.released_later += redecide_held(conn, engine, instrument, test, now)
    return out


def redecide_held(
    conn: Connection, engine: Engine, instrument: str, test: str, now: datetime
) -> list[int]:
    """Look again at the held results of a test; record the decisions that changed."""
    held = repo.held_results(conn, instrument, test)
    lookups = _Lookups.fetch(conn, held)
    changed = []
    for result_id, result in held:
        decision = engine.redecide(lookups.context(result_id, result, None, now))
        if decision.action is not Action.HOLD:
            changed.append((result_id, result, decision))
    repo.record_decisions(conn, changed, now)
    return [result_id for result_id, _, _ in changed]


def rebuild(conn: Connection, engine: Engine, since: datetime) -> int:
    """Bring a new engine's QC state up to what the database holds: replay, in the order
    they happened, the control and patient results stored since ``since``, the approvals of
    the lab's own limits and the events that void QC or unlock a method; reopen the
    corrective actions still open. Returns how many control results were replayed."""
    gate = engine.gate
    happenings: list[tuple[datetime, int, Callable[[], object]]] = []
    for limits in repo.approved_limits(conn):
        proposal = LimitsProposal(
            limits["instrument"],
            limits["test_code"],
            limits["lot"],
            limits["mean"],
            limits["sd"],
            limits["results"],
        )
        happenings.append((limits["approved_at"], len(happenings), partial(gate.approve, proposal)))
    for event in repo.qc_events_since(conn, since):
        happenings.append((event["at"], len(happenings), partial(_replay_event, engine, event)))
    replayed = 0
    for result, control, stored_at in repo.measurements_since(conn, since):
        if control is None:
            happenings.append(
                (stored_at, len(happenings), partial(_replay_patient, engine, result))
            )
        else:
            happenings.append(
                (
                    stored_at,
                    len(happenings),
                    partial(engine.record_control, control, stored_at),
                )
            )
            replayed += 1
    for _, _, happen in sorted(happenings, key=lambda h: (h[0], h[1])):
        happen()
    for action in repo.open_corrective_actions(conn):
        gate.reopen_corrective_action(
            action["instrument"], action["test_code"], action["reason"], action["opened_at"]
        )
    return replayed


def _replay_patient(engine: Engine, result: Result) -> None:
    engine.gate.note_patient(result.instrument, result.test_code)
    engine.lot_changes.observe(result)


def _replay_event(engine: Engine, event: dict[str, Any]) -> None:
    if event["kind"] == "unlock":
        engine.gate.unlock(event["instrument"], event["test_code"])
    else:
        engine.gate.void(event["instrument"], event["test_code"], event["kind"], event["at"])
