"""Reading back what was kept, for the command line, the API and tests.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    func,
    select,
)

from middleware.store.schema import (
    control_results,
    decisions,
    messages,
    open_holds,
    quarantine,
    raw_transmissions,
    reagent_lots,
    reagent_uses,
    results,
    specimens,
)


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


def latest_decisions(conn: Connection) -> list[dict[str, Any]]:
    """The current decision of every result, newest result first."""
    latest = select(func.max(decisions.c.id)).group_by(decisions.c.result_id).scalar_subquery()
    rows = conn.execute(
        select(decisions).where(decisions.c.id.in_(latest)).order_by(decisions.c.result_id)
    )
    return [dict(row._mapping) for row in rows]


def held_results(conn: Connection) -> list[dict[str, Any]]:
    """The results held now, each with the reasons of its current decision: from the table
    of open holds, so the cost follows what is held, not the history."""
    newer = decisions.alias("newer")
    latest = (
        select(func.max(newer.c.id))
        .where(newer.c.result_id == open_holds.c.result_id)
        .correlate(open_holds)
        .scalar_subquery()
    )
    query = (
        select(
            open_holds.c.instrument,
            results.c.specimen_id,
            results.c.test_code,
            results.c.value_text,
            results.c.units,
            open_holds.c.held_since,
            decisions.c.reasons,
            decisions.c.findings,
        )
        .join(results, results.c.id == open_holds.c.result_id)
        .join(decisions, decisions.c.id == latest)
        .order_by(open_holds.c.instrument, results.c.specimen_id, results.c.id)
    )
    return [dict(row._mapping) for row in conn.execute(query)]
