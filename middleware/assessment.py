"""Applying the engine to a stored message, in the transaction that stored it.

Results and controls are taken in the order the analyser sent them (the controls between
patient results are a run), and a patient result sent before a control of its test is
confirmed once that control is evaluated: the controls of a message are judged before
any of its patient results leaves (Q2). A control that brings QC back in control makes
the test's held results be looked at again. Decisions are
appended, never overwritten. The QC state of the tests a message touches is read from
the store at the start and written back at the end, in the same transaction: if it rolls
back, so does the state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection

from middleware.domain import (
    ControlResult,
    InstrumentMessage,
    Order,
    Patient,
    Result,
    Specimen,
    most_urgent,
)
from middleware.engine.context import PreviousResult, ResultContext, SampleCondition
from middleware.engine.decision import EARLY_RELEASE, Action, Decision, Finding
from middleware.engine.early_release import qc_waits
from middleware.engine.engine import Engine, standing_findings
from middleware.engine.qc import (
    NO_LOT_QC,
    NO_QC,
    LimitsProposal,
    LotQc,
    QcGate,
    QcOutcome,
    TestQc,
)
from middleware.hl7.results import Reported, Sender, by_specimen, new_control_id
from middleware.store import ingest, orders, outbox, qc_records, qc_state, recalls, release, sql
from middleware.store.qc_state import LotKey, TestKey


@dataclass(slots=True)
class Assessment:
    decisions: list[tuple[int, Decision]] = field(default_factory=list)
    evaluations: int = 0
    corrective_actions: list[int] = field(default_factory=list)
    released_later: list[int] = field(default_factory=list)
    """Held results that a new QC released."""
    under_review: list[tuple[int, str]] = field(default_factory=list)
    """Results released before a QC failure, listed for review, with the failure."""


@dataclass(slots=True)
class _Lookups:
    """What the checks need from earlier messages, fetched once for a whole batch."""

    previous: dict[tuple[str, str], list[tuple[int, Decimal, datetime]]]
    patients_of: dict[str, tuple[str, ...]]
    reported_lots: Mapping[tuple[str, str], date | None]
    priorities: dict[str, str]
    """Specimens ordered STAT or ASAP, by the LIS or the analyser."""
    ordered: dict[str, Order]
    """The LIS's order of each specimen: what it says of the specimen."""
    recalled: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """Lots a person recalled among those the results used, with the reason."""
    conditions: dict[str, SampleCondition] = field(default_factory=dict)
    """What the message's results say of each specimen's tube, worked out once."""

    @classmethod
    def fetch(
        cls,
        conn: Connection,
        items: list[tuple[int, Result]],
        engine: Engine,
        reading: InstrumentMessage | None = None,
    ) -> _Lookups:
        if not items:
            return cls({}, {}, {}, {}, {})
        priorities: dict[str, str] = {}
        ordered: dict[str, Order] = {}
        # Only early release looks at the priority, and sample acceptance at what the
        # LIS says of the specimen: one indexed lookup for the batch, when they are on.
        if engine.rules.early_release or engine.rules.acceptance:
            from_lis = orders.orders_for(conn, {r.specimen_id for _, r in items})
            # A specimen's orders, oldest first, each adding what the ones before it did
            # not say (a test added later may come without the collection time).
            for order in from_lis:
                known = ordered.get(order.specimen_id)
                ordered[order.specimen_id] = order if known is None else _with_order(known, order)
            for order in [*(reading.orders if reading else ()), *from_lis]:
                before = priorities.get(order.specimen_id, "R")
                priorities[order.specimen_id] = most_urgent((before, order.priority))
        lots = [(u.reagent, u.lot) for _, r in items for u in r.reagents]
        return cls(
            release.previous_results(
                conn,
                (
                    (r.patient_id, r.test_code)
                    for _, r in items
                    if r.test_code in engine.delta_tests
                ),
                max(i for i, _ in items),
            ),
            release.specimen_patients(conn, (r.specimen_id for _, r in items)),
            release.reported_lots(conn, lots),
            priorities,
            ordered,
            recalls.recalled_among(conn, lots),
        )

    def context(
        self,
        result_id: int,
        result: Result,
        reading: InstrumentMessage | None,
        now: datetime,
        received_at: datetime | None = None,
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
            known = self.conditions.get(result.specimen_id)
            if known is None:
                known = SampleCondition.from_results(
                    r for r in reading.results if r.specimen_id == result.specimen_id
                )
                self.conditions[result.specimen_id] = known
            condition = known
            specimen = next(
                (s for s in reading.specimens if s.specimen_id == result.specimen_id), None
            )
            patient = next((p for p in reading.patients if p.patient_id == result.patient_id), None)
        order = self.ordered.get(result.specimen_id)
        if order is not None:
            specimen = _with_order(specimen or Specimen(result.specimen_id), order)
        return ResultContext(
            result,
            now,
            specimen=specimen,
            patient=patient,
            previous=PreviousResult(*previous) if previous else None,
            condition=condition,
            other_patient_ids=self.patients_of.get(result.specimen_id, ()),
            reported_lots=self.reported_lots,
            recalled_lots=self.recalled,
            priority=self.priorities.get(result.specimen_id, "R"),
            received_at=received_at,
        )


_Told = TypeVar("_Told", Specimen, Order)


def _with_order(specimen: _Told, order: Order) -> _Told:
    """The specimen as the analyser (or a first order) saw it, with what the LIS's order
    says of it where that said nothing (its type, container, collection time)."""
    return replace(
        specimen,
        specimen_type=specimen.specimen_type or order.specimen_type,
        container=specimen.container or order.container,
        collected_at=specimen.collected_at or order.collected_at,
    )


class QcBook:
    """The QC state one unit of work reads and changes: read from the store when the work
    starts, changed by the engine, written back before the work ends."""

    def __init__(
        self, tests: dict[TestKey, TestQc] | None = None, lots: dict[LotKey, LotQc] | None = None
    ) -> None:
        self._tests = tests or {}
        self._lots = lots or {}
        self._changed_tests: set[TestKey] = set()
        self._changed_lots: set[LotKey] = set()

    @classmethod
    def read(cls, conn: Connection, tests: Iterable[TestKey]) -> QcBook:
        return cls(qc_state.load_tests(conn, tests))

    def read_lots_of(self, conn: Connection, key: TestKey) -> None:
        """Every lot kept for a test."""
        for found, state in qc_state.lots_of(conn, *key).items():
            self._lots.setdefault(found, state)

    def read_lots(self, conn: Connection, wanted: Iterable[LotKey]) -> None:
        missing = {key for key in wanted if key not in self._lots}
        if missing:
            self._lots |= qc_state.load_lots(conn, missing)

    def test(self, key: TestKey) -> TestQc:
        return self._tests.get(key, NO_QC)

    def lots(self, key: TestKey) -> dict[str, LotQc]:
        """The lots of a test read so far, by lot."""
        return {lot: state for (i, t, lot), state in self._lots.items() if (i, t) == key}

    def test_keys(self) -> list[TestKey]:
        return list(self._tests)

    def lot(self, key: LotKey) -> LotQc:
        return self._lots.get(key, NO_LOT_QC)

    def change(self, key: TestKey, state: TestQc) -> None:
        if state is not self._tests.get(key):
            self._tests[key] = state
            self._changed_tests.add(key)

    def change_lots(self, key: TestKey, lots: Mapping[str, LotQc]) -> None:
        for lot, state in lots.items():
            self._lots[(*key, lot)] = state
            self._changed_lots.add((*key, lot))

    def write(self, conn: Connection, at: datetime) -> None:
        qc_state.save_tests(conn, {k: self._tests[k] for k in self._changed_tests}, at)
        qc_state.save_lots(conn, {k: self._lots[k] for k in self._changed_lots}, at)
        self._changed_tests.clear()
        self._changed_lots.clear()


def _lots_needed(gate: QcGate, book: QcBook, controls: Iterable[ControlResult]) -> set[LotKey]:
    needed: set[LotKey] = set()
    for control in controls:
        key = (control.result.instrument, control.result.test_code)
        needed |= {(*key, lot) for lot in gate.lots_needed(book.test(key), control)}
    return needed


def _record_control(
    conn: Connection,
    engine: Engine,
    book: QcBook,
    control: ControlResult,
    now: datetime,
    out: Assessment,
) -> QcOutcome:
    result = control.result
    key = (result.instrument, result.test_code)
    done = engine.record_control(book.test(key), book.lots(key), control, now)
    book.change(key, done.state)
    book.change_lots(key, done.lots)
    qc = done.outcome
    out.evaluations += 1
    if qc.opened_corrective_action:
        reason = "qc-rejected:" + ",".join(qc.evaluation.violations if qc.evaluation else ())
        action_id, listed = qc_records.open_corrective_action(
            conn, result.instrument, result.test_code, reason, now, qc.review_since
        )
        out.corrective_actions.append(action_id)
        failure = f"QC of {result.test_code} on {result.instrument} failed ({reason})"
        out.under_review += [(result_id, failure) for result_id in listed]
    return qc


def assess_message(
    conn: Connection,
    engine: Engine,
    stored: ingest.Stored,
    reading: InstrumentMessage,
    now: datetime,
    lis: Sender | None = None,
) -> Assessment:
    """Decide a stored message's results; with ``lis``, queue what is released for it, in
    the same transaction."""
    out = Assessment()
    patient_ids = dict(zip((id(r) for r in reading.results), stored.result_ids, strict=True))
    control_ids = dict(zip((id(c) for c in reading.controls), stored.control_ids, strict=True))
    book = QcBook.read(conn, {(r.instrument, r.test_code) for r, _ in reading.measurements()})
    book.read_lots(conn, _lots_needed(engine.gate, book, reading.controls))
    lookups = _Lookups.fetch(
        conn, [(patient_ids[id(r)], r) for r in reading.results], engine, reading
    )
    decided: list[tuple[int, Result, Decision]] = []
    evaluated: list[tuple[int, ControlResult, QcOutcome]] = []
    touched: dict[str, set[str]] = {}
    # Where each test's last control came, and each patient result: one sent before a
    # control of its test is confirmed once that control is evaluated.
    last_control: dict[TestKey, int] = {}
    decided_at: list[tuple[int, ResultContext]] = []
    for position, (result, control) in enumerate(reading.measurements()):
        key = (result.instrument, result.test_code)
        if control is not None:
            qc = _record_control(conn, engine, book, control, now, out)
            evaluated.append((control_ids[id(control)], control, qc))
            touched.setdefault(result.instrument, set()).add(result.test_code)
            last_control[key] = position
            continue
        result_id = patient_ids[id(result)]
        ctx = lookups.context(result_id, result, reading, now)
        state, decision = engine.decide(book.test(key), ctx)
        book.change(key, state)
        decided.append((result_id, result, decision))
        decided_at.append((position, ctx))
    confirmed = []
    for (result_id, result, decision), (position, ctx) in zip(decided, decided_at, strict=True):
        key = (result.instrument, result.test_code)
        if last_control.get(key, -1) > position:
            decision = engine.confirm(decision, book.test(key), ctx)
        confirmed.append((result_id, result, decision))
    decided = confirmed
    out.decisions = [(result_id, decision) for result_id, _, decision in decided]
    qc_records.record_evaluations(conn, evaluated, now)
    release.record_decisions(conn, decided, now)
    # Before any result is looked at again: one replaced by its re-run must not be.
    release.supersede_reruns(conn, [(i, r) for i, r, _ in decided], now)
    released = [(r, d) for _, r, d in decided if d.action is not Action.HOLD]
    if lis is not None:
        early = [(i, r, d) for i, r, d in decided if d.preliminary]
        queue_preliminary(conn, lis, early, now, reading.patients)
    for instrument, tests in sorted(touched.items()):
        states = {test: book.test((instrument, test)) for test in tests}
        later = redecide_held(conn, engine, instrument, states, now, lis)
        out.released_later += [result_id for result_id, _, _ in later]
        released += [(r, d) for _, r, d in later if d.action is not Action.HOLD]
    book.write(conn, now)
    if lis is not None:
        queue_released(conn, lis, released, reading.patients, now)
        if out.under_review:
            queue_review_notices(conn, lis, out.under_review, now)
    return out


def queue_preliminary(
    conn: Connection,
    lis: Sender,
    held: Sequence[tuple[int, Result, Decision]],
    now: datetime,
    patients: Sequence[Patient] = (),
    by: str | None = None,
) -> list[int]:
    """Q13: held results the rules (or ``by``, a biologist) let go early, to the LIS as
    preliminary (OBX-11 P) with the note; each is marked, so that its final, or a notice
    that its QC failed, follows."""
    if not held:
        return []
    release.mark_preliminary(conn, [result_id for result_id, _, _ in held], now, by)
    reported = [Reported(r, status="P", comments=d.comments) for _, r, d in held]
    return _enqueue(conn, lis, reported, patients, now)


def queue_doubts(
    conn: Connection, lis: Sender, held: Sequence[tuple[int, Result, Decision]], now: datetime
) -> list[int]:
    """Results sent as preliminary that their QC did not confirm (they stay held, now for
    more than a wait): the LIS is told they are under review."""
    if not held:
        return []
    release.mark_preliminary(conn, [result_id for result_id, _, _ in held], None)
    reported = [
        Reported(
            r,
            status="P",
            comments=(
                f"under review: {', '.join(d.reasons)}; the preliminary result sent is not "
                "confirmed",
            ),
        )
        for _, r, d in held
    ]
    return _enqueue(conn, lis, reported, (), now)


def queue_review_notices(
    conn: Connection, lis: Sender, listed: Sequence[tuple[int, str]], now: datetime
) -> list[int]:
    """Q5/Q9: results the LIS already has, released before a QC failure, sent again with
    a note that they are under review (and OBX-11 as the LIS is configured to take it)."""
    failures = dict(listed)
    notices = [
        Reported(
            result,
            status=lis.review_status,
            comments=(f"under review: {failures[result_id]} after this result was released",),
        )
        for result_id, result in release.results_by_id(conn, failures)
    ]
    return _enqueue(conn, lis, notices, (), now)


def queue_released(
    conn: Connection,
    lis: Sender,
    released: Sequence[tuple[Result, Decision]],
    patients: Sequence[Patient],
    now: datetime,
) -> list[int]:
    """One ORU^R01 per specimen and instrument of the results decided, into the outbox:
    a released result with the comments that must travel with it; a rejected one (S1)
    without its value, as not obtained (OBX-11 X), with the reasons of the rejection."""
    reported = []
    for result, decision in released:
        if decision.action is Action.REJECT:
            why = tuple(f.message for f in decision.findings if f.action is Action.REJECT)
            reported.append(Reported(result, status="X", comments=(*why, *decision.comments)))
        else:
            # A correction or a preliminary result, as the analyser marked it (R.9).
            status = result.status if result.status in ("C", "P") else "F"
            reported.append(Reported(result, status=status, comments=decision.comments))
    return _enqueue(conn, lis, reported, patients, now)


def _enqueue(
    conn: Connection,
    lis: Sender,
    reported: Sequence[Reported],
    patients: Sequence[Patient],
    now: datetime,
) -> list[int]:
    # Results released after a hold, by a person or a later message: their patient as the
    # specimen's first message gave it (PID-7, PID-8), not as nobody.
    known = {p.patient_id for p in patients}
    others = {r.result.specimen_id for r in reported if r.result.patient_id not in known}
    if others:
        patients = [*patients, *release.specimens_patients(conn, others)]
    return [
        outbox.enqueue(conn, b.specimen_id, b.instrument, b.control_id, b.message, now)
        for b in by_specimen(reported, patients, now, lis, new_control_id)
    ]


def redecide_held(
    conn: Connection,
    engine: Engine,
    instrument: str,
    states: Mapping[str, TestQc],
    now: datetime,
    lis: Sender | None = None,
) -> list[tuple[int, Result, Decision]]:
    """Look again at the held results of some tests of an instrument, each under its QC
    state in ``states``; record the decisions that changed, and give those that end the
    hold. With ``lis``, a result the rules now let go early is sent as preliminary, and
    one sent so whose QC failed gets its notice (Q13)."""
    # A result a person asked a re-run of waits for its re-run, whatever QC says now.
    held = [h for h in release.held_results(conn, instrument, states) if not h.rerun_requested]
    lookups = _Lookups.fetch(conn, [(h.result_id, h.result) for h in held], engine)
    before = release.current_decisions(conn, [h.result_id for h in held])
    changed = []
    preliminary = []
    doubted = []
    reasoned = []
    for h in held:
        result_id, result, early_by = h.result_id, h.result, h.early_by
        state = states[result.test_code]
        last = before.get(result_id)
        decision = _decide_held(engine, state, lookups, h, last, now)
        decided = (result_id, result, decision)
        # Sent early by a biologist, it stands while it only waits for QC, whichever wait.
        stands = decision.preliminary or (
            early_by is not None and qc_waits(decision.findings) is not None
        )
        if decision.action is not Action.HOLD:
            changed.append(decided)
        elif lis is not None and decision.preliminary and not h.sent_early:
            preliminary.append(decided)
        elif lis is not None and h.sent_early and not stands:
            doubted.append(decided)
        elif _holds_for_other_reasons(decision, last):
            # Still held, but no longer for what the latest decision says (its QC came,
            # a critical value remains): the page shows why it is held now. One a person
            # sent early keeps the note that says so while that preliminary stands.
            if early_by is not None and stands and not decision.preliminary:
                decision = Decision(decision.action, decision.findings + _early_note(last))
            reasoned.append((result_id, result, decision))
    release.record_decisions(conn, [*changed, *preliminary, *doubted, *reasoned], now)
    if lis is not None:
        queue_preliminary(conn, lis, preliminary, now)
        queue_doubts(conn, lis, doubted, now)
    return changed


def _decide_held(
    engine: Engine,
    state: TestQc,
    lookups: _Lookups,
    held: release.Held,
    last: release.StoredDecision | None,
    now: datetime,
) -> Decision:
    """A held result decided again, without the message it came in: what its latest
    decision (``last``) found of the result itself stands."""
    standing = standing_findings(last.findings) if last is not None else None
    ctx = lookups.context(held.result_id, held.result, None, now, held.received_at)
    return engine.redecide(state, ctx, standing)


def _holds_for_other_reasons(decision: Decision, before: release.StoredDecision | None) -> bool:
    """A hold whose reasons are not those of the decision stored before it."""
    if before is None:
        return True
    held_for = {f.code for f in before.findings if f.action is not Action.RELEASE}
    return set(decision.reasons) != held_for


def _early_note(before: release.StoredDecision | None) -> tuple[Finding, ...]:
    return tuple(f for f in before.findings if f.code == EARLY_RELEASE) if before else ()


@dataclass(frozen=True, slots=True)
class Redecided:
    """What the engine decides of a held result now, and its QC findings among that."""

    held: release.Held
    decision: Decision
    qc: tuple[Finding, ...]
    """Why the QC of its test on its instrument does not let it go now (Q1): what no
    person may release it over."""


def decide_again(
    conn: Connection, engine: Engine, held: Sequence[release.Held], now: datetime
) -> list[Redecided]:
    """The engine's decision now on held results, recording nothing: the QC state of
    their tests and the lookups of a message, read once for them all."""
    if not held:
        return []
    book = QcBook.read(conn, {(h.result.instrument, h.result.test_code) for h in held})
    lookups = _Lookups.fetch(conn, [(h.result_id, h.result) for h in held], engine)
    before = release.current_decisions(conn, [h.result_id for h in held])
    out = []
    for h in held:
        result = h.result
        state = book.test((result.instrument, result.test_code))
        last = before.get(h.result_id)
        decision = _decide_held(engine, state, lookups, h, last, now)
        qc = engine.gate.findings(
            state, result.instrument, result.test_code, now, result.completed_at, h.received_at
        )
        out.append(Redecided(h, decision, tuple(qc)))
    return out


#: The conversion a migration leaves when the QC state of a database that already held
#: results must be made from its history.
QC_STATE_CONVERSION = "qc-state"
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


def convert_history(conn: Connection, engine: Engine) -> int | None:
    """Once in a database's life, when a migration asks for it: make the QC state rows
    from the history stored before they existed, by replaying, in the order they
    happened, every control and patient result, the approvals of the lab's own limits
    and the events that void QC or unlock a method; the corrective actions still open
    stay open. Returns how many control results were replayed, or None when there was
    nothing to do."""
    if not qc_state.conversion_pending(conn, QC_STATE_CONVERSION):
        return None
    book = QcBook()
    # People's acts are few: kept in memory, each applied before the first result stored
    # after it. The results themselves are read as a stream.
    acts: list[tuple[datetime, int, Callable[[], object]]] = []
    for limits in qc_records.approved_limits(conn):
        proposal = LimitsProposal(
            limits.instrument, limits.test_code, limits.lot, limits.mean, limits.sd, limits.results
        )
        acts.append((limits.approved_at, len(acts), partial(_approve, book, proposal)))
    for event in qc_records.qc_events_since(conn, _BEGINNING):
        acts.append((event.at, len(acts), partial(_replay_event, engine, book, event)))
    waiting = sorted(acts, key=lambda act: (act[0], act[1]))
    replayed = 0
    for result, control, stored_at in qc_records.measurements(conn):
        while waiting and waiting[0][0] <= stored_at:
            waiting.pop(0)[2]()
        key = (result.instrument, result.test_code)
        if control is None:
            book.change(key, engine.observe_patient(book.test(key), result, stored_at))
        else:
            done = engine.record_control(book.test(key), book.lots(key), control, stored_at)
            book.change(key, done.state)
            book.change_lots(key, done.lots)
            replayed += 1
    for _, _, act in waiting:
        act()
    still_open = {(a.instrument, a.test_code): a for a in qc_records.open_corrective_actions(conn)}
    # Every test replayed, and those with an action open that the replay never met.
    for key in dict.fromkeys([*book.test_keys(), *still_open]):
        state = book.test(key)
        action = still_open.get(key)
        if action is not None:
            # Open still: as the replay left it (its failed run and review anchor), with
            # the record's time and reason.
            state = replace(
                state,
                corrective_action_since=action.opened_at,
                corrective_action_reason=action.reason.removeprefix("qc-rejected:"),
            )
        elif state.corrective_action_since is not None:
            # Closed by a person, which the replay does not know: its runs went on without
            # moving the review anchor, which is then when QC was last in control, as
            # migration 0019 has it for states kept before.
            state = replace(
                state,
                corrective_action_since=None,
                corrective_action_reason="",
                corrective_action_run="",
                accepted_run_at=state.last_in_control_at,
            )
        book.change(key, state)
    book.write(conn, sql.utcnow())
    qc_state.conversion_done(conn, QC_STATE_CONVERSION)
    return replayed


def _approve(book: QcBook, proposal: LimitsProposal) -> None:
    key = (proposal.instrument, proposal.test)
    lot = (*key, proposal.lot)
    book.change_lots(key, {proposal.lot: QcGate.approve(book.lot(lot), proposal)})


def _replay_event(engine: Engine, book: QcBook, event: qc_records.QcEvent) -> None:
    key = (event.instrument, event.test_code)
    if event.kind == "unlock":
        state, lots = engine.gate.unlock(book.test(key), book.lots(key))
        book.change(key, state)
        book.change_lots(key, lots)
    else:
        book.change(key, engine.gate.void(book.test(key), event.kind, event.at))
