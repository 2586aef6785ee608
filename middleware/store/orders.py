"""Orders: the worklist host queries are answered from.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    select,
)

from middleware.domain import (
    Order,
)
from middleware.store.direct import Direct
from middleware.store.schema import (
    order_messages,
    orders,
)
from middleware.store.sql import new_only, utc


def codes_text(codes: Sequence[str]) -> str:
    """A list of test codes as stored: a JSON array, since a LIS's code may hold any
    character (a comma-joined list read ``A,B`` back as two tests)."""
    return json.dumps(list(codes), ensure_ascii=False)


def codes_of(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


#: How long a control id names the message first taken under it: a copy sent again (our
#: answer lost) comes within minutes or, after an outage, days; past this, the same id is
#: a new message (a LIS's counter that wrapped round or began again).
SENT_AGAIN_WITHIN = timedelta(hours=72)

_TAKEN = Direct(
    select(order_messages.c.content_sha256, order_messages.c.received_at).where(
        order_messages.c.key_sha256 == bindparam("key")
    )
)
_TAKE = Direct(lambda database: new_only(database, order_messages, "key_sha256"))
_RETAKE = Direct(
    order_messages.update()
    .where(order_messages.c.key_sha256 == bindparam("key"))
    .values(content_sha256=bindparam("digest"), received_at=bindparam("at"))
)


def taken_before(
    conn: Connection, sender: str, control_id: str, digest: str, at: datetime
) -> str | None:
    """The digest of the message ``sender`` sent under ``control_id`` in the last
    :data:`SENT_AGAIN_WITHIN`, if it did; else None, and this one is recorded as taken. A
    copy taken at the same moment by another connection or daemon waits for it, and is
    then the one sent again."""
    key = hashlib.sha256(f"{sender}\x00{control_id}".encode("utf-8", "surrogatepass")).hexdigest()
    taken = {"key_sha256": key, "sender": sender, "control_id": control_id,
             "content_sha256": digest, "received_at": at}  # fmt: skip
    if _TAKE.execute(conn, taken).rowcount:
        return None
    [before] = _TAKEN.rows(conn, {"key": key})
    received = utc(before.received_at)
    if received is None or at - received > SENT_AGAIN_WITHIN:
        _RETAKE.execute(conn, {"key": key, "digest": digest, "at": at})
        return None
    return str(before.content_sha256)


def add_order(conn: Connection, order: Order, at: datetime, source: str = "lis") -> int:
    return int(
        conn.execute(
            orders.insert().returning(orders.c.id),
            {
                "specimen_id": order.specimen_id,
                "patient_id": order.patient_id,
                "test_codes": codes_text(order.test_codes),
                "priority": order.priority,
                "source": source,
                "ordered_at": order.ordered_at,
                "created_at": at,
                "collected_at": order.collected_at,
                "specimen_type": order.specimen_type,
                "container": order.container,
                "placer_order": order.placer_order,
            },
        ).scalar_one()
    )


# Built once, run on the driver's cursor: every patient message asks it.
_ORDERS_FOR = Direct(
    select(orders)
    .where(orders.c.specimen_id.in_(bindparam("specimens", expanding=True)))
    .order_by(orders.c.id)
)


def orders_for(conn: Connection, specimen_ids: Iterable[str]) -> list[Order]:
    wanted = list(specimen_ids)
    if not wanted:
        return []
    return [_order(row) for row in _ORDERS_FOR.rows(conn, {"specimens": wanted})]


def orders_placed(conn: Connection, placer_order: str) -> list[Order]:
    """The orders the LIS numbered so, whichever specimen they are for."""
    query = select(orders).where(orders.c.placer_order == placer_order).order_by(orders.c.id)
    return [_order(row) for row in conn.execute(query)]


def _order(row: Any) -> Order:
    return Order(
        specimen_id=row.specimen_id,
        test_codes=codes_of(row.test_codes),
        priority=row.priority,
        ordered_at=utc(row.ordered_at),
        patient_id=row.patient_id,
        collected_at=utc(row.collected_at),
        specimen_type=row.specimen_type,
        container=row.container,
        placer_order=row.placer_order,
    )


def _of(specimen_id: str, placer_order: str) -> ColumnElement[bool]:
    """The orders of a specimen an order replaces or a cancel names: those of its
    number and the specimen's order without one (kept before orders had numbers, or
    from a LIS that gave none), or every one of the specimen when it has none."""
    where = orders.c.specimen_id == specimen_id
    if not placer_order:
        return where
    return and_(where, orders.c.placer_order.in_([placer_order, ""]))


def same_order(order: Order, held: Order) -> bool:
    """Whether ``order`` (a change the LIS sent) names ``held``: as :func:`_of` has it."""
    return not order.placer_order or held.placer_order in (order.placer_order, "")


def put_order(conn: Connection, order: Order, at: datetime) -> int:
    """The LIS's order for a specimen, replacing what it ordered under the same number
    before (without a number, what it ordered for the specimen)."""
    conn.execute(orders.delete().where(_of(order.specimen_id, order.placer_order)))
    return add_order(conn, order, at)


def cancel_tests(
    conn: Connection, specimen_id: str, tests: Iterable[str], placer_order: str = ""
) -> None:
    """The LIS cancels these tests of a specimen's order (every order of the specimen
    when it names none); an order left with no test goes."""
    cancelled = set(tests)
    rows = conn.execute(select(orders).where(_of(specimen_id, placer_order))).all()
    for row in rows:
        kept = [c for c in codes_of(row.test_codes) if c not in cancelled]
        if kept:
            conn.execute(
                orders.update().where(orders.c.id == row.id).values(test_codes=codes_text(kept))
            )
        else:
            conn.execute(orders.delete().where(orders.c.id == row.id))
