"""What a decision looks up costs the same whatever the history, and answers as reading
all of it would: the held results of a test come from their own rows, kept with the
decisions; a patient's previous result of a test is found by index. SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import Connection, func, select, text

from middleware.domain import Result
from middleware.engine.decision import Action, Decision, Finding
from middleware.store import Store, ingest, qc_records, release
from middleware.store.database import migrate, open_engine
from middleware.store.schema import decisions
from tests.test_store import delivery, result

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
HOLD = Decision(Action.HOLD, (Finding("qc-missing", "no QC yet"),))
RELEASE = Decision(Action.RELEASE, ())


def _store_results(conn: Connection, count: int) -> list[tuple[int, Result]]:
    produced = [
        result(code, "5.0", specimen=f"S{i}") for i in range(count) for code in ("GLU", "K")
    ]
    text_ = "H|\\^&\r" + "\r".join(f"R|{i}|^^^X|{i}" for i in range(len(produced))) + "\rL|1|N"
    stored = ingest.store_delivery(conn, delivery(text_, results=produced))
    return list(zip(stored.result_ids, produced, strict=True))


def _held_by_every_decision(conn: Connection, instrument: str, test: str) -> list[int]:
    latest = (
        select(func.max(decisions.c.id).label("id"))
        .where(decisions.c.instrument == instrument, decisions.c.test_code == test)
        .group_by(decisions.c.result_id)
        .subquery()
    )
    rows = conn.execute(
        select(decisions.c.result_id)
        .join(latest, latest.c.id == decisions.c.id)
        .where(decisions.c.action == "hold")
        .order_by(decisions.c.result_id)
    )
    return [row[0] for row in rows]


def test_held_results_follow_every_decision(store: Store) -> None:
    rng = random.Random(7)

    def work(conn: Connection) -> None:
        items = _store_results(conn, 30)
        for _round in range(4):
            decided = [(i, r, rng.choice([HOLD, HOLD, RELEASE])) for i, r in items]
            release.record_decisions(conn, decided, NOW)
        for test in ("GLU", "K"):
            held = [h.result_id for h in release.held_results(conn, "chem-1", [test])]
            assert held == _held_by_every_decision(conn, "chem-1", test)
            assert held  # the mix leaves some held and releases others

    with store.engine.begin() as conn:
        work(conn)


def test_the_migration_lists_what_was_held_before_it(empty_database_url: str) -> None:
    engine = open_engine(empty_database_url)
    try:
        migrate(engine, "0004")
        with engine.begin() as conn:
            items = _store_results(conn, 3)
            actions = ["hold", "release", "hold", "hold", "reject", "hold"]
            rows = [
                {"result_id": i, "instrument": "chem-1", "test_code": r.test_code,
                 "specimen_id": "S", "action": action, "decided_at": NOW}
                for (i, r), action in zip(items, actions, strict=True)
            ]  # fmt: skip
            conn.execute(decisions.insert(), rows)
            # a later decision ends the first hold
            conn.execute(decisions.insert(), [rows[0] | {"action": "release"}])
        migrate(engine)
        with engine.connect() as conn:
            held = sorted(r[0] for r in conn.execute(text("SELECT result_id FROM open_holds")))
        ids = [i for i, _ in items]
        assert held == [ids[2], ids[3], ids[5]]
    finally:
        engine.dispose()


def test_a_z_far_beyond_any_limit_is_stored_not_refused() -> None:
    # Past 28 digits the default context refused to quantize, failing the whole message.
    stored = qc_records._four_places(Fraction(10**30, 3))
    assert stored is not None and stored > Decimal("3.3e29") and stored.as_tuple().exponent == -4
    assert qc_records._four_places(Fraction(10**400)) is None  # beyond a float: no z kept


def test_previous_results_are_the_latest_before_each_result_of_a_batch(store: Store) -> None:
    def work(conn: Connection) -> None:
        history = [
            result("GLU", f"{5 + i}.0", specimen=f"H{i}", patient_id="PAT-1") for i in range(50)
        ]
        history.append(result("GLU", "<2.0", specimen="H-censored", patient_id="PAT-1"))
        history.append(result("K", "4.0", specimen="H-other", patient_id="PAT-1"))
        text_ = "H|\\^&\r" + "\r".join(f"R|{i}|x" for i in range(len(history))) + "\rL|1|N"
        ingest.store_delivery(conn, delivery(text_, results=history))
        batch = [result("GLU", "9.9", specimen=f"B{i}", patient_id="PAT-1") for i in range(2)]
        stored = ingest.store_delivery(conn, delivery("H|\\^&\rR|1|b\rR|2|b\rL|1|N", results=batch))
        found = release.previous_results(
            conn, [("PAT-1", "GLU"), ("PAT-1", "GLU"), ("PAT-2", "GLU")], max(stored.result_ids)
        )
        rows = found[("PAT-1", "GLU")]
        # Wanted twice: three at most, whatever the history; each result of the batch
        # finds the one before it (the first, the history's latest numeric value).
        assert [value for _, value, _ in rows] == [Decimal("53"), Decimal("54"), Decimal("9.9")]
        assert [i for i, _, _ in rows][-1] == stored.result_ids[0]
        assert ("PAT-2", "GLU") not in found

    with store.engine.begin() as conn:
        work(conn)
