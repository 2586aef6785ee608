"""End to end: the daemon as its own process, an analyser peer, and a LIS peer over MLLP.
Released results reach the LIS exactly once per control id and in order per specimen,
across a LIS outage, a LIS that does not answer, refusals, and a killed daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from middleware.hl7.ack import read_answer
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.lis_peer import LisPeer
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message


def _daemon(tmp_path: Path, database_url: str, lis_port: int, **lis: Any) -> DaemonProcess:
    return DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port()}],
        database_url=database_url, rules_dir=str(ROOT / "rules"),
        lis={"host": "127.0.0.1", "port": lis_port, "ack_timeout": 1.0,
             "backoff": {"base": 0.1, "ceiling": 0.5}, **lis},
    )  # fmt: skip


async def _analyser(daemon: DaemonProcess, *messages: list[bytes]) -> None:
    peer = StreamPeer(*await connect(daemon.ports[0]))
    for message in messages:
        await send_message(peer, message)
    await peer.close()


def _outbox(database_url: str) -> list[tuple[Any, ...]]:
    return query(database_url, "SELECT specimen_id, state, attempts FROM outbox ORDER BY id")


async def test_released_results_reach_the_lis_once_each_across_an_outage(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer()
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"), patient("S2", "5.1"))
        await lis.wait_for(2)
        await lis.stop()  # the LIS is down for a while
        await _analyser(daemon, patient("S3", "5.2"), patient("S4", "5.3"))
        await asyncio.sleep(1.5)
        assert [s for s, state, _ in _outbox(database_url) if state == "pending"] == ["S3", "S4"]
        await lis.start(port)
        await lis.wait_for(4)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    assert [r.specimen_id for r in lis.received] == ["S1", "S2", "S3", "S4"]
    assert len({r.control_id for r in lis.received}) == 4
    assert all(state == "delivered" for _, state, _ in _outbox(database_url))
    log = query(database_url, "SELECT event FROM outbox_log ORDER BY id")
    assert ("unreachable",) in log and log.count(("answered",)) == 4


@pytest.mark.parametrize(
    ("trailer", "segment_end"),
    [(b"\x1c", "\r"), (b"\x1c\r", "\r\n")],
    ids=["fs-without-cr", "crlf-segments"],
)
async def test_answers_framed_or_separated_as_some_lises_write_them_are_taken(
    tmp_path: Path, database_url: str, trailer: bytes, segment_end: str
) -> None:
    lis = LisPeer(trailer=trailer, segment_end=segment_end)
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"), patient("S2", "5.1"))
        await lis.wait_for(2)
        await asyncio.sleep(1.5)  # past the ACK timeout: a missed answer would send again
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    assert [r.specimen_id for r in lis.received] == ["S1", "S2"]
    assert _outbox(database_url) == [("S1", "delivered", 1), ("S2", "delivered", 1)]


async def test_a_lis_that_closes_after_each_answer_gets_a_connection_for_each_message(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer(hang_up_after_answer=0.05)  # its close comes after our next message
    port = await lis.start()
    await lis.stop()  # down while the results come: then they go in one batch
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), *(patient(f"S{n}", "5.0") for n in range(8)))
        await lis.start(port)
        await lis.wait_for(8)
        await asyncio.sleep(0.5)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    assert [r.specimen_id for r in lis.received] == [f"S{n}" for n in range(8)]
    # Twice sent on a connection it was closing, then one connection for each message:
    # not one failed attempt in two.
    events = [e for (e,) in query(database_url, "SELECT event FROM outbox_log ORDER BY id")]
    assert events.count("disconnected") == 2 and events.count("answered") == 8


async def test_a_refused_message_stops_its_specimens_queue_and_not_the_others(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer(answer="AE")
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"))
        await lis.wait_for(1)
        lis.answer = "AA"
        # S1 measured again waits behind its refused message; S2 goes
        await _analyser(daemon, patient("S1", "5.4"), patient("S2", "5.1"))
        await lis.wait_for(2)
        await asyncio.sleep(1)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    assert [r.specimen_id for r in lis.received] == ["S1", "S2"]
    assert _outbox(database_url) == [
        ("S1", "stopped", 1),
        ("S1", "pending", 0),
        ("S2", "delivered", 1),
    ]
    [(detail,)] = query(database_url, "SELECT detail FROM outbox WHERE state = 'stopped'")
    assert detail == "AE: unknown test code"


async def test_a_refusal_naming_no_message_is_the_answer_to_the_one_sent(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer(answer="AR", names_message=False)
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"))
        await lis.wait_for(1)
        await asyncio.sleep(2.5)  # more than the ACK timeout and the backoff together
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    # Refused once, not sent again and again.
    assert [r.specimen_id for r in lis.received] == ["S1"]
    assert _outbox(database_url) == [("S1", "stopped", 1)]
    assert "answer without MSA-2" in (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize("kill", [False, True], ids=["timeout", "killed"])
async def test_no_answer_sends_the_same_message_again_with_the_same_control_id(
    tmp_path: Path, database_url: str, kill: bool
) -> None:
    lis = LisPeer(answer="")
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"))
        await lis.wait_for(1)
        if kill:
            # killed while waiting for the answer: another daemon sends it once the
            # claim of the dead one runs out (2 x ack timeout + 5 s)
            await asyncio.to_thread(daemon.kill)
            daemon = _daemon(tmp_path, database_url, port)
            await asyncio.to_thread(daemon.start)
        await lis.wait_for(2, timeout=20)
        lis.answer = "AA"
        count = len(lis.received)
        await lis.wait_for(count + 1, timeout=20)
        await asyncio.sleep(0.5)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    assert {r.control_id for r in lis.received} == {lis.received[0].control_id}
    [(specimen, state, attempts)] = _outbox(database_url)
    assert (specimen, state) == ("S1", "delivered") and attempts == len(lis.received)


async def test_a_lis_configured_for_oul_r22_gets_them_with_its_codes_and_laboratory(
    tmp_path: Path, database_url: str
) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    lis = LisPeer()
    port = await lis.start()
    daemon = _daemon(
        tmp_path, database_url, port,
        message_type="OUL^R22",
        tests={"GLU": {"name": "Glucose", "code": "2345-7", "coding_system": "LN",
                       "method": "HEXOKINASE"}},
        performing_laboratory={"name": "Central lab", "city": "Lyon", "country": "FRA"},
    )  # fmt: skip
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), patient("S1", "5.0"))
        await lis.wait_for(1)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    (received,) = lis.received
    segments = received.text.split("\r")
    assert segments[0].split("|")[8] == "OUL^R22^OUL_R22"
    assert [s.split("|")[0] for s in segments] == ["MSH", "PID", "SPM", "SAC", "OBR", "OBX"]
    assert segments[2].startswith("SPM|1|S1|")
    obx = segments[5].split("|")
    assert (obx[3], obx[5], obx[17]) == ("2345-7^Glucose^LN^GLU^^L", "5.0", "HEXOKINASE^^L")
    assert obx[23:] == ["Central lab", "^^Lyon^^^FRA"]
    message = parse_message(
        received.text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    )
    assert message.validate()
    assert _outbox(database_url) == [("S1", "delivered", 1)]


async def test_a_lis_on_2_3_1_gets_text_in_8859_1_as_msh_18_says(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer()
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port, version="2.3.1")
    micro = [line.replace(b"mmol/L", "µmol/L".encode("latin-1")) for line in patient("S1", "5.0")]
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, qc("5.2", "15.6"), micro)
        await lis.wait_for(1)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    (received,) = lis.received
    assert received.text.split("\r")[0].endswith("|2.3.1||||||8859/1")
    assert "|µmol/L|" in received.text and b"|\xb5mol/L|" in received.raw


async def test_results_released_after_a_hold_carry_the_patients_birth_date_and_sex(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer()
    port = await lis.start()
    daemon = _daemon(tmp_path, database_url, port)
    held = [b"P|1||PAT9||Doe^Jo||19800101|F" if line.startswith(b"P|") else line
            for line in patient("S9", "5.0", "PAT9")]  # fmt: skip
    await asyncio.to_thread(daemon.start)
    try:
        await _analyser(daemon, held)  # no QC yet: held
        await _analyser(daemon, qc("5.2", "15.6"))  # its QC: released, from the store
        await lis.wait_for(1)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    (received,) = lis.received
    pid = next(s for s in received.text.split("\r") if s.startswith("PID|")).split("|")
    assert (pid[3], pid[7], pid[8]) == ("PAT9^^^^MR", "19800101", "F")


def test_an_answer_after_a_byte_order_mark_is_read() -> None:
    """Some LISes write a UTF-8 byte order mark before the MSH: passed over, every answer
    of theirs would leave its message to be sent again for ever."""
    answer = read_answer("\ufeffMSH|^~\\&|LIS|LAB|MW|LAB|20261130120000||ACK|A1|P|2.5.1\rMSA|AA|C7")
    assert (answer.code, answer.control_id, answer.accepted) == ("AA", "C7", True)
