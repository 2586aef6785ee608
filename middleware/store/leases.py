"""Which daemon serves which instrument, when several share one database.

A daemon holds a lease on each instrument of its configuration and renews it while it
runs. Another daemon may take an instrument only once its lease has not been renewed for
``lease_seconds``: its holder stopped (cleanly, giving it back) or died.

On PostgreSQL every lease time is the database's clock, never a node's: two nodes whose
clocks differ agree on when a lease ran out. A message is kept only while its daemon
holds the instrument's lease (:func:`check_serving`, in the transaction that stores it):
a daemon frozen past its lease, whose instruments another took, keeps nothing more once
woken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Select, bindparam, select

from middleware.store.direct import Direct
from middleware.store.schema import instrument_leases
from middleware.store.sql import shared_now, upsert, utc


class NotServing(Exception):
    """This daemon no longer holds the instrument's lease: what it received is not kept,
    and the analyser, refused, sends it again to the daemon that took the instrument."""


@dataclass(frozen=True, slots=True)
class Held:
    """An instrument another live daemon serves."""

    instrument: str
    owner: str
    renewed_at: datetime


def claim(
    conn: Connection,
    owner: str,
    instruments: Sequence[str],
    now: datetime,
    lease_seconds: float,
    gone: Callable[[str], bool] = lambda _owner: False,
) -> list[Held]:
    """Take the leases of ``instruments`` for ``owner``, all or none: the ones another
    daemon holds and renewed within ``lease_seconds`` are returned, and nothing is taken.
    ``gone`` tells a holder known to be dead (a process of this host that no longer
    runs), whose leases need not run out first."""
    if not instruments:
        return []
    now = shared_now(conn, now)
    conn.execute(
        upsert(conn, instrument_leases).on_conflict_do_nothing(index_elements=["instrument"]),
        [
            {"instrument": i, "owner": owner, "acquired_at": now, "renewed_at": now}
            for i in instruments
        ],
    )
    query = select(instrument_leases).where(instrument_leases.c.instrument.in_(list(instruments)))
    if conn.dialect.name == "postgresql":
        # Two daemons starting at once see each other's claim, not both the old one.
        query = query.with_for_update()
    expired_before = now - timedelta(seconds=lease_seconds)
    held = [
        Held(row.instrument, row.owner, renewed)
        for row in conn.execute(query)
        if row.owner != owner and (renewed := utc(row.renewed_at)) is not None
        if renewed > expired_before and not gone(row.owner)
    ]
    if held:
        return held
    conn.execute(
        instrument_leases.update()
        .where(instrument_leases.c.instrument.in_(list(instruments)))
        .values(owner=owner, acquired_at=now, renewed_at=now)
    )
    return []


def renew(conn: Connection, owner: str, instruments: Sequence[str], now: datetime) -> list[str]:
    """Renew ``owner``'s leases; returns the instruments whose lease it no longer holds."""
    now = shared_now(conn, now)
    conn.execute(
        instrument_leases.update()
        .where(
            instrument_leases.c.owner == owner,
            instrument_leases.c.instrument.in_(list(instruments)),
        )
        .values(renewed_at=now)
    )
    kept = set(
        conn.execute(
            select(instrument_leases.c.instrument).where(
                instrument_leases.c.owner == owner,
                instrument_leases.c.instrument.in_(list(instruments)),
            )
        ).scalars()
    )
    return [i for i in instruments if i not in kept]


def _holder_query(database: str, share: bool) -> Select[tuple[str]]:
    query = select(instrument_leases.c.owner).where(
        instrument_leases.c.instrument == bindparam("instrument")
    )
    if share and database == "postgresql":
        query = query.with_for_update(read=True)
    return query


# Every message's commit reads it: compiled once per database (store/direct.py).
_HOLDERS = {share: Direct(functools.partial(_holder_query, share=share)) for share in (False, True)}


def holder(conn: Connection, instrument: str, *, share: bool = False) -> str | None:
    """The daemon holding the instrument's lease, if any holds it; ``share``: the row read
    ``FOR SHARE`` on PostgreSQL, so that no daemon takes it before this transaction ends."""
    row = _HOLDERS[share].execute(conn, {"instrument": instrument}).fetchone()
    return None if row is None else str(row[0])


def release(conn: Connection, owner: str) -> None:
    """Give back every lease ``owner`` holds (a clean stop): another daemon may take its
    instruments at once."""
    conn.execute(instrument_leases.delete().where(instrument_leases.c.owner == owner))


def check_serving(conn: Connection, owner: str, instrument: str) -> None:
    """Raise :class:`NotServing` unless ``owner`` holds the instrument's lease. A lease
    that ran out but was not taken is still held: no other daemon serves the instrument.
    On PostgreSQL the row is read ``FOR SHARE``, so a daemon taking the instrument waits
    for this transaction to end (on SQLite the write lock orders them): nothing is kept
    after another daemon took it."""
    if holder(conn, instrument, share=True) != owner:
        raise NotServing(
            f"instrument {instrument} is served by another daemon now (this one's lease "
            "ran out and was taken): not kept"
        )
