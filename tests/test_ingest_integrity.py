"""Nothing an analyser sent is lost, mixed up or acknowledged too early.

The daemon runs as a separate process, on SQLite and on PostgreSQL, against analyser peers
written in the tests over real TCP; faults are real (a database lock held past the lock
timeout, connections cut mid-message, two connections at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import (
    ACK,
    ENQ,
    EOT,
    NAK,
    STX,
    StreamPeer,
    frame,
    frames_for,
    send_frames,
    send_message,
)

LONG_VALUE = b"9" * 300  # makes its R record span two frames (ETB, then ETX)


def message(specimen: str, patient: str, value: bytes = b"5.4") -> list[bytes]:
    return [
        b"H|\\^&|||INTEGRITY-TEST|||||||P|LIS2-A2|20260301080000",
        b"P|1||" + patient.encode(),
        b"O|1|" + specimen.encode() + b"||^^^GLU|R",
        b"R|1|^^^GLU|" + value + b"|mmol/L||N||F||||20260301075900",
        b"L|1|N",
    ]


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition never met")
        time.sleep(0.05)


def raw_stream(url: str, connection_id: str) -> bytes:
    rows = query(
        url,
        "SELECT stream_offset, data FROM raw_transmissions WHERE connection_id = :c "
        "ORDER BY stream_offset",
        c=connection_id,
    )
    offset = 0
    stream = b""
    for start, data in rows:
        assert start == offset, "raw rows must follow each other without gap or overlap"
        stream += bytes(data)
        offset += len(data)
    return stream


def stored_or_resent(url: str) -> list[str]:
    """The outcome of each transmission that carried a whole message, in order."""
    rows = query(
        url,
        "SELECT outcome FROM raw_transmissions WHERE outcome IN ('message', 'duplicate') "
        "ORDER BY id",
    )
    return [outcome for (outcome,) in rows]


def connection_ids(url: str) -> list[str]:
    rows = query(
        url,
        "SELECT connection_id FROM raw_transmissions WHERE connection_id IS NOT NULL "
        "GROUP BY connection_id ORDER BY min(id)",
    )
    return [row[0] for row in rows]


@contextlib.contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Hold the database's write lock from another process's connection."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        pg.execute("LOCK TABLE messages, raw_transmissions IN EXCLUSIVE MODE")
        yield
        pg.rollback()


# --- 1. a failed commit keeps the whole message -------------------------------------------


@pytest.mark.parametrize("layout", ["record per frame group", "whole message in ETB frames"])
def test_a_refused_final_frame_keeps_the_whole_message(
    database_url: str, start_daemon: Callable[..., DaemonProcess], layout: str
) -> None:
    port = free_port()
    start_daemon(port, settings={"database_lock_timeout": 0.5})
    records = message("S-LOCK", "PAT-LOCK", LONG_VALUE)
    if layout == "record per frame group":
        frames = frames_for(records)  # the R record still spans an ETB and an ETX frame
    else:
        frames = frames_for([b"\r".join(records)])
        assert frames[-2][-5] == 0x17  # the refused final frame follows ETB frames

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_frames(peer, frames[:-1])
        with write_lock(database_url):
            for _ in range(2):
                await peer.write(frames[-1])
                assert await peer.read(1, timeout=10) == NAK  # not kept, so not ACKed
        await peer.write(frames[-1])
        assert await peer.read(1, timeout=10) == ACK
        await peer.write(EOT)
        await peer.close()

    asyncio.run(analyser())
    [(count, record_count, body)] = query(
        database_url, "SELECT count(*), max(record_count), max(text) FROM messages"
    )
    assert (count, record_count) == (1, 5)
    assert body.split("\r")[0].startswith("H|") and body.endswith("L|1|N")
    [(specimen, patient, value)] = query(
        database_url, "SELECT specimen_id, patient_id, value_text FROM results"
    )
    assert (specimen, patient, value) == ("S-LOCK", "PAT-LOCK", LONG_VALUE.decode())
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_commit_waiting_for_a_lock_is_refused_before_the_analyser_stops_waiting(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Another process holds the database longer than the analyser's reply timer (3 s
    here): each try of the final frame is NAKed in time, never ACKed late (a late ACK is
    read as the reply to what the analyser sends next), and the message is kept once the
    database is free."""
    port = free_port()
    start_daemon(port, reply_timeout=3, settings={"database_lock_timeout": 10})
    frames = frames_for(message("S-BUSY", "PAT-BUSY"))
    replies: list[tuple[bytes, float]] = []

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_frames(peer, frames[:-1])
        with write_lock(database_url):
            for _ in range(2):
                began = time.monotonic()
                await peer.write(frames[-1])
                replies.append((await peer.read(1, timeout=10), time.monotonic() - began))
        began = time.monotonic()
        await peer.write(frames[-1])
        replies.append((await peer.read(1, timeout=10), time.monotonic() - began))
        await peer.write(EOT)
        await peer.close()

    asyncio.run(analyser())
    assert [reply for reply, _ in replies] == [NAK, NAK, ACK]
    assert all(seconds < 3 for _, seconds in replies), replies
    assert query(database_url, "SELECT count(*), max(record_count) FROM messages") == [(1, 5)]
    assert query(database_url, "SELECT count(*) FROM results") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_refused_message_leaves_the_one_before_it_to_be_settled(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Two messages in one transfer, the second refused once (its commit behind a lock):
    the first, ACKed, is still settled by what follows the second's repeat."""
    port = free_port()
    start_daemon(port, settings={"database_lock_timeout": 0.5})
    first, second = message("S-ONE", "PAT-ONE"), message("S-TWO", "PAT-TWO")
    frames = frames_for(first + second)  # numbered through, one transfer

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_frames(peer, frames[:-1])
        with write_lock(database_url):
            await peer.write(frames[-1])
            assert await peer.read(1, timeout=10) == NAK
        await peer.write(frames[-1])
        assert await peer.read(1, timeout=10) == ACK
        await peer.write(EOT)
        await peer.close()

    asyncio.run(analyser())
    # Settling is written with what follows the EOT, soon after it.
    settled = "SELECT settled_at IS NOT NULL FROM messages ORDER BY id"
    assert wait_for(lambda: query(database_url, settled) == [(True,), (True,)])


# --- 2. PostgreSQL keeps what SQLite keeps --------------------------------------------------


def test_long_fields_are_kept_and_oversize_keys_quarantined(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    specimen = "S" * 150
    patient = "P" * 150
    code = "T" * 100
    long_message = [
        b"H|\\^&|||INTEGRITY-TEST",
        b"P|1||" + patient.encode(),
        b"O|1|" + specimen.encode() + b"||^^^" + code.encode() + b"|R",
        b"R|1|^^^" + code.encode() + b"|5.4|" + b"u" * 80 + b"||N||FINAL||" + b"o" * 150,
        b"L|1|N",
    ]
    huge = message("X" * 3000, "PAT-HUGE")
    with_nul = message("S-NUL", "PAT\x00NUL")

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        for records in (long_message, huge, with_nul):
            await send_message(peer, records)
        await peer.close()

    asyncio.run(analyser())
    [(got_specimen, got_patient, got_code, status)] = query(
        database_url, "SELECT specimen_id, patient_id, test_code, status FROM results"
    )
    assert (got_specimen, got_patient, got_code, status) == (specimen, patient, code, "FINAL")
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 2
    assert "specimen id longer than 1000 bytes" in reasons[0]
    assert "NUL characters" in reasons[1]


def test_oversize_keys_are_quarantined_with_rules_in_force_over_astm_and_hl7(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """The rules decide only what was stored: a message kept raw for an identifier too
    long to index is quarantined and answered, not refused for ever."""
    from tests.conftest import ROOT
    from tests.test_hl7_ingest import MllpPeer, oru

    port = free_port()
    start_daemon(port, settings={"rules_dir": str(ROOT / "rules")})
    long_sample = "X" * 1200

    async def analysers() -> None:
        astm = StreamPeer(*await connect(port))
        await send_message(astm, message(long_sample, "PAT-LONG"))
        await send_message(astm, message("S-AFTER", "PAT-AFTER"))
        await astm.close()
        hl7 = MllpPeer(*await connect(port))
        answer = await hl7.send(oru("LONG-1", long_sample))
        assert (answer.code, answer.control_id) == ("AE", "LONG-1")
        assert "specimen id longer than 1000 bytes" in answer.text
        assert (await hl7.send(oru("AFTER-1", "S-HL7-AFTER"))).code == "AA"
        await hl7.close()

    asyncio.run(analysers())
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 2
    assert all("specimen id longer than 1000 bytes" in r for r in reasons)
    stored = query(database_url, "SELECT DISTINCT specimen_id FROM results ORDER BY 1")
    assert stored == [("S-AFTER",), ("S-HL7-AFTER",)]


# --- 3. two connections to one instrument -------------------------------------------------


def test_a_newer_connection_replaces_the_older_whose_transfer_is_kept_apart(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    first = message("S-OLD", "PAT-OLD")
    sent_by_old = bytearray()

    async def analyser() -> None:
        old = StreamPeer(*await connect(port))
        await old.write(ENQ)
        sent_by_old.extend(ENQ)
        assert await old.read(1) == ACK
        for data in frames_for(first)[:3]:  # H, P, O: the connection then looks half open
            await old.write(data)
            sent_by_old.extend(data)
            assert await old.read(1) == ACK
        new = StreamPeer(*await connect(port))
        assert await old.reader.read() == b""  # the daemon closed the older connection
        await send_message(new, message("S-NEW", "PAT-NEW"))
        await new.close()
        await old.close()

    asyncio.run(analyser())
    results = query(database_url, "SELECT specimen_id, patient_id FROM results")
    assert results == [("S-NEW", "PAT-NEW")]
    [(reason, data)] = wait_for(lambda: query(database_url, "SELECT reason, data FROM quarantine"))
    assert "connection ended before the L record" in reason
    assert bytes(data) == bytes(sent_by_old)


def test_interleaved_connections_each_keep_their_own_records(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, connections="all")
    a_frames = frames_for(message("S-A", "PAT-A", b"1.1"))
    b_frames = frames_for(message("S-B", "PAT-B", b"2.2"))

    async def analyser() -> None:
        a = StreamPeer(*await connect(port))
        b = StreamPeer(*await connect(port))
        for peer in (a, b):
            await peer.write(ENQ)
            assert await peer.read(1) == ACK
        # Record by record, alternating: each connection's P and O before the other's R.
        for a_frame, b_frame in zip(a_frames, b_frames, strict=True):
            await a.write(a_frame)
            await b.write(b_frame)
            assert await a.read(1) == ACK
            assert await b.read(1) == ACK
        for peer in (a, b):
            await peer.write(EOT)
            await peer.close()

    asyncio.run(analyser())
    rows = query(database_url, "SELECT specimen_id, patient_id, value_text FROM results ORDER BY 1")
    assert rows == [("S-A", "PAT-A", "1.1"), ("S-B", "PAT-B", "2.2")]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


# --- 4. a transfer that ends unfinished is kept at once, with its own bytes ----------------


@pytest.mark.parametrize("ending", ["disconnect", "eot", "timeout", "shutdown"])
def test_an_unfinished_transfer_is_kept_at_once_with_its_own_bytes(
    database_url: str, start_daemon: Callable[..., DaemonProcess], ending: str
) -> None:
    port = free_port()
    daemon = start_daemon(port, frame_timeout=0.5 if ending == "timeout" else 30)
    sent = bytearray()
    reasons = {
        "disconnect": "connection ended before the L record (peer closed the connection)",
        "eot": "transfer ended before the message's L record",
        "timeout": "link timed out",
        "shutdown": "connection ended before the L record (closed by the middleware)",
    }

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await peer.write(ENQ)
        sent.extend(ENQ)
        assert await peer.read(1) == ACK
        for data in frames_for(message("S-CUT", "PAT-CUT"))[:3]:
            await peer.write(data)
            sent.extend(data)
            assert await peer.read(1) == ACK
        if ending == "eot":
            await peer.write(EOT)
            sent.extend(EOT)
        if ending == "shutdown":
            assert await asyncio.to_thread(daemon.stop) == 0
        elif ending != "disconnect":
            # Kept while the connection is still open: nothing waits for the next message.
            await asyncio.to_thread(
                wait_for, lambda: query(database_url, "SELECT id FROM quarantine")
            )
        await peer.close()

    asyncio.run(analyser())
    [(reason, data)] = wait_for(lambda: query(database_url, "SELECT reason, data FROM quarantine"))
    assert reasons[ending] in reason
    assert bytes(data) == bytes(sent)
    assert query(database_url, "SELECT count(*) FROM results") == [(0,)]


# --- 5. every byte in exactly one raw row -------------------------------------------------


def test_every_byte_received_is_in_exactly_one_raw_row(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, max_frame_bytes=1024)
    sent = bytearray()
    good = frame(1, b"H|\\^&\r")
    corrupt = good[:-4] + b"00\r\n"

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))

        async def write(data: bytes, reply: bytes | None = None) -> None:
            await peer.write(data)
            sent.extend(data)
            if reply is not None:
                assert await peer.read(1) == reply

        await write(b"line noise\r\n")
        await write(ENQ, ACK)
        await write(corrupt, NAK)  # refused, then the analyser gives up on the transfer
        await write(EOT)
        await write(ENQ, ACK)
        await write(STX + b"1" + b"x" * 2000, NAK)  # no terminator in bound
        await write(EOT)
        await write(ENQ, ACK)
        for data in frames_for(message("S-BYTES", "PAT-BYTES")):
            await write(data, ACK)
        await write(EOT)
        await write(b"\x00\xfftrailing")
        await asyncio.sleep(0.2)
        await peer.close()

    asyncio.run(analyser())
    [connection] = wait_for(lambda: connection_ids(database_url))
    wait_for(lambda: raw_stream(database_url, connection) == bytes(sent))
    outcomes = [
        (outcome, bytes(data)[:1])
        for outcome, data in query(
            database_url,
            "SELECT outcome, data FROM raw_transmissions WHERE connection_id = :c ORDER BY id",
            c=connection,
        )
    ]
    # A refused transfer's row runs to its EOT; a message's ends with its last frame, and
    # the EOT after it (sent once it had our ACK) is a row of its own.
    assert [o for o, _ in outcomes] == [
        "noise",
        "quarantine",
        "quarantine",
        "message",
        "control",
        "noise",
    ]
    # A message's row begins with its own ENQ, never with the previous transfer's EOT.
    assert dict(outcomes)["message"] == ENQ
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[0].startswith("frames refused (checksum")
    assert reasons[1].startswith("frames refused (frame_too_long")


# --- 6. a message must begin with H ---------------------------------------------------------


def test_a_message_without_an_h_record_is_quarantined(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_message(peer, message("S-NOH", "PAT-NOH")[1:])
        await peer.close()

    asyncio.run(analyser())
    [(reason,)] = wait_for(lambda: query(database_url, "SELECT reason FROM quarantine"))
    assert "does not begin with an H record" in reason
    assert query(database_url, "SELECT count(*) FROM raw_transmissions WHERE outcome = 'message'")[
        0
    ] == (0,)


# --- 7. re-send or re-run -------------------------------------------------------------------


def test_a_resend_after_a_lost_ack_is_stored_once_and_a_rerun_again(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    records = message("S-REPEAT", "PAT-REPEAT")

    async def analyser() -> None:
        # The ACK of the last frame comes, but the connection drops before the analyser
        # sends EOT: it cannot be sure the message arrived and sends it again.
        peer = StreamPeer(*await connect(port))
        await send_frames(peer, frames_for(records))
        await peer.close()
        peer = StreamPeer(*await connect(port))
        await send_message(peer, records)  # the re-send: ends with EOT after our ACK
        await send_message(peer, records)  # a re-run with the same values: a new message
        # A re-run, then the same again in the same transfer: the analyser did not take
        # our ACK of the first (a garbled reply), so the second is a re-send.
        await send_frames(peer, frames_for(records + records))
        await peer.write(EOT)
        await asyncio.sleep(0.2)
        await peer.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM messages") == [(3,)]
    assert query(database_url, "SELECT count(*) FROM results") == [(3,)]
    outcomes = stored_or_resent(database_url)
    assert outcomes == ["message", "duplicate", "message", "message", "duplicate"]


def test_an_analyser_giving_up_after_a_nak_in_time_is_kept_once_when_it_sends_again(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """The commit cannot be made before the analyser's reply timer runs out: the frame is
    NAKed in time (never ACKed late); the analyser ends the transfer and sends the whole
    message again later, which is kept once."""
    port = free_port()
    start_daemon(port, reply_timeout=0.5, settings={"database_lock_timeout": 5})
    records = message("S-LATE", "PAT-LATE")

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        frames = frames_for(records)
        await send_frames(peer, frames[:-1])
        with write_lock(database_url):
            began = time.monotonic()
            await peer.write(frames[-1])
            assert await peer.read(1, timeout=10) == NAK
            assert time.monotonic() - began < 0.5  # within the analyser's reply timer
            await peer.write(EOT)
        await send_message(peer, records)
        await peer.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM messages") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM results") == [(1,)]
    [(reason,)] = query(database_url, "SELECT reason FROM quarantine")
    # The transfer given up, kept apart with why: its L record came, but was not kept.
    assert "L record" in reason and "not-stored: its last frame could not be kept" in reason


def test_an_eot_after_the_analysers_timer_leaves_the_message_a_resend(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Our ACK of the last frame was lost: the analyser's reply timer, counted from that
    frame, runs out, it ends the transfer with EOT and sends the message again. That EOT
    does not show that the ACK arrived, though it comes soon after our ACK when the commit
    took a while."""
    port = free_port()
    start_daemon(port, reply_timeout=1.0, settings={"database_lock_timeout": 5})
    records = message("S-LOST", "PAT-LOST")

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        frames = frames_for(records)
        await send_frames(peer, frames[:-1])
        sent_at = time.monotonic()
        with write_lock(database_url):
            await peer.write(frames[-1])
            await asyncio.sleep(0.6)  # the commit waits: our ACK comes late in the timer
        assert await peer.read(1, timeout=10) == ACK  # "lost": the analyser never sees it
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - sent_at)))  # its 1 s timer
        await peer.write(EOT)
        await send_message(peer, records)
        await send_message(peer, records)  # that EOT was in time: a re-run
        await peer.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM results") == [(2,)]
    assert stored_or_resent(database_url) == ["message", "duplicate", "message"]


def test_a_shutdown_during_a_commit_keeps_the_message_once(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    daemon = start_daemon(port, settings={"database_lock_timeout": 5})
    frames = frames_for(message("S-STOP", "PAT-STOP"))

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_frames(peer, frames[:-1])
        with write_lock(database_url):
            await peer.write(frames[-1])
            await asyncio.sleep(0.3)  # the commit waits for the lock
            stopping = asyncio.ensure_future(asyncio.to_thread(daemon.stop))
            await asyncio.sleep(0.5)
        assert await stopping == 0
        await peer.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM messages") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]
    [connection] = connection_ids(database_url)
    assert raw_stream(database_url, connection).startswith(ENQ)  # contiguous, no overlap


@pytest.mark.parametrize("cut", ["etb frames only", "half a frame"])
def test_a_transfer_cut_inside_a_record_is_quarantined(
    database_url: str, start_daemon: Callable[..., DaemonProcess], cut: str
) -> None:
    port = free_port()
    start_daemon(port)
    sent = bytearray()

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        sent.extend(ENQ)
        if cut == "etb frames only":
            data = frame(1, b"H|\\^&|||CUT|" + b"x" * 200, last=False)
            await peer.write(data)
            assert await peer.read(1) == ACK
        else:
            data = frame(1, b"H|\\^&|||CUT\r")[:9]
            await peer.write(data)
        sent.extend(data)
        await peer.write(EOT)
        sent.extend(EOT)
        await asyncio.to_thread(wait_for, lambda: query(database_url, "SELECT id FROM quarantine"))
        await peer.close()

    asyncio.run(analyser())
    [(reason, data)] = query(database_url, "SELECT reason, data FROM quarantine")
    assert reason.startswith("transfer ended before the message's L record")
    if cut == "half a frame":
        assert reason.endswith("a frame was cut short")
    assert bytes(data) == bytes(sent)


def test_an_l_record_continued_over_etx_frames_is_kept_as_a_message(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """Under records_span_frames an ETX frame whose text does not end a record is ACKed
    at once; a message whose L record comes so is kept when the transfer ends."""
    port = free_port()
    start_daemon(port, tolerances={"records_span_frames": True})
    texts = [record + b"\r" for record in message("S-SPAN", "PAT-SPAN")[:-1]] + [b"L|1|N"]

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        for number, text in enumerate(texts, start=1):
            await peer.write(frame(number, text))
            assert await peer.read(1) == ACK
        await peer.write(EOT)
        await asyncio.sleep(0.3)
        await peer.close()

    asyncio.run(analyser())
    [(specimen, patient)] = wait_for(
        lambda: query(database_url, "SELECT specimen_id, patient_id FROM results")
    )
    assert (specimen, patient) == ("S-SPAN", "PAT-SPAN")
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]
