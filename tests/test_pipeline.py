"""The ingest pipeline in-process: a real TCP connection, a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

import drivers
from drivers.base import Driver
from drivers.detect import AutoDriver
from middleware.astm.link import LinkSettings
from middleware.astm.records import Record
from middleware.domain import InstrumentMessage, Order
from middleware.pipeline import ConnectionPipeline
from middleware.store import Store, orders, reading
from middleware.store.schema import messages
from middleware.store.sql import utc
from middleware.transport.tcp import TcpServer
from tests.peer import (
    ACK,
    ENQ,
    EOT,
    StreamPeer,
    frame,
    frames_for,
    receive_message,
    send_frames,
    send_message,
)

NOW = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
MESSAGE = [
    b"H|\\^&|||AN-1",
    b"P|1||PAT1",
    b"O|1|S100||^^^GLU|R",
    b"R|1|^^^GLU|5.4|mmol/L||N||F",
    b"L|1|N",
]


class BrokenDriver(Driver):
    name = "broken"

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        raise ValueError("cannot read this")


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Store, StreamPeer, ConnectionPipeline]]:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", drivers.get("generic"), store)
    settings = LinkSettings(frame_timeout=0.3)
    server = TcpServer("127.0.0.1", 0, settings, pipeline, name="an1")
    await server.start()
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
    yield store, peer, pipeline
    await peer.close()
    await server.close()
    store.close()


async def settle(pipeline: ConnectionPipeline, count: int) -> None:
    for _ in range(200):
        if pipeline.kept >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pipeline.kept} of {count} deliveries kept")


async def test_message_is_stored(setup: tuple[Store, StreamPeer, ConnectionPipeline]) -> None:
    store, peer, pipeline = setup
    await send_message(peer, MESSAGE)
    await settle(pipeline, 1)
    [row] = store.read(lambda conn: reading.results_for_specimen(conn, "S100"))
    assert (row["test_code"], row["value_text"], row["patient_id"]) == ("GLU", "5.4", "PAT1")


async def test_transfer_cut_before_l_is_quarantined(
    setup: tuple[Store, StreamPeer, ConnectionPipeline],
) -> None:
    store, peer, pipeline = setup
    await send_frames(peer, frames_for(MESSAGE[:3]))
    await peer.write(EOT)
    await settle(pipeline, 1)
    [entry] = store.read(reading.quarantined)
    assert entry["reason"] == "transfer ended before the message's L record"
    assert b"O|1|S100" in entry["data"]
    await send_message(peer, MESSAGE)  # the line goes on
    await settle(pipeline, 2)
    assert store.read(reading.counts)["results"] == 1


async def test_link_timeout_mid_message_is_quarantined(
    setup: tuple[Store, StreamPeer, ConnectionPipeline],
) -> None:
    store, peer, pipeline = setup
    await peer.write(ENQ)
    assert await peer.read(1) == ACK
    await peer.write(frame(1, MESSAGE[0] + b"\r"))
    assert await peer.read(1) == ACK
    await settle(pipeline, 1)  # the 0.3 s frame timer expires
    [entry] = store.read(reading.quarantined)
    assert entry["reason"].startswith("link timed out: no frame within")


async def test_new_header_before_l_quarantines_the_unfinished_message(
    setup: tuple[Store, StreamPeer, ConnectionPipeline],
) -> None:
    store, peer, pipeline = setup
    await send_message(peer, MESSAGE[:3] + MESSAGE)
    await settle(pipeline, 2)
    [entry] = store.read(reading.quarantined)
    assert entry["reason"] == "a new H record began before the L record"
    assert store.read(reading.counts)["results"] == 1


async def test_a_query_sent_again_in_one_transfer_is_answered_again(
    setup: tuple[Store, StreamPeer, ConnectionPipeline],
) -> None:
    store, peer, _pipeline = setup
    await store.write(lambda conn: orders.add_order(conn, Order("S300", ("GLU",), "R"), NOW))
    query = [b"H|\\^&|||AN-1", b"Q|1|^S300||ALL||||||||O", b"L|1|N"]
    await send_frames(peer, frames_for(query + query))  # the analyser did not take our first ACK
    await peer.write(EOT)
    for _ in range(2):
        answer = await receive_message(peer)
        assert answer[2].startswith(b"O|1|S300||^^^GLU")
    assert store.read(reading.counts)["messages"] == 1


async def test_host_query_is_answered_from_the_orders(
    setup: tuple[Store, StreamPeer, ConnectionPipeline],
) -> None:
    store, peer, _pipeline = setup
    await store.write(
        lambda conn: orders.add_order(
            conn, Order("S200", ("GLU", "CREA"), "S", patient_id="P7"), NOW
        )
    )
    await send_message(peer, [b"H|\\^&|||AN-1", b"Q|1|^S200||ALL||||||||O", b"L|1|N"])
    answer = await receive_message(peer)
    assert answer[1:] == [
        b"P|1|P7",
        b"O|1|S200||^^^GLU\\^^^CREA|S||||||N||||||||||||||Q",
        b"L|1|N",
    ]
    assert answer[0].startswith(b"H|\\^&|||LIS|||||||P|LIS2-A2|")


async def test_a_failing_driver_quarantines_and_the_line_goes_on(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", BrokenDriver(), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        await send_message(peer, MESSAGE)
        await send_message(peer, MESSAGE)
        await settle(pipeline, 2)
        await peer.close()
    entries = store.read(reading.quarantined)
    assert [e["reason"] for e in entries] == [
        "driver broken failed: ValueError('cannot read this')"
    ] * 2
    store.close()


class HeaderlessDriver(Driver):
    name = "headerless"
    headerless_messages = True


async def test_a_driver_may_take_messages_without_h_and_they_are_flagged(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", HeaderlessDriver(), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        await send_message(peer, MESSAGE[1:])
        await settle(pipeline, 1)
        await peer.close()
    assert store.read(reading.quarantined) == []
    [row] = store.read(lambda conn: reading.results_for_specimen(conn, "S100"))
    assert row["value_text"] == "5.4"
    [problems] = store.read(
        lambda conn: [m.problems for m in conn.execute(select(messages.c.problems))]
    )
    assert (
        problems
        == "the message does not begin with an H record (taken: the headerless driver allows it)"
    )
    store.close()


class NoAnswerDriver(Driver):
    name = "no-answer"

    def answer_query(self, *_args: object, **_kwargs: object) -> list[Record]:
        raise ValueError("cannot answer")


async def test_a_query_that_cannot_be_answered_is_still_acknowledged_once(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", NoAnswerDriver(), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        # Each frame is ACKed, the last one too: the message is committed, and a failure
        # after that must not make the analyser send it again.
        await send_message(peer, [b"H|\\^&|||AN-1", b"Q|1|^S200||ALL||||||||O", b"L|1|N"])
        await settle(pipeline, 1)
        await peer.close()
    assert store.read(reading.counts)["messages"] == 1
    store.close()


class FailingFamily(Driver):
    name = "failing"

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        raise RuntimeError("scoring failed")


async def test_a_detection_that_fails_reads_with_the_standard_reading(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", AutoDriver(None, "an1", [FailingFamily]), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        await send_message(peer, MESSAGE)
        await settle(pipeline, 1)
        await peer.close()
    [row] = store.read(lambda conn: reading.results_for_specimen(conn, "S100"))
    assert row["value_text"] == "5.4"
    kept = store.read(lambda conn: conn.execute(text("SELECT driver FROM messages")).all())
    assert kept == [("generic",)]
    store.close()


async def test_an_hour_that_comes_twice_is_read_by_when_the_message_came(tmp_path: Path) -> None:
    """Paris, 25 October 2026: 02:30 comes at 00:30 and again at 01:30 UTC. A result of
    02:30 that reaches the pipeline at 01:32 UTC was measured the second time."""
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline(
        "an1",
        drivers.get("generic"),
        store,
        timezone=ZoneInfo("Europe/Paris"),
        clock=lambda: datetime(2026, 10, 25, 1, 32, tzinfo=UTC),
    )
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline, name="an1")
    await server.start()
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
    try:
        completed = MESSAGE[3] + b"||||20261025023000"  # R.13
        await send_message(peer, [*MESSAGE[:3], completed, MESSAGE[4]])
        await settle(pipeline, 1)
        [row] = store.read(lambda conn: reading.results_for_specimen(conn, "S100"))
    finally:
        await peer.close()
        await server.close()
        store.close()
    assert utc(row["completed_at"]) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
