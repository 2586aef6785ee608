"""An analyser on a port set up for another protocol is named, with what to configure:
byte by byte, never on what the configured protocol itself sends, and end to end (the
daemon as a process says so once per connection and keeps the bytes as noise)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from middleware.astm.frames import build_frames
from middleware.decode import decode_capture
from middleware.hl7.mllp import frame
from middleware.sniff import (
    ASTM,
    DIMENSION,
    HL7,
    opens_mllp,
    spoken_on_astm_line,
    spoken_on_hl7_line,
    undecided,
)
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import StreamPeer, frames_for
from tests.test_hl7_ingest import MllpPeer, oru
from tests.test_ingest_integrity import connection_ids, message, raw_stream, wait_for

# A Dimension's idle poll and the host's "no request", as the Dimension LIS protocol
# frames them (STX, the message's letter, FS-ended fields, checksum, ETX).
POLL = b"\x02P\x1cDIM1\x1c0\x1c1\x1c0\x1c78\x03"
NO_REQUEST = b"\x02N\x1c6A\x03"


def test_each_foreign_protocol_is_named_where_it_begins() -> None:
    assert spoken_on_astm_line(b"\x0bMSH|^~\\&|BC-5380") == (HL7, 0)
    assert spoken_on_astm_line(b"noise\x0bMSH|^~\\&|") == (HL7, 5)
    assert spoken_on_astm_line(b"\x06" + POLL) == (DIMENSION, 1)
    assert spoken_on_hl7_line(b"\x05") is ASTM
    assert spoken_on_hl7_line(NO_REQUEST) is DIMENSION
    # What each line's own protocol sends, and what says nothing, are not named.
    for quiet in (b"", b"\x05", b"\x04", b"\x021H|\\^&\r\x0339\r\n", b"\x0b", b"MSH|"):
        assert spoken_on_astm_line(quiet) is None, quiet
    for quiet in (b"", b"\x0bMSH|^~\\&|\r\x1c\r", b"\r\n", b"x\x05"):
        assert spoken_on_hl7_line(quiet) is None, quiet
    assert "protocol: hl7" in HL7.advice and "not supported" in DIMENSION.advice


@given(st.binary(max_size=600), st.integers(0, 7))
def test_astm_frames_are_never_taken_for_another_protocol(text: bytes, first: int) -> None:
    for built in build_frames(text.replace(b"\x02", b"").replace(b"\x0b", b""), first):
        assert spoken_on_astm_line(b"\x05" + built + b"\x04") is None


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=400))
def test_mllp_blocks_are_never_taken_for_another_protocol(text: str) -> None:
    block = frame(("MSH|^~\\&|" + text).encode())
    assert spoken_on_hl7_line(block) is None


def test_a_block_opens_with_vt_and_msh_before_any_enq_a_vt_alone_is_noise() -> None:
    assert opens_mllp(b"\x0bMSH|^~\\&|") and opens_mllp(b"\x00\x0bMSH|")
    assert not opens_mllp(b"\x00\x0b\xff") and not opens_mllp(b"\x0b\xff\x05")
    assert not opens_mllp(b"\x05\x0bMSH|")  # ENQ first: ASTM, the rest its noise
    # What the next bytes tell: the read ended on what may begin a block.
    assert undecided(b"\x0b") and undecided(b"\x00\x0bM") and undecided(b"\x0bMS")
    assert not undecided(b"") and not undecided(b"\x0b\xff") and not undecided(b"\x0bMSH")
    assert not undecided(b"\x05\x0b")
    # A UTF-8 byte order mark before the MSH, as some senders write it.
    assert opens_mllp(b"\x0b\xef\xbb\xbfMSH|^~\\&|") and not opens_mllp(b"\x0b\xef\xbb\xbf\x05")
    assert undecided(b"\x0b\xef") and undecided(b"\x0b\xef\xbb\xbfMS")
    assert not undecided(b"\x0b\xef\xbb\xbfMSH") and not undecided(b"\x0b\xef\xbf")


def test_decode_names_the_dimension_protocol() -> None:
    report = decode_capture(POLL + b"\x06" + POLL)
    assert not report.ok
    assert report.errors[0] == {"kind": "protocol", "detail": DIMENSION.advice, "offset": 0}


def _said(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == "the analyser speaks another protocol"]


async def _close_soon(writer: asyncio.StreamWriter) -> None:
    """Close a connection once the daemon has had time to read what was written."""
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()


def test_an_hl7_analyser_on_an_astm_port_is_named_once_per_connection(
    database_url: str, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    start_daemon(port, protocol="astm")

    async def analyser() -> None:
        for _ in range(2):
            _reader, writer = await connect(port)
            for n in range(2):
                writer.write(frame(oru(f"P-{n}", "S-1")))
                await writer.drain()
            await _close_soon(writer)

    asyncio.run(analyser())
    log = tmp_path / "daemon.log"
    wait_for(lambda: len(_said(log)) == 2)
    assert {(e["protocol"], e["advice"]) for e in _said(log)} == {("hl7", HL7.advice)}
    # Kept, as noise: nothing taken for a message.
    wait_for(lambda: query(database_url, "SELECT count(*) FROM raw_transmissions") == [(2,)])
    assert query(database_url, "SELECT DISTINCT outcome FROM raw_transmissions") == [("noise",)]
    assert query(database_url, "SELECT count(*) FROM messages") == [(0,)]


def test_an_astm_analyser_on_an_hl7_port_is_named(
    database_url: str, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    start_daemon(port, name="elite", protocol="hl7")

    async def analyser() -> None:
        _reader, writer = await connect(port)
        writer.write(b"\x05")
        await writer.drain()
        await _close_soon(writer)

    asyncio.run(analyser())
    log = tmp_path / "daemon.log"
    wait_for(lambda: len(_said(log)) == 1)
    assert _said(log)[0]["protocol"] == "astm"
    wait_for(lambda: query(database_url, "SELECT outcome FROM raw_transmissions") == [("noise",)])


def test_one_port_takes_either_protocol_by_the_first_bytes_of_each_connection(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    daemon = start_daemon(port, connections="all")  # driver: auto, no protocol
    records = message("S-ASTM", "P-ASTM")

    async def analysers() -> None:
        silent = await connect(port)  # never speaks: served by neither, kept nothing
        _reader, leaving = await connect(port)
        leaving.close()  # leaves without a word
        astm = StreamPeer(*await connect(port))
        hl7 = MllpPeer(*await connect(port))
        await astm.write(b"\x05")  # ENQ: ASTM, answered as the link answers
        assert await astm.read(1) == b"\x06"
        for data in frames_for(records):
            await astm.write(data)
            assert await astm.read(1) == b"\x06"
        await astm.write(b"\x04")
        taken = await hl7.send(oru("H-1", "S-HL7"))
        assert (taken.code, taken.control_id) == ("AA", "H-1")
        await astm.close()
        await hl7.close()
        # Stopping does not wait on the analyser that never spoke.
        started = time.monotonic()
        assert await asyncio.to_thread(daemon.stop) == 0
        assert time.monotonic() - started < 10
        silent[1].close()

    asyncio.run(analysers())
    drivers_by_specimen = query(
        database_url,
        "SELECT r.specimen_id, m.driver, count(*) FROM results r "
        "JOIN messages m ON m.id = r.message_id GROUP BY r.specimen_id, m.driver ORDER BY 1",
    )
    assert drivers_by_specimen == [("S-ASTM", "generic", 1), ("S-HL7", "mindray_hl7", 14)]
    # Each connection's bytes kept once, the first ones read to tell its protocol included.
    for connection_id in connection_ids(database_url):
        stream = raw_stream(database_url, connection_id)
        assert stream.startswith((b"\x05", b"\x0b")), stream[:20]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_byte_order_mark_before_the_msh_still_says_hl7(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)  # driver: auto, no protocol: the first bytes choose

    async def analyser() -> None:
        hl7 = MllpPeer(*await connect(port))
        taken = await hl7.send(b"\xef\xbb\xbf" + oru("B-1", "S-BOM"))
        assert (taken.code, taken.control_id) == ("AA", "B-1")
        await hl7.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM results WHERE specimen_id = 'S-BOM'") == [
        (14,)
    ]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_noise_holding_a_vt_before_the_enq_leaves_the_connection_astm(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, connections="all")  # driver: auto, no protocol
    records = message("S-NOISE", "P-NOISE")

    async def analysers() -> None:
        astm = StreamPeer(*await connect(port))
        await astm.write(b"\x00\x0b\xff")  # line noise, a VT among it
        await asyncio.sleep(0.3)
        await astm.write(b"\x05")
        assert await astm.read(1) == b"\x06"
        for data in frames_for(records):
            await astm.write(data)
            assert await astm.read(1) == b"\x06"
        await astm.write(b"\x04")
        # An MLLP sender whose VT comes apart from its MSH is still HL7.
        hl7 = MllpPeer(*await connect(port))
        block = frame(oru("H-5", "S-SPLIT"))
        await hl7.write(block[:1])
        await asyncio.sleep(0.3)
        await hl7.write(block[1:])
        assert (await hl7.answer()).code == "AA"
        await astm.close()
        await hl7.close()

    asyncio.run(analysers())
    specimens = query(database_url, "SELECT DISTINCT specimen_id FROM results ORDER BY 1")
    assert specimens == [("S-NOISE",), ("S-SPLIT",)]


def test_first_bytes_awaiting_their_rest_are_kept_when_a_newer_connection_comes(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)  # connections: newest; driver: auto, no protocol

    async def analyser() -> None:
        old = StreamPeer(*await connect(port))
        await old.write(b"\x00\x0b")  # may begin an MLLP block: its rest is awaited
        await asyncio.sleep(0.2)
        new = StreamPeer(*await connect(port))
        await asyncio.sleep(1.5)
        await old.close()
        await new.close()

    asyncio.run(analyser())
    # Every byte received is in a raw row: the older connection's too.
    wait_for(
        lambda: b"\x00\x0b" in [raw_stream(database_url, c) for c in connection_ids(database_url)]
    )


def test_a_newer_connection_replaces_the_older_before_it_speaks_whatever_their_protocols(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)  # connections: newest
    taken = frame(oru("H-3", "S-OLD"))

    async def analyser() -> None:
        old = MllpPeer(*await connect(port))
        assert (await old.send(oru("H-2", "S-OLD"))).code == "AA"
        await old.write(taken[:100])  # then its socket looks half open
        silent = StreamPeer(*await connect(port))  # replaced in turn, never having spoken
        new = StreamPeer(*await connect(port))
        assert await asyncio.wait_for(old.reader.read(), 10) == b""
        assert await asyncio.wait_for(silent.reader.read(), 10) == b""
        await new.write(b"\x05")
        assert await new.read(1) == b"\x06"
        for data in frames_for(message("S-NEW", "P-NEW")):
            await new.write(data)
            assert await new.read(1) == b"\x06"
        await new.write(b"\x04")
        await new.close()
        await old.close()

    asyncio.run(analyser())
    wait_for(lambda: query(database_url, "SELECT count(*) FROM quarantine") == [(1,)])
    specimens = query(database_url, "SELECT DISTINCT specimen_id FROM results ORDER BY 1")
    assert specimens == [("S-NEW",), ("S-OLD",)]
