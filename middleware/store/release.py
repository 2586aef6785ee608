"""Decisions on patient results and the holds they make, and what a decision looks
at: the patient's previous result, the patients a specimen id was seen with, the reagent
lots analysers reported, the results held now.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, select, text, tuple_

from middleware.domain import (
    Comment,
    Measurement,
    Patient,
    ReagentUse,
    Result,
)
from middleware.engine.decision import Action, Decision, Finding
from middleware.store import comments, notices
from middleware.store.direct import Direct
from middleware.store.schema import (
    decisions,
    open_holds,
    reagent_lots,
    reagent_uses,
    results,
    specimens,
)
from middleware.store.sql import in_padded_rounds, new_only, utc

#: The action of a decision that ends the hold of a result a re-run replaced: it never
#: goes to the LIS (the engine's own actions are release, hold and reject).
SUPERSEDED = "superseded"

# Every message's decisions and holds go on the driver's cursor (see store.direct).
_INSERT_DECISIONS = Direct(decisions.insert())
_NEW_HOLDS = Direct(lambda database: new_only(database, open_holds, "result_id"))


_SPECIMEN_PATIENTS = Direct(
    select(results.c.specimen_id, results.c.patient_id)
    .where(results.c.specimen_id.in_(bindparam("ids", expanding=True)))
    .distinct()
)


_REPORTED_LOTS = select(reagent_lots.c.reagent, reagent_lots.c.lot, reagent_lots.c.expiry).where(
    tuple_(reagent_lots.c.reagent, reagent_lots.c.lot).in_(bindparam("pairs", expanding=True))
)


# The reagent lots each result was made with, as the analyser reported them.
_LOTS_USED = Direct(
    select(
        reagent_uses.c.result_id,
        reagent_uses.c.test_code,
        reagent_uses.c.calibration_id,
        reagent_lots.c.reagent,
        reagent_lots.c.lot,
        reagent_lots.c.kind,
        reagent_lots.c.serial,
        reagent_lots.c.expiry,
    )
    .join(reagent_lots, reagent_lots.c.id == reagent_uses.c.reagent_lot_id)
    .where(reagent_uses.c.result_id.in_(bindparam("ids", expanding=True)))
    .order_by(reagent_uses.c.id)
)


_RELEASE_HOLDS = Direct(
    open_holds.delete().where(open_holds.c.result_id.in_(bindparam("ids", expanding=True)))
)


_HOLDS = select(
    results,
    open_holds.c.preliminary_at,
    open_holds.c.preliminary_by,
    open_holds.c.rerun_requested_at,
).join(open_holds, open_holds.c.result_id == results.c.id)

# Held results are read at every QC message, on the driver's cursor.
_HELD = Direct(
    _HOLDS.where(
        open_holds.c.instrument == bindparam("instrument"),
        open_holds.c.test_code.in_(bindparam("tests", expanding=True)),
    ).order_by(results.c.id)
)

# Built once: every QC message that ends holds asks it.
_CURRENT_DECISIONS = Direct(
    select(decisions).where(
        decisions.c.id.in_(
            select(func.max(decisions.c.id))
            .where(decisions.c.result_id.in_(bindparam("ids", expanding=True)))
            .group_by(decisions.c.result_id)
        )
    )
)

_HELD_AMONG_QUERY = _HOLDS.where(
    open_holds.c.result_id.in_(bindparam("ids", expanding=True))
).order_by(results.c.id)
_HELD_AMONG = Direct(_HELD_AMONG_QUERY)
_HELD_AMONG_LOCKED = Direct(_HELD_AMONG_QUERY.with_for_update(of=open_holds))

# Held results waiting for the re-run a person asked for, of some specimens.
_AWAITING_RERUN = Direct(
    select(results.c.id, results.c.specimen_id, results.c.test_code, results.c.instrument)
    .join(open_holds, open_holds.c.result_id == results.c.id)
    .where(
        results.c.specimen_id.in_(bindparam("specimens", expanding=True)),
        open_holds.c.rerun_requested_at.is_not(None),
    )
)


#: Pairs looked up by one statement, at most; fewer are padded up to a power of two, so
#: that a handful of statements serve every batch.
_PAIRS_PER_STATEMENT = 64

_ONE_PAIR = (
    "SELECT * FROM (SELECT id, patient_id, test_code, value_number, completed_at, stored_at "
    "FROM results WHERE patient_id = :p{i} AND test_code = :t{i} AND id < :before "
    "AND value_number IS NOT NULL AND censor = '' ORDER BY id DESC LIMIT :k{i}) AS pair_{i}"
)


@functools.lru_cache(maxsize=8)
def _latest_results(pairs: int) -> Direct:
    """The latest numeric results of ``pairs`` (patient, test) pairs, one index lookup
    each. Written as SQL text: as a SQLAlchemy expression, a union of many subqueries
    cost more to build and to key for the statement cache than to run."""
    sql = " UNION ALL ".join(_ONE_PAIR.format(i=i) for i in range(pairs))
    return Direct(
        text(sql).columns(
            results.c.id,
            results.c.patient_id,
            results.c.test_code,
            results.c.value_number,
            results.c.completed_at,
            results.c.stored_at,
        )
    )


def previous_results(
    conn: Connection, wanted: Iterable[tuple[str, str]], before_id: int
) -> dict[tuple[str, str], list[tuple[int, Decimal, datetime]]]:
    """For each (patient, test) wanted, its latest numeric results stored before
    ``before_id``, oldest first: as many as it is wanted, and one more, so that each
    result of a batch finds the one before it. One round of index lookups, however long
    the patient's history."""
    counts: dict[tuple[str, str], int] = {}
    for patient, test in wanted:
        if patient:
            counts[(patient, test)] = counts.get((patient, test), 0) + 1

    def params(i: int, item: tuple[tuple[str, str], int] | None) -> dict[str, object]:
        # Padding asks for no row: LIMIT 0.
        (patient, test), count = item if item is not None else (("", ""), -1)
        return {f"p{i}": patient, f"t{i}": test, f"k{i}": count + 1}

    rows = in_padded_rounds(
        conn, sorted(counts.items()), _latest_results, params, _PAIRS_PER_STATEMENT,
        {"before": before_id},
    )  # fmt: skip
    found: dict[tuple[str, str], list[tuple[int, Decimal, datetime]]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        moment = utc(row.completed_at or row.stored_at) or row.stored_at
        found.setdefault((row.patient_id, row.test_code), []).append(
            (row.id, Decimal(row.value_number), moment)
        )
    return found


def specimen_patients(conn: Connection, specimen_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every patient each specimen id was seen with."""
    wanted = sorted(set(specimen_ids))
    seen: dict[str, set[str]] = {s: set() for s in wanted}
    if wanted:
        for specimen_id, patient_id in _SPECIMEN_PATIENTS.execute(conn, {"ids": wanted}):
            if patient_id:
                seen[specimen_id].add(patient_id)
    return {s: tuple(sorted(p)) for s, p in seen.items()}


_SPECIMEN_DEMOGRAPHICS = Direct(
    select(specimens.c.patient_id, specimens.c.patient_sex, specimens.c.patient_birth_date)
    .where(specimens.c.specimen_id.in_(bindparam("ids", expanding=True)))
    .where(specimens.c.patient_id != "")
)


def specimens_patients(conn: Connection, specimen_ids: Iterable[str]) -> list[Patient]:
    """The patients of these specimens with the sex and birth date their first message
    gave, for messages about their results that the analyser's message no longer holds."""
    wanted = sorted(set(specimen_ids))
    if not wanted:
        return []
    rows = _SPECIMEN_DEMOGRAPHICS.rows(conn, {"ids": wanted})
    # A patient of two specimens, one whose message said nothing of them: what is known
    # first, since a message takes the first patient of its id.
    rows.sort(key=lambda row: not row.patient_sex and row.patient_birth_date is None)
    return [Patient(row.patient_id, row.patient_sex, row.patient_birth_date) for row in rows]


def reported_lots(
    conn: Connection, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], date | None]:
    """The expiry each reagent lot (by reagent and lot) had when an analyser first
    reported it."""
    pairs = {pair for pair in wanted if pair[1]}
    if not pairs:
        return {}
    rows = conn.execute(_REPORTED_LOTS, {"pairs": sorted(pairs)})
    return {(r.reagent, r.lot): r.expiry for r in rows}


def record_decisions(
    conn: Connection,
    decided: Iterable[tuple[int, Result, Decision]],
    at: datetime,
    by: str = "engine",
) -> None:
    decided_list = list(decided)
    rows = [
        {
            "result_id": result_id,
            "instrument": result.instrument,
            "test_code": result.test_code,
            "specimen_id": result.specimen_id,
            "action": decision.action.value,
            "reasons": ",".join(decision.reasons),
            "findings": json.dumps(
                [
                    {
                        "code": f.code,
                        "message": f.message,
                        "action": f.action.value,
                        "urgent": f.urgent,
                        "comment": f.comment,
                    }
                    for f in decision.findings
                ]
            ),
            "urgent": decision.urgent,
            "comments": "\n".join(decision.comments),
            "decided_at": at,
            "decided_by": by,
        }
        for result_id, result, decision in decided_list
    ]
    if not rows:
        return
    _INSERT_DECISIONS.executemany(conn, rows)
    notices.tell(
        conn,
        *(
            notices.ResultDecided(
                result_id=result_id,
                instrument=result.instrument,
                specimen_id=result.specimen_id,
                test_code=result.test_code,
                action=decision.action.value,
                reasons=tuple(decision.reasons),
                urgent=decision.urgent,
                decided_by=by,
                at=at,
            )
            for result_id, result, decision in decided_list
        ),
    )
    # The open holds are what a new QC or a closed corrective action looks at again: kept
    # as their own rows so that finding them costs the same whatever the history.
    held = {r["result_id"]: r for r in rows if r["action"] == "hold"}
    done = [r["result_id"] for r in rows if r["result_id"] not in held]
    if done:
        _RELEASE_HOLDS.execute(conn, {"ids": done})
    if held:
        _NEW_HOLDS.executemany(
            conn,
            [
                {
                    "result_id": r["result_id"],
                    "instrument": r["instrument"],
                    "test_code": r["test_code"],
                    "held_since": at,
                }
                for r in held.values()
            ],
        )


def results_by_id(conn: Connection, ids: Iterable[int]) -> list[tuple[int, Result]]:
    """Stored results as they go to the LIS: with their comments and reagent lots."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    rows = conn.execute(select(results).where(results.c.id.in_(wanted)).order_by(results.c.id))
    return _with_notes(conn, _with_lots(conn, [(row.id, result_of(row)) for row in rows]))


class Held(NamedTuple):
    result_id: int
    result: Result
    sent_early: bool
    """Sent to the LIS as preliminary while held (Q13)."""
    early_by: str | None = None
    """Who sent it early, when a person did; None when the rules did, or nobody."""
    rerun_requested: bool = False
    """A person asked for a re-run: the re-run result replaces it."""
    received_at: datetime | None = None
    """When it was received (stored)."""


def _held(conn: Connection, rows: list[Any]) -> list[Held]:
    marks = {row.id: row for row in rows}
    found = _with_notes(conn, _with_lots(conn, [(row.id, result_of(row)) for row in rows]))
    return [
        Held(
            result_id,
            result,
            marks[result_id].preliminary_at is not None,
            marks[result_id].preliminary_by,
            marks[result_id].rerun_requested_at is not None,
            utc(marks[result_id].stored_at),
        )
        for result_id, result in found
    ]


def held_results(conn: Connection, instrument: str, tests: Iterable[str]) -> list[Held]:
    """Results of these tests on an instrument whose latest decision is a hold, oldest
    first, with their comments and reagent lots (a released one goes to the LIS)."""
    rows = _HELD.rows(conn, {"instrument": instrument, "tests": sorted(set(tests))})
    return _held(conn, rows)


def holds_among(conn: Connection, ids: Iterable[int], lock: bool = False) -> list[Held]:
    """Those of these results that are held now, as :func:`held_results` gives them.
    With ``lock``, their holds stay this transaction's until it ends (PostgreSQL; on
    SQLite a write transaction has the whole database): two people acting on one result
    at once act one after the other, and the second finds it no longer held."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    query = _HELD_AMONG_LOCKED if lock else _HELD_AMONG
    return _held(conn, query.rows(conn, {"ids": wanted}))


def existing_results(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Which of these ids are stored patient results."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    return set(conn.execute(select(results.c.id).where(results.c.id.in_(wanted))).scalars())


class StoredDecision(NamedTuple):
    result_id: int
    action: str
    findings: tuple[Finding, ...]
    decided_at: datetime
    decided_by: str


def _finding(data: dict[str, Any]) -> Finding:
    try:
        action = Action(data.get("action", "hold"))
    except ValueError:
        action = Action.HOLD
    return Finding(
        str(data.get("code", "")),
        str(data.get("message", "")),
        action,
        bool(data.get("urgent", False)),
        str(data.get("comment", "")),
    )


def current_decisions(conn: Connection, ids: Iterable[int]) -> dict[int, StoredDecision]:
    """The latest decision of each of these results, with its findings."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = _CURRENT_DECISIONS.rows(conn, {"ids": wanted})
    return {
        row.result_id: StoredDecision(
            row.result_id,
            row.action,
            tuple(_finding(f) for f in json.loads(row.findings or "[]")),
            utc(row.decided_at) or row.decided_at,
            row.decided_by,
        )
        for row in rows
    }


def mark_preliminary(
    conn: Connection, ids: Iterable[int], at: datetime | None, by: str | None = None
) -> None:
    """Held results sent to the LIS as preliminary (``at``; ``by`` a person, None for the
    rules), or no longer to be taken as such (None: their QC failed and the LIS was
    told)."""
    wanted = sorted(set(ids))
    if wanted:
        conn.execute(
            open_holds.update()
            .where(open_holds.c.result_id.in_(wanted))
            .values(preliminary_at=at, preliminary_by=by if at is not None else None)
        )


def mark_rerun_requested(conn: Connection, ids: Iterable[int], at: datetime) -> None:
    """Held results a person asked a re-run of: kept held until the re-run replaces them."""
    wanted = sorted(set(ids))
    if wanted:
        conn.execute(
            open_holds.update()
            .where(open_holds.c.result_id.in_(wanted))
            .values(rerun_requested_at=at)
        )


def supersede_reruns(
    conn: Connection, new: Iterable[tuple[int, Result]], at: datetime
) -> list[tuple[int, int]]:
    """End the hold of each result waiting for a re-run that one of the ``new`` results
    (of the same specimen and test, stored after it) is: it never goes to the LIS, its
    re-run is decided in its place. One indexed lookup by specimen. Gives (replaced,
    re-run) pairs."""
    arrived: dict[tuple[str, str], list[tuple[int, Result]]] = {}
    for result_id, result in new:
        if result.specimen_id:
            arrived.setdefault((result.specimen_id, result.test_code), []).append(
                (result_id, result)
            )
    if not arrived:
        return []
    specimens = sorted({specimen for specimen, _ in arrived})
    replaced: list[tuple[Any, int]] = []
    for old in _AWAITING_RERUN.rows(conn, {"specimens": specimens}):
        later = [i for i, _ in arrived.get((old.specimen_id, old.test_code), ()) if i > old.id]
        if later:
            replaced.append((old, min(later)))
    if not replaced:
        return []
    rows = [
        {
            "result_id": old.id,
            "instrument": old.instrument,
            "test_code": old.test_code,
            "specimen_id": old.specimen_id,
            "action": SUPERSEDED,
            "reasons": f"superseded-by:{rerun}",
            "findings": json.dumps(
                [
                    {
                        "code": f"superseded-by:{rerun}",
                        "message": f"replaced by its re-run, result {rerun}",
                        "action": Action.RELEASE.value,
                        "urgent": False,
                        "comment": "",
                    }
                ]
            ),
            "urgent": False,
            "comments": "",
            "decided_at": at,
            "decided_by": "engine",
        }
        for old, rerun in replaced
    ]
    _INSERT_DECISIONS.executemany(conn, rows)
    _RELEASE_HOLDS.execute(conn, {"ids": [old.id for old, _ in replaced]})
    notices.tell(
        conn,
        *(
            notices.ResultDecided(
                result_id=old.id,
                instrument=old.instrument,
                specimen_id=old.specimen_id,
                test_code=old.test_code,
                action=SUPERSEDED,
                reasons=(f"superseded-by:{rerun}",),
                urgent=False,
                decided_by="engine",
                at=at,
            )
            for old, rerun in replaced
        ),
    )
    return [(old.id, rerun) for old, rerun in replaced]


def _with_notes(conn: Connection, found: list[tuple[int, Result]]) -> list[tuple[int, Result]]:
    """What people wrote about the results, after the analyser's comments: it goes to the
    LIS with them. One indexed lookup for the batch."""
    if not found:
        return found
    written = comments.of_results(conn, [result_id for result_id, _ in found])
    return [
        (
            result_id,
            replace(
                result,
                comments=(
                    *result.comments,
                    *(Comment(c.text, source="middleware") for c in written[result_id]),
                ),
            ),
        )
        if written.get(result_id)
        else (result_id, result)
        for result_id, result in found
    ]


def _with_lots(conn: Connection, found: list[tuple[int, Result]]) -> list[tuple[int, Result]]:
    """One more indexed lookup for the whole batch, not one per result."""
    if not found:
        return found
    used: dict[int, list[ReagentUse]] = {}
    for row in _LOTS_USED.rows(conn, {"ids": [result_id for result_id, _ in found]}):
        used.setdefault(row.result_id, []).append(
            ReagentUse(
                row.reagent,
                row.lot,
                test_code=row.test_code,
                expiry=row.expiry,
                calibration_id=row.calibration_id,
                serial=row.serial,
                kind=row.kind,
            )
        )
    return [
        (result_id, replace(result, reagents=tuple(used[result_id])))
        if result_id in used
        else (result_id, result)
        for result_id, result in found
    ]


def _number(text: str, stored: Any) -> Decimal | None:
    """The stored number, with the digits the analyser wrote when its text gives the same
    number: SQLite keeps NUMERIC as a binary float (5.0 comes back as 5.0000000000), and
    a result goes to the LIS with its own precision."""
    if stored is None:
        return None
    number = Decimal(stored)
    written = Measurement.parse(text).number
    return written if written is not None and written == number else number


def result_of(row: Any) -> Result:
    value = Measurement(row.value_text, _number(row.value_text, row.value_number), row.censor)
    return Result(
        specimen_id=row.specimen_id,
        test_code=row.test_code,
        instrument_test_code=row.instrument_test_code,
        value=value,
        units=row.units,
        reference_range=row.reference_range,
        abnormal_flags=tuple(f for f in row.abnormal_flags.split(",") if f),
        instrument_flags=tuple(f for f in row.instrument_flags.split("\n") if f),
        status=row.status,
        operator=row.operator,
        completed_at=utc(row.completed_at),
        instrument=row.instrument,
        module=row.module,
        patient_id=row.patient_id,
        sequence=row.sequence,
        comments=tuple(Comment(line) for line in row.comments.split("\n") if line),
        dilution=row.dilution,
    )
