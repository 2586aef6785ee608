"""What arrives, kept: every byte a connection received, each message once, its
specimens, results, controls and the reagent lots they used, and what could not be read
in quarantine with the reason.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    func,
    select,
)
from sqlalchemy.engine import Dialect

from middleware.domain import (
    InstrumentMessage,
    ReagentUse,
    Result,
)
from middleware.store.direct import Direct, run_text
from middleware.store.schema import (
    control_results,
    messages,
    quarantine,
    raw_transmissions,
    reagent_lots,
    reagent_uses,
    results,
    specimens,
)
from middleware.store.sql import new_only, utcnow

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
    identity: str = ""
    """What makes a copy sent again the same message, when not its whole text: of an HL7
    message its sender, control id and segments after the MSH, since a sender may build
    the header anew (its time, MSH-7) to send it again."""


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
    reason: str = ""
    """Why it is in quarantine, when it is."""
    reading: InstrumentMessage | None = None
    """What was stored of a new message, for the rules to decide: not a copy of one stored
    before, nor one kept raw only (unreadable, or with identifiers too long to index)."""


def content_hash(instrument: str, text: str) -> str:
    """Identifies a message's content: the same records from the same instrument are the
    same message, however often they are sent."""
    normalised = "\r".join(line for line in text.replace("\n", "\r").split("\r") if line)
    return hashlib.sha256(f"{instrument}\x00{normalised}".encode()).hexdigest()


# The statements of every message, built once and run on the driver's cursor: building
# one costs more than running it, and SQLAlchemy's work at each execution as much again.
_INSERT_RAW = Direct(raw_transmissions.insert().returning(raw_transmissions.c.id))


_INSERT_MESSAGE = Direct(messages.insert().returning(messages.c.id))


_EARLIER_COPY = Direct(
    select(messages.c.id, messages.c.settled_at)
    .where(
        messages.c.instrument == bindparam("instrument"),
        messages.c.content_sha256.in_([bindparam("digest"), bindparam("as_text")]),
    )
    .order_by(messages.c.id.desc())
    .limit(1)
)


_SETTLE = Direct(
    messages.update()
    .where(messages.c.id.in_(bindparam("ids", expanding=True)), messages.c.settled_at.is_(None))
    .values(settled_at=bindparam("at"))
)


def _raw(
    conn: Connection, d: Delivery, message_id: int | None, outcome: str, duplicate: bool = False
) -> int:
    span = d.span
    return int(
        _INSERT_RAW.scalar(
            conn,
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
        )
    )


def keep_raw(conn: Connection, span: RawSpan, outcome: str) -> int:
    """Keep bytes that made no message: a transfer's closing EOT, noise on the line."""
    d = Delivery(span.connection, span.instrument, span.data, span.received_at, "", span=span)
    return _raw(conn, d, None, outcome)


def settle(conn: Connection, message_ids: Sequence[int], at: datetime) -> None:
    """The analyser showed it had our ACK of these messages (EOT, or its next frame):
    from now on an identical message from it is a new one."""
    if message_ids:
        _SETTLE.execute(conn, {"ids": list(message_ids), "at": at})


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
) -> str:
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
    return reason


def store_delivery(conn: Connection, d: Delivery, at: datetime | None = None) -> Stored:
    """Keep a delivery: its raw bytes always; its message and results once; what could not
    be read or mapped in quarantine with the reason."""
    reading = d.reading
    if reading is not None and (oversize := oversize_keys(reading)):
        d = replace(d, reading=None, problems=[*d.problems, *oversize])
        reading = None
    if reading is None:
        raw_id = _raw(conn, d, None, "quarantine")
        reason = _quarantine(conn, d, raw_id, None, "; ".join(d.problems))
        return Stored(raw_id, None, quarantined=True, reason=reason)

    digest = content_hash(d.instrument, d.identity or d.text)
    nothing = not (reading.results or reading.controls or reading.queries or reading.orders)
    quarantined = bool(d.problems) or (nothing and bool(reading.problems))
    reason = "; ".join(d.problems or reading.problems) if quarantined else ""
    # The same content again is a re-send only while the analyser has not shown that it
    # had our ACK of the earlier copy; after that it is a new measurement (a re-run).
    # An HL7 message stored by a version that knew it by its whole text (unsettled, its
    # ACK lost at an upgrade) is found by that digest too.
    as_text = content_hash(d.instrument, d.text) if d.identity else digest
    earlier = _EARLIER_COPY.execute(
        conn, {"instrument": d.instrument, "digest": digest, "as_text": as_text}
    ).fetchone()
    if earlier is not None and earlier[1] is None:  # (id, settled_at)
        raw_id = _raw(conn, d, earlier[0], "duplicate", duplicate=True)
        # The same content was read the same way: what became of the first copy.
        return Stored(raw_id, earlier[0], duplicate=True, quarantined=quarantined, reason=reason)

    row = {
        "instrument": d.instrument,
        "connection": d.connection,
        "sender": reading.sender,
        "content_sha256": digest,
        "record_count": d.record_count,
        "text": d.text,
        "received_at": d.received_at,
        "problems": "\n".join([*d.problems, *d.notes, *reading.problems]),
    }
    if reading.driver:
        # No driver is the column's default: left out, rows can also be written to a
        # schema from before the column (as the tests of older revisions' migrations do).
        row["driver"] = reading.driver
    message_id = int(_INSERT_MESSAGE.scalar(conn, row))
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
        reason = _quarantine(conn, d, raw_id, message_id, reason)
    return Stored(
        raw_id,
        message_id,
        quarantined=quarantined,
        reason=reason,
        results=len(reading.results),
        controls=len(reading.controls),
        result_ids=tuple(patient_ids),
        control_ids=tuple(control_ids),
        reading=reading,
    )


_NEW_SPECIMENS = Direct(lambda database: new_only(database, specimens, "specimen_id"))


def _specimens(conn: Connection, reading: InstrumentMessage, message_id: int) -> None:
    patients = {p.patient_id: p for p in reading.patients}
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
            "patient_sex": patients[s.patient_id].sex if s.patient_id in patients else "",
            "patient_birth_date": (
                patients[s.patient_id].birth_date if s.patient_id in patients else None
            ),
        }
        for s in reading.specimens
        if s.specimen_id
    }
    if rows:
        _NEW_SPECIMENS.executemany(conn, list(rows.values()))


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


# SQLite: the rows' ids are given, following the table's highest, and the rows inserted
# by one executemany (one INSERT ... RETURNING per row cost a third of a message's
# storing). The transaction holds the write lock (the writer's BEGIN IMMEDIATE), so these
# are the ids SQLite would have chosen; in a transaction without it an id taken meanwhile
# fails the insert, it never goes to another row.
_HIGHEST = {
    table.name: Direct(select(func.max(table.c.id))) for table in (results, control_results)
}
_INSERTING = {table.name: Direct(table.insert()) for table in (results, control_results)}


@functools.lru_cache(maxsize=4)
def _inserting_arrays(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> str:
    """PostgreSQL: the rows given as one array per column, unnested in their order. The
    text is the same whatever the number of rows, so the driver and the server parse it
    once. A row's values as parameters made a statement of hundreds of them, more than
    psycopg keeps parsed, so it parsed the whole text again for every message."""
    arrays = ", ".join(
        f"%({name})s::{table.c[name].type.compile(dialect=dialect)}[]" for name in columns
    )
    names = ", ".join(columns)
    # Ids come from the table's sequence row after row in this order: sorted, they are
    # the rows' ids in the order given (as SQLAlchemy's many-row RETURNING relies on).
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS given({names}, position) ORDER BY position RETURNING id"
    )


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
    if conn.dialect.name == "postgresql":
        columns = tuple(rows[0])
        arrays = {name: [row[name] for row in rows] for name in columns}
        returned = run_text(conn, _inserting_arrays(conn.dialect, table, columns), arrays)
        return sorted(int(row[0]) for row in returned.fetchall())
    first = (_HIGHEST[table.name].scalar(conn, {}) or 0) + 1
    ids = list(range(first, first + len(rows)))
    for row, given in zip(rows, ids, strict=True):
        row["id"] = given
    _INSERTING[table.name].executemany(conn, rows)
    return ids


# Built once: a message from an analyser that reports its reagents asks it for each.
_LOT_ID = select(reagent_lots.c.id).where(
    reagent_lots.c.reagent == bindparam("reagent"), reagent_lots.c.lot == bindparam("lot")
)


def _lot_id(conn: Connection, use: ReagentUse, seen_at: datetime) -> int:
    key = {"reagent": use.reagent, "lot": use.lot}
    found = conn.execute(_LOT_ID, key).scalar_one_or_none()
    if found is not None:
        return int(found)
    conn.execute(
        new_only(conn.dialect.name, reagent_lots, "reagent", "lot"),
        {
            "reagent": use.reagent,
            "lot": use.lot,
            "kind": use.kind,
            "serial": use.serial,
            "expiry": use.expiry,
            "first_seen_at": seen_at,
        },
    )
    return int(conn.execute(_LOT_ID, key).scalar_one())


def _reagent_uses(
    conn: Connection,
    produced: Sequence[Result],
    ids: Sequence[int],
    column: str,
    received_at: datetime,
) -> None:
    rows = [
        {
            "reagent_lot_id": _lot_id(conn, use, received_at),
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
