"""An analyser on a port set up for another protocol is named, with what to configure:
byte by byte, never on what the configured protocol itself sends, and end to end (the
daemon as a process says so once per connection and keeps the bytes as noise)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from middleware.astm.frames import build_frames
from middleware.decode import decode_capture
from middleware.hl7.mllp import frame
from middleware.sniff import ASTM, DIMENSION, HL7, spoken_on_astm_line, spoken_on_hl7_line
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.test_hl7_ingest import oru
from tests.test_ingest_integrity import wait_for

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


def test_decode_names_the_dimension_protocol() -> None:
    report = decode_capture(POLL + b"\x06" + POLL)
    assert not report.ok
    assert report.errors[0] == {"kind": "protocol", "detail": DIMENSION.advice, "offset": 0}


def _said(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == "the analyser speaks another protocol"]


def test_an_hl7_analyser_on_an_astm_port_is_named_once_per_connection(
    database_url: str, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    start_daemon(port)

    async def analyser() -> None:
        for _ in range(2):
            _reader, writer = await connect(port)
            for n in range(2):
                writer.write(frame(oru(f"P-{n}", "S-1")))
                await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            await writer.wait_closed()

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
        await asyncio.sleep(0.3)
        writer.close()
        await writer.wait_closed()

    asyncio.run(analyser())
    log = tmp_path / "daemon.log"
    wait_for(lambda: len(_said(log)) == 1)
    assert _said(log)[0]["protocol"] == "astm"
    wait_for(lambda: query(database_url, "SELECT outcome FROM raw_transmissions") == [("noise",)])
