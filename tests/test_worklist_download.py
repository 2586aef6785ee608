"""Worklist downloads, end to end on SQLite and on PostgreSQL: the daemon as its own
process takes the LIS's orders over MLLP and sends an analyser that takes a downloaded
worklist each order for the tests it runs, in its own codes, as soon as it is connected;
a download the analyser did not take goes again on its next connection; cancels follow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydantic import ValidationError

from middleware.settings import InstrumentConfig
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import ACK, ENQ, StreamPeer, receive_message
from tests.test_ingest_integrity import wait_for
from tests.test_lis_orders import orm


def _daemon(tmp_path: Path, database_url: str) -> tuple[DaemonProcess, int]:
    orders_port = free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port(), "test_map": {"1001": "GLU", "1002": "K"},
          "worklist": {"tests": ["GLU", "K"]}},
         {"name": "haem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port(), "worklist": {"tests": ["WBC"]}}],
        database_url=database_url,
        lis={"host": "127.0.0.1", "port": free_port(), "orders_host": "127.0.0.1",
             "orders_port": orders_port},
    )  # fmt: skip
    daemon.start()
    return daemon, orders_port


async def _order(port: int, message: str) -> str:
    await asyncio.sleep(0.3)  # the order port opens once the instruments are served
    reader, writer = await connect(port)
    writer.write(b"\x0b" + message.encode() + b"\x1c\r")
    await writer.drain()
    block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    writer.close()
    return str(hl7.parse(block[1:-2].decode()).segment("MSA")[1])


def _downloads(url: str) -> list[tuple[Any, ...]]:
    return query(
        url,
        "SELECT instrument, specimen_id, test_codes, action, state, attempts "
        "FROM worklist_downloads ORDER BY id",
    )


def test_orders_reach_the_analyser_that_runs_their_tests_once_it_is_connected(
    tmp_path: Path, database_url: str
) -> None:
    daemon, orders = _daemon(tmp_path, database_url)

    async def scenario() -> list[list[bytes]]:
        # The LIS orders GLU, CREA and K before the analyser is connected.
        tests = ("OBR|1|ORD1|S200|GLU^^L", "OBR|2|ORD1|S200|CREA^^L", "OBR|3|ORD1|S200|K^^L|S")
        assert await _order(orders, orm("O1", "NW", *tests)) == "AA"
        peer = StreamPeer(*await connect(daemon.ports[0]))
        first = await receive_message(peer)
        # Then cancels K while it is connected.
        assert await _order(orders, orm("O2", "CA", "OBR|1|ORD1|S200|K^^L")) == "AA"
        second = await receive_message(peer)
        await peer.close()
        return [first, second]

    try:
        first, second = asyncio.run(scenario())
    finally:
        daemon.stop()
    assert [r.split(b"|")[0] for r in first] == [b"H", b"P", b"O", b"L"]
    order = first[2].split(b"|")
    # The specimen, the analyser's codes of the tests it runs (not CREA), STAT, new.
    assert (order[2], order[4], order[5], order[11], order[25]) == (
        b"S200", b"^^^1001\\^^^1002", b"S", b"N", b"O",
    )  # fmt: skip
    assert first[1].split(b"|")[2] == b"PAT7"
    cancel = second[2].split(b"|")
    assert (cancel[2], cancel[4], cancel[11]) == (b"S200", b"^^^1002", b"C")
    assert wait_for(
        lambda: (
            _downloads(database_url)
            == [
                ("chem-1", "S200", '["GLU", "K"]', "new", "sent", 1),
                ("chem-1", "S200", '["K"]', "cancel", "sent", 1),
            ]
        )
    )  # haem-1 runs none of these tests: nothing for it


def test_a_replacing_order_withdraws_from_the_analyser_what_it_no_longer_asks(
    tmp_path: Path, database_url: str
) -> None:
    daemon, orders = _daemon(tmp_path, database_url)

    async def scenario() -> list[list[bytes]]:
        tests = ("OBR|1|ORD1|S400|GLU^^L", "OBR|2|ORD1|S400|K^^L")
        assert await _order(orders, orm("O1", "NW", *tests)) == "AA"
        peer = StreamPeer(*await connect(daemon.ports[0]))
        got = [await receive_message(peer)]
        # The LIS replaces the order: potassium only.
        assert await _order(orders, orm("O2", "XO", "OBR|1|ORD1|S400|K^^L")) == "AA"
        got += [await receive_message(peer), await receive_message(peer)]
        await peer.close()
        return got

    try:
        first, withdrawn, replaced = asyncio.run(scenario())
    finally:
        daemon.stop()
    assert first[2].split(b"|")[4] == b"^^^1001\\^^^1002"
    # Glucose withdrawn (O.12 C), then the order as it now stands (N).
    cancel, new = withdrawn[2].split(b"|"), replaced[2].split(b"|")
    assert (cancel[2], cancel[4], cancel[11]) == (b"S400", b"^^^1001", b"C")
    assert (new[2], new[4], new[11]) == (b"S400", b"^^^1002", b"N")


def test_a_download_the_analyser_did_not_take_goes_again_on_its_next_connection(
    tmp_path: Path, database_url: str
) -> None:
    daemon, orders = _daemon(tmp_path, database_url)

    async def scenario() -> list[bytes]:
        peer = StreamPeer(*await connect(daemon.ports[1]))
        assert await _order(orders, orm("O1", "NW", "OBR|1|ORD1|S300|WBC^^L")) == "AA"
        # The analyser takes the line, then the connection drops before the first frame.
        assert await peer.read(1, timeout=10) == ENQ
        await peer.write(ACK)
        await peer.close()
        await asyncio.to_thread(
            wait_for, lambda: _downloads(database_url) == [
                ("haem-1", "S300", '["WBC"]', "new", "pending", 1)
            ],
        )  # fmt: skip
        again = StreamPeer(*await connect(daemon.ports[1]))
        records = await receive_message(again)
        await again.close()
        return records

    try:
        records = asyncio.run(scenario())
    finally:
        daemon.stop()
    assert records[2].split(b"|")[2:5] == [b"S300", b"", b"^^^WBC"]
    assert wait_for(
        lambda: _downloads(database_url) == [("haem-1", "S300", '["WBC"]', "new", "sent", 2)]
    )
    [(error,)] = query(database_url, "SELECT last_error FROM worklist_downloads")
    assert error == ""


def test_an_order_the_analysers_characters_cannot_carry_is_set_aside_not_mangled(
    tmp_path: Path, database_url: str
) -> None:
    daemon, orders = _daemon(tmp_path, database_url)

    async def scenario() -> list[bytes]:
        # The analyser reads Latin-1 (the default): a specimen id in Greek cannot be sent.
        assert await _order(orders, orm("O1", "NW", "OBR|1|ORD1|S\u03a91|WBC^^L")) == "AA"
        assert await _order(orders, orm("O2", "NW", "OBR|1|ORD2|S601|WBC^^L")) == "AA"
        peer = StreamPeer(*await connect(daemon.ports[1]))
        records = await receive_message(peer)
        await peer.close()
        return records

    try:
        records = asyncio.run(scenario())
    finally:
        daemon.stop()
    assert records[2].split(b"|")[2] == b"S601"  # the next order went on
    # Both settled: the refused one, and the one the analyser took.
    rows = wait_for(
        lambda: (
            [r for r in _downloads(database_url) if r[4] != "pending"][1:]
            and _downloads(database_url)
        )
    )
    assert [(r[1], r[4]) for r in rows] == [("S\u03a91", "refused"), ("S601", "sent")]
    [(error,)] = query(
        database_url, "SELECT last_error FROM worklist_downloads WHERE state = 'refused'"
    )
    assert "cannot be written in latin-1" in error


def test_a_worklist_is_for_an_astm_analyser_and_names_its_tests() -> None:
    base = {"name": "a", "transport": "tcp-server", "port": 1}
    with pytest.raises(ValidationError, match="ASTM only"):
        InstrumentConfig.model_validate(base | {"protocol": "hl7", "worklist": {"tests": ["X"]}})
    with pytest.raises(ValidationError, match=r"worklist\.tests"):
        InstrumentConfig.model_validate(base | {"worklist": {"tests": []}})


def test_a_test_added_as_an_order_of_its_own_leaves_the_first_order_on_the_analyser(
    tmp_path: Path, database_url: str
) -> None:
    """An add-on test comes with another order number: the first order's tests stay on
    the analyser. Cancelled by its number alone, the add-on goes, and only it."""
    daemon, orders = _daemon(tmp_path, database_url)
    msh = "MSH|^~\\&|LIS|LAB|MW|LAB|20261130120000||ORM^O01|{}|P|2.5.1"
    pid = "PID|1||PAT7^^^^MR"

    async def scenario() -> list[list[bytes]]:
        assert await _order(orders, orm("O1", "NW", "OBR|1|ORD1|S500|GLU^^L")) == "AA"
        peer = StreamPeer(*await connect(daemon.ports[0]))
        got = [await receive_message(peer)]
        added = "\r".join([msh.format("O2"), pid, "ORC|NW|ORD2", "OBR|1|ORD2|S500|K^^L"])
        assert await _order(orders, added) == "AA"
        got.append(await receive_message(peer))
        cancelled = "\r".join([msh.format("O3"), pid, "ORC|CA|ORD2"])
        assert await _order(orders, cancelled) == "AA"
        got.append(await receive_message(peer))
        await peer.close()
        return got

    try:
        first, added, cancelled = asyncio.run(scenario())
    finally:
        daemon.stop()
    fields = [message[2].split(b"|") for message in (first, added, cancelled)]
    assert [(f[2], f[4], f[11]) for f in fields] == [
        (b"S500", b"^^^1001", b"N"), (b"S500", b"^^^1002", b"N"), (b"S500", b"^^^1002", b"C"),
    ]  # fmt: skip
    held = query(database_url, "SELECT placer_order, test_codes FROM orders ORDER BY id")
    assert held == [("ORD1", '["GLU"]')]
