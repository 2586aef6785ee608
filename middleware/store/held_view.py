"""The held results as the status page shows them, a page at a time: by instrument and
specimen, each with every reason it is held, what people wrote about it, its reagent
lots, whether it went to the LIS early, and the patient's previous result of the test.

A page costs a handful of indexed lookups for its own results; finding where a page
starts orders the results held now (the open holds), never the history.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, select, text, tuple_

from middleware.store import comments, release
from middleware.store.comments import ResultComment
from middleware.store.direct import Direct
from middleware.store.schema import decisions, open_holds, results
from middleware.store.sql import in_padded_rounds, utc

#: The most results one page holds.
MAX_PAGE = 500


@dataclass(frozen=True, slots=True)
class HeldFinding:
    code: str
    message: str
    action: str
    """What it asks for: ``hold``, ``reject``, or ``release`` for a note."""
    urgent: bool
    comment: str
    """Text that travels with the result to the LIS."""


@dataclass(frozen=True, slots=True)
class LotUsed:
    reagent: str
    lot: str
    expiry: date | None


@dataclass(frozen=True, slots=True)
class PreviousResult:
    """The patient's latest earlier result of the same test, for delta context."""

    result_id: int
    value: str
    units: str
    at: datetime
    """When it was measured (stored, when the analyser gave no time)."""


@dataclass(frozen=True, slots=True)
class HeldResult:
    result_id: int
    instrument: str
    specimen_id: str
    test_code: str
    patient_id: str
    value: str
    units: str
    reference_range: str
    abnormal_flags: tuple[str, ...]
    completed_at: datetime | None
    held_since: datetime
    urgent: bool
    reasons: tuple[str, ...]
    findings: tuple[HeldFinding, ...]
    """Of its latest decision: every reason, and the notes."""
    decided_at: datetime
    decided_by: str
    analyser_comments: tuple[str, ...]
    comments: tuple[ResultComment, ...]
    """What people wrote about it, oldest first."""
    reagent_lots: tuple[LotUsed, ...]
    sent_early_at: datetime | None
    """When it went to the LIS as preliminary while held (Q13)."""
    sent_early_by: str | None
    """The person who sent it early; None when the rules did."""
    rerun_requested_at: datetime | None
    previous: PreviousResult | None


Cursor = tuple[str, str, int]
"""Where a page ends: instrument, specimen, result id."""


@dataclass(frozen=True, slots=True)
class HeldPage:
    results: list[HeldResult]
    next_after: Cursor | None
    """Give it as ``after`` for the next page; None on the last."""


def _latest_decision() -> Any:
    newer = decisions.alias("newer")
    return (
        select(func.max(newer.c.id))
        .where(newer.c.result_id == open_holds.c.result_id)
        .correlate(open_holds)
        .scalar_subquery()
    )


def held_page(
    conn: Connection,
    instrument: str | None = None,
    specimen: str | None = None,
    after: Cursor | None = None,
    limit: int = 100,
) -> HeldPage:
    """Results held now, ordered by instrument, specimen and id, from just after
    ``after``; of one instrument or specimen when named."""
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        select(
            open_holds.c.result_id,
            open_holds.c.instrument,
            open_holds.c.held_since,
            open_holds.c.preliminary_at,
            open_holds.c.preliminary_by,
            open_holds.c.rerun_requested_at,
            results.c.specimen_id,
            decisions.c.reasons,
            decisions.c.findings,
            decisions.c.urgent,
            decisions.c.decided_at,
            decisions.c.decided_by,
        )
        .join(results, results.c.id == open_holds.c.result_id)
        .join(decisions, decisions.c.id == _latest_decision())
        .order_by(open_holds.c.instrument, results.c.specimen_id, open_holds.c.result_id)
        .limit(limit + 1)
    )
    if instrument is not None:
        query = query.where(open_holds.c.instrument == instrument)
    if specimen is not None:
        query = query.where(results.c.specimen_id == specimen)
    if after is not None:
        query = query.where(
            tuple_(open_holds.c.instrument, results.c.specimen_id, open_holds.c.result_id)
            > tuple_(*after)
        )
    rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [row.result_id for row in rows]
    found = dict(release.results_by_id(conn, ids))
    written = comments.of_results(conn, ids)
    previous = _previous(conn, [(i, found[i]) for i in ids])
    page = []
    for row in rows:
        result = found[row.result_id]
        page.append(
            HeldResult(
                result_id=row.result_id,
                instrument=row.instrument,
                specimen_id=result.specimen_id,
                test_code=result.test_code,
                patient_id=result.patient_id,
                value=result.value.text,
                units=result.units,
                reference_range=result.reference_range,
                abnormal_flags=result.abnormal_flags,
                completed_at=result.completed_at,
                held_since=utc(row.held_since) or row.held_since,
                urgent=bool(row.urgent),
                reasons=tuple(r for r in row.reasons.split(",") if r),
                findings=tuple(_finding(f) for f in json.loads(row.findings or "[]")),
                decided_at=utc(row.decided_at) or row.decided_at,
                decided_by=row.decided_by,
                analyser_comments=tuple(
                    c.text for c in result.comments if c.source != "middleware"
                ),
                comments=tuple(written.get(row.result_id, ())),
                reagent_lots=tuple(LotUsed(u.reagent, u.lot, u.expiry) for u in result.reagents),
                sent_early_at=utc(row.preliminary_at),
                sent_early_by=row.preliminary_by,
                rerun_requested_at=utc(row.rerun_requested_at),
                previous=previous.get(row.result_id),
            )
        )
    last = rows[-1] if rows else None
    cursor = (last.instrument, last.specimen_id, last.result_id) if more and last else None
    return HeldPage(page, cursor)


def _finding(data: dict[str, Any]) -> HeldFinding:
    return HeldFinding(
        str(data.get("code", "")),
        str(data.get("message", "")),
        str(data.get("action", "hold")),
        bool(data.get("urgent", False)),
        str(data.get("comment", "")),
    )


#: Results looked up by one statement, at most; fewer are padded up to a power of two,
#: so that a handful of statements serve every page.
_PER_STATEMENT = 64

_ONE_EARLIER = (
    "SELECT * FROM (SELECT id, patient_id, test_code, value_text, units, completed_at, "
    "stored_at FROM results WHERE patient_id = :p{i} AND test_code = :t{i} AND id < :b{i} "
    "ORDER BY id DESC LIMIT 1) AS earlier_{i}"
)


@functools.lru_cache(maxsize=8)
def _earlier(count: int) -> Direct:
    """The latest result before each of ``count`` results of their patient and test: one
    lookup on the (patient, test, id) index each."""
    sql = " UNION ALL ".join(_ONE_EARLIER.format(i=i) for i in range(count))
    return Direct(
        text(sql).columns(
            results.c.id,
            results.c.patient_id,
            results.c.test_code,
            results.c.value_text,
            results.c.units,
            results.c.completed_at,
            results.c.stored_at,
        )
    )


def _previous(conn: Connection, held: Sequence[tuple[int, Any]]) -> dict[int, PreviousResult]:
    wanted = [(result_id, r.patient_id, r.test_code) for result_id, r in held if r.patient_id]

    def params(i: int, item: tuple[int, str, str] | None) -> dict[str, object]:
        # Padding asks for ids below 0: none.
        result_id, patient, test = item if item is not None else (0, "", "")
        return {f"p{i}": patient, f"t{i}": test, f"b{i}": result_id}

    rows = in_padded_rounds(conn, wanted, _earlier, params, _PER_STATEMENT)
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        by_pair.setdefault((row.patient_id, row.test_code), []).append(row)
    found: dict[int, PreviousResult] = {}
    for result_id, patient, test in wanted:
        # Each statement's row for this result is the latest before it; a row found for
        # another result of the same pair is either that one or older.
        earlier = (r for r in by_pair.get((patient, test), ()) if r.id < result_id)
        best = max(earlier, key=lambda r: r.id, default=None)
        if best is not None:
            at = utc(best.completed_at or best.stored_at) or best.stored_at
            found[result_id] = PreviousResult(best.id, best.value_text, best.units, at)
    return found


__all__ = ["MAX_PAGE", "HeldFinding", "HeldPage", "HeldResult", "LotUsed", "PreviousResult"]
