"""What people write about a result: kept beside it, shown with it, and sent with it to
the LIS when it is released after.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select

from middleware.store.direct import Direct
from middleware.store.schema import result_comments
from middleware.store.sql import utc


@dataclass(frozen=True, slots=True)
class ResultComment:
    id: int
    result_id: int
    text: str
    by: str
    at: datetime


_OF_RESULTS = Direct(
    select(result_comments)
    .where(result_comments.c.result_id.in_(bindparam("ids", expanding=True)))
    .order_by(result_comments.c.id)
)


def add(conn: Connection, result_id: int, text: str, by: str, at: datetime) -> ResultComment:
    comment_id = int(
        conn.execute(
            result_comments.insert().returning(result_comments.c.id),
            {"result_id": result_id, "text": text, "written_by": by, "written_at": at},
        ).scalar_one()
    )
    return ResultComment(comment_id, result_id, text, by, at)


def of_results(conn: Connection, ids: Iterable[int]) -> dict[int, list[ResultComment]]:
    """Each result's comments, oldest first: one indexed lookup for them all."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    found: dict[int, list[ResultComment]] = {}
    for row in _OF_RESULTS.rows(conn, {"ids": wanted}):
        found.setdefault(row.result_id, []).append(
            ResultComment(
                row.id,
                row.result_id,
                row.text,
                row.written_by,
                utc(row.written_at) or row.written_at,
            )
        )
    return found
