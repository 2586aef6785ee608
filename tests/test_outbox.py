"""The outbox: released results queued in the transaction that releases them, in order
per specimen, claimed by one sender at a time, and stopped for a person on an error."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial

import hl7
from sqlalchemy import Connection, select, text

import drivers
from middleware.assessment import assess_message
from middleware.astm.records import decode_message
from middleware.engine.engine import Engine
from middleware.engine.rules import load_rules
from middleware.hl7.results import Sender
from middleware.store import Store, outbox
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.schema import outbox_log
from tests.conftest import ROOT
from tests.messages import patient, qc

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ENGINE = Engine(load_rules(ROOT / "rules"))
LIS = Sender()


def _store(conn: Connection, lines: list[bytes], now: datetime, lis: Sender | None = LIS) -> None:
    records = [line.decode() for line in lines]
    reading = drivers.get("generic", None, "chem-1").read(decode_message(records).records)
    reading = reading.in_timezone(UTC)
    text_ = "\r".join(records)
    delivery = Delivery("c", "chem-1", text_.encode(), now, text_, len(records), reading)
    assess_message(conn, ENGINE, store_delivery(conn, delivery, now), reading, now, lis)


def _write(store: Store, lines: list[bytes], now: datetime, lis: Sender | None = LIS) -> None:
    asyncio.run(_run(store, partial(_store, lines=lines, now=now, lis=lis)))


async def _run(store: Store, work: partial[None]) -> None:
    await store.write(work)


def test_released_results_are_queued_with_their_decision_and_held_ones_wait(
    database_url: str,
) -> None:
    store = Store(database_url)
    try:
        _write(store, patient("S1", "5.0"), T0)  # no QC yet: held, nothing queued
        assert store.read(outbox.entries) == []
        _write(store, qc("5.2", "15.6"), T0 + timedelta(minutes=5))  # releases S1
        _write(store, patient("S2", "5.1"), T0 + timedelta(minutes=6))
        entries = store.read(outbox.entries)
        assert [(e.specimen_id, e.state, e.attempts) for e in entries] == [
            ("S1", "pending", 0),
            ("S2", "pending", 0),
        ]
        first = hl7.parse(entries[0].message)
        assert str(first.segment("MSH")[10]) == entries[0].control_id
        assert str(first.segment("OBX")[5]) == "5.0" and str(first.segment("OBR")[3]) == "S1"
        assert len({e.control_id for e in entries}) == 2
        _write(store, patient("S3", "5.2"), T0 + timedelta(minutes=7), lis=None)
        assert len(store.read(outbox.entries)) == 2  # no LIS configured: nothing queued
    finally:
        store.close()


def test_a_rolled_back_release_queues_nothing(database_url: str) -> None:
    store = Store(database_url)

    def release_then_fail(conn: Connection) -> None:
        _store(conn, qc("5.2", "15.6"), T0)
        _store(conn, patient("S1", "5.0"), T0)
        conn.execute(text("INSERT INTO nowhere VALUES (1)"))

    try:
        try:
            asyncio.run(_run(store, partial(release_then_fail)))
        except Exception as exc:
            assert "nowhere" in str(exc)
        assert store.read(outbox.entries) == []
    finally:
        store.close()


def test_one_specimen_in_order_others_go_on_and_an_error_stops_its_queue(
    database_url: str,
) -> None:
    store = Store(database_url)
    hold = timedelta(seconds=30)

    def queue(conn: Connection) -> None:
        for n, specimen in enumerate(("A", "A", "B")):
            outbox.enqueue(conn, specimen, "chem-1", f"C{n}", f"message {n}", T0)

    def claim(owner: str, at: datetime = T0) -> outbox.Entry | None:
        with store.engine.begin() as conn:
            return outbox.claim_next(conn, owner, at, hold)

    try:
        with store.engine.begin() as conn:
            queue(conn)
        first = claim("node-a")
        assert first is not None and first.control_id == "C0"
        second = claim("node-b")  # A's next waits behind C0; B's goes
        assert second is not None and second.control_id == "C2"
        assert claim("node-c") is None  # both claimed by others
        assert claim("node-b").control_id == "C2"  # type: ignore[union-attr]  # its own again
        assert claim("node-b", T0 + hold + timedelta(seconds=1)).control_id == "C0"  # type: ignore[union-attr]
        with store.engine.begin() as conn:
            outbox.answered(conn, second.id, outbox.DELIVERED, "MSA|AA|C2", "", T0)
            outbox.answered(conn, first.id, outbox.STOPPED, "MSA|AE|C0", "AE: unknown test", T0)
        assert claim("node-a", T0 + timedelta(hours=1)) is None  # A's queue stopped
        with store.engine.begin() as conn:
            assert outbox.dismiss(conn, first.id, T0)
            assert not outbox.dismiss(conn, first.id, T0)  # already set aside
        third = claim("node-a", T0 + timedelta(hours=1))
        assert third is not None and third.control_id == "C1"
        with store.engine.begin() as conn:
            assert outbox.retry(conn, first.id, T0)
        events = store.read(
            lambda c: (
                c.execute(select(outbox_log.c.event).order_by(outbox_log.c.id)).scalars().all()
            )
        )
        assert events == ["answered", "answered", "dismissed", "retried"]
    finally:
        store.close()
