"""Storage, on SQLite and on PostgreSQL: the same tests for both."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Table, select, text
from sqlalchemy.exc import DBAPIError

from middleware.domain import (
    ControlResult,
    HostQuery,
    InstrumentMessage,
    Measurement,
    Order,
    Patient,
    ReagentUse,
    Result,
    Specimen,
)
from middleware.store import Store, audit, ingest, orders, reading, release, worklist
from middleware.store.database import HEAD, current_revision, migrate, open_engine
from middleware.store.schema import control_results, raw_transmissions, reagent_uses, results

NOW = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
LOT = ReagentUse("GLU reagent", "L2365", "GLU", date(2026, 12, 8), "CAL-0780")


def result(code: str, value: str, specimen: str = "S1", **extra: object) -> Result:
    base: dict[str, object] = {
        "specimen_id": specimen,
        "test_code": code,
        "instrument_test_code": code.lower(),
        "value": Measurement.parse(value),
        "units": "mmol/L",
        "status": "F",
        "instrument": "chem-1",
        "completed_at": datetime(2026, 3, 1, 8, 0),
    }
    base.update(extra)
    return Result(**base)  # type: ignore[arg-type]


def delivery(text_: str = "H|\\^&\rR|1|^^^GLU|5.4\rL|1|N", **reading: object) -> ingest.Delivery:
    message = InstrumentMessage(instrument="chem-1", sender="XL-200")
    for key, value in reading.items():
        setattr(message, key, value)
    return ingest.Delivery(
        connection="chem-1/127.0.0.1:4000",
        instrument="chem-1",
        raw=b"\x05\x021H|\\^&\r\x03XX\r\n" + text_.encode(),
        received_at=NOW,
        text=text_,
        record_count=text_.count("\r") + 1,
        reading=message,
    )


def write(store: Store, work: object) -> ingest.Stored:
    return asyncio.run(store.write(work))  # type: ignore[arg-type]


def test_message_results_and_raw_bytes_are_kept(store: Store) -> None:
    d = delivery(
        results=[result("GLU", "5.4", reagents=(LOT,)), result("CREA", "<15")],
        specimens=[Specimen("S1", patient_id="P9", specimen_type="serum")],
    )
    stored = write(store, lambda conn: ingest.store_delivery(conn, d))
    assert stored.results == 2 and not stored.duplicate and not stored.quarantined
    rows = store.read(lambda conn: reading.results_for_specimen(conn, "S1"))
    assert [(r["test_code"], r["value_text"]) for r in rows] == [("GLU", "5.4"), ("CREA", "<15")]
    assert rows[0]["value_number"] == Decimal("5.4") and rows[0]["censor"] == ""
    assert rows[1]["value_number"] == Decimal("15") and rows[1]["censor"] == "<"
    raw = store.read(lambda conn: conn.execute(select(raw_transmissions)).one())
    assert raw.data == d.raw
    assert raw.sha256 == hashlib.sha256(d.raw).hexdigest()
    assert raw.message_id == stored.message_id


def test_duplicate_delivery_is_recognised_and_not_stored_twice(store: Store) -> None:
    first = write(
        store, lambda conn: ingest.store_delivery(conn, delivery(results=[result("GLU", "5.4")]))
    )
    again = delivery(results=[result("GLU", "5.4")])
    again.text = again.text.replace("\r", "\r\n")  # same records, other separators
    second = write(store, lambda conn: ingest.store_delivery(conn, again))
    assert second.duplicate and second.message_id == first.message_id
    counts = store.read(reading.counts)
    assert counts["messages"] == 1 and counts["results"] == 1
    assert counts["raw_transmissions"] == 2  # every transmission is evidence


def test_an_hl7_message_stored_by_its_whole_text_is_known_when_sent_again(
    store: Store,
) -> None:
    """Stored by a version that knew HL7 messages by their whole text (its ACK lost at an
    upgrade), a message sent again is the same one, not stored twice."""
    text = "MSH|^~\\&|ELite 580|Erba|||20260301080000||ORU^R01|P-1|P|2.3.1\rOBX|1|NM|GLU||5.4"
    before = delivery(text, results=[result("GLU", "5.4")])
    first = write(store, lambda conn: ingest.store_delivery(conn, before))
    again = replace(delivery(text, results=[result("GLU", "5.4")]), identity="P-1 as read now")
    second = write(store, lambda conn: ingest.store_delivery(conn, again))
    assert second.duplicate and second.message_id == first.message_id


def test_other_instrument_same_text_is_another_message(store: Store) -> None:
    write(store, lambda conn: ingest.store_delivery(conn, delivery(results=[result("GLU", "5.4")])))
    other = delivery(results=[result("GLU", "5.4")])
    other.instrument = "chem-2"
    stored = write(store, lambda conn: ingest.store_delivery(conn, other))
    assert not stored.duplicate
    assert store.read(reading.counts)["messages"] == 2


def test_unreadable_delivery_is_quarantined_raw_with_reason(store: Store) -> None:
    d = delivery()
    d.reading = None
    d.problems = ["record 1: unknown record type 'X'"]
    stored = write(store, lambda conn: ingest.store_delivery(conn, d))
    assert stored.quarantined and stored.message_id is None
    [entry] = store.read(reading.quarantined)
    assert entry["reason"] == "record 1: unknown record type 'X'"
    assert entry["data"] == d.raw and entry["raw_id"] == stored.raw_id


def test_message_with_only_problems_is_quarantined_but_kept(store: Store) -> None:
    d = delivery(problems=["result 1 has no test code"])
    stored = write(store, lambda conn: ingest.store_delivery(conn, d))
    assert stored.quarantined and stored.message_id is not None
    [entry] = store.read(reading.quarantined)
    assert entry["message_id"] == stored.message_id


def test_a_query_alone_is_not_quarantined(store: Store) -> None:
    d = delivery(queries=[HostQuery(("S1",))])
    assert not write(store, lambda conn: ingest.store_delivery(conn, d)).quarantined


def test_raw_transmissions_and_audit_log_are_append_only(store: Store) -> None:
    write(store, lambda conn: ingest.store_delivery(conn, delivery(results=[result("GLU", "5")])))
    write(
        store,
        lambda conn: audit.audit(conn, NOW, "lab-it", "rules.reload", "rules/qc.yaml", {"a": 1}),
    )
    for statement in (
        "UPDATE raw_transmissions SET connection = 'elsewhere'",
        "DELETE FROM raw_transmissions",
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert store.read(reading.counts)["raw_transmissions"] == 1


def test_each_result_is_given_the_id_of_its_own_row(store: Store) -> None:
    """Many results and controls in one message, with every kind of value the columns
    take: the ids given back are those of their rows, in the order sent."""
    values = ["<15", "abc", "5.40", "-0.001", "1E3", ""]
    patients = [
        result(
            f"T{i:02d}",
            values[i % len(values)],
            specimen=f"S{i % 3}",
            units="µmol/L" if i % 2 else "",
            completed_at=None if i % 4 == 0 else datetime(2026, 3, 1, 8, i % 60, tzinfo=UTC),
            sequence=i,
        )
        for i in range(37)
    ]
    controls = [
        ControlResult(result(f"C{i}", f"{i}.5", specimen="QC1"), "Lyphochek", "45781", str(i))
        for i in range(5)
    ]

    def rows(conn: Connection, table: Table, ids: tuple[int, ...]) -> dict[int, Any]:
        return {row.id: row for row in conn.execute(select(table).where(table.c.id.in_(ids)))}

    d = delivery(results=patients, controls=controls)
    for n in range(2):  # and the next message's ids follow on
        d = replace(d, text=f"{d.text}\rC|1|{n}", raw=d.raw + b".")
        stored = write(store, lambda conn, d=d: ingest.store_delivery(conn, d))
        assert len(stored.result_ids) == 37 and len(stored.control_ids) == 5
        kept = store.read(lambda conn, s=stored: rows(conn, results, s.result_ids))
        for result_id, sent in zip(stored.result_ids, patients, strict=True):
            row = kept[result_id]
            assert (row.test_code, row.value_text, row.censor, row.units, row.sequence) == (
                sent.test_code, sent.value.text, sent.value.censor, sent.units, sent.sequence
            )  # fmt: skip
            assert row.value_number == sent.value.number
            assert (row.completed_at is None) is (sent.completed_at is None)
        kept = store.read(lambda conn, s=stored: rows(conn, control_results, s.control_ids))
        assert [kept[i].level for i in stored.control_ids] == ["0", "1", "2", "3", "4"]
        assert list(stored.result_ids) == sorted(stored.result_ids)


def test_reagent_lots_trace_patient_and_control_results(store: Store) -> None:
    control = ControlResult(
        result("GLU", "5.0", specimen="QC1", reagents=(LOT,)), "Lyphochek 1", "45781", "1"
    )
    d = delivery(
        results=[result("GLU", "5.4", reagents=(LOT,)), result("CREA", "80")],
        controls=[control],
    )
    write(store, lambda conn: ingest.store_delivery(conn, d))
    traced = store.read(lambda conn: reading.results_with_lot(conn, "L2365"))
    assert sorted((t["kind"], t["specimen_id"]) for t in traced) == [
        ("control", "QC1"),
        ("patient", "S1"),
    ]
    uses = store.read(lambda conn: conn.execute(select(reagent_uses)).all())
    assert {u.calibration_id for u in uses} == {"CAL-0780"}
    assert store.read(lambda conn: reading.results_with_lot(conn, "nope")) == []


def test_same_lot_seen_twice_is_one_lot(store: Store) -> None:
    for value in ("5.4", "5.5"):
        d = delivery(text_=f"R|1|^^^GLU|{value}", results=[result("GLU", value, reagents=(LOT,))])
        write(store, lambda conn, d=d: ingest.store_delivery(conn, d))
    assert len(store.read(lambda conn: reading.results_with_lot(conn, "L2365"))) == 2
    lots = store.read(lambda conn: conn.execute(text("SELECT count(*) FROM reagent_lots")).scalar())
    assert lots == 1


def test_orders_are_kept_and_found_by_specimen(store: Store) -> None:
    write(
        store,
        lambda conn: orders.add_order(
            conn, Order("S7", ("GLU", "CREA"), "S", patient_id="P1"), NOW
        ),
    )
    write(store, lambda conn: orders.add_order(conn, Order("S8", ("K",)), NOW))
    found = store.read(lambda conn: orders.orders_for(conn, ["S7"]))
    assert [(o.specimen_id, o.test_codes, o.priority) for o in found] == [
        ("S7", ("GLU", "CREA"), "S")
    ]


def test_a_test_code_holding_a_comma_is_one_test(store: Store) -> None:
    order = Order("S9", ("CBC,DIFF", "ÉLEC", "K"), patient_id="P2")
    write(store, lambda conn: orders.add_order(conn, order, NOW))
    write(store, lambda conn: orders.cancel_tests(conn, "S9", ["K"]))
    found = store.read(lambda conn: orders.orders_for(conn, ["S9"]))
    assert [o.test_codes for o in found] == [("CBC,DIFF", "ÉLEC")]
    downloads = write(
        store,
        lambda conn: worklist.enqueue(conn, order, "new", {"xn": frozenset(order.test_codes)}, NOW),
    )
    assert len(downloads) == 1
    pending = store.read(lambda conn: worklist.pending(conn, "xn"))
    assert [d.order.test_codes for d in pending] == [("CBC,DIFF", "ÉLEC", "K")]


def test_orders_kept_as_comma_joined_codes_are_carried_over(empty_database_url: str) -> None:
    engine = open_engine(empty_database_url)
    try:
        migrate(engine, "0017")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO orders (specimen_id, patient_id, test_codes, priority, source, "
                    "created_at, specimen_type, container) "
                    "VALUES (:s, '', :codes, 'R', 'lis', :at, '', '')"
                ),
                [
                    {"s": f"S{i}", "codes": "GLU,CREA" if i % 2 else "K", "at": NOW}
                    for i in range(6001)
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO worklist_downloads (instrument, specimen_id, patient_id, "
                    "test_codes, priority, action, state, attempts, last_error, created_at) "
                    "VALUES ('xn', 'S1', '', 'WBC,RBC', 'R', 'new', 'pending', 0, '', :at)"
                ),
                {"at": NOW},
            )
        migrate(engine)
        with engine.connect() as conn:
            assert orders.orders_for(conn, ["S1", "S2"])[0].test_codes == ("GLU", "CREA")
            assert orders.orders_for(conn, ["S6000"])[0].test_codes == ("K",)
            assert orders.orders_for(conn, ["S5999"])[0].test_codes == ("GLU", "CREA")
            assert [d.order.test_codes for d in worklist.pending(conn, "xn")] == [("WBC", "RBC")]
    finally:
        engine.dispose()


def test_a_specimens_patient_is_kept_with_what_its_message_said_of_them(store: Store) -> None:
    told = Patient("PAT1", "F", date(1980, 1, 1))
    for specimen, patient in (("S1", Patient("PAT1")), ("S2", told)):
        d = delivery(
            text_=f"R|1|^^^GLU|{specimen}", patients=[patient],
            specimens=[Specimen(specimen, patient_id="PAT1")],
        )  # fmt: skip
        write(store, lambda conn, d=d: ingest.store_delivery(conn, d))
    found = store.read(lambda conn: release.specimens_patients(conn, ["S1", "S2"]))
    # Both specimens' patient, what is known of them first.
    assert found == [told, Patient("PAT1")]


def test_writer_commits_concurrent_work_in_batches(store: Store) -> None:
    async def many() -> list[ingest.Stored]:
        return await asyncio.gather(
            *(
                store.write(
                    lambda conn, i=i: ingest.store_delivery(
                        conn, delivery(text_=f"R|1|^^^GLU|{i}", results=[result("GLU", str(i))])
                    )
                )
                for i in range(60)
            )
        )

    stored = asyncio.run(many())
    assert len({s.message_id for s in stored}) == 60
    assert store.read(reading.counts)["results"] == 60
    assert store.writer.commits < 60  # work waiting together shared commits


def test_a_failing_unit_fails_alone(store: Store) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    async def mixed() -> list[object]:
        return await asyncio.gather(
            store.write(
                lambda conn: ingest.store_delivery(conn, delivery(results=[result("GLU", "1")]))
            ),
            store.write(broken),
            store.write(lambda conn: audit.audit(conn, NOW, "x", "y")),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(mixed())
    assert isinstance(first, ingest.Stored)
    assert isinstance(second, Exception)
    assert third is None
    assert store.read(lambda conn: conn.execute(select(results)).all())


def test_head_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from middleware.store.database import HEAD, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_migrations_are_idempotent(empty_database_url: str) -> None:
    Store(empty_database_url).close()  # every migration, from an empty database
    again = Store(empty_database_url)  # opening an up-to-date database changes nothing
    assert again.read(reading.counts)["messages"] == 0
    assert current_revision(again.engine) == HEAD
    again.close()
