"""The LIS simulator over real sockets: its answers byte by byte, no answer, delays,
dropped connections, unreadable input, several connections, the record file, orders sent
to the middleware's orders port, and its command-line coroutine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from middleware.delivery import LisSender
from middleware.domain import Measurement, Order, Patient, Result
from middleware.hl7.ack import read_answer
from middleware.hl7.mllp import frame
from middleware.hl7.orders import NEW, read_order
from middleware.hl7.results import Reported, oru_r01
from middleware.orders_in import OrderReceiver
from middleware.settings import LisConfig
from middleware.store import Store, outbox
from simulators.lis import (
    LisSimulator,
    Observation,
    OrdersFileError,
    OrderToSend,
    acknowledgment,
    add_arguments,
    decode,
    order_message,
    orders_for,
    read_message,
    read_orders,
    run,
    send_orders,
)
from simulators.profiles import profile
from simulators.scenarios import plan

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DONE = datetime(2026, 11, 30, 11, 5, tzinfo=UTC)
ACK_ID = re.compile(rb"\|(LIS[0-9A-F]{16})\|")


def oru(control_id: str = "MW1", specimen: str = "S1") -> str:
    results = [
        Result(specimen, "GLU", "GLU", Measurement.parse("5.2"), units="mmol/L",
               completed_at=DONE, instrument="chem-1", patient_id="PAT1"),
        Result(specimen, "CRP", "CRP", Measurement.parse("<5"), units="mg/L",
               completed_at=DONE, instrument="chem-1", patient_id="PAT1"),
    ]  # fmt: skip
    return oru_r01(control_id, AT, specimen, Patient("PAT1"), [Reported(r) for r in results])


@contextlib.asynccontextmanager
async def lis(**options: Any) -> AsyncIterator[tuple[LisSimulator, int]]:
    simulator = LisSimulator(clock=lambda: AT, **options)
    port = await simulator.start("127.0.0.1", 0)
    try:
        yield simulator, port
    finally:
        await simulator.stop()


async def send(writer: asyncio.StreamWriter, message: str | bytes) -> None:
    writer.write(frame(message.encode() if isinstance(message, str) else message))
    await writer.drain()


async def answer(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\x1c\r"), timeout)


def ack_id(block: bytes) -> bytes:
    """The control id the simulator gave its ACK."""
    found = ACK_ID.search(block)
    assert found is not None, block
    return found[1]


def expected_ack(block: bytes, msa: str) -> bytes:
    """The ACK of an ORU^R01 the simulator must send at AT, with the control id it chose."""
    return (
        b"\x0bMSH|^~\\&|LIS|LAB|LIS-MIDDLEWARE|LAB|20261130120000+0000||ACK^R01^ACK|"
        + ack_id(block) + b"|P|2.5.1\rMSA|" + msa.encode() + b"\x1c\r"
    )  # fmt: skip


async def dropped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """The simulator closed the connection without sending anything more (and our end is
    closed after it)."""
    ended = await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    return ended


async def test_a_result_message_is_recorded_and_answered_aa_naming_its_control_id() -> None:
    async with lis() as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW1"))
        first = await answer(reader)
        await send(writer, oru("MW2", "S2"))
        second = await answer(reader)
        writer.close()
    assert first == expected_ack(first, "AA|MW1")
    assert second == expected_ack(second, "AA|MW2")
    assert ack_id(first) != ack_id(second)  # each ACK its own control id
    read = read_answer(first[1:-2].decode())
    assert (read.code, read.control_id, read.accepted) == ("AA", "MW1", True)
    [received, _] = simulator.received
    assert (received.control_id, received.message_type, received.answer) == (
        "MW1", "ORU^R01", "AA",
    )  # fmt: skip
    assert received.specimen_ids == ("S1",)
    assert received.results == (
        Observation("GLU", "5.2", "mmol/L", "F"),
        Observation("CRP", "<^5", "mg/L", "F"),
    )
    assert received.text == oru("MW1") and received.received_at == AT


@pytest.mark.parametrize("code", ["AE", "AR"])
async def test_a_refusal_names_the_message_and_says_who_refused(code: str) -> None:
    async with lis(ack=code) as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW1"))
        block = await answer(reader)
        writer.close()
    assert block == expected_ack(block, f"{code}|MW1|rejected by the LIS simulator")
    read = read_answer(block[1:-2].decode())
    assert (read.code, read.control_id, read.accepted) == (code, "MW1", False)
    assert read.text == "rejected by the LIS simulator"
    assert [r.answer for r in simulator.received] == [code]


async def test_told_not_to_answer_it_records_and_says_nothing_until_told_again() -> None:
    async with lis(ack=None) as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW1"))
        await simulator.wait_for(1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        simulator.ack = "AA"
        await send(writer, oru("MW2"))
        block = await answer(reader)
        writer.close()
    assert block == expected_ack(block, "AA|MW2")
    assert [(r.control_id, r.answer) for r in simulator.received] == [
        ("MW1", None), ("MW2", "AA"),
    ]  # fmt: skip


async def test_the_answer_comes_after_the_delay() -> None:
    async with lis(delay=0.3) as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        await send(writer, oru("MW1"))
        await answer(reader)
        delayed = time.monotonic() - started
        simulator.delay = 0
        started = time.monotonic()
        await send(writer, oru("MW2"))
        await answer(reader)
        prompt = time.monotonic() - started
        writer.close()
    assert delayed >= 0.3 and prompt < 0.3


async def test_dropping_on_command_closes_every_connection_and_keeps_the_port() -> None:
    async with lis() as (simulator, port):
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await send(connections[0][1], oru("MW1"))
        await answer(connections[0][0])
        simulator.drop_connections()
        assert [await dropped(*connection) for connection in connections] == [True, True]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW2"))
        block = await answer(reader)
        writer.close()
    assert block == expected_ack(block, "AA|MW2")


async def test_stopping_with_connections_open_reports_no_error() -> None:
    """Stopping ends each connection's task; the loop is told of no failure (Python 3.11's
    stream server reported each cancelled one with a traceback)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with lis() as (_simulator, port):
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.05)  # both served, waiting for data
        for _, writer in connections:
            writer.close()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_dropped_during_the_delay_the_message_is_recorded_unanswered() -> None:
    async with lis(delay=0.3) as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW1"))
        await asyncio.sleep(0.1)
        simulator.drop_connections()
        assert await dropped(reader, writer)
        await simulator.wait_for(1)
    assert [(r.control_id, r.answer) for r in simulator.received] == [("MW1", None)]


async def test_drop_after_closes_before_answering_the_nth_once_and_the_resend_is_answered() -> None:
    async with lis(drop_after=2) as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, oru("MW1"))
        await answer(reader)
        await send(writer, oru("MW2"))
        assert await dropped(reader, writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        blocks = []
        for control_id in ("MW2", "MW3"):
            await send(writer, oru(control_id))
            blocks.append(await answer(reader))
        writer.close()
    assert blocks == [expected_ack(blocks[0], "AA|MW2"), expected_ack(blocks[1], "AA|MW3")]
    assert [(r.control_id, r.answer) for r in simulator.received] == [
        ("MW1", "AA"), ("MW2", None), ("MW2", "AA"), ("MW3", "AA"),
    ]  # fmt: skip


async def test_the_middlewares_sender_sends_again_after_a_drop_and_delivers(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    with store.engine.begin() as conn:
        outbox.enqueue(conn, "S1", "chem-1", "MW1", oru("MW1"), AT)
    async with lis(drop_after=1) as (simulator, port):
        config = LisConfig(
            host="127.0.0.1", port=port, ack_timeout=2,
            backoff={"base": 0.05, "ceiling": 0.1},  # type: ignore[arg-type]
        )  # fmt: skip
        sender = asyncio.create_task(LisSender(config, store, "node").run())
        try:
            await simulator.wait_for(2)
            while store.read(outbox.depth):
                await asyncio.sleep(0.05)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            entries = store.read(lambda c: outbox.entries(c, ("pending", "delivered")))
            store.close()
    assert [(r.control_id, r.answer) for r in simulator.received] == [
        ("MW1", None), ("MW1", "AA"),
    ]  # fmt: skip
    assert [e.state for e in entries] == ["delivered"]


async def test_unreadable_input_is_recorded_and_refused_and_the_server_goes_on() -> None:
    too_long = b"MSH|" + b"x" * (1 << 20)
    async with lis() as (simulator, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"noise outside any block")
        blocks = []
        for data in (b"garbage", b"MSH|^~\\&|LAB|LAB|LIS|LAB|||ORU^R01||P|2.5.1", too_long):
            await send(writer, data)
            blocks.append(await answer(reader))
        await send(writer, "\xe9".encode("latin-1") + oru("MW9").encode())
        blocks.append(await answer(reader))
        await send(writer, oru("MW1"))
        blocks.append(await answer(reader))
        writer.close()
    answers = [read_answer(block[1:-2].decode()) for block in blocks]
    assert [(a.code, a.control_id) for a in answers] == [
        ("AR", ""), ("AR", ""), ("AR", ""), ("AR", ""), ("AA", "MW1"),
    ]  # fmt: skip
    assert answers[0].text == "MSH: the message does not begin with an MSH segment"
    assert answers[1].text == "MSH-10: no message control id"
    assert answers[2].text.startswith("longer than 1048576 bytes")
    assert blocks[0] == (
        b"\x0bMSH|^~\\&|LIS|LAB|||20261130120000+0000||ACK|" + ack_id(blocks[0])
        + b"|P|2.5.1\rMSA|AR||MSH: the message does not begin with an MSH segment\x1c\r"
    )  # fmt: skip
    recorded = [(r.control_id, r.message_type, r.answer, r.text) for r in simulator.received]
    assert recorded[0] == ("", "", "AR", "garbage")
    assert recorded[1][:3] == ("", "ORU^R01", "AR")
    assert recorded[3][3] == "\xe9" + oru("MW9")  # not UTF-8: kept as Latin-1
    assert recorded[4][:3] == ("MW1", "ORU^R01", "AA")


async def test_two_connections_are_served_each_on_its_own() -> None:
    async with lis() as (simulator, port):
        reader_a, writer_a = await asyncio.open_connection("127.0.0.1", port)
        reader_b, writer_b = await asyncio.open_connection("127.0.0.1", port)
        block_a = frame(oru("MWA", "SA").encode())
        writer_a.write(block_a[:40])  # A's message is not whole yet
        await writer_a.drain()
        await send(writer_b, oru("MWB", "SB"))
        answered_b = await answer(reader_b)
        writer_a.write(block_a[40:])
        answered_a = await answer(reader_a)
        # With a delay, both wait for it at the same time, not one after the other.
        simulator.delay = 0.5
        started = time.monotonic()
        await send(writer_a, oru("MWA2", "SA"))
        await send(writer_b, oru("MWB2", "SB"))
        await asyncio.gather(answer(reader_a), answer(reader_b))
        together = time.monotonic() - started
        writer_a.close()
        writer_b.close()
    assert answered_a == expected_ack(answered_a, "AA|MWA")
    assert answered_b == expected_ack(answered_b, "AA|MWB")
    assert 0.5 <= together < 0.9  # one after the other: 1 s
    assert [r.control_id for r in simulator.received][:2] == ["MWB", "MWA"]
    assert len({r.peer for r in simulator.received}) == 2


async def test_the_record_file_has_each_message_as_a_json_line_at_once(tmp_path: Path) -> None:
    record = tmp_path / "lis.jsonl"
    async with lis(record=record, ack=None) as (simulator, port):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        client_port = writer.get_extra_info("sockname")[1]
        await send(writer, oru("MW1"))
        await simulator.wait_for(1)
        lines = record.read_text().splitlines()  # while the simulator still runs
        writer.close()
    assert [json.loads(line) for line in lines] == [
        {
            "received_at": "2026-11-30T12:00:00+00:00",
            "peer": f"127.0.0.1:{client_port}",
            "control_id": "MW1",
            "message_type": "ORU^R01",
            "specimen_ids": ["S1"],
            "results": [
                {"test": "GLU", "value": "5.2", "units": "mmol/L", "status": "F"},
                {"test": "CRP", "value": "<^5", "units": "mg/L", "status": "F"},
            ],
            "answer": None,
            "text": oru("MW1"),
        }
    ]


def test_specimens_come_from_obr_3_and_spm_2_each_once() -> None:
    message = read_message(
        "MSH|^~\\&|A|B|C|D|||OML^O21^OML_O21|X1|P|2.5.1\r"
        "OBR|1||S1^LAB|GLU\rSPM|1|^S2&LAB\rOBR|2||S1|K\rSPM|2|S3&LIS^S4"
    )
    assert message.specimen_ids == ("S1", "S2", "S3")
    assert (message.control_id, message.message_type, message.problem) == ("X1", "OML^O21", "")


# What a socket can deliver inside a block: any bytes but the framing ones.
_INSIDE_A_BLOCK = st.binary(max_size=200).map(lambda b: b.translate(None, b"\x0b\x1c"))


@given(_INSIDE_A_BLOCK | st.builds(lambda rest: b"MSH|^~\\&|" + rest, _INSIDE_A_BLOCK))
def test_any_bytes_are_read_and_answered_with_an_ack_the_middleware_reads(data: bytes) -> None:
    message = read_message(decode(data))
    assert bool(message.problem) or bool(message.control_id and message.message_type)
    ack = acknowledgment(message, "AR", "LIS1", AT, message.problem or "refused")
    frame(ack.encode("utf-8"))  # never holds the framing bytes
    read = read_answer(ack)
    assert (read.code, read.control_id) == ("AR", message.control_id.replace("|", ""))


def test_order_messages_are_read_by_the_middleware_as_sent() -> None:
    stat = OrderToSend(
        specimen_id="S200", tests=("GLU", "CREA"), patient_id="PAT7", priority="S",
        sex="F", birth_date=date(1980, 1, 2),
    )  # fmt: skip
    routine = OrderToSend(specimen_id="S201", tests=("K",))
    read = [read_order(order_message(order, "LIS1", AT)) for order in (stat, routine)]
    assert [(r.control_id, r.message_type) for r in read] == [("LIS1", "OML^O21")] * 2
    # Each test an order of its own (ORC-2 the specimen and the test's number).
    assert [c.action for r in read for c in r.changes] == [NEW, NEW, NEW]
    assert [c.order for r in read for c in r.changes] == [
        Order("S200", ("GLU",), "S", ordered_at=AT, patient_id="PAT7", placer_order="S200-1"),
        Order("S200", ("CREA",), "S", ordered_at=AT, patient_id="PAT7", placer_order="S200-2"),
        Order("S201", ("K",), "R", ordered_at=AT, placer_order="S201-1"),
    ]
    assert '\rPID|1||PAT7^^^^MR||""||19800102|F\r' in order_message(stat, "LIS1", AT)
    # hl7apy's parser takes a second ORC for a prior result's, so one test per message here.
    for order in (stat.model_copy(update={"tests": ("GLU",)}), routine):
        strict = parse_message(
            order_message(order, "LIS1", AT),
            validation_level=VALIDATION_LEVEL.STRICT,
            find_groups=True,
        )
        assert strict.validate()


async def test_orders_are_sent_one_message_each_with_its_own_control_id() -> None:
    orders = [OrderToSend(specimen_id=f"S{n}", tests=("GLU",)) for n in range(3)]
    async with lis(ack="AE") as (simulator, port):
        codes = await send_orders("127.0.0.1", port, orders)
    assert codes == ["AE"] * 3
    assert [r.specimen_ids for r in simulator.received] == [("S0",), ("S1",), ("S2",)]
    assert {r.message_type for r in simulator.received} == {"OML^O21"}
    assert len({r.control_id for r in simulator.received}) == 3


async def test_orders_reach_the_middlewares_worklist(database_url: str) -> None:
    store = Store(database_url)
    receiver = OrderReceiver(store)
    port = await receiver.start("127.0.0.1", 0)
    orders = [
        OrderToSend(specimen_id="S200", tests=("GLU", "CREA"), patient_id="PAT7"),
        OrderToSend(specimen_id="S201", tests=("K",), priority="S"),
    ]
    try:
        codes = await send_orders("127.0.0.1", port, orders)
        held = store.read(
            lambda conn: conn.execute(
                text(
                    "SELECT specimen_id, test_codes, priority, patient_id, placer_order "
                    "FROM orders ORDER BY id"
                )
            ).all()
        )
    finally:
        await receiver.close()
        store.close()
    assert codes == ["AA", "AA"]
    assert [tuple(row) for row in held] == [
        ("S200", '["GLU"]', "R", "PAT7", "S200-1"), ("S200", '["CREA"]', "R", "PAT7", "S200-2"),
        ("S201", '["K"]', "S", "", "S201-1"),
    ]  # fmt: skip


async def test_sending_orders_waits_for_the_orders_port_to_open() -> None:
    simulator = LisSimulator()
    port = await simulator.start("127.0.0.1", 0)
    await simulator.stop()  # the port is free again, and closed for now
    sending = asyncio.create_task(
        send_orders("127.0.0.1", port, [OrderToSend(specimen_id="S1", tests=("GLU",))])
    )
    await asyncio.sleep(0.3)
    await simulator.start("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(sending, 5) == ["AA"]
    finally:
        await simulator.stop()


def test_the_orders_file_is_yaml_or_json_and_refused_naming_line_and_field(
    tmp_path: Path,
) -> None:
    written = tmp_path / "orders.yaml"
    written.write_text(
        "- specimen_id: 100234\n  tests: [GLU, K]\n  priority: S\n"
        "- specimen_id: S2\n  tests: [CRP]\n  patient_id: P1\n  sex: M\n"
        "  birth_date: 1980-01-02\n"
    )
    as_json = tmp_path / "orders.json"
    as_json.write_text('[{"specimen_id": "S3", "tests": ["NA"], "birth_date": "1975-05-06",'
                       ' "patient_id": "P3"}]')  # fmt: skip
    assert read_orders(written) == [
        OrderToSend(specimen_id="100234", tests=("GLU", "K"), priority="S"),
        OrderToSend(specimen_id="S2", tests=("CRP",), patient_id="P1", sex="M",
                    birth_date=date(1980, 1, 2)),
    ]  # fmt: skip
    assert read_orders(as_json)[0].birth_date == date(1975, 5, 6)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- specimen_id: S1\n  tests: [GLU]\n- specimen_id: S2\n  tests: []\n")
    with pytest.raises(OrdersFileError) as refused:
        read_orders(wrong)
    assert str(refused.value).startswith(f"{wrong}:4: 1.tests: ")
    wrong.write_text("- specimen_id: S1\n  tests: [GLU]\n  sex: F\n")
    with pytest.raises(OrdersFileError, match="give patient_id too"):
        read_orders(wrong)
    wrong.write_text("- [unclosed\n")
    with pytest.raises(OrdersFileError, match="not YAML"):
        read_orders(wrong)


def arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


async def test_run_serves_records_drops_on_sigusr1_and_ends_cleanly_when_cancelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "lis.jsonl"
    orders = tmp_path / "orders.yaml"
    orders.write_text("- specimen_id: S7\n  tests: [GLU]\n")
    async with lis() as (orders_port, port):
        args = arguments(
            "--listen", "127.0.0.1:0", "--ack", "AE", "--record", str(record),
            "--orders", str(orders), "--orders-to", f"127.0.0.1:{port}",
        )  # fmt: skip
        task = asyncio.create_task(run(args))
        listening, log = "", ""
        while not listening:
            await asyncio.sleep(0.02)
            captured = capsys.readouterr()
            listening, log = captured.out, log + captured.err
        found = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", listening)
        assert found is not None
        bound = int(found[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", bound)
        await send(writer, oru("MW1"))
        block = await answer(reader)
        async with asyncio.timeout(5):
            while "sent: AA" not in log:  # the orders' answers, said once all are in
                await asyncio.sleep(0.02)
                log += capsys.readouterr().err
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await dropped(reader, writer)
        task.cancel()
        assert await asyncio.wait_for(task, 5) == 0
    assert read_answer(block[1:-2].decode()).code == "AE"
    [line] = record.read_text().splitlines()
    assert json.loads(line)["control_id"] == "MW1" and json.loads(line)["answer"] == "AE"
    assert orders_port.received[0].specimen_ids == ("S7",)
    log += capsys.readouterr().err
    assert "ORU^R01 MW1 specimen S1: AE" in log
    assert "order for specimen S7 (GLU) sent: AA" in log
    with pytest.raises(OSError):  # the port is closed
        await asyncio.open_connection("127.0.0.1", bound)


async def test_run_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = tmp_path / "orders.yaml"
    orders.write_text("- tests: [GLU]\n")
    assert await run(arguments("--listen", "127.0.0.1:0", "--orders", str(orders))) == 2
    assert "--orders-to goes with --orders or --orders-for" in capsys.readouterr().err
    refused = arguments("--listen", "127.0.0.1:0", "--orders", str(orders),
                        "--orders-to", "127.0.0.1:1")  # fmt: skip
    assert await run(refused) == 2
    assert "specimen_id: Field required" in capsys.readouterr().err
    async with lis() as (_, port):
        assert await run(arguments("--listen", f"127.0.0.1:{port}")) == 1
    assert "cannot listen on" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        arguments("--listen", "nowhere")


def test_orders_for_are_those_an_analyser_simulator_asks_about() -> None:
    orders = orders_for("chemistry", 3, 4)
    steps = plan(profile("chemistry"), "host-query", 3, 4, datetime.now())
    asked = [s.sample for s in steps if s.query]
    assert [o.specimen_id for o in orders] == [s.specimen_id for s in asked]
    assert [o.patient_id for o in orders] == [s.patient_id for s in asked]
    for order, sample in zip(orders, asked, strict=True):
        assert order.tests == tuple(m.analyte.lab_code for m in sample.measured)
        read = read_order(order_message(order, "C1", datetime(2026, 11, 30, tzinfo=UTC)))
        assert {code for c in read.changes for code in c.order.test_codes} == set(order.tests)
    with pytest.raises(ValueError, match="unknown profile"):
        orders_for("microbiology", 3, 4)
