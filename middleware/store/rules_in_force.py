"""The rules in force, shared by every daemon on one database.

A daemon that reads its rule files (at start, on SIGHUP or a reload through its API) and
finds them different from the latest row puts them in force for all: a new row. Every
daemon looks at the latest row now and then and applies what another put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from middleware.store.schema import rules_in_force
from middleware.store.sql import utc


@dataclass(frozen=True, slots=True)
class RulesVersion:
    id: int
    digest: str
    rules: str
    """The validated rules, as JSON."""
    put_by: str
    node: str
    put_at: datetime


def latest(conn: Connection) -> RulesVersion | None:
    row = conn.execute(select(rules_in_force).order_by(rules_in_force.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    put_at = utc(row.put_at) or row.put_at
    return RulesVersion(row.id, row.digest, row.rules, row.put_by, row.node, put_at)


def put(
    conn: Connection, digest: str, rules: str, by: str, node: str, at: datetime
) -> RulesVersion:
    """Put these rules in force unless they already are; the version in force after."""
    found = latest(conn)
    if found is not None and found.digest == digest:
        return found
    new_id = conn.execute(
        rules_in_force.insert().returning(rules_in_force.c.id),
        {"digest": digest, "rules": rules, "put_by": by, "node": node, "put_at": at},
    ).scalar_one()
    return RulesVersion(int(new_id), digest, rules, by, node, at)
