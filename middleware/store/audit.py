"""The audit log: who did what and when; append-only, and tamper-evident (D7, D8).

Each entry carries ``prev_hash``, the hash of the entry before it, and ``hash``, the
SHA-256 of that and of its own content (:func:`entry_hash`): an entry changed, removed or
put in between breaks the chain, which :func:`verify_chain` walks. Someone able to write
the database could still rewrite every hash from an entry on; the head hash that
``audit verify`` prints, kept somewhere else, shows that too.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Row, func, select

from middleware.store.schema import audit_log

#: The ``prev_hash`` of the first entry ever written.
GENESIS = "0" * 64
# Any constant shared by every writer; "lis-audi" in ASCII.
_CHAIN_LOCK = 0x6C69732D61756469


def instant(at: datetime) -> str:
    """A time as the chain hashes it: UTC to the microsecond, as both databases give it
    back (SQLite without its zone, read as UTC)."""
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, detail: str
) -> str:
    """The hash of an entry. A JSON array frames each field, so no two entries hash the
    same text. The row id is left out: the chain orders the entries, and ids are given
    by the database only once the row is written."""
    canonical = json.dumps(
        [prev_hash, instant(at), actor, action, subject, detail],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def last_hash(conn: Connection) -> str:
    """The hash the next entry chains to."""
    found = conn.execute(select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)).scalar()
    return str(found) if found else GENESIS


def audit(
    conn: Connection, at: datetime, actor: str, action: str, subject: str = "", detail: object = ""
) -> None:
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    # Stored in UTC: SQLite keeps the wall time given and drops the zone, and the hash
    # must be of the time read back.
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if conn.dialect.name == "postgresql":
        # Held to the commit: two transactions reading the same last hash would fork the
        # chain. SQLite's writers are one at a time already (BEGIN IMMEDIATE). The read
        # below must see what committed before the lock: READ COMMITTED, the default.
        conn.execute(select(func.pg_advisory_xact_lock(_CHAIN_LOCK)))
    prev = last_hash(conn)
    conn.execute(
        audit_log.insert(),
        {
            "at": at,
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": text,
            "prev_hash": prev,
            "hash": entry_hash(prev, at, actor, action, subject, text),
        },
    )


# ---------------------------------------------------------------------------- verifying


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first entry that does not check out."""

    id: int
    problem: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    entries: int
    """Entries read."""
    first_id: int | None
    last_id: int | None
    starts_after: str | None
    """The ``prev_hash`` of the first entry; GENESIS unless older entries were purged
    (their archive holds them), which cannot be checked here."""
    head: str | None
    """The hash of the last entry: written down elsewhere, it shows a later rewrite."""
    broken: ChainBreak | None


def _rows(conn: Connection, batch: int) -> Iterator[Row[tuple[object, ...]]]:
    """Every entry by id, ``batch`` at a time: memory does not grow with the log."""
    after = 0
    while True:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.id > after).order_by(audit_log.c.id).limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].id


def _describe(row: Row[tuple[object, ...]]) -> str:
    return f"{instant(row.at)} {row.actor} {row.action} {row.subject}".rstrip()


def verify_chain(conn: Connection, batch: int = 1000) -> ChainCheck:
    """Walks the whole log in id order and checks each entry's link and hash; stops at
    the first that does not check out. Read in one transaction: one snapshot."""
    count = 0
    first_id = last_id = None
    starts_after = expected = head = None
    broken = None
    for row in _rows(conn, batch):
        count += 1
        last_id = row.id
        if row.hash is None or row.prev_hash is None:
            broken = ChainBreak(row.id, f"({_describe(row)}) has no hash")
            break
        if first_id is None:
            first_id, starts_after, expected = row.id, row.prev_hash, row.prev_hash
            purged_to = _purged_to(conn) if row.prev_hash != GENESIS else GENESIS
            if row.prev_hash != purged_to:
                why = (
                    "no purge of the log is recorded"
                    if purged_to is None
                    else "nor where the latest purge of the log left its start"
                )
                broken = ChainBreak(
                    row.id,
                    f"({_describe(row)}) is not the first entry ever written, and {why}: "
                    "the entries before it were deleted",
                )
                break
        if row.prev_hash != expected:
            broken = ChainBreak(
                row.id,
                f"({_describe(row)}) does not follow the entry before it: its prev_hash is "
                f"not that entry's hash (an entry was removed, put in or rewritten there)",
            )
            break
        computed = entry_hash(row.prev_hash, row.at, row.actor, row.action, row.subject, row.detail)
        if computed != row.hash:
            broken = ChainBreak(
                row.id,
                f"({_describe(row)}) was changed after it was written: its time, actor, "
                "action, subject or detail no longer match its hash",
            )
            break
        expected = head = row.hash
    return ChainCheck(count, first_id, last_id, starts_after, head, broken)


def chain_start(conn: Connection) -> str:
    """The hash the oldest entry kept follows (GENESIS while nothing was purged): what a
    purge records, once it has deleted, as where the chain starts now."""
    found = conn.execute(
        select(audit_log.c.prev_hash).order_by(audit_log.c.id).limit(1)
    ).scalar_one_or_none()
    return found or GENESIS


def _purged_to(conn: Connection) -> str | None:
    """Where the latest purge left the start of the chain; None when none is recorded.
    Entries gone from the start are explained by a purge only if the chain starts there."""
    detail = conn.execute(
        select(audit_log.c.detail)
        .where(audit_log.c.action == "retention.purge")
        .order_by(audit_log.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if detail is None:
        return None
    try:
        start = json.loads(detail).get("audit_resumes_from")
    except (ValueError, AttributeError):
        return None
    return start if isinstance(start, str) else None


__all__ = [
    "GENESIS",
    "ChainBreak",
    "ChainCheck",
    "audit",
    "chain_start",
    "entry_hash",
    "instant",
    "last_hash",
    "verify_chain",
]
