"""Reagent lots recalled by a person (R4), the results each lot produced, and the lots in
use on an instrument.

A recall names a lot by reagent and lot as the analysers report them (the page offers
the lots in use). The engine learns of recalls through :func:`recalled_among`, read with
the other lookups of a message.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, tuple_

from middleware.store.schema import (
    decisions,
    open_holds,
    qc_tests,
    reagent_lots,
    reagent_uses,
    recalled_lots,
    results,
)
from middleware.store.sql import utc


@dataclass(frozen=True, slots=True)
class RecalledLot:
    reagent: str
    lot: str
    reason: str
    by: str
    at: datetime


@dataclass(frozen=True, slots=True)
class LotResult:
    """A patient result made with a lot, and where it stands."""

    result_id: int
    instrument: str
    specimen_id: str
    test_code: str
    value: str
    units: str
    completed_at: datetime | None
    stored_at: datetime
    state: str
    """``held``, or the action of its latest decision (``release``, ``reject``,
    ``superseded``); empty when it was never decided (no rules in force)."""
    decided_at: datetime | None
    decided_by: str


@dataclass(frozen=True, slots=True)
class LotInUse:
    """A lot the latest result of some tests of an instrument was made with."""

    reagent: str
    lot: str
    tests: tuple[str, ...]
    expiry: date | None
    """As the analyser first reported it (the control layer adds the rule files')."""
    recalled: RecalledLot | None
    recalled_in_rules: bool = False


def _recalled(row: Any) -> RecalledLot:
    at = utc(row.recalled_at) or row.recalled_at
    return RecalledLot(row.reagent, row.lot, row.reason, row.recalled_by, at)


def find(conn: Connection, reagent: str, lot: str) -> RecalledLot | None:
    row = conn.execute(
        select(recalled_lots).where(recalled_lots.c.reagent == reagent, recalled_lots.c.lot == lot)
    ).first()
    return None if row is None else _recalled(row)


def add(
    conn: Connection, reagent: str, lot: str, reason: str, by: str, at: datetime
) -> RecalledLot:
    conn.execute(
        recalled_lots.insert(),
        {"reagent": reagent, "lot": lot, "reason": reason, "recalled_by": by, "recalled_at": at},
    )
    return RecalledLot(reagent, lot, reason, by, at)


_RECALLED_AMONG = select(
    recalled_lots.c.reagent, recalled_lots.c.lot, recalled_lots.c.reason
).where(
    tuple_(recalled_lots.c.reagent, recalled_lots.c.lot).in_(bindparam("pairs", expanding=True))
)


def recalled_among(
    conn: Connection, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Of these lots (by reagent and lot), those recalled, with the reason: one lookup
    on the recall's unique index, none when no lot is wanted."""
    pairs = sorted({pair for pair in wanted if pair[1]})
    if not pairs:
        return {}
    return {(r.reagent, r.lot): r.reason for r in conn.execute(_RECALLED_AMONG, {"pairs": pairs})}


def reported(conn: Connection, reagent: str, lot: str) -> bool:
    """Whether an analyser ever reported this lot."""
    found = conn.execute(
        select(reagent_lots.c.id).where(
            reagent_lots.c.reagent == reagent, reagent_lots.c.lot == lot
        )
    ).first()
    return found is not None


def results_of_lot(
    conn: Connection, reagent: str, lot: str, after: int = 0, limit: int | None = None
) -> list[LotResult]:
    """Patient results made with a lot, by id from ``after`` on, ``limit`` of them (all
    when None): by the lot's uses (indexed), each with its hold or latest decision."""
    latest = (
        select(func.max(decisions.c.id))
        .where(decisions.c.result_id == results.c.id)
        .correlate(results)
        .scalar_subquery()
    )
    query = (
        select(
            results.c.id,
            results.c.instrument,
            results.c.specimen_id,
            results.c.test_code,
            results.c.value_text,
            results.c.units,
            results.c.completed_at,
            results.c.stored_at,
            open_holds.c.result_id.label("held"),
            decisions.c.action,
            decisions.c.decided_at,
            decisions.c.decided_by,
        )
        .select_from(
            reagent_lots.join(reagent_uses, reagent_uses.c.reagent_lot_id == reagent_lots.c.id)
            .join(results, results.c.id == reagent_uses.c.result_id)
            .outerjoin(open_holds, open_holds.c.result_id == results.c.id)
            .outerjoin(decisions, decisions.c.id == latest)
        )
        .where(reagent_lots.c.reagent == reagent, reagent_lots.c.lot == lot, results.c.id > after)
        .distinct()
        .order_by(results.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        LotResult(
            row.id,
            row.instrument,
            row.specimen_id,
            row.test_code,
            row.value_text,
            row.units,
            utc(row.completed_at),
            utc(row.stored_at) or row.stored_at,
            "held" if row.held is not None else (row.action or ""),
            utc(row.decided_at),
            row.decided_by or "",
        )
        for row in conn.execute(query)
    ]


def _splits(kept: str) -> list[tuple[str, str]]:
    """Every (reagent, lot) a ``reagent:lot`` the QC state keeps may stand for: either
    may hold a colon."""
    return [(kept[:i], kept[i + 1 :]) for i, ch in enumerate(kept) if ch == ":"]


def lots_in_use(conn: Connection, instrument: str) -> list[LotInUse]:
    """The lots the latest result of each test of an instrument was made with (as its QC
    state keeps them, to see a lot change), with their expiry and any recall: a row per
    test of the instrument, and two lookups by reagent and lot."""
    rows = conn.execute(
        select(qc_tests.c.test_code, qc_tests.c.lots_in_use).where(
            qc_tests.c.instrument == instrument, qc_tests.c.lots_in_use.is_not(None)
        )
    )
    tests: dict[str, set[str]] = {}
    for row in rows:
        for kept in json.loads(row.lots_in_use):
            tests.setdefault(kept, set()).add(row.test_code)
    candidates = sorted({pair for kept in tests for pair in _splits(kept) if pair[1]})
    known: dict[tuple[str, str], date | None] = {}
    recalls: dict[tuple[str, str], RecalledLot] = {}
    if candidates:
        pairs = tuple_(reagent_lots.c.reagent, reagent_lots.c.lot).in_(candidates)
        for lot_row in conn.execute(
            select(reagent_lots.c.reagent, reagent_lots.c.lot, reagent_lots.c.expiry).where(pairs)
        ):
            known[(lot_row.reagent, lot_row.lot)] = lot_row.expiry
        recalled_pairs = tuple_(recalled_lots.c.reagent, recalled_lots.c.lot).in_(candidates)
        for recall in conn.execute(select(recalled_lots).where(recalled_pairs)):
            recalls[(recall.reagent, recall.lot)] = _recalled(recall)
    out = []
    for kept, used_by in tests.items():
        splits = _splits(kept)
        pair = next((p for p in splits if p in known), splits[0] if splits else (kept, ""))
        out.append(
            LotInUse(pair[0], pair[1], tuple(sorted(used_by)), known.get(pair), recalls.get(pair))
        )
    return sorted(out, key=lambda lot: (lot.reagent, lot.lot))
