"""The outbox: HL7 messages to the LIS, queued in the transaction that releases their
results, sent in order per specimen, closed by the LIS's answer.

An entry is ``pending`` until the LIS accepts it (``delivered``). An error answer (AE,
AR) either stops it (``stopped``: the specimen's later entries wait behind it for a
person) or sets it aside (``dead``), as configured; a person retries or dismisses it. A
sender claims the oldest entries it may send (none of their specimens' earlier entries
still pending or stopped, no other daemon's claim running), for as long as it waits for
their answers: a daemon that dies leaves claims that run out, and the entries are sent
again, with the same control ids. Every send and answer is kept in ``outbox_log``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select, text

from middleware.store import notices
from middleware.store.direct import Direct
from middleware.store.schema import outbox, outbox_log
from middleware.store.sql import shared_clock, utc

PENDING, DELIVERED, STOPPED, DEAD = "pending", "delivered", "stopped", "dead"


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    specimen_id: str
    instrument: str
    control_id: str
    message: str
    state: str
    attempts: int
    detail: str = ""
    created_at: datetime | None = None
    answered_at: datetime | None = None


def enqueue(
    conn: Connection,
    specimen_id: str,
    instrument: str,
    control_id: str,
    message: str,
    at: datetime,
    message_type: str = "ORU^R01",
) -> int:
    if conn.dialect.name == "postgresql":
        # A specimen's entries are sent in id order: two transactions queueing for one
        # specimen take turns, so that the one with the lower id commits first.
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"outbox/{specimen_id}"}
        )
    entry_id = int(
        conn.execute(
            outbox.insert().returning(outbox.c.id),
            {
                "specimen_id": specimen_id,
                "instrument": instrument,
                "message_type": message_type,
                "control_id": control_id,
                "message": message,
                "state": PENDING,
                "created_at": at,
                "attempts": 0,
                "detail": "",
            },
        ).scalar_one()
    )
    notices.tell(conn, notices.OutboxChanged(entry_id, "queued", PENDING, at))
    return entry_id


_LAST_EVENT = Direct(
    select(outbox_log.c.event)
    .where(outbox_log.c.outbox_id == bindparam("entry_id"))
    .order_by(outbox_log.c.id.desc())
    .limit(1)
)


def _last_event(conn: Connection, entry_id: int) -> str | None:
    row = _LAST_EVENT.execute(conn, {"entry_id": entry_id}).fetchone()
    return None if row is None else str(row[0])


def claim(
    conn: Connection,
    owner: str,
    at: datetime,
    hold: timedelta,
    limit: int = 1,
    sending: bool = False,
) -> list[Entry]:
    """The oldest entries ``owner`` may send now, at most ``limit`` and at most one per
    specimen (a specimen's next entry waits for the answer to the one before), claimed
    until ``at + hold``. ``sending``: each is also recorded as :func:`sent` at ``at``, in
    one update and one insert for them all. On PostgreSQL a claim's end is the database's
    clock, which every daemon sharing it judges claims by."""
    clock = shared_clock(conn, at)
    earlier = outbox.alias("earlier")
    query = (
        select(outbox)
        .where(
            outbox.c.state == PENDING,
            or_(
                outbox.c.claimed_until.is_(None),
                outbox.c.claimed_until < clock,
                outbox.c.claimed_by == owner,
            ),
            ~exists().where(
                and_(
                    earlier.c.specimen_id == outbox.c.specimen_id,
                    earlier.c.id < outbox.c.id,
                    earlier.c.state.in_((PENDING, STOPPED)),
                )
            ),
        )
        .order_by(outbox.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=outbox)
    rows = conn.execute(query).all()
    if not rows:
        return []
    # Claimed (and logged sent, one attempt counted) by a daemon that died or froze before
    # it answered for them: each may have gone out then, or not. Rare: only then is the
    # log read, one entry's last event each.
    lapsed = [
        row
        for row in rows
        if row.claimed_by is not None
        and row.claimed_by != owner
        and _last_event(conn, row.id) == "sent"
    ]
    if lapsed:
        conn.execute(
            outbox_log.insert(),
            [
                {"outbox_id": row.id, "at": at, "event": "lapsed", "data": "",
                 "detail": f"claimed by {row.claimed_by}, which left no answer nor release: "
                           "its last send may have gone out or not"}
                for row in lapsed
            ],
        )  # fmt: skip
    claimed = outbox.update().where(outbox.c.id.in_([row.id for row in rows]))
    if not sending:
        conn.execute(claimed.values(claimed_by=owner, claimed_until=clock + hold))
        return [_entry(row) for row in rows]
    conn.execute(
        claimed.values(
            claimed_by=owner,
            claimed_until=clock + hold,
            attempts=outbox.c.attempts + 1,
            last_sent_at=at,
        )
    )
    conn.execute(
        outbox_log.insert(),
        [
            {"outbox_id": row.id, "at": at, "event": "sent", "data": row.message, "detail": ""}
            for row in rows
        ],
    )
    return [replace(_entry(row), attempts=row.attempts + 1) for row in rows]


def _held_by(entry_id: Any, owner: Any) -> Any:
    """The entry, while still pending and claimed by ``owner`` (values, or the parameters
    of a statement built once)."""
    return and_(outbox.c.id == entry_id, outbox.c.state == PENDING, outbox.c.claimed_by == owner)


def sent(
    conn: Connection, entry_id: int, owner: str, data: str, at: datetime, hold: timedelta
) -> bool:
    """About to be sent by ``owner``, whose claim runs ``hold`` from now; False when the
    claim is no longer its own (it ran out and another daemon took the entry): then it
    must not be sent."""
    done = conn.execute(
        outbox.update()
        .where(_held_by(entry_id, owner))
        .values(
            attempts=outbox.c.attempts + 1,
            last_sent_at=at,
            claimed_until=shared_clock(conn, at) + hold,
        )
    )
    if done.rowcount:
        log(conn, entry_id, "sent", data, "", at)
    return bool(done.rowcount)


class Answering(NamedTuple):
    """What the LIS's answer to an entry makes it (``state``), and what it said."""

    entry_id: int
    state: str
    answer: str
    detail: str
    at: datetime


# Built once: every batch the sender sends ends with them.
_HELD = select(outbox.c.id).where(
    outbox.c.id.in_(bindparam("ids", expanding=True)),
    outbox.c.state == PENDING,
    outbox.c.claimed_by == bindparam("owner"),
)
_HELD_LOCKED = _HELD.with_for_update()
_ANSWER = (
    outbox.update()
    .where(_held_by(bindparam("entry_id"), bindparam("owner")))
    .values(
        state=bindparam("new_state"),
        answer=bindparam("answer_text"),
        answered_at=bindparam("answered"),
        detail=bindparam("new_detail"),
        claimed_by=None,
        claimed_until=None,
    )
)


def answered(
    conn: Connection,
    entry_id: int,
    owner: str,
    state: str,
    answer: str,
    detail: str,
    at: datetime,
) -> bool:
    """The LIS answered: delivered, stopped or dead, with what it said. An answer to a
    claim that is no longer ``owner``'s is logged and changes nothing (another daemon sent
    the entry again and has its own answer coming)."""
    return answered_all(conn, owner, [Answering(entry_id, state, answer, detail, at)])[0]


def answered_all(conn: Connection, owner: str, answers: Sequence[Answering]) -> list[bool]:
    """:func:`answered` for each of a batch's answers, in three statements for them all;
    for each, whether the claim was still ``owner``'s."""
    if not answers:
        return []
    # On PostgreSQL they stay ours until the commit: a claim another daemon takes over
    # waits for it.
    held = _HELD_LOCKED if conn.dialect.name == "postgresql" else _HELD
    ids = sorted({a.entry_id for a in answers})
    mine = set(conn.execute(held, {"ids": ids, "owner": owner}).scalars())
    kept = []
    for a in answers:
        kept.append(a.entry_id in mine)
        mine.discard(a.entry_id)  # a second answer to one claim comes late
    taken = [a for a, ours in zip(answers, kept, strict=True) if ours]
    if taken:
        conn.execute(
            _ANSWER,
            [
                {"entry_id": a.entry_id, "owner": owner, "new_state": a.state,
                 "answer_text": a.answer, "answered": a.at, "new_detail": a.detail}
                for a in taken
            ],
        )  # fmt: skip
    conn.execute(
        outbox_log.insert(),
        [
            {"outbox_id": a.entry_id, "at": a.at, "event": "answered" if ours else "answered-late",
             "data": a.answer, "detail": a.detail}
            for a, ours in zip(answers, kept, strict=True)
        ],
    )  # fmt: skip
    notices.tell(
        conn, *(notices.OutboxChanged(a.entry_id, "answered", a.state, a.at) for a in taken)
    )
    return kept


class Releasing(NamedTuple):
    """No answer to an entry (``event``: a timeout, a lost connection, withdrawn)."""

    entry_id: int
    event: str
    detail: str
    at: datetime
    taken_back: bool = False


def _releasing(taken_back: bool) -> Any:
    values: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
    if taken_back:
        values["attempts"] = outbox.c.attempts - 1
    return (
        outbox.update().where(_held_by(bindparam("entry_id"), bindparam("owner"))).values(**values)
    )


_RELEASE = {taken_back: _releasing(taken_back) for taken_back in (False, True)}


def release_claim(
    conn: Connection,
    entry_id: int,
    owner: str,
    event: str,
    detail: str,
    at: datetime,
    taken_back: bool = False,
) -> None:
    """No answer (a timeout, a lost connection): the entry waits to be sent again.
    ``taken_back`` when it was recorded as sent (:func:`sent`, before it went out) but
    did not go out after all: its attempt is taken back."""
    release_claims(conn, owner, [Releasing(entry_id, event, detail, at, taken_back)])


def release_claims(conn: Connection, owner: str, releases: Sequence[Releasing]) -> None:
    """:func:`release_claim` for each of a batch's entries left without an answer, in a
    statement or two and the log's."""
    if not releases:
        return
    for taken_back, statement in _RELEASE.items():
        rows = [
            {"entry_id": r.entry_id, "owner": owner} for r in releases if r.taken_back is taken_back
        ]
        if rows:
            conn.execute(statement, rows)
    conn.execute(
        outbox_log.insert(),
        [
            {"outbox_id": r.entry_id, "at": r.at, "event": r.event, "data": "", "detail": r.detail}
            for r in releases
        ],
    )


def later_delivered(conn: Connection, entry_id: int) -> bool:
    """Whether a later entry of the same specimen reached the LIS."""
    later = outbox.alias("later")
    found = conn.execute(
        select(later.c.id)
        .select_from(later.join(outbox, outbox.c.specimen_id == later.c.specimen_id))
        .where(outbox.c.id == entry_id, later.c.id > entry_id, later.c.state == DELIVERED)
        .limit(1)
    ).first()
    return found is not None


def retry(conn: Connection, entry_id: int, at: datetime) -> bool:
    """A person sends a stopped or dead entry again; False when it is neither, or when a
    later message of its specimen was delivered (sending it now would put older results
    over newer ones at the LIS)."""
    if later_delivered(conn, entry_id):
        return False
    done = conn.execute(
        outbox.update()
        .where(outbox.c.id == entry_id, outbox.c.state.in_((STOPPED, DEAD)))
        .values(state=PENDING, detail="", claimed_by=None, claimed_until=None)
    )
    if done.rowcount:
        log(conn, entry_id, "retried", "", "", at)
        notices.tell(conn, notices.OutboxChanged(entry_id, "retried", PENDING, at))
    return bool(done.rowcount)


def dismiss(conn: Connection, entry_id: int, at: datetime) -> bool:
    """A person sets a stopped entry aside, so its specimen's queue goes on."""
    done = conn.execute(
        outbox.update().where(outbox.c.id == entry_id, outbox.c.state == STOPPED).values(state=DEAD)
    )
    if done.rowcount:
        log(conn, entry_id, "dismissed", "", "", at)
        notices.tell(conn, notices.OutboxChanged(entry_id, "dismissed", DEAD, at))
    return bool(done.rowcount)


def log(conn: Connection, entry_id: int, event: str, data: str, detail: str, at: datetime) -> None:
    conn.execute(
        outbox_log.insert(),
        {"outbox_id": entry_id, "at": at, "event": event, "data": data, "detail": detail},
    )


def entries(conn: Connection, states: tuple[str, ...] = (PENDING, STOPPED, DEAD)) -> list[Entry]:
    rows = conn.execute(select(outbox).where(outbox.c.state.in_(states)).order_by(outbox.c.id))
    return [_entry(row) for row in rows]


def entry(conn: Connection, entry_id: int) -> Entry | None:
    row = conn.execute(select(outbox).where(outbox.c.id == entry_id)).first()
    return _entry(row) if row is not None else None


def depth(conn: Connection) -> int:
    """Entries waiting to be delivered."""
    return int(
        conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.state == PENDING)
        ).scalar_one()
    )


def _entry(row: Any) -> Entry:
    return Entry(
        id=row.id,
        specimen_id=row.specimen_id,
        instrument=row.instrument,
        control_id=row.control_id,
        message=row.message,
        state=row.state,
        attempts=row.attempts,
        detail=row.detail,
        created_at=utc(row.created_at),
        answered_at=utc(row.answered_at),
    )
