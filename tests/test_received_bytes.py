"""The bytes a connection received and nobody kept yet, with when each read came."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from middleware.transport.received import ReceivedBytes

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_a_frame_arrived_when_the_read_that_brought_its_last_byte_came() -> None:
    received = ReceivedBytes()
    assert received.arrived(10) is None  # nothing held
    received.add(b"\x05\x021H|", T0)
    received.add(b"\\^&\r\x03", T0 + timedelta(seconds=2))
    received.add(b"9A\r\n", T0 + timedelta(seconds=7))
    assert received.arrived(4) == T0
    assert received.arrived(9) == T0 + timedelta(seconds=2)
    assert received.arrived(received.end) == T0 + timedelta(seconds=7)
    received.release(9)  # kept: what is left still knows its time
    assert received.arrived(received.end) == T0 + timedelta(seconds=7)
