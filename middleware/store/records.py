"""The tables that hold records, as archives and retention see them: which kind of record
each holds (how long it is kept), which time places a row in a month, and which rows are
still needed whatever their age.

A row that can still change (a corrective action not closed, a result not reviewed, a
message to the LIS not delivered) has no time yet: it goes into the archive of the month
it is closed in, once that month is over, and nothing deletes it before."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    exists,
    func,
    select,
    true,
)

from middleware.store.schema import (
    audit_log,
    control_limits,
    control_results,
    corrective_actions,
    decisions,
    messages,
    metadata,
    open_holds,
    outbox,
    outbox_log,
    qc_evaluations,
    qc_events,
    qc_reviews,
    quarantine,
    raw_transmissions,
    reagent_lots,
    reagent_uses,
    recalled_lots,
    result_comments,
    results,
    rules_in_force,
    specimens,
)
from middleware.store.sql import utc

#: The kinds of record with a retention of their own (settings' ``retention``).
KINDS = ("patient_results", "chronological_register", "qc", "audit")


@dataclass(frozen=True)
class RecordTable:
    """One file of an archive: rows of ``table`` (those ``only`` selects), placed in a
    month by their own ``time`` column or, with ``parent``, by the time of the row their
    ``via`` column refers to."""

    name: str
    table: Table
    kind: str
    time: str
    parent: Table | None = None
    via: str | None = None
    only: Callable[[], ColumnElement[bool]] | None = None
    needed: Callable[[], ColumnElement[bool]] | None = None

    def _placed(self, condition: Callable[[ColumnElement[datetime]], ColumnElement[bool]]) -> Any:
        if self.parent is None:
            own = condition(self.table.c[self.time])
            return own if self.only is None else and_(own, self.only())
        assert self.via is not None
        parents = select(self.parent.c.id).where(condition(self.parent.c[self.time]))
        placed = self.table.c[self.via].in_(parents)
        return placed if self.only is None else and_(placed, self.only())

    def in_period(self, start: datetime, end: datetime) -> ColumnElement[bool]:
        """The rows of the month [start, end)."""
        return self._placed(lambda t: and_(t >= start, t < end))  # type: ignore[no-any-return]

    def older_than(self, cutoff: datetime) -> ColumnElement[bool]:
        return self._placed(lambda t: t < cutoff)  # type: ignore[no-any-return]

    def period_rows(self, start: datetime, end: datetime) -> Select[tuple[object, ...]]:
        return select(self.table).where(self.in_period(start, end)).order_by(self.table.c.id)

    def placed_at(self) -> ColumnElement[datetime]:
        """The time that places each row, as a column to select."""
        if self.parent is None:
            return self.table.c[self.time]
        assert self.via is not None
        return (
            select(self.parent.c[self.time])
            .where(self.parent.c.id == self.table.c[self.via])
            .scalar_subquery()
        )

    def deletable(self) -> ColumnElement[bool]:
        """Rows nothing else refers to and that are not still needed: what a purge may
        delete of the rows past retention that an archive holds."""
        clauses: list[ColumnElement[bool]] = [
            ~exists().where(child.c[column] == self.table.c.id)
            for child, column in _referrers(self.table)
        ]
        if self.only is not None:
            clauses.append(self.only())
        if self.needed is not None:
            clauses.append(~self.needed())
        return and_(true(), *clauses)


def _referrers(table: Table) -> list[tuple[Table, str]]:
    """(table, column) of every foreign key referring to ``table``."""
    return [
        (child, fk.parent.name)
        for child in metadata.sorted_tables
        for fk in child.foreign_keys
        if fk.column.table is table
    ]


def _result_needed(column: ColumnElement[int]) -> ColumnElement[bool]:
    """A result held now, or listed for review and not reviewed yet: its decisions and
    reagent lots stay with it."""
    held = exists().where(open_holds.c.result_id == column)
    reviewing = exists().where(qc_reviews.c.result_id == column, qc_reviews.c.reviewed_at.is_(None))
    return held | reviewing


def _latest_rules() -> ColumnElement[bool]:
    """The rules in force now. An alias: the same table would be taken for the row being
    deleted, and every row would be the latest of itself."""
    newer = rules_in_force.alias("newer")
    return rules_in_force.c.id == select(func.max(newer.c.id)).scalar_subquery()


#: Parents before the rows that refer to them; a purge deletes in the reverse order.
RECORD_TABLES: tuple[RecordTable, ...] = (
    RecordTable("messages", messages, "chronological_register", "received_at"),
    RecordTable("raw_transmissions", raw_transmissions, "chronological_register", "received_at"),
    RecordTable("quarantine", quarantine, "chronological_register", "received_at"),
    RecordTable(
        "specimens",
        specimens,
        "patient_results",
        "received_at",
        messages,
        "first_message_id",
        # kept while a result of the specimen is: a held one, or one not yet archived
        needed=lambda: exists().where(results.c.specimen_id == specimens.c.specimen_id),
    ),
    RecordTable("results", results, "patient_results", "stored_at"),
    RecordTable(
        "decisions",
        decisions,
        "patient_results",
        "decided_at",
        needed=lambda: _result_needed(decisions.c.result_id),
    ),
    RecordTable("reagent_lots", reagent_lots, "patient_results", "first_seen_at"),
    RecordTable(
        "reagent_uses",
        reagent_uses,
        "patient_results",
        "stored_at",
        results,
        "result_id",
        needed=lambda: _result_needed(reagent_uses.c.result_id),
    ),
    RecordTable(
        "result_comments",
        result_comments,
        "patient_results",
        "written_at",
        needed=lambda: _result_needed(result_comments.c.result_id),
    ),
    RecordTable(
        "recalled_lots",
        recalled_lots,
        "patient_results",
        "recalled_at",
        # kept while the lot is: a recall forgotten would let the lot's next result go
        needed=lambda: exists().where(
            reagent_lots.c.reagent == recalled_lots.c.reagent,
            reagent_lots.c.lot == recalled_lots.c.lot,
        ),
    ),
    RecordTable("control_results", control_results, "qc", "stored_at"),
    RecordTable(
        "control_reagent_uses",
        reagent_uses,
        "qc",
        "stored_at",
        control_results,
        "control_result_id",
        only=lambda: reagent_uses.c.result_id.is_(None),
    ),
    RecordTable("qc_evaluations", qc_evaluations, "qc", "evaluated_at"),
    RecordTable("corrective_actions", corrective_actions, "qc", "closed_at"),
    RecordTable("qc_reviews", qc_reviews, "qc", "reviewed_at"),
    RecordTable("control_limits", control_limits, "qc", "approved_at"),
    RecordTable("qc_events", qc_events, "qc", "at"),
    RecordTable(
        "outbox",
        outbox,
        "chronological_register",
        "answered_at",
        only=lambda: outbox.c.state == "delivered",
    ),
    RecordTable(
        "outbox_log",
        outbox_log,
        "chronological_register",
        "at",
        needed=lambda: exists().where(
            outbox.c.id == outbox_log.c.outbox_id, outbox.c.state != "delivered"
        ),
    ),
    RecordTable("rules_in_force", rules_in_force, "audit", "put_at", needed=_latest_rules),
    RecordTable("audit_log", audit_log, "audit", "at"),
)


def record_table(name: str) -> RecordTable:
    for record in RECORD_TABLES:
        if record.name == name:
            return record
    raise KeyError(name)


def earliest(conn: Connection) -> datetime | None:
    """The time of the oldest record of any table placed by a time of its own (each an
    index lookup, or a small table); None when nothing is stored."""
    found: list[datetime] = []
    for record in RECORD_TABLES:
        if record.parent is not None:
            continue  # placed by its parent's time, which is looked at itself
        oldest = conn.execute(select(func.min(record.table.c[record.time]))).scalar()
        if oldest is not None:
            found.append(utc(oldest) or oldest)
    return min(found, default=None)


__all__ = ["KINDS", "RECORD_TABLES", "RecordTable", "earliest", "record_table"]
