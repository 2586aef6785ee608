"""Orders: the worklist host queries are answered from.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    Connection,
    select,
)

from middleware.domain import (
    Order,
)
from middleware.store.schema import (
    orders,
)


def add_order(conn: Connection, order: Order, at: datetime, source: str = "lis") -> int:
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
                "created_at": at,
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
