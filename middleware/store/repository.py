"""Repository functions: the only way the rest of the code reads or writes the database.

Each takes an open SQLAlchemy ``Connection`` inside a transaction that the caller (the
store writer, or a reader) owns, so several writes can share one commit.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Connection,
    Table,
    bindparam,
    func,
    select,
    tuple_,
    union_all,
)

from middleware.domain import (
    ControlResult,
    InstrumentMessage,
    Measurement,
    Order,
    ReagentUse,
    Result,
)
from middleware.engine.decision import Decision
from middleware.engine.qc import QcOutcome
from middleware.store.schema import (
    audit_log,
    control_limits,
    control_results,
    corrective_actions,
    decisions,
    messages,
    open_holds,
    orders,
    qc_evaluations,
    qc_events,
    qc_reviews,
    quarantine,
    raw_transmissions,
    reagent_lots,
    reagent_uses,
    results,
    specimens,
)
from middleware.store.sql import upsert, upsert_in, utc


def utcnow() -> datetime:
    return datetime.now(UTC)


#: The longest identifier (specimen, patient, test code, reagent, lot) kept, in UTF-8
#: bytes: PostgreSQL refuses index entries past about 2700 bytes, and an index may hold
#: two of them. Nothing real comes near it; a message that does is quarantined.
MAX_KEY_BYTES = 1000


@dataclass(frozen=True, slots=True)
class RawSpan:
    """Bytes of one connection's stream, from ``stream_offset`` on, and when they came."""

    connection: str
    connection_id: str
    instrument: str
    stream_offset: int
    data: bytes
    received_at: datetime
    last_received_at: datetime


@dataclass(slots=True)
class Delivery:
    """One message as it arrived on one connection, read or not."""

    connection: str
    instrument: str
    raw: bytes
    received_at: datetime
    text: str
    """The message's records, CR-separated, as the link delivered them."""
    record_count: int = 0
    reading: InstrumentMessage | None = None
    """What the driver made of it; None when it could not be read at all."""
    problems: list[str] = field(default_factory=list)
    """Why (part of) it goes to quarantine."""
    notes: list[str] = field(default_factory=list)
    """What is worth knowing about it but does not stop it (a tolerated departure)."""
    span: RawSpan | None = None
    """Where its bytes sit in the connection's stream (None for bytes from elsewhere)."""


@dataclass(frozen=True, slots=True)
class Stored:
    raw_id: int
    message_id: int | None
    duplicate: bool = False
    quarantined: bool = False
    results: int = 0
    controls: int = 0
    result_ids: tuple[int, ...] = ()
    control_ids: tuple[int, ...] = ()


def content_hash(instrument: str, text: str) -> str:
    """Identifies a message's content: the same records from the same instrument are the
    same message, however often they are sent."""
    normalised = "\r".join(line for line in text.replace("\n", "\r").split("\r") if line)
    return hashlib.sha256(f"{instrument}\x00{normalised}".encode()).hexdigest()


# The statements of every message, built once: building one costs more than running it.
_INSERT_RAW = raw_transmissions.insert().returning(raw_transmissions.c.id)
_INSERT_MESSAGE = messages.insert().returning(messages.c.id)
_INSERT_DECISIONS = decisions.insert()
_INSERT_EVALUATIONS = qc_evaluations.insert()
_EARLIER_COPY = (
    select(messages.c.id, messages.c.settled_at)
    .where(
        messages.c.instrument == bindparam("instrument"),
        messages.c.content_sha256 == bindparam("digest"),
    )
    .order_by(messages.c.id.desc())
    .limit(1)
)
_SETTLE = (
    messages.update()
    .where(messages.c.id.in_(bindparam("ids", expanding=True)), messages.c.settled_at.is_(None))
    .values(settled_at=bindparam("at"))
)
_SPECIMEN_PATIENTS = (
    select(results.c.specimen_id, results.c.patient_id)
    .where(results.c.specimen_id.in_(bindparam("ids", expanding=True)))
    .distinct()
)
_REPORTED_LOTS = select(reagent_lots.c.reagent, reagent_lots.c.lot, reagent_lots.c.expiry).where(
    tuple_(reagent_lots.c.reagent, reagent_lots.c.lot).in_(bindparam("pairs", expanding=True))
)
_RELEASE_HOLDS = open_holds.delete().where(
    open_holds.c.result_id.in_(bindparam("ids", expanding=True))
)
_HELD = (
    select(results)
    .join(open_holds, open_holds.c.result_id == results.c.id)
    .where(
        open_holds.c.instrument == bindparam("instrument"),
        open_holds.c.test_code.in_(bindparam("tests", expanding=True)),
    )
    .order_by(results.c.id)
)


@functools.lru_cache(maxsize=8)
def _new_only(dialect: str, table: Table, key: str) -> Any:
    """INSERT ... ON CONFLICT (key) DO NOTHING, built once per database and table."""
    return upsert_in(dialect, table).on_conflict_do_nothing(index_elements=[key])


def _raw(
    conn: Connection, d: Delivery, message_id: int | None, outcome: str, duplicate: bool = False
) -> int:
    span = d.span
    return int(
        conn.execute(
            _INSERT_RAW,
            {
                "connection": d.connection,
                "instrument": d.instrument,
                "direction": "in",
                "received_at": span.received_at if span else d.received_at,
                "last_received_at": span.last_received_at if span else d.received_at,
                "connection_id": span.connection_id if span else None,
                "stream_offset": span.stream_offset if span else None,
                "data": d.raw,
                "sha256": hashlib.sha256(d.raw).hexdigest(),
                "size": len(d.raw),
                "message_id": message_id,
                "duplicate": duplicate,
                "outcome": outcome,
            },
        ).scalar_one()
    )


def keep_raw(conn: Connection, span: RawSpan, outcome: str) -> int:
    """Keep bytes that made no message: a transfer's closing EOT, noise on the line."""
    d = Delivery(span.connection, span.instrument, span.data, span.received_at, "", span=span)
    return _raw(conn, d, None, outcome)


def settle(conn: Connection, message_ids: Sequence[int], at: datetime) -> None:
    """The analyser showed it had our ACK of these messages (EOT, or its next frame):
    from now on an identical message from it is a new one."""
    if message_ids:
        conn.execute(_SETTLE, {"ids": list(message_ids), "at": at})


def oversize_keys(reading: InstrumentMessage) -> list[str]:
    """Identifiers too long to index: the message is kept raw and quarantined instead."""
    found: list[str] = []

    def check(what: str, value: str) -> None:
        if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            found.append(f"{what} longer than {MAX_KEY_BYTES} bytes ({value[:40]}...)")

    produced = [*reading.results, *(c.result for c in reading.controls)]
    for r in produced:
        check("specimen id", r.specimen_id)
        check("patient id", r.patient_id)
        check("test code", r.test_code)
        for use in r.reagents:
            check("reagent", use.reagent)
            check("reagent lot", use.lot)
    for s in reading.specimens:
        check("specimen id", s.specimen_id)
    return sorted(set(found))


def _quarantine(
    conn: Connection, d: Delivery, raw_id: int, message_id: int | None, reason: str
) -> None:
    reason = reason or "unreadable"
    conn.execute(
        quarantine.insert(),
        {
            "raw_id": raw_id,
            "message_id": message_id,
            "connection": d.connection,
            "instrument": d.instrument,
            "reason": reason,
            "data": d.raw,
            "received_at": d.received_at,
        },
    )


def store_delivery(conn: Connection, d: Delivery, at: datetime | None = None) -> Stored:
    """Keep a delivery: its raw bytes always; its message and results once; what could not
    be read or mapped in quarantine with the reason."""
    reading = d.reading
    if reading is not None and (oversize := oversize_keys(reading)):
        d = replace(d, reading=None, problems=[*d.problems, *oversize])
        reading = None
    if reading is None:
        raw_id = _raw(conn, d, None, "quarantine")
        _quarantine(conn, d, raw_id, None, "; ".join(d.problems))
        return Stored(raw_id, None, quarantined=True)

    digest = content_hash(d.instrument, d.text)
    # The same content again is a re-send only while the analyser has not shown that it
    # had our ACK of the earlier copy; after that it is a new measurement (a re-run).
    earlier = conn.execute(
        _EARLIER_COPY, {"instrument": d.instrument, "digest": digest}
    ).one_or_none()
    if earlier is not None and earlier.settled_at is None:
        raw_id = _raw(conn, d, earlier.id, "duplicate", duplicate=True)
        return Stored(raw_id, earlier.id, duplicate=True)

    message_id = int(
        conn.execute(
            _INSERT_MESSAGE,
            {
                "instrument": d.instrument,
                "connection": d.connection,
                "sender": reading.sender,
                "content_sha256": digest,
                "record_count": d.record_count,
                "text": d.text,
                "received_at": d.received_at,
                "problems": "\n".join([*d.problems, *d.notes, *reading.problems]),
            },
        ).scalar_one()
    )
    nothing = not (reading.results or reading.controls or reading.queries or reading.orders)
    quarantined = bool(d.problems) or (nothing and bool(reading.problems))
    raw_id = _raw(conn, d, message_id, "quarantine" if quarantined else "message")
    _specimens(conn, reading, message_id)
    stored_at = at or utcnow()
    patient_ids = _insert_results(
        conn, results, [(r, {}) for r in reading.results], message_id, stored_at
    )
    control_ids = _insert_results(
        conn,
        control_results,
        [
            (c.result, {"control_material": c.control_material, "lot": c.lot, "level": c.level})
            for c in reading.controls
        ],
        message_id,
        stored_at,
    )
    _reagent_uses(conn, reading.results, patient_ids, "result_id", d.received_at)
    _reagent_uses(
        conn,
        [c.result for c in reading.controls],
        control_ids,
        "control_result_id",
        d.received_at,
    )
    if quarantined:
        reasons = d.problems or reading.problems
        _quarantine(conn, d, raw_id, message_id, "; ".join(reasons))
    return Stored(
        raw_id,
        message_id,
        quarantined=quarantined,
        results=len(reading.results),
        controls=len(reading.controls),
        result_ids=tuple(patient_ids),
        control_ids=tuple(control_ids),
    )


def _specimens(conn: Connection, reading: InstrumentMessage, message_id: int) -> None:
    rows = {
        s.specimen_id: {
            "specimen_id": s.specimen_id,
            "patient_id": s.patient_id,
            "specimen_type": s.specimen_type,
            "container": s.container,
            "collected_at": s.collected_at,
            "received_at": s.received_at,
            "analysed_at": s.analysed_at,
            "first_message_id": message_id,
        }
        for s in reading.specimens
        if s.specimen_id
    }
    if rows:
        conn.execute(_new_only(conn.dialect.name, specimens, "specimen_id"), list(rows.values()))


def _result_row(r: Result, message_id: int, stored_at: datetime) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "specimen_id": r.specimen_id,
        "patient_id": r.patient_id,
        "test_code": r.test_code,
        "instrument_test_code": r.instrument_test_code,
        "value_text": r.value.text,
        "value_number": r.value.number,
        "censor": r.value.censor,
        "units": r.units,
        "reference_range": r.reference_range,
        "abnormal_flags": ",".join(r.abnormal_flags),
        "instrument_flags": "\n".join(r.instrument_flags),
        "status": r.status,
        "operator": r.operator,
        "instrument": r.instrument,
        "module": r.module,
        "comments": "\n".join(c.text for c in r.comments),
        "dilution": r.dilution,
        "sequence": r.sequence,
        "completed_at": r.completed_at,
        "stored_at": stored_at,
    }


def _insert_results(
    conn: Connection,
    table: Table,
    items: Sequence[tuple[Result, dict[str, Any]]],
    message_id: int,
    stored_at: datetime,
) -> list[int]:
    if not items:
        return []
    rows = [_result_row(r, message_id, stored_at) | extra for r, extra in items]
    # RETURNING over many rows comes back in insertion order with sort_by_parameter_order.
    returned = conn.execute(
        table.insert().returning(table.c.id, sort_by_parameter_order=True), rows
    )
    return [int(row[0]) for row in returned]


def _lot_id(conn: Connection, use: ReagentUse) -> int:
    found = conn.execute(
        select(reagent_lots.c.id).where(
            reagent_lots.c.reagent == use.reagent, reagent_lots.c.lot == use.lot
        )
    ).scalar_one_or_none()
    if found is not None:
        return int(found)
    conn.execute(
        upsert(conn, reagent_lots).on_conflict_do_nothing(index_elements=["reagent", "lot"]),
        {
            "reagent": use.reagent,
            "lot": use.lot,
            "kind": use.kind,
            "serial": use.serial,
            "expiry": use.expiry,
            "first_seen_at": utcnow(),
        },
    )
    return int(
        conn.execute(
            select(reagent_lots.c.id).where(
                reagent_lots.c.reagent == use.reagent, reagent_lots.c.lot == use.lot
            )
        ).scalar_one()
    )


def _reagent_uses(
    conn: Connection,
    produced: Sequence[Result],
    ids: Sequence[int],
    column: str,
    received_at: datetime,
) -> None:
    rows = [
        {
            "reagent_lot_id": _lot_id(conn, use),
            column: result_id,
            "instrument": result.instrument,
            "test_code": use.test_code or result.test_code,
            "calibration_id": use.calibration_id,
            "used_at": result.completed_at or received_at,
        }
        for result, result_id in zip(produced, ids, strict=True)
        for use in result.reagents
        if use.lot
    ]
    if rows:
        conn.execute(reagent_uses.insert(), rows)


# --- orders (the worklist host queries are answered from) -------------------------------


def add_order(conn: Connection, order: Order, source: str = "lis") -> int:
    return int(
        conn.execute(
            orders.insert().returning(orders.c.id),
            {
                "specimen_id": order.specimen_id,
                "patient_id": order.patient_id,
                "test_codes": ",".join(order.test_codes),
                "priority": order.priority,
                "source": source,
                "ordered_at": order.ordered_at,
                "created_at": utcnow(),
            },
        ).scalar_one()
    )


def orders_for(conn: Connection, specimen_ids: Iterable[str]) -> list[Order]:
    rows = conn.execute(
        select(orders).where(orders.c.specimen_id.in_(list(specimen_ids))).order_by(orders.c.id)
    )
    return [
        Order(
            specimen_id=row.specimen_id,
            test_codes=tuple(c for c in row.test_codes.split(",") if c),
            priority=row.priority,
            ordered_at=row.ordered_at,
            patient_id=row.patient_id,
        )
        for row in rows
    ]


# --- audit ---------------------------------------------------------------------------------


def audit(
    conn: Connection, actor: str, action: str, subject: str = "", detail: object = ""
) -> None:
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    conn.execute(
        audit_log.insert(),
        {"at": utcnow(), "actor": actor, "action": action, "subject": subject, "detail": text},
    )


# --- reading back --------------------------------------------------------------------------


def results_for_specimen(conn: Connection, specimen_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(results).where(results.c.specimen_id == specimen_id).order_by(results.c.id)
    )
    return [dict(row._mapping) for row in rows]


def results_with_lot(conn: Connection, lot: str) -> list[dict[str, Any]]:
    """Every patient and control result produced with a reagent lot."""
    out: list[dict[str, Any]] = []
    for table, column in ((results, "result_id"), (control_results, "control_result_id")):
        query = (
            select(table, reagent_lots.c.reagent, reagent_lots.c.lot.label("reagent_lot"))
            .join(reagent_uses, reagent_uses.c[column] == table.c.id)
            .join(reagent_lots, reagent_lots.c.id == reagent_uses.c.reagent_lot_id)
            .where(reagent_lots.c.lot == lot)
            .order_by(table.c.id)
        )
        kind = "control" if table is control_results else "patient"
        out.extend(dict(row._mapping) | {"kind": kind} for row in conn.execute(query))
    return out


def counts(conn: Connection) -> dict[str, int]:
    tables = (raw_transmissions, messages, specimens, results, control_results, quarantine)
    return {
        t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in tables
    }


def quarantined(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(quarantine).order_by(quarantine.c.id))
    return [dict(row._mapping) for row in rows]


# --- what the engine needs, and what it decided -------------------------------------------


@functools.lru_cache(maxsize=64)
def _latest_results(pairs: int) -> CompoundSelect[Any]:
    """The latest numeric results of ``pairs`` (patient, test) pairs, one index lookup
    each; built once per number of pairs, since building it costs more than running it."""
    columns = (
        results.c.id,
        results.c.patient_id,
        results.c.test_code,
        results.c.value_number,
        results.c.completed_at,
        results.c.stored_at,
    )
    latest = [
        select(*columns)
        .where(
            results.c.patient_id == bindparam(f"p{i}"),
            results.c.test_code == bindparam(f"t{i}"),
            results.c.id < bindparam("before"),
            results.c.value_number.is_not(None),
            results.c.censor == "",
        )
        .order_by(results.c.id.desc())
        .limit(bindparam(f"k{i}"))
        .subquery()
        for i in range(pairs)
    ]
    return union_all(*(select(sub) for sub in latest))


def previous_results(
    conn: Connection, wanted: Iterable[tuple[str, str]], before_id: int
) -> dict[tuple[str, str], list[tuple[int, Decimal, datetime]]]:
    """For each (patient, test) wanted, its latest numeric results stored before
    ``before_id``, oldest first: as many as it is wanted, and one more, so that each
    result of a batch finds the one before it. One round of index lookups, however long
    the patient's history."""
    counts: dict[tuple[str, str], int] = {}
    for patient, test in wanted:
        if patient:
            counts[(patient, test)] = counts.get((patient, test), 0) + 1
    if not counts:
        return {}
    ordered = sorted(counts.items())
    params: dict[str, object] = {"before": before_id}
    for i, ((patient, test), count) in enumerate(ordered):
        params |= {f"p{i}": patient, f"t{i}": test, f"k{i}": count + 1}
    rows = conn.execute(_latest_results(len(ordered)), params).all()
    found: dict[tuple[str, str], list[tuple[int, Decimal, datetime]]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        moment = utc(row.completed_at or row.stored_at) or row.stored_at
        found.setdefault((row.patient_id, row.test_code), []).append(
            (row.id, Decimal(row.value_number), moment)
        )
    return found


def specimen_patients(conn: Connection, specimen_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every patient each specimen id was seen with."""
    wanted = sorted(set(specimen_ids))
    seen: dict[str, set[str]] = {s: set() for s in wanted}
    if wanted:
        rows = conn.execute(_SPECIMEN_PATIENTS, {"ids": wanted})
        for row in rows:
            if row.patient_id:
                seen[row.specimen_id].add(row.patient_id)
    return {s: tuple(sorted(p)) for s, p in seen.items()}


def reported_lots(
    conn: Connection, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], date | None]:
    """The expiry each reagent lot (by reagent and lot) had when an analyser first
    reported it."""
    pairs = {pair for pair in wanted if pair[1]}
    if not pairs:
        return {}
    rows = conn.execute(_REPORTED_LOTS, {"pairs": sorted(pairs)})
    return {(r.reagent, r.lot): r.expiry for r in rows}


def record_decisions(
    conn: Connection,
    decided: Iterable[tuple[int, Result, Decision]],
    at: datetime,
    by: str = "engine",
) -> None:
    rows = [
        {
            "result_id": result_id,
            "instrument": result.instrument,
            "test_code": result.test_code,
            "specimen_id": result.specimen_id,
            "action": decision.action.value,
            "reasons": ",".join(decision.reasons),
            "findings": json.dumps(
                [
                    {
                        "code": f.code,
                        "message": f.message,
                        "action": f.action.value,
                        "urgent": f.urgent,
                        "comment": f.comment,
                    }
                    for f in decision.findings
                ]
            ),
            "urgent": decision.urgent,
            "comments": "\n".join(decision.comments),
            "decided_at": at,
            "decided_by": by,
        }
        for result_id, result, decision in decided
    ]
    if not rows:
        return
    conn.execute(_INSERT_DECISIONS, rows)
    # The open holds are what a new QC or a closed corrective action looks at again: kept
    # as their own rows so that finding them costs the same whatever the history.
    held = {r["result_id"]: r for r in rows if r["action"] == "hold"}
    done = [r["result_id"] for r in rows if r["result_id"] not in held]
    if done:
        conn.execute(_RELEASE_HOLDS, {"ids": done})
    if held:
        conn.execute(
            _new_only(conn.dialect.name, open_holds, "result_id"),
            [
                {
                    "result_id": r["result_id"],
                    "instrument": r["instrument"],
                    "test_code": r["test_code"],
                    "held_since": at,
                }
                for r in held.values()
            ],
        )


def _four_places(z: Fraction) -> Decimal | None:
    """z to four places; a z too far out for any limit is still stored, not refused."""
    try:
        value = Decimal(float(z))
    except OverflowError:
        return None
    return value.quantize(Decimal("0.0001"), context=Context(prec=400))


def record_evaluations(
    conn: Connection, evaluated: Sequence[tuple[int, ControlResult, QcOutcome]], at: datetime
) -> None:
    rows = []
    for control_id, control, outcome in evaluated:
        evaluation, target = outcome.evaluation, outcome.target
        rows.append(
            {
                "control_result_id": control_id,
                "instrument": control.result.instrument,
                "test_code": control.result.test_code,
                "run": outcome.run,
                "level": outcome.level,
                "z": _four_places(evaluation.z) if evaluation else None,
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
        conn.execute(_INSERT_EVALUATIONS, rows)


def open_corrective_action(
    conn: Connection,
    instrument: str,
    test_code: str,
    reason: str,
    at: datetime,
    review_since: datetime | None,
) -> int:
    """Q9: open the record; list for review the results released since the last good QC."""
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
    if ids:
        conn.execute(
            qc_reviews.insert(),
            [{"corrective_action_id": action_id, "result_id": i, "listed_at": at} for i in ids],
        )
    return action_id


def held_results(
    conn: Connection, instrument: str, tests: Iterable[str]
) -> list[tuple[int, Result]]:
    """Results of these tests on an instrument whose latest decision is a hold, oldest
    first."""
    rows = conn.execute(_HELD, {"instrument": instrument, "tests": sorted(set(tests))})
    return [(row.id, _result_of(row)) for row in rows]


def _result_of(row: Any) -> Result:
    value = Measurement(row.value_text, row.value_number, row.censor)
    return Result(
        specimen_id=row.specimen_id,
        test_code=row.test_code,
        instrument_test_code=row.instrument_test_code,
        value=value,
        units=row.units,
        reference_range=row.reference_range,
        abnormal_flags=tuple(f for f in row.abnormal_flags.split(",") if f),
        instrument_flags=tuple(f for f in row.instrument_flags.split("\n") if f),
        status=row.status,
        operator=row.operator,
        completed_at=utc(row.completed_at),
        instrument=row.instrument,
        module=row.module,
        patient_id=row.patient_id,
        sequence=row.sequence,
    )


def latest_decisions(conn: Connection) -> list[dict[str, Any]]:
    """The current decision of every result, newest result first."""
    latest = select(func.max(decisions.c.id)).group_by(decisions.c.result_id).scalar_subquery()
    rows = conn.execute(
        select(decisions).where(decisions.c.id.in_(latest)).order_by(decisions.c.result_id)
    )
    return [dict(row._mapping) for row in rows]


def measurements_since(
    conn: Connection, since: datetime
) -> list[tuple[Result, ControlResult | None, datetime]]:
    """Patient and control results stored since ``since``, in the order they arrived, with
    the reagent lots each used (to make the QC state of a database kept before it was)."""
    recent_patients = select(results.c.id).where(results.c.stored_at >= since)
    recent_controls = select(control_results.c.id).where(control_results.c.stored_at >= since)
    lots = (
        select(
            reagent_uses.c.result_id,
            reagent_uses.c.control_result_id,
            reagent_lots.c.reagent,
            reagent_lots.c.lot,
        )
        .join(reagent_lots, reagent_lots.c.id == reagent_uses.c.reagent_lot_id)
        .where(
            reagent_uses.c.result_id.in_(recent_patients)
            | reagent_uses.c.control_result_id.in_(recent_controls)
        )
    )
    patient_lots: dict[int, list[ReagentUse]] = {}
    control_lots: dict[int, list[ReagentUse]] = {}
    for row in conn.execute(lots):
        use = ReagentUse(row.reagent, row.lot)
        if row.result_id is not None:
            patient_lots.setdefault(row.result_id, []).append(use)
        else:
            control_lots.setdefault(row.control_result_id, []).append(use)
    out: list[tuple[int, int, Result, ControlResult | None, datetime]] = []
    for row in conn.execute(select(results).where(results.c.stored_at >= since)):
        result = replace(_result_of(row), reagents=tuple(patient_lots.get(row.id, ())))
        out.append((row.message_id, 1, result, None, utc(row.stored_at) or since))
    for row in conn.execute(select(control_results).where(control_results.c.stored_at >= since)):
        result = replace(_result_of(row), reagents=tuple(control_lots.get(row.id, ())))
        control = ControlResult(result, row.control_material, row.lot, row.level)
        out.append((row.message_id, 0, result, control, utc(row.stored_at) or since))
    out.sort(key=lambda item: (item[0], item[1]))
    return [(result, control, at) for _, _, result, control, at in out]


def open_corrective_actions(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(corrective_actions)
        .where(corrective_actions.c.closed_at.is_(None))
        .order_by(corrective_actions.c.id)
    )
    return [dict(row._mapping) | {"opened_at": utc(row.opened_at)} for row in rows]


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


def approved_limits(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(control_limits).order_by(control_limits.c.id))
    return [dict(row._mapping) | {"approved_at": utc(row.approved_at)} for row in rows]


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


def qc_events_since(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    rows = conn.execute(select(qc_events).where(qc_events.c.at >= since).order_by(qc_events.c.id))
    return [dict(row._mapping) | {"at": utc(row.at)} for row in rows]
