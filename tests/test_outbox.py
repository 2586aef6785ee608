"""The outbox: released results queued in the transaction that releases them, in order
per specimen, claimed by one sender at a time, and stopped for a person on an error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import Connection, select, text

import drivers
from middleware.assessment import assess_message
from middleware.astm.records import decode_message
from middleware.control import Conflict, Control, NotFound
from middleware.delivery import LisSender
from middleware.domain import Measurement, Result
from middleware.engine.engine import Engine
from middleware.engine.rules import load_rules
from middleware.hl7.results import Reported, Sender, oru_r01
from middleware.settings import LisConfig, Settings
from middleware.store import Store, outbox
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.schema import audit_log, outbox_log
from middleware.store.schema import outbox as outbox_table
from tests.conftest import ROOT
from tests.lis_peer import LisPeer
from tests.messages import patient, qc

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ENGINE = Engine(load_rules(ROOT / "rules"))
LIS = Sender()


def _store(
    conn: Connection,
    lines: list[bytes],
    now: datetime,
    lis: Sender | None = LIS,
    driver: drivers.Driver | None = None,
    engine: Engine = ENGINE,
) -> None:
    records = [line.decode() for line in lines]
    driver = driver or drivers.get("generic", None, "chem-1")
    reading = driver.read(decode_message(records).records)
    reading = reading.in_timezone(UTC)
    text_ = "\r".join(records)
    delivery = Delivery("c", "chem-1", text_.encode(), now, text_, len(records), reading)
    assess_message(conn, engine, store_delivery(conn, delivery, now), reading, now, lis)


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


def test_a_result_released_later_goes_with_its_comments_and_reagent_lots(
    database_url: str,
) -> None:
    """Held while its QC is missing, released by the QC that comes later: rebuilt from
    the store, it must reach the LIS as the analyser sent it, lots and comments too."""
    architect = drivers.get("abbott_architect", drivers.DriverOptions({"685": "GLU"}), "chem-1")
    message = [
        b"H|\\^&|||ARCHITECT^9.45^SCM12345^H1P1O1R1C1Q1L1|||||||P|1",
        b"P|1|||PAT1",
        b"O|1|S9|S9^A1^1|^^^685^GLU|R",
        b"R|1|^^^685^GLU^UNDILUTED^F^L42^SER1^^F|5.0|mmol/L||N||F",
        b"C|1|I|slightly lipaemic|G",
        b"L|1",
    ]
    store = Store(database_url)
    try:
        asyncio.run(_run(store, partial(_store, lines=message, now=T0, driver=architect)))
        assert store.read(outbox.entries) == []  # held: no QC yet
        _write(store, qc("5.2", "15.6"), T0 + timedelta(minutes=5))
        (entry,) = store.read(outbox.entries)
    finally:
        store.close()
    segments = entry.message.split("\r")
    assert segments[3].split("|")[5] == "5.0"
    assert segments[4:] == [
        "NTE|1|L|slightly lipaemic",
        "NTE|2|L|reagent ARCHITECT GLU reagent lot L42",
    ]


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


def run_out(conn: Connection, entry_id: int) -> None:
    """The entry's claim ran out: on PostgreSQL claims are judged by the database's own
    clock, which a test cannot move on, so the claim is moved back."""
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    conn.execute(
        outbox_table.update().where(outbox_table.c.id == entry_id).values(claimed_until=long_ago)
    )


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
            claimed = outbox.claim(conn, owner, at, hold)
        return claimed[0] if claimed else None

    try:
        with store.engine.begin() as conn:
            queue(conn)
        first = claim("node-a")
        assert first is not None and first.control_id == "C0"
        second = claim("node-b")  # A's next waits behind C0; B's goes
        assert second is not None and second.control_id == "C2"
        assert claim("node-c") is None  # both claimed by others
        assert claim("node-b").control_id == "C2"  # type: ignore[union-attr]  # its own again
        with store.engine.begin() as conn:
            run_out(conn, first.id)
        assert claim("node-b").control_id == "C0"  # type: ignore[union-attr]
        with store.engine.begin() as conn:
            outbox.answered(conn, second.id, "node-b", outbox.DELIVERED, "MSA|AA|C2", "", T0)
            answer, why = "MSA|AE|C0", "AE: unknown test"
            outbox.answered(conn, first.id, "node-b", outbox.STOPPED, answer, why, T0)
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


async def test_a_person_retries_or_dismisses_a_stopped_message_and_is_audited(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    settings = Settings.model_validate(
        {"state_dir": tmp_path / "state", "database_url": database_url}
    )
    control = Control(settings, store)

    def stopped(conn: Connection) -> int:
        entry_id = outbox.enqueue(conn, "S1", "chem-1", "C9", "message", T0)
        outbox.claim(conn, "t", T0, timedelta(seconds=30))
        outbox.answered(conn, entry_id, "t", outbox.STOPPED, "MSA|AE|C9", "AE: unknown test", T0)
        return entry_id

    try:
        entry_id = await store.write(stopped)
        [listed] = await control.outbox_entries()
        assert (listed.id, listed.state, listed.detail) == (entry_id, "stopped", "AE: unknown test")
        with pytest.raises(NotFound, match="no message 999"):
            await control.retry_outbox(999, "bob")
        await control.dismiss_outbox(entry_id, "bob")
        with pytest.raises(Conflict, match="is dead: it cannot be dismissed"):
            await control.dismiss_outbox(entry_id, "bob")
        await control.retry_outbox(entry_id, "carol")
        assert [e.state for e in await control.outbox_entries()] == ["pending"]
        audited = store.read(
            lambda c: c.execute(select(audit_log.c.actor, audit_log.c.action)).all()
        )
        assert [tuple(a) for a in audited] == [("bob", "outbox.dismiss"), ("carol", "outbox.retry")]
    finally:
        store.close()


def test_the_outbox_command_lists_and_retries(tmp_path: Path) -> None:
    config = tmp_path / "middleware.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    (tmp_path / "state").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'state' / 'middleware.db'}")
    with store.engine.begin() as conn:
        entry_id = outbox.enqueue(conn, "S1", "chem-1", "C9", "message", T0)
        outbox.claim(conn, "t", T0, timedelta(seconds=30))
        outbox.answered(conn, entry_id, "t", outbox.DEAD, "MSA|AR|C9", "AR: refused", T0)
    store.close()

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "middleware", "outbox", *args, "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listed = command("list")
    assert listed.returncode == 0 and "dead" in listed.stdout and "AR: refused" in listed.stdout
    assert command("retry", str(entry_id), "--by", "bob").returncode == 0
    refused = command("dismiss", str(entry_id), "--by", "bob")  # pending now: not stopped
    assert refused.returncode == 1 and "cannot be dismissed" in refused.stderr
    assert command("retry", "1").returncode == 2  # who is required


async def test_two_daemons_drain_one_outbox_once_each_and_in_order(database_url: str) -> None:
    stores = [Store(database_url), Store(database_url)]
    lis = LisPeer()
    port = await lis.start()
    config = LisConfig(host="127.0.0.1", port=port, ack_timeout=5)

    def fill(conn: Connection) -> None:
        for n in range(40):
            specimen = f"S{n % 8}"
            outbox.enqueue(conn, specimen, "chem-1", f"C{n:02d}", _oru(f"C{n:02d}", specimen), T0)

    await stores[0].write(fill)
    senders = [
        asyncio.create_task(LisSender(config, store, f"node-{i}").run())
        for i, store in enumerate(stores)
    ]
    try:
        await lis.wait_for(40, timeout=60)
        while stores[0].read(outbox.depth):
            await asyncio.sleep(0.05)
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await lis.stop()
        for store in stores:
            store.close()
    ids = [r.control_id for r in lis.received]
    assert sorted(ids) == [f"C{n:02d}" for n in range(40)]  # each once
    for specimen in {r.specimen_id for r in lis.received}:
        mine = [r.control_id for r in lis.received if r.specimen_id == specimen]
        assert mine == sorted(mine)  # in the order they were queued


async def test_a_message_queued_wakes_the_idle_sender_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender listens to the store's commits: with its look at an empty outbox made
    an hour apart, what is queued still goes at once (a result released on arrival waits
    for no poll)."""
    monkeypatch.setattr("middleware.delivery.POLL_SECONDS", 3600.0)
    store = Store(database_url)
    lis = LisPeer()
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=5)
    sender = LisSender(config, store, "node")
    store.writer.listeners.append(sender.committed)
    task = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0.3)  # idle: the outbox was empty when it looked
        for n in range(3):
            await store.write(
                partial(outbox.enqueue, specimen_id=f"S{n}", instrument="chem-1",
                        control_id=f"C{n}", message=_oru(f"C{n}", f"S{n}"), at=T0)
            )  # fmt: skip
            await lis.wait_for(n + 1, timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lis.stop()
        store.close()
    assert [r.control_id for r in lis.received] == ["C0", "C1", "C2"]


def _oru(control_id: str, specimen: str) -> str:
    result = Result(specimen, "GLU", "GLU", Measurement.parse("5.2"), instrument="chem-1")
    return oru_r01(control_id, T0, specimen, None, [Reported(result)])


def test_a_rejected_sample_goes_to_the_lis_without_its_value_and_with_the_reason(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    haemolysed = [
        b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
        b"P|1||PAT-H1",
        b"O|1|H1||^^^K\\^^^SI-H|R",
        b"R|1|^^^K|5.9|mmol/L||N||F",
        b"R|2|^^^SI-H|80|||N||F",
        b"L|1|N",
    ]
    try:
        _write(store, haemolysed, T0)
        [entry] = store.read(outbox.entries)
    finally:
        store.close()
    message = parse_message(entry.message, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate()
    segments = entry.message.split("\r")
    [obx] = [s.split("|") for s in segments if s.startswith("OBX|")]
    assert (obx[3], obx[5], obx[11]) == ("K^^L", "", "X")
    assert segments[2].endswith("|X")  # OBR-25: no result obtained
    assert any(s.startswith("NTE|1|L|") and "index 80" in s for s in segments)


@pytest.mark.parametrize("status", ["F", "C"])
def test_a_released_result_put_under_review_by_a_qc_failure_is_told_again(
    tmp_path: Path, status: str
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    lis = Sender(review_status=status)
    try:
        _write(store, qc("5.2", "15.6"), T0, lis)
        _write(store, patient("S1", "5.0"), T0 + timedelta(minutes=1), lis)  # released
        _write(store, qc("5.7", "15.6"), T0 + timedelta(minutes=2), lis)  # 1-3s
        entries = store.read(outbox.entries)
    finally:
        store.close()
    assert [e.specimen_id for e in entries] == ["S1", "S1"]
    notice = entries[1].message.split("\r")
    [obx] = [s.split("|") for s in notice if s.startswith("OBX|")]
    assert (obx[5], obx[11]) == ("5.0", status)
    [nte] = [s for s in notice if s.startswith("NTE|")]
    assert "under review: QC of GLU on chem-1 failed (qc-rejected:1-3s)" in nte
    assert entries[0].control_id != entries[1].control_id


def test_only_the_holder_of_a_claim_sends_or_closes_the_entry(database_url: str) -> None:
    store = Store(database_url)
    hold = timedelta(seconds=10)
    try:
        with store.engine.begin() as conn:
            entry_id = outbox.enqueue(conn, "S1", "chem-1", "C1", "message", T0)
            assert outbox.claim(conn, "node-a", T0, hold)
            # node-a is slow; its claim runs out and node-b takes the entry
            run_out(conn, entry_id)
            assert outbox.claim(conn, "node-b", T0 + 2 * hold, hold)
            assert not outbox.sent(conn, entry_id, "node-a", "message", T0 + 2 * hold, hold)
            assert outbox.sent(conn, entry_id, "node-b", "message", T0 + 2 * hold, hold)
            assert outbox.answered(conn, entry_id, "node-b", "delivered", "MSA|AA|C1", "", T0)
            # node-a's late answer (an error, as for a duplicate) changes nothing
            late = outbox.answered(conn, entry_id, "node-a", "stopped", "MSA|AE|C1", "AE", T0)
            assert not late
        [kept] = store.read(lambda c: outbox.entries(c, (outbox.DELIVERED,)))
        assert (kept.state, kept.attempts) == ("delivered", 1)
    finally:
        store.close()


async def test_a_message_set_aside_is_not_sent_after_a_later_one_of_its_specimen(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    control = Control(
        Settings.model_validate({"state_dir": tmp_path / "s", "database_url": database_url}),
        store,
    )
    hold = timedelta(seconds=10)

    def two(conn: Connection) -> int:
        first = outbox.enqueue(conn, "S1", "chem-1", "C1", "old", T0)
        second = outbox.enqueue(conn, "S1", "chem-1", "C2", "new", T0)
        outbox.claim(conn, "t", T0, hold)
        outbox.answered(conn, first, "t", outbox.DEAD, "MSA|AR|C1", "AR", T0)
        outbox.claim(conn, "t", T0, hold)
        outbox.answered(conn, second, "t", outbox.DELIVERED, "MSA|AA|C2", "", T0)
        return first

    try:
        first = await store.write(two)
        with pytest.raises(Conflict, match="older results over newer ones"):
            await control.retry_outbox(first, "bob")
    finally:
        store.close()


def test_a_correction_from_the_analyser_goes_to_the_lis_as_corrected(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        _write(store, qc("5.2", "15.6"), T0)
        _write(store, patient("S1", "5.0"), T0 + timedelta(minutes=1))
        corrected = [
            r.replace(b"|F", b"|C") if r.startswith(b"R|") else r for r in patient("S1", "5.4")
        ]
        _write(store, corrected, T0 + timedelta(minutes=2))
        entries = store.read(outbox.entries)
    finally:
        store.close()
    statuses = [
        [s.split("|")[11] for s in e.message.split("\r") if s.startswith("OBX|")] for e in entries
    ]
    assert statuses == [["F"], ["C"]]
    assert entries[1].message.split("\r")[2].endswith("|C")  # OBR-25: a corrected report


def test_a_comment_of_sample_acceptance_travels_when_qc_releases_the_result_later(
    database_url: str,
) -> None:
    # S1: separated 3 h after collection, the glucose is accepted with a comment; it
    # waits for QC, and the QC that releases it does not read the sample's message again.
    late = [
        b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
        b"P|1||PAT9",
        b"O|1|S-9||^^^GLU|R||20260301050000",
        b"R|1|^^^GLU|5.0|mmol/L||N||F||||20260301075900",
        b"L|1|N",
    ]
    store = Store(database_url)
    try:
        _write(store, late, T0)
        assert store.read(outbox.entries) == []  # held: no QC yet
        _write(store, qc("5.2", "15.6"), T0 + timedelta(minutes=1))
        (sent,) = store.read(outbox.entries)
    finally:
        store.close()
    assert sent.specimen_id == "S-9"
    assert "Glucose may be falsely low" in sent.message
