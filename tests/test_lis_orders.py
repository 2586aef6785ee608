"""Orders from the LIS: read with the segment and field of what is refused, kept as the
worklist in the transaction that answers AA, and the analysers' host queries answered
from them, end to end over MLLP."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, select

import drivers
from middleware.astm.records import decode_message, encode_record
from middleware.daemon import Daemon
from middleware.domain import Order
from middleware.hl7.orders import CANCEL, NEW, REPLACE, OrderRefused, acknowledgment, read_order
from middleware.orders_in import OrderReceiver
from middleware.settings import Settings
from middleware.store import Store, orders
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import StreamPeer, receive_message, send_message

MSH = "MSH|^~\\&|LIS|LAB|MW|LAB|20261130120000||{kind}|{control}|P|2.5.1"
PID = "PID|1||PAT7^^^^MR||Doe^Jo||19800101|F"
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def orm(control: str = "O1", order_control: str = "NW", *obr: str, kind: str = "ORM^O01") -> str:
    tests = obr or ("OBR|1|ORD1|S200|GLU^Glucose^L", "OBR|2|ORD1|S200|CREA^^L")
    orc = f"ORC|{order_control}|ORD1|||||||20261130110000"
    return "\r".join([MSH.format(kind=kind, control=control), PID, orc, *tests])


def test_an_order_gives_its_specimen_tests_patient_and_priority() -> None:
    read = read_order(orm())
    assert read.control_id == "O1" and read.message_type == "ORM^O01"
    [change] = read.changes
    assert change.action == NEW
    assert change.order == Order(
        "S200", ("GLU", "CREA"), "R",
        ordered_at=datetime(2026, 11, 30, 11, 0, tzinfo=UTC), patient_id="PAT7",
        placer_order="ORD1",
    )  # fmt: skip
    stat = read_order(orm("O2", "XO", "OBR|1|ORD1|S201|K^^L|S")).changes[0]
    assert (stat.action, stat.order.priority, stat.order.specimen_id) == (REPLACE, "S", "S201")
    oml = orm("O3", "CA", "OBR|1|ORD1||NA^^L", kind="OML^O21^OML_O21") + "\rSPM|1|S300"
    cancel = read_order(oml).changes[0]
    assert (cancel.action, cancel.order.specimen_id, cancel.order.test_codes) == (
        CANCEL, "S300", ("NA",),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (orm(kind="ADT^A01"), "MSH-9"),
        (orm("O1", "ZZ"), "ORC-1 (segment 3)"),
        (orm("O1", "NW", "OBR|1|ORD1||GLU^^L"), "OBR-3 (segment 4)"),
        (orm("O1", "NW", "OBR|1|ORD1|S1|"), "OBR-4 (segment 4)"),
        (orm().replace("20261130110000", "2026XX"), "ORC-9 (segment 3)"),
        ("\r".join([MSH.format(kind="ORM^O01", control="O1"), PID]), "OBR"),
        ("garbage", "MSH"),
    ],
)
def test_what_cannot_be_taken_is_refused_naming_segment_and_field(text: str, where: str) -> None:
    with pytest.raises(OrderRefused) as refused:
        read_order(text)
    assert str(refused.value).startswith(where)


def test_the_acknowledgment_names_the_message_it_answers() -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    # the control id as it came, already in HL7's escaped form: not escaped again
    ack = hl7.parse(acknowledgment("O\\F\\1", "AE", at, "ORC-1: no|yes", trigger="O21"))
    msa = ack.segment("MSA")
    assert (str(msa[1]), str(msa[2]), str(msa[3])) == ("AE", "O\\F\\1", "ORC-1: no\\F\\yes")
    assert str(ack.segment("MSH")[9]) == "ACK^O21^ACK"
    assert str(ack.segment("MSH")[10]) != "O\\F\\1"  # its own control id
    for code in ("AA", "AE", "AR"):
        text = acknowledgment("O1", code, at, "why" if code != "AA" else "")
        strict = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        assert strict.validate()


def test_each_order_of_a_specimen_is_its_own_by_its_number() -> None:
    """A test added later comes as an order of its own (another ORC-2); a cancel's ORC
    alone names its whole order by its number."""
    two = "\r".join([
        MSH.format(kind="ORM^O01", control="O1"), PID,
        "ORC|NW|ORD1", "OBR|1|ORD1|S200|GLU^^L",
        "ORC|NW|ORD2", "OBR|1|ORD2|S200|K^^L", "OBR|2|ORD2|S200|NA^^L",
    ])  # fmt: skip
    assert [(c.order.placer_order, c.order.test_codes) for c in read_order(two).changes] == [
        ("ORD1", ("GLU",)), ("ORD2", ("K", "NA")),
    ]  # fmt: skip
    # The number may be OBR-2's only; a cancel by number needs no specimen.
    by_obr = orm("O2", "CA", "OBR|1|ORD2||K^^L").replace("ORC|CA|ORD1|", "ORC|CA||")
    [cancel] = read_order(by_obr).changes
    assert (cancel.action, cancel.order.specimen_id, cancel.order.placer_order) == (
        CANCEL, "", "ORD2",
    )  # fmt: skip
    alone = "\r".join([MSH.format(kind="ORM^O01", control="O3"), PID, "ORC|CA|ORD2"])
    [whole] = read_order(alone).changes
    assert (whole.action, whole.order.placer_order, whole.order.test_codes) == (
        CANCEL, "ORD2", (),
    )  # fmt: skip
    with pytest.raises(OrderRefused, match=r"^ORC-2 \(segment 3\): a cancel without OBR"):
        read_order(alone.replace("ORC|CA|ORD2", "ORC|CA|"))
    with pytest.raises(OrderRefused, match=r"^OBR-3 \(segment 4\): no specimen id"):
        read_order(by_obr.replace("CA", "NW"))
    # A tube's OBR without a number beside one with a number: one order, not an order
    # without a number that would replace the numbered one.
    mixed = orm("O4", "NW", "OBR|1|A1|S1|GLU^^L", "OBR|2||S1|NA^^L|S").replace("ORD1", "")
    [change] = read_order(mixed).changes
    assert (change.order.placer_order, change.order.test_codes, change.order.priority) == (
        "A1", ("GLU", "NA"), "S",
    )  # fmt: skip


def test_an_order_replaces_and_cancels_only_what_its_number_names(database_url: str) -> None:
    store = Store(database_url)
    try:
        with store.engine.begin() as conn:
            orders.put_order(conn, Order("S1", ("GLU", "K"), placer_order="P1"), AT)
            orders.put_order(conn, Order("S1", ("NA",), placer_order="P2"), AT)  # added
            orders.put_order(conn, Order("S1", ("GLU",), placer_order="P1"), AT)  # replaces P1
            orders.put_order(conn, Order("S2", ("CRP", "ALB"), placer_order="P3"), AT)
            orders.cancel_tests(conn, "S2", ["CRP"], "P9")  # another order's number
            orders.cancel_tests(conn, "S2", ["ALB"], "P3")
        held = store.read(lambda conn: orders.orders_for(conn, ["S1", "S2"]))
        assert [(o.specimen_id, o.placer_order, o.test_codes) for o in held] == [
            ("S1", "P2", ("NA",)), ("S1", "P1", ("GLU",)), ("S2", "P3", ("CRP",)),
        ]  # fmt: skip
        assert [o.test_codes for o in store.read(lambda c: orders.orders_placed(c, "P2"))] == [
            ("NA",)
        ]
        # Orders kept without a number (before orders had them) are the specimen's order:
        # a numbered cancel or replacement names them too.
        with store.engine.begin() as conn:
            orders.put_order(conn, Order("S3", ("GLU", "NA", "K")), AT)
            orders.put_order(conn, Order("S4", ("GLU", "NA", "K")), AT)
            orders.cancel_tests(conn, "S3", ["NA"], "ORD1")
            orders.put_order(conn, Order("S4", ("GLU",), placer_order="ORD2"), AT)
        held = store.read(lambda conn: orders.orders_for(conn, ["S3", "S4"]))
        assert [(o.specimen_id, o.placer_order, o.test_codes) for o in held] == [
            ("S3", "", ("GLU", "K")), ("S4", "ORD2", ("GLU",)),
        ]  # fmt: skip
    finally:
        store.close()


def test_orders_replace_and_cancels_remove_tests(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'orders.db'}")
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    try:
        with store.engine.begin() as conn:
            orders.put_order(conn, Order("S1", ("GLU", "K")), at)
            orders.put_order(conn, Order("S1", ("GLU", "K", "NA")), at)  # replaces
            orders.cancel_tests(conn, "S1", ["K"])
            orders.put_order(conn, Order("S2", ("CRP",)), at)
            orders.cancel_tests(conn, "S2", ["CRP"])
        held = store.read(lambda conn: orders.orders_for(conn, ["S1", "S2"]))
        assert [(o.specimen_id, o.test_codes) for o in held] == [("S1", ("GLU", "NA"))]
    finally:
        store.close()


def _with_orders(
    tmp_path: Path, database_url: str, **instrument: str
) -> tuple[DaemonProcess, int, int]:
    """A daemon (not started) with one ASTM analyser and the LIS's orders port, and both
    ports."""
    analyser_port, orders_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": analyser_port, **instrument}],
        database_url=database_url, rules_dir=str(ROOT / "rules"),
        lis={"host": "127.0.0.1", "port": free_port(), "orders_host": "127.0.0.1",
             "orders_port": orders_port},
    )  # fmt: skip
    return daemon, analyser_port, orders_port


async def test_an_order_from_the_lis_answers_the_analysers_host_query(
    tmp_path: Path, database_url: str
) -> None:
    daemon, analyser_port, orders_port = _with_orders(tmp_path, database_url)
    await asyncio.to_thread(daemon.start)
    try:
        await asyncio.sleep(0.5)  # the order port opens once the instruments are served
        reader, writer = await connect(orders_port)
        answers = []
        for message in (orm("O1"), orm("O2", "ZZ")):
            writer.write(b"\x0b" + message.encode() + b"\x1c\r")
            await writer.drain()
            block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            answers.append(hl7.parse(block[1:-2].decode()).segment("MSA"))
        writer.close()
        assert [(str(a[1]), str(a[2])) for a in answers] == [("AA", "O1"), ("AE", "O2")]
        assert str(answers[1][3]).startswith("ORC-1")
        peer = StreamPeer(*await connect(analyser_port))
        await send_message(peer, [b"H|\\^&|||CHEM-1", b"Q|1|^S200||ALL||||||||O", b"L|1|N"])
        answer = await receive_message(peer)
        await peer.close()
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
    assert answer[1] == b"P|1|PAT7"
    assert answer[2].startswith(b"O|1|S200||^^^GLU\\^^^CREA|R")
    assert query(database_url, "SELECT specimen_id, test_codes FROM orders") == [
        ("S200", '["GLU", "CREA"]')
    ]


async def test_a_query_is_answered_with_all_the_analysers_character_set_can_carry(
    tmp_path: Path, database_url: str
) -> None:
    daemon, analyser_port, orders_port = _with_orders(
        tmp_path, database_url, timezone="Pacific/Kiritimati"
    )
    utf8 = MSH.format(kind="ORM^O01", control="O9") + "||||||UNICODE UTF-8"
    # A patient id and a test code latin-1 (the analyser's) cannot write, beside a tube
    # it can take whole.
    order = "\r".join([
        utf8, "PID|1||PAT€02^^^^MR", "ORC|NW|ORD9",
        "OBR|1|ORD9|S300|GLU^^L", "OBR|2|ORD9|S300|GL€^^L",
    ])  # fmt: skip
    await asyncio.to_thread(daemon.start)
    try:
        await asyncio.sleep(0.5)
        reader, writer = await connect(orders_port)
        for message in (order.encode(), orm("O10", "NW", "OBR|1|ORD1|S301|K^^L").encode()):
            writer.write(b"\x0b" + message + b"\x1c\r")
            await writer.drain()
            block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            assert str(hl7.parse(block[1:-2].decode()).segment("MSA")[1]) == "AA"
        writer.close()
        peer = StreamPeer(*await connect(analyser_port))
        await send_message(peer, [b"H|\\^&|||CHEM-1", b"Q|1|^S300\\^S301||ALL", b"L|1|N"])
        answer = await asyncio.wait_for(receive_message(peer), 20)
        await peer.close()
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
    # Without the patient id (never another patient's, a character replaced) nor the test
    # it cannot name; the tube is still run for glucose, and the other answered whole.
    assert answer[1:5] == [
        b"P|1|", b"O|1|S300||^^^GLU|R||||||N||||||||||||||Q",
        b"P|2|PAT7", b"O|1|S301||^^^K|R||||||N||||||||||||||Q",
    ]  # fmt: skip
    # Stamped (H.14) on the analyser's wall clock, UTC+14 there, as it stamps its own.
    stamped = datetime.strptime(answer[0].split(b"|")[13].decode(), "%Y%m%d%H%M%S")
    there = datetime.now(ZoneInfo("Pacific/Kiritimati")).replace(tzinfo=None)
    assert abs((there - stamped).total_seconds()) < 120
    said = [json.loads(line) for line in daemon.log.read_text().splitlines() if "left_out" in line]
    assert [entry["left_out"] for entry in said] == [
        ["S300: patient id 'PAT€02'", "S300: test 'GL€'"]
    ]


@pytest.mark.parametrize("driver", ["sysmex_xn", "roche_cobas", "ortho_vitros", "erba_xl"])
def test_an_asap_order_goes_as_routine_to_an_analyser_that_takes_stat_or_routine(
    driver: str,
) -> None:
    analyser = drivers.get(driver)
    assert analyser.analyser_priority("A") == "R" and analyser.analyser_priority("S") == "S"
    assert drivers.get("generic").analyser_priority("A") == "A"


@given(
    st.text(max_size=300)
    | st.builds(lambda s: MSH.format(kind="ORM^O01", control="X") + "\r" + s, st.text(max_size=300))
)
def test_any_text_is_an_order_or_a_clear_refusal(text: str) -> None:
    try:
        read = read_order(text)
    except OrderRefused as refused:
        assert str(refused)
    else:
        assert read.changes and all(c.order.specimen_id for c in read.changes)


def test_a_specimens_tests_in_one_message_are_ordered_together_with_their_priority() -> None:
    both = orm("O4", "NW", "OBR|1|ORD1|S5|GLU^^L", "OBR|2|ORD1|S5|K^^L|S")
    [change] = read_order(both).changes  # one order: routine and STAT tests together
    assert (change.order.test_codes, change.order.priority) == (("GLU", "K"), "S")
    tq1 = orm("O5", "NW", "OBR|1|ORD1|S6|GLU^^L").replace("\rOBR", "\rTQ1|1||||||||S\rOBR")
    assert read_order(tq1).changes[0].order.priority == "S"  # TQ1-9, as v2.5 puts it
    offset = orm().replace("20261130110000", "20261130130000+0200")
    assert read_order(offset).changes[0].order.ordered_at == datetime(2026, 11, 30, 11, tzinfo=UTC)


def test_specimens_come_from_their_spm_in_oml() -> None:
    o33 = "\r".join([
        MSH.format(kind="OML^O33^OML_O33", control="O6"), PID,
        "SPM|1|PL1&LIS^FL1&LAB", "ORC|NW|ORD1", "OBR|1|ORD1||GLU^^L",
        "SPM|2|PL2&LIS", "ORC|NW|ORD2", "OBR|1|ORD2||K^^L",
    ])  # fmt: skip
    read = read_order(o33)
    assert [(c.order.specimen_id, c.order.test_codes) for c in read.changes] == [
        ("PL1", ("GLU",)), ("PL2", ("K",)),
    ]  # fmt: skip
    o21 = "\r".join([
        MSH.format(kind="OML^O21^OML_O21", control="O7"), PID,
        "ORC|NW|ORD1", "OBR|1|ORD1||GLU^^L", "SPM|1|^FL9&LAB",
    ])  # fmt: skip
    assert read_order(o21).changes[0].order.specimen_id == "FL9"


def test_what_the_lis_says_of_the_specimen_is_kept_with_its_order(database_url: str) -> None:
    """Collection time, type and container: from the SPM (v2.5), else OBR-7 and OBR-15
    (v2.3); kept with the order, times in UTC."""
    o21 = "\r".join([
        MSH.format(kind="OML^O21^OML_O21", control="O8"), PID, "ORC|NW|ORD1",
        "OBR|1|ORD1||K^^L|||20261130080000",
        "SPM|1|S400||SER^Serum^HL70487|||||||||||||20261130071500+0100"
        "||||||||||SST^Serum separator tube^HL70785",
    ])  # fmt: skip
    order = read_order(o21).changes[0].order
    assert order.collected_at == datetime(2026, 11, 30, 6, 15, tzinfo=UTC)
    assert (order.specimen_type, order.container) == ("Serum", "Serum separator tube")
    orm_231 = orm("O9", "NW", "OBR|1|ORD1|S401|K^^L|||20261130083000||||||||PLAS&Plasma")
    older = read_order(orm_231).changes[0].order
    assert older.collected_at == datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
    assert (older.specimen_type, older.container) == ("Plasma", "")
    with pytest.raises(OrderRefused, match="SPM-17"):
        read_order(o21.replace("20261130071500+0100", "2026-11-30"))
    store = Store(database_url)
    try:
        asyncio.run(store.write(lambda conn: orders.put_order(conn, order, AT)))
        (kept,) = store.read(lambda conn: orders.orders_for(conn, ["S400"]))
        assert kept == order
    finally:
        store.close()


def test_sample_acceptance_reads_what_the_lis_says_of_the_specimen(database_url: str) -> None:
    """The analyser says nothing of the tube: the LIS's order does, and the acceptance
    criteria judge by it (a serum tube for a blood count; potassium analysed 5 h after
    collection)."""
    from middleware.store.schema import decisions
    from tests.test_outbox import _store

    collected = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    lis_orders = [
        Order("S500", ("WBC",), collected_at=collected, specimen_type="Serum", container="SST"),
        Order("S501", ("K",), collected_at=collected, placer_order="ORD1"),
        # A test added later, in an order that says nothing of the tube: the first's stand.
        Order("S501", ("NA",), placer_order="ORD2"),
    ]
    analysed = b"20261130110000"  # 5 h after collection, in UTC as the message is read
    messages = [
        [b"H|\\^&|||CHEM-1|||||||P|LIS2-A2", b"P|1||PAT8", b"O|1|" + specimen + b"||^^^" + test
         + b"|R", b"R|1|^^^" + test + b"|" + value + b"|u||N||F||||" + analysed, b"L|1|N"]
        for specimen, test, value in ((b"S500", b"WBC", b"7.1"), (b"S501", b"K", b"4.1"))
    ]  # fmt: skip
    store = Store(database_url)

    def work(conn: Connection) -> None:
        for order in lis_orders:
            orders.put_order(conn, order, AT)
        for lines in messages:
            _store(conn, lines, AT)

    try:
        asyncio.run(store.write(work))
        rows = store.read(
            lambda conn: conn.execute(
                select(decisions.c.specimen_id, decisions.c.action, decisions.c.reasons).order_by(
                    decisions.c.id
                )
            ).all()
        )
    finally:
        store.close()
    found = {specimen: (action, reasons) for specimen, action, reasons in rows}
    assert found["S500"][0] == "reject" and "wrong-sample-type" in found["S500"][1]
    assert "wrong-container" in found["S500"][1]
    assert found["S501"][0] == "reject" and "delay-exceeded" in found["S501"][1]


async def test_orders_in_other_character_sets_are_read_or_refused(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'orders.db'}")
    receiver = OrderReceiver(store)
    port = await receiver.start("127.0.0.1", 0)
    latin = orm("O8", "NW", "OBR|1|ORD1|S8|GLU^Glucose é^L").encode("latin-1")
    declared = latin.replace(b"|2.5.1", b"|2.5.1||||||8859/1", 1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        codes = []
        for data in (latin, declared):
            writer.write(b"\x0b" + data + b"\x1c\r")
            await writer.drain()
            block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            msa = hl7.parse(block[1:-2].decode()).segment("MSA")
            codes.append((str(msa[1]), str(msa[2]), str(msa[3]) if len(msa) > 3 else ""))
        writer.close()
        held = store.read(lambda conn: orders.orders_for(conn, ["S8"]))
    finally:
        await receiver.close()
        store.close()
    assert codes[0][:2] == ("AE", "O8") and codes[0][2].startswith("MSH-18")
    assert codes[1] == ("AA", "O8", "")
    assert [o.test_codes for o in held] == [("GLU",)]


async def test_an_order_after_a_byte_order_mark_is_taken(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'orders.db'}")
    receiver = OrderReceiver(store)
    port = await receiver.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b\xef\xbb\xbf" + orm("B1").encode() + b"\x1c\r")
        await writer.drain()
        block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
        writer.close()
        held = store.read(lambda conn: orders.orders_for(conn, ["S200"]))
    finally:
        await receiver.close()
        store.close()
    msa = hl7.parse(block[1:-2].decode()).segment("MSA")
    assert (str(msa[1]), str(msa[2])) == ("AA", "B1")
    assert [o.test_codes for o in held] == [("GLU", "CREA")]


PARIS = ZoneInfo("Europe/Paris")


def test_times_without_an_offset_are_the_laboratorys_wall_clock() -> None:
    """HL7's DTM without an offset is the sender's local time: in Paris, 09:30 in winter is
    08:30 UTC and 09:30 in summer 07:30 UTC; a time with its offset keeps it."""
    winter = orm("O10", "NW", "OBR|1|ORD1|S10|K^^L|||20261203093000")
    order = read_order(winter.replace("20261130110000", "20261203090000"), zone=PARIS)
    (change,) = order.changes
    assert change.order.collected_at == datetime(2026, 12, 3, 8, 30, tzinfo=UTC)
    assert change.order.ordered_at == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    summer = orm("O11", "NW", "OBR|1|ORD1|S11|K^^L|||20260701093000")
    assert read_order(summer, zone=PARIS).changes[0].order.collected_at == datetime(
        2026, 7, 1, 7, 30, tzinfo=UTC
    )
    o21 = "\r".join([
        MSH.format(kind="OML^O21^OML_O21", control="O12"), PID, "ORC|NW|ORD1",
        "OBR|1|ORD1||K^^L", "SPM|1|S12|||||||||||||||20261203093000",
        "ORC|NW|ORD2", "OBR|1|ORD2||NA^^L", "SPM|1|S13|||||||||||||||20261203093000-0500",
    ])  # fmt: skip
    spm = [c.order.collected_at for c in read_order(o21, zone=PARIS).changes]
    assert spm == [datetime(2026, 12, 3, h, 30, tzinfo=UTC) for h in (8, 14)]
    # the hour that comes twice when the clocks go back: its first reading
    twice = orm("O13", "NW", "OBR|1|ORD1|S14|K^^L|||20261025023000")
    assert read_order(twice, zone=PARIS).changes[0].order.collected_at == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


async def test_the_daemon_reads_the_lis_times_in_the_laboratorys_zone(tmp_path: Path) -> None:
    """The laboratory's ``timezone`` setting reaches the orders port: a collection at 09:30
    in Paris is kept as 08:30 UTC, so the sample's delay is judged from it."""
    orders_port = free_port()
    settings = Settings.model_validate({
        "state_dir": tmp_path / "state", "timezone": "Europe/Paris",
        "lis": {"host": "127.0.0.1", "port": free_port(), "orders_host": "127.0.0.1",
                "orders_port": orders_port},
    })  # fmt: skip
    daemon = Daemon(settings)
    await daemon.start()
    try:
        reader, writer = await connect(orders_port, within=10)
        sent = orm("O14", "NW", "OBR|1|ORD1|S15|K^^L|||20261203093000")
        writer.write(b"\x0b" + sent.encode() + b"\x1c\r")
        await writer.drain()
        block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
        writer.close()
        assert b"MSA|AA|O14" in block
        assert daemon.store is not None
        (kept,) = daemon.store.read(lambda conn: orders.orders_for(conn, ["S15"]))
    finally:
        await daemon.stop()
    assert kept.collected_at == datetime(2026, 12, 3, 8, 30, tzinfo=UTC)


def test_each_order_keeps_the_time_of_its_own_orc() -> None:
    """ORC-9 of the last ORC was given to every order of the message."""
    text = "\r".join([
        MSH.format(kind="ORM^O01", control="O15"), PID,
        "ORC|NW|ORD1|||||||20261130080000", "OBR|1|ORD1|S20|GLU^^L",
        "ORC|NW|ORD2|||||||20261130090000", "OBR|1|ORD2|S21|K^^L",
        "ORC|NW|ORD3", "OBR|1|ORD3|S22|NA^^L",
        # a specimen's later group gives the time its first did not
        "ORC|NW|ORD4", "OBR|1|ORD4|S23|GLU^^L",
        "ORC|NW|ORD5|||||||20261130100000", "OBR|1|ORD5|S23|K^^L",
    ])  # fmt: skip
    read = {c.order.specimen_id: c.order.ordered_at for c in read_order(text).changes}
    assert read == {
        "S20": datetime(2026, 11, 30, 8, tzinfo=UTC),
        "S21": datetime(2026, 11, 30, 9, tzinfo=UTC),
        "S22": None,
        "S23": datetime(2026, 11, 30, 10, tzinfo=UTC),
    }


@pytest.mark.parametrize(
    "obr_and_spm",
    [
        ["OBR|1|ORD1|^LABNS|GLU^^L"],  # OBR-3: an assigning authority, no identifier
        ["OBR|1|ORD1|&X^LABNS|GLU^^L"],
        ["OBR|1|ORD1||GLU^^L", "SPM|1|&LIS^&LAB"],  # SPM-2: neither placer nor filler
    ],
)
def test_a_namespace_without_its_identifier_is_no_specimen_id(obr_and_spm: list[str]) -> None:
    """The LABNS of ``^LABNS`` was kept as the specimen."""
    text = orm("O16", "NW", *obr_and_spm, kind="OML^O21^OML_O21")
    with pytest.raises(OrderRefused, match=r"^OBR-3 \(segment 4\): no specimen id") as refused:
        read_order(text)
    assert (refused.value.condition, refused.value.location) == ("101", ("OBR", 1, 3))
    named = orm("O17", "NW", "OBR|1|ORD1|S30^LABNS|GLU^^L", kind="OML^O21^OML_O21")
    assert read_order(named).changes[0].order.specimen_id == "S30"


@pytest.mark.parametrize("driver", ["generic", "erba_xl"])
def test_a_specimen_id_is_compared_without_the_spaces_around_it(driver: str) -> None:
    """The LIS's order for ``  000123  `` is kept as 000123: an analyser asking for its tube
    with the same spaces is answered its tests, leading zeros kept, not 'no order'."""
    (ordered,) = read_order(orm("O18", "NW", "OBR|1|ORD1|  000123  |GLU^^L")).changes
    assert ordered.order.specimen_id == "000123"
    asked = "\r".join(["H|\\^&|||ANALYSER", "Q|1|^  000123  ||ALL||||||||O", "L|1|N"])
    analyser = drivers.get(driver)
    (query,) = analyser.read(decode_message(asked).records).queries
    assert query.specimen_ids == ("000123",)
    answer = [encode_record(r) for r in analyser.answer_query(query, [ordered.order], AT)]
    assert [r.split("|")[2:4] for r in answer if r.startswith("O|")] == [["000123", ""]]
    assert "GLU" in next(r for r in answer if r.startswith("O|")).split("|")[4]


def test_a_query_naming_no_specimen_we_can_read_is_answered_as_an_error() -> None:
    """Not with an empty answer ending as a normal one: L.3 Q, error in the request."""
    analyser = drivers.get("generic")
    asked = "\r".join(["H|\\^&|||ANALYSER", "Q|1|^||ALL||||||||O", "L|1|N"])
    (query,) = analyser.read(decode_message(asked).records).queries
    answer = [encode_record(r) for r in analyser.answer_query(query, [], AT)]
    assert [r[:1] for r in answer] == ["H", "L"] and answer[-1] == "L|1|Q"


@pytest.mark.parametrize(
    "asap",
    [
        ("ORC|NW|ORD1|||||^^^^^A", "OBR|1|ORD1|S40|GLU^^L"),  # ORC-7.6
        ("ORC|NW|ORD1", "TQ1|1||||||||A", "OBR|1|ORD1|S40|GLU^^L"),  # TQ1-9
        ("ORC|NW|ORD1", "OBR|1|ORD1|S40|GLU^^L|||||||||||||||||||||||^^^^^A"),  # OBR-27.6
        ("ORC|NW|ORD1", "OBR|1|ORD1|S40|GLU^^L|A"),  # OBR-5, v2.3
    ],
)
def test_an_asap_order_stays_asap_to_the_analyser(asap: tuple[str, ...]) -> None:
    """HL7's A (as soon as possible) became routine; E1394's O.6 has it too, and the early
    release rules take it."""
    text = "\r".join([MSH.format(kind="ORM^O01", control="O19"), PID, *asap])
    (change,) = read_order(text).changes
    assert change.order.priority == "A"
    analyser = drivers.get("generic")
    query = "\r".join(["H|\\^&|||ANALYSER", "Q|1|^S40||ALL||||||||O", "L|1|N"])
    (asked,) = analyser.read(decode_message(query).records).queries
    answered = [encode_record(r) for r in analyser.answer_query(asked, [change.order], AT)]
    downloaded = [encode_record(r) for r in analyser.download(change.order, False, AT)]
    for records in (answered, downloaded):
        (o,) = [r for r in records if r.startswith("O|")]
        assert o.split("|")[5] == "A"


def test_the_most_urgent_priority_of_a_specimen_is_its_orders() -> None:
    both = orm(
        "O20", "NW", "OBR|1|ORD1|S41|GLU^^L|A", "OBR|2|ORD1|S41|K^^L|S", "OBR|3|ORD1|S42|NA^^L|A",
        "OBR|4|ORD1|S42|CL^^L|R", "OBR|5|ORD1|S43|CA^^L|P",
    )  # fmt: skip
    read = {c.order.specimen_id: c.order.priority for c in read_order(both).changes}
    assert read == {"S41": "S", "S42": "A", "S43": "R"}


@pytest.mark.parametrize("driver", ["generic", "sysmex_xn", "ortho_vitros", "erba_xl"])
def test_a_tube_is_asked_for_at_its_most_urgent_orders_priority(driver: str) -> None:
    """A test added STAT in an order of its own makes the whole tube STAT to the analyser,
    whichever of its orders came first."""
    held = [
        Order("S44", ("GLU",), "R", patient_id="PAT7", placer_order="ORD1"),
        Order("S44", ("K",), "S", patient_id="PAT7", placer_order="ORD2"),
    ]
    analyser = drivers.get(driver)
    query = "\r".join(["H|\\^&|||ANALYSER", "Q|1|^S44||ALL||||||||O", "L|1|N"])
    (asked,) = analyser.read(decode_message(query).records).queries
    records = [encode_record(r) for r in analyser.answer_query(asked, held, AT)]
    orders = [r for r in records if r.startswith("O|")]
    assert orders and all(o.split("|")[5] == "S" for o in orders), records


def test_a_specimens_details_come_from_whichever_of_its_orders_give_them() -> None:
    """The SPM after a tube's second OBR was passed over: the specimen's details were its
    first OBR's, which gave none. Each comes from the first OBR or SPM that gives it."""
    o21 = "\r".join([
        MSH.format(kind="OML^O21^OML_O21", control="O21"), PID, "ORC|NW|ORD1",
        "OBR|1|ORD1|S50|GLU^^L",
        "OBR|2|ORD1|S50|K^^L",
        "SPM|1|S50||SER^Serum^HL70487|||||||||||||20261130071500+0000",
        "OBR|3|ORD1|S50|NA^^L",
        "SPM|2|S50||PLAS^Plasma^HL70487|||||||||||||20261130060000+0000"
        "||||||||||SST^Serum separator tube^HL70785",
    ])  # fmt: skip
    (change,) = read_order(o21).changes
    order = change.order
    assert order.test_codes == ("GLU", "K", "NA")
    assert order.collected_at == datetime(2026, 11, 30, 7, 15, tzinfo=UTC)  # the first given
    assert (order.specimen_type, order.container) == ("Serum", "Serum separator tube")


def test_a_time_to_the_hour_is_taken_and_a_collection_not_to_the_minute_is_none() -> None:
    """HL7's DTM may stop at the year, month, day or hour. An order's time so given is its
    first moment; a collection time so given is none: judged from its first minute, a
    potassium collected at 14:50 and analysed at 15:10 would be rejected as delayed."""
    text = orm("O30", "NW", "OBR|1|ORD1|S60|K^^L").replace("20261130110000", "2026113011")
    for collected in ("20261130", "2026113014", "2026113014+0100"):
        with_spm = (
            orm("O31", "NW", "OBR|1|ORD1|S61|K^^L").replace("ORM^O01", "OML^O21^OML_O21")
            + f"\rSPM|1|S61||SER^Serum|||||||||||||{collected}"
        )
        [change] = read_order(with_spm).changes
        assert change.order.collected_at is None, collected
    [order] = read_order(text).changes
    assert order.order.ordered_at == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
    minute = orm("O32", "NW", "OBR|1|ORD1|S62|K^^L|||202611301450")
    [change] = read_order(minute).changes
    assert change.order.collected_at == datetime(2026, 11, 30, 14, 50, tzinfo=UTC)
    with pytest.raises(OrderRefused, match=r"OBR-7 \(segment 4\): '20261330' is not a date"):
        read_order(minute.replace("202611301450", "20261330"))


async def test_an_order_sent_again_is_answered_and_not_applied_again(database_url: str) -> None:
    """A LIS whose answer was lost sends the message again, same control id (MSH-10): a
    cancel sent in between stays in force and no analyser gets the order twice. Another
    message under a control id taken before is refused, naming MSH-10; three days later the
    id is free again (a LIS's counter that began again)."""
    now = [AT]
    store = Store(database_url)
    receiver = OrderReceiver(
        store, clock=lambda: now[0], downloads={"chem-1": frozenset({"GLU", "K"})}
    )
    port = await receiver.start("127.0.0.1", 0)
    new = orm("N1", "NW", "OBR|1|P1|SPC|GLU^^L")
    cancel = orm("N2", "CA", "OBR|1|P1|SPC|GLU^^L")
    # The same message as another LIS writes it again: its header's time, CR LF, spaces.
    again = new.replace("20261130120000", "20261130120500", 1).replace("\r", "  \r\n")
    reused = orm("N2", "NW", "OBR|1|P2|SPC2|K^^L")
    elsewhere = reused.replace("|LIS|LAB|", "|LIS2|LAB|", 1)  # another sender's own N2
    long_id = orm("L" * 5000, "NW", "OBR|1|P3|SPC3|K^^L")  # longer than an index entry
    answers = []
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def send(text: str) -> None:
            writer.write(b"\x0b" + text.encode() + b"\x1c\r")
            await writer.drain()
            block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
            answers.append(hl7.parse(block[1:-2].decode()))

        for text in (new, cancel, again, new, reused, elsewhere, long_id, long_id):
            await send(text)
        held = store.read(lambda conn: orders.orders_for(conn, ["SPC", "SPC2", "SPC3"]))
        now[0] = AT + timedelta(hours=73)
        await send(reused)
        later = store.read(lambda conn: orders.orders_for(conn, ["SPC2"]))
        writer.close()
    finally:
        await receiver.close()
        store.close()
    assert [(str(a.segment("MSA")[1]), str(a.segment("MSA")[2])[:5]) for a in answers] == [
        ("AA", "N1"), ("AA", "N2"), ("AA", "N1"), ("AA", "N1"), ("AE", "N2"), ("AA", "N2"),
        ("AA", "LLLLL"), ("AA", "LLLLL"), ("AA", "N2"),
    ]  # fmt: skip
    refused = answers[4]
    assert str(refused.segment("MSA")[3]).startswith("MSH-10: control id N2 was taken before")
    assert str(refused.segment("ERR")[2]) == "MSH^1^10" and "205" in str(refused.segment("ERR"))
    assert [(o.specimen_id, o.test_codes) for o in held] == [("SPC2", ("K",)), ("SPC3", ("K",))]
    assert [(o.placer_order, o.test_codes) for o in later] == [("ORD1", ("K",))]
    downloads = query(
        database_url, "SELECT specimen_id, action FROM worklist_downloads ORDER BY id"
    )
    assert downloads == [
        ("SPC", "new"), ("SPC", "cancel"), ("SPC2", "new"), ("SPC3", "new"), ("SPC2", "new")
    ]  # fmt: skip
