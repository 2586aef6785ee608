"""Analysers that speak HL7 over MLLP, end to end: the daemon as a separate process, on
SQLite and on PostgreSQL, a peer written here sending ORU^R01 over real TCP. Each message
is answered only after it is committed; what cannot be read is kept and answered AE; a
commit that fails is answered AR and the message taken when sent again; every byte
received is kept once."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from middleware.hl7.ack import Answer, read_answer
from middleware.hl7.mllp import MessageReceived, MllpReader, frame
from middleware.hl7.segments import unescape
from middleware.settings import InstrumentConfig
from middleware.store.database import open_engine
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.lis_peer import LisPeer
from tests.test_ingest_integrity import raw_stream, wait_for, write_lock
from tests.test_lis_orders import orm

HAEMATOLOGY = {  # parameter: (LOINC, units, value of a patient)
    "WBC": ("6690-2", "10*3/uL", "6.75"),
    "RBC": ("789-8", "10*6/uL", "4.76"),
    "HGB": ("718-7", "g/dL", "12.9"),
    "HCT": ("4544-3", "%", "42.1"),
    "PLT": ("777-3", "10*3/uL", "204"),
    "MCV": ("787-2", "fL", "88.5"),
    "MCH": ("785-6", "pg", "27.1"),
    "MCHC": ("786-4", "g/dL", "30.6"),
    "RDW-CV": ("788-0", "%", "14.6"),
    "NEU#": ("751-8", "10*3/uL", "4.20"),
    "LYM#": ("731-0", "10*3/uL", "2.00"),
    "MON#": ("742-7", "10*3/uL", "0.45"),
    "EOS#": ("711-2", "10*3/uL", "0.07"),
    "BAS#": ("704-7", "10*3/uL", "0.03"),
}
#: The bundled rules' targets of the normal, low and high haematology controls.
TARGETS = {
    "N": {"WBC": "7.4", "RBC": "4.55", "HGB": "13.2", "HCT": "39.5", "PLT": "232", "MCV": "86.8",
          "MCH": "29.0", "MCHC": "33.4", "RDW-CV": "13.5", "NEU#": "4.3", "LYM#": "2.2",
          "MON#": "0.55", "EOS#": "0.25", "BAS#": "0.08"},
    "L": {"WBC": "2.8", "RBC": "2.45", "HGB": "6.1", "HCT": "18.1", "PLT": "78", "MCV": "74",
          "MCH": "24.9", "MCHC": "33.7", "RDW-CV": "15.5", "NEU#": "1.5", "LYM#": "0.9",
          "MON#": "0.25", "EOS#": "0.1", "BAS#": "0.05"},
    "H": {"WBC": "17.8", "RBC": "5.6", "HGB": "16.9", "HCT": "50.2", "PLT": "480", "MCV": "89.6",
          "MCH": "30.2", "MCHC": "33.7", "RDW-CV": "12.8", "NEU#": "11.5", "LYM#": "4.6",
          "MON#": "1.1", "EOS#": "0.45", "BAS#": "0.12"},
}  # fmt: skip


def oru(control_id: str, sample: str, values: dict[str, str] | None = None) -> bytes:
    """An ORU^R01 as a Mindray BC (here an Erba ELite 580) writes it."""
    now = datetime.now().strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|ELite 580|Erba|||{now}||ORU^R01|{control_id}|P|2.3.1||||||UNICODE",
        f"PID|1||PAT-{sample}",
        "PV1|1",
        f"OBR|1||{sample}|01001^Automated Count^99MRC||{now}|{now}",
        "OBX|1|IS|02001^Take Mode^99MRC||A||||||F",
    ]
    for n, (name, (loinc, units, value)) in enumerate(HAEMATOLOGY.items(), start=2):
        shown = (values or {}).get(name, value)
        segments.append(f"OBX|{n}|NM|{loinc}^{name}^LN||{shown}|{units}||~N|||F")
    return "\r".join(segments).encode() + b"\r"


class MllpPeer:
    """An analyser's side of MLLP: sends a message, reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.mllp = MllpReader()
        self.answers: list[bytes] = []
        self.sent = b""

    async def write(self, data: bytes) -> None:
        self.sent += data
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10.0) -> Answer:
        return read_answer(await self.message(timeout))

    async def message(self, timeout: float = 10.0) -> str:
        """The next message the daemon sent, as text."""
        while not self.answers:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            assert data, "the daemon closed the connection"
            events = self.mllp.receive_data(data)
            self.answers += [e.message for e in events if isinstance(e, MessageReceived)]
        return self.answers.pop(0).decode()

    async def send(self, message: bytes) -> Answer:
        await self.write(frame(message))
        return await self.answer()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
def start_daemon(start_daemon: Callable[..., DaemonProcess]) -> Callable[..., DaemonProcess]:
    """The suite's daemon, its instrument an analyser speaking HL7."""
    return functools.partial(start_daemon, name="elite", protocol="hl7")


def _connection_id(url: str) -> str:
    [(connection_id,)] = query(url, "SELECT DISTINCT connection_id FROM raw_transmissions")
    return str(connection_id)


def test_an_hl7_analyser_end_to_end(
    database_url: str, start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    lis = LisPeer()

    async def analyser() -> MllpPeer:
        lis_port = await lis.start()
        lis_settings = {"host": "127.0.0.1", "port": lis_port, "ack_timeout": 2.0}
        await asyncio.to_thread(
            start_daemon,
            port,
            settings={"rules_dir": str(ROOT / "rules"), "lis": lis_settings},
            control_pattern=r"^QC-(?P<lot>HC-2411-[LNH])$",
        )
        peer = MllpPeer(*await connect(port))
        before = await peer.send(oru("P-1", "25059143"))
        assert (before.code, before.control_id) == ("AA", "P-1")
        # Answered after the commit: the message is there when its ACK arrives.
        assert query(database_url, "SELECT count(*) FROM results") == [(14,)]
        for level, values in TARGETS.items():
            answer = await peer.send(oru(f"Q-{level}", f"QC-HC-2411-{level}", values))
            assert (answer.code, answer.control_id) == ("AA", f"Q-{level}")
        after = await peer.send(oru("P-2", "25059144"))
        assert after.code == "AA"
        await peer.close()
        # HL7 in, HL7 out: both samples reach the LIS once released, the held one first.
        await lis.wait_for(2)
        await lis.stop()
        return peer

    peer = asyncio.run(analyser())
    assert [r.specimen_id for r in lis.received] == ["25059143", "25059144"]
    assert all(r.text.count("\rOBX|") == 14 for r in lis.received)
    assert "|NEUT#^" in lis.received[0].text
    assert query(
        database_url, "SELECT driver, sender, record_count FROM messages ORDER BY id LIMIT 1"
    ) == [("mindray_hl7", "ELite 580 Erba", 19)]
    rows = query(
        database_url,
        "SELECT r.specimen_id, r.test_code, r.value_text, r.units, d.action, d.reasons "
        "FROM results r JOIN decisions d ON d.result_id = r.id ORDER BY r.id, d.id",
    )
    first: dict[str, list[tuple[str, str]]] = {}
    second: dict[str, list[str]] = {}
    for specimen, code, _, _, action, reasons in rows:
        if specimen == "25059143":
            first.setdefault(code, []).append((action, reasons))
        else:
            second.setdefault(code, []).append(action)
    # Decided like ASTM results: held without QC, held for fewer levels as each comes,
    # released once all three levels passed; a sample measured after that is released
    # at once.
    assert len(first) == 14
    assert all(
        [a for a, _ in decided] == ["hold", "hold", "hold", "release"] for decided in first.values()
    )
    assert [r for _, r in first["WBC"]] == [
        "qc-missing:low,qc-missing:normal,qc-missing:high",
        "qc-missing:low,qc-missing:high",
        "qc-missing:high",
        "",
    ]
    assert set(second) == set(first) and set(map(tuple, second.values())) == {("release",)}
    assert ("25059143", "NEUT#", "4.20", "10*3/uL") in {r[:4] for r in rows}
    controls = query(
        database_url, "SELECT lot, count(*) FROM control_results GROUP BY lot ORDER BY lot"
    )
    assert controls == [("HC-2411-H", 14), ("HC-2411-L", 14), ("HC-2411-N", 14)]
    assert raw_stream(database_url, _connection_id(database_url)) == peer.sent
    assert '"driver chosen"' in (tmp_path / "daemon.log").read_text()


def test_what_cannot_be_read_is_kept_and_answered_ae(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, driver="mindray_hl7")
    query_message = b"MSH|^~\\&|BC-5380|Mindray|||20260105||ADT^A01|Q-9|P|2.3.1\rEVN|A01\r"
    garbled = oru("P-10", "S-10").replace(b"\rOBX|3|", b"\robx|3|")
    with_nul = oru("P-11", "S-11").replace(b"|12.9|", b"|12\x009|")
    # A NUL written as an escape, and a blank line before the MSH: taken.
    escaped_nul = b"\r" + oru("P-3", "S-3").replace(b"PID|1||PAT-S-3", b"PID|1||PAT\\X00\\3")

    async def analyser() -> MllpPeer:
        peer = MllpPeer(*await connect(port))
        await peer.write(b"line noise\r\n")
        not_hl7 = await peer.send(b"hello, world")
        assert not_hl7.code == "AE" and "not an HL7 message" in not_hl7.text
        for _ in range(2):  # sent again: the same answer
            asked = await peer.send(query_message)
            assert (asked.code, asked.control_id) == ("AE", "Q-9")
            assert "ADT^A01 carries no results" in unescape(asked.text)
        # A segment that cannot be read may have held a result: not taken without it.
        cut = await peer.send(garbled)
        assert (cut.code, cut.control_id) == ("AE", "P-10")
        assert "segment 7: 'obx|3|NM|789-8^RBC^L' is not a segment" in unescape(cut.text)
        nul = await peer.send(with_nul)
        assert (nul.code, nul.control_id) == ("AE", "P-11")
        taken = await peer.send(escaped_nul)
        assert (taken.code, taken.control_id) == ("AA", "P-3")
        await peer.write(b"\x0b" + oru("P-4", "S-4")[:120])  # cut off mid-message
        await asyncio.sleep(0.3)
        await peer.close()
        return peer

    peer = asyncio.run(analyser())
    # What the connection left is kept once the daemon sees it closed.
    wait_for(lambda: query(database_url, "SELECT count(*) FROM raw_transmissions") == [(8,)])
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 5
    assert reasons[0].startswith("not an HL7 message")
    assert reasons[1] == "MSH-9: a ADT^A01 carries no results"
    assert reasons[2].startswith("segment 7: 'obx|3|NM|789-8^RBC^L' is not a segment; left out")
    assert reasons[3] == "NUL characters in the message text"
    assert reasons[4] == "message cut short: the connection ended before its FS"
    outcomes = query(
        database_url, "SELECT outcome, size FROM raw_transmissions ORDER BY stream_offset"
    )
    assert [o for o, _ in outcomes] == [
        "noise", "quarantine", "quarantine", "duplicate", "quarantine", "quarantine", "message",
        "quarantine",
    ]  # fmt: skip
    assert outcomes[-1][1] == 121
    # Kept with the message in quarantine, as for ASTM: the results it could read.
    patients = query(
        database_url, "SELECT patient_id, count(*) FROM results GROUP BY patient_id ORDER BY 1"
    )
    assert patients == [("PAT-S-10", 13), ("PAT\ufffd3", 14)]
    assert raw_stream(database_url, _connection_id(database_url)) == peer.sent


def test_a_training_or_debugging_message_is_refused_ar_and_kept_apart(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    training = oru("T-1", "S-20").replace(b"|T-1|P|2.3.1|", b"|T-1|T|2.3.1|")
    debugging = oru("D-1", "S-20").replace(b"|D-1|P|2.3.1|", b"|D-1|D|2.3.1|")

    async def analyser() -> list[str]:
        peer = MllpPeer(*await connect(port))
        answers = []
        for message in (training, debugging):
            await peer.write(frame(message))
            answers.append(await peer.message())
        # The same tube in production: taken.
        assert (await peer.send(oru("P-20", "S-20"))).code == "AA"
        await peer.close()
        return answers

    training_ack, debugging_ack = (read_answer(a) for a in asyncio.run(analyser()))
    assert (training_ack.code, training_ack.control_id) == ("AR", "T-1")
    assert "training message (MSH-11 T): not for patient records" in training_ack.text
    assert "ERR|MSH^1^11^202&Unsupported processing id&HL70357" in training_ack.text
    assert (debugging_ack.code, debugging_ack.control_id) == ("AR", "D-1")
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert reasons == [
        "training message (MSH-11 T): not for patient records",
        "debugging message (MSH-11 D): not for patient records",
    ]
    # Kept raw only: no message read, no result that could reach the LIS.
    outcomes = query(database_url, "SELECT outcome FROM raw_transmissions ORDER BY stream_offset")
    assert outcomes == [("quarantine",), ("quarantine",), ("message",)]
    assert query(database_url, "SELECT count(*) FROM messages") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]


def test_text_without_a_character_set_is_read_as_utf_8_when_it_is_utf_8(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)  # the instrument's encoding: latin-1, the default

    def undeclared(control_id: str, patient: str, encoding: str) -> bytes:
        message = oru(control_id, control_id).replace(b"||||||UNICODE", b"")
        return message.replace(f"PAT-{control_id}".encode(), patient.encode(encoding))

    async def analyser() -> None:
        peer = MllpPeer(*await connect(port))
        assert (await peer.send(undeclared("U-1", "PATÉ1", "utf-8"))).code == "AA"
        assert (await peer.send(undeclared("L-1", "PATÉ2", "latin-1"))).code == "AA"
        # A byte order mark before the MSH, as some senders write it.
        bom = b"\xef\xbb\xbf" + undeclared("B-1", "PATÉ3", "utf-8")
        assert (await peer.send(bom)).code == "AA"
        await peer.close()

    asyncio.run(analyser())
    patients = query(database_url, "SELECT DISTINCT specimen_id, patient_id FROM results")
    assert sorted(patients) == [("B-1", "PATÉ3"), ("L-1", "PATÉ2"), ("U-1", "PATÉ1")]
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_message_without_control_id_or_in_another_version_is_refused_ar(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    anonymous = oru("", "S-21")
    version_3 = oru("V-1", "S-21").replace(b"|V-1|P|2.3.1|", b"|V-1|P|3.0|")
    # Left empty, MSH-12 refuses nothing.
    unversioned = oru("V-2", "S-21").replace(b"|V-2|P|2.3.1|", b"|V-2|P||")

    async def analyser() -> list[str]:
        peer = MllpPeer(*await connect(port))
        answers = []
        for message in (anonymous, version_3):
            await peer.write(frame(message))
            answers.append(await peer.message())
        assert (await peer.send(unversioned)).code == "AA"
        await peer.close()
        return answers

    no_id, other_version = (read_answer(a) for a in asyncio.run(analyser()))
    assert (no_id.code, no_id.control_id) == ("AR", "")
    assert "MSH-10: no message control id" in no_id.text
    assert (other_version.code, other_version.control_id) == ("AR", "V-1")
    assert "MSH-12: HL7 version 3.0; results are taken in 2.x" in other_version.text
    reasons = [r for (r,) in query(database_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert reasons == [
        "MSH-10: no message control id",
        "MSH-12: HL7 version 3.0; results are taken in 2.x",
    ]
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]


def _mindray_query(control_id: str, *tubes: str) -> bytes:
    """A QRY^Q02 as the Mindray BS host interface manual lays it out: the tube in QRD-8."""
    return "\r".join([
        f"MSH|^~\\&|Mindray|BS-240|||20261201083000||QRY^Q02|{control_id}|P|2.3.1||||||ASCII",
        f"QRD|20261201083000|R|D|{control_id}|||RD|{'~'.join(tubes)}|OTH|||T",
        "QRF|BS-240|20261201083000|20261201083000|||RCT|COR|ALL",
    ]).encode() + b"\r"  # fmt: skip


def _with_orders(start_daemon: Callable[..., DaemonProcess]) -> tuple[int, int]:
    """A daemon with an HL7 analyser's port and the LIS's orders port: both ports."""
    port, orders_port = free_port(), free_port()
    lis = {"host": "127.0.0.1", "port": free_port(), "orders_host": "127.0.0.1",
           "orders_port": orders_port}  # fmt: skip
    start_daemon(port, settings={"lis": lis})
    return port, orders_port


async def _order(orders_port: int, order: str) -> None:
    reader, writer = await connect(orders_port, within=10)
    writer.write(frame(order.encode()))
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    writer.close()


def test_a_host_query_over_hl7_is_answered_from_the_lis_orders(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port, orders_port = _with_orders(start_daemon)

    async def lis_and_analyser() -> list[str]:
        stat = orm("O1", "NW", "OBR|1|ORD1|S200|GLU^Glucose^L|S", "OBR|2|ORD1|S200|CREA^^L")
        await _order(orders_port, stat)
        peer = MllpPeer(*await connect(port))
        await peer.write(frame(_mindray_query("Q-1", "S200")))
        got = [await peer.message(), await peer.message()]
        dsr_id = got[1].split("\r")[0].split("|")[9]
        # The analyser acknowledges the DSR; that is answered with nothing.
        ack = f"MSH|^~\\&|Mindray|BS-240|||20261201083001||ACK^Q03|A-1|P|2.3.1\rMSA|AA|{dsr_id}"
        await peer.write(frame(ack.encode()))
        await peer.write(frame(_mindray_query("Q-2", "S999")))
        got.append(await peer.message())
        taken = await peer.send(oru("P-20", "S-20"))
        assert (taken.code, taken.control_id) == ("AA", "P-20")
        await peer.close()
        return got

    qck, dsr, not_found = asyncio.run(lis_and_analyser())
    qck_segments = qck.split("\r")
    assert "|QCK^Q02|" in qck_segments[0] and "|Mindray|BS-240|" in qck_segments[0]
    assert qck_segments[1:] == ["MSA|AA|Q-1|Message accepted|||0|", "ERR|0|", "QAK|SR|OK|"]
    lines = dsr.split("\r")
    assert "|DSR^Q03|" in lines[0] and lines[0].endswith("|P|2.3.1||||||ASCII")
    assert lines[1:4] == qck_segments[1:]
    assert lines[4].startswith("QRD|20261201083000|R|D|Q-1|||RD|S200|OTH")
    assert lines[5].startswith("QRF|BS-240|")
    display = {int(line.split("|")[1]): line.split("|")[3] for line in lines if line[:4] == "DSP|"}
    assert (display[1], display[21], display[24]) == ("PAT7", "S200", "Y")
    assert (display[29], display[30]) == ("GLU^^^", "CREA^^^") and 31 not in display
    assert lines[-1] == "DSC||"
    assert not_found.split("\r")[1:] == ["MSA|AA|Q-2|Message accepted|||0|", "ERR|0|",
                                          "QAK|SR|NF|"]  # fmt: skip
    # Every message kept as it came, the queries and the analyser's ACK among them.
    wait_for(lambda: query(database_url, "SELECT count(*) FROM messages") == [(4,)])
    assert query(database_url, "SELECT count(*) FROM quarantine") == [(0,)]


def test_a_host_query_answer_leaves_out_what_its_character_set_cannot_carry(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port, orders_port = _with_orders(start_daemon)

    async def lis_and_analyser() -> list[str]:
        order = orm("O1", "NW", "OBR|1|ORD1|S200|GLU^Glucose^L").replace("PAT7^", "PATÉ7^")
        await _order(orders_port, order)
        peer = MllpPeer(*await connect(port))
        await peer.write(frame(_mindray_query("Q-1", "S200")))  # in ASCII
        got = [await peer.message(), await peer.message()]
        await peer.close()
        return got

    _, dsr = asyncio.run(lis_and_analyser())
    display = {int(line.split("|")[1]): line.split("|")[3]
               for line in dsr.split("\r") if line[:4] == "DSP|"}  # fmt: skip
    # No patient id rather than PAT?7, another patient's; the tube still run for glucose.
    assert (display.get(1, ""), display[21], display[29]) == ("", "S200", "GLU^^^")


def _alter(url: str, sql: str) -> None:
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def test_a_host_query_whose_orders_cannot_be_read_is_answered_ask_again(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)

    async def analyser() -> list[str]:
        peer = MllpPeer(*await connect(port))
        # The worklist unreadable: a real error of the database, not a stand-in.
        await asyncio.to_thread(_alter, database_url, "ALTER TABLE orders RENAME TO away")
        await peer.write(frame(_mindray_query("Q-5", "S200")))
        got = [await peer.message()]
        await asyncio.to_thread(_alter, database_url, "ALTER TABLE away RENAME TO orders")
        await peer.write(frame(_mindray_query("Q-6", "S200")))
        got.append(await peer.message())
        await peer.close()
        return got

    refused, asked_again = asyncio.run(analyser())
    lines = refused.split("\r")
    assert "|QCK^Q02|" in lines[0]
    assert lines[1].startswith("MSA|AE|Q-5|orders not read: ") and lines[3] == "QAK|SR|AE|"
    assert asked_again.split("\r")[1:] == ["MSA|AA|Q-6|Message accepted|||0|", "ERR|0|",
                                            "QAK|SR|NF|"]  # fmt: skip
    # Both queries kept, as every message.
    wait_for(lambda: query(database_url, "SELECT count(*) FROM messages") == [(2,)])


def test_a_message_too_long_to_keep_is_answered_ae(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, max_message_bytes=1024)
    long = oru("P-12", "S-12").replace(b"|A|", b"|" + b"A" * 2000 + b"|")

    async def analyser() -> None:
        peer = MllpPeer(*await connect(port))
        refused = await peer.send(long)
        assert (refused.code, refused.control_id) == ("AE", "P-12")
        assert "longer than 1024 bytes" in refused.text
        assert (await peer.send(oru("P-13", "S-13"))).code == "AA"
        await peer.close()

    asyncio.run(analyser())
    wait_for(lambda: query(database_url, "SELECT count(*) FROM quarantine") == [(1,)])
    [(reason, size)] = query(database_url, "SELECT reason, length(data) FROM quarantine")
    assert reason == "message longer than 1024 bytes; only its first bytes kept"
    assert size == 1024
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]


def test_a_failed_commit_is_answered_ar_and_the_message_taken_when_sent_again(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, settings={"database_lock_timeout": 0.5})
    message = oru("P-5", "S-5")

    async def analyser() -> MllpPeer:
        peer = MllpPeer(*await connect(port))
        with write_lock(database_url):
            refused = await peer.send(message)
            assert (refused.code, refused.control_id) == ("AR", "P-5")
        taken = await peer.send(message)
        assert (taken.code, taken.control_id) == ("AA", "P-5")
        await peer.close()
        return peer

    peer = asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM messages") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]
    outcomes = query(database_url, "SELECT outcome FROM raw_transmissions ORDER BY stream_offset")
    assert outcomes == [("refused",), ("message",)]
    assert raw_stream(database_url, _connection_id(database_url)) == peer.sent


def test_a_message_sent_again_before_the_next_is_a_duplicate_after_it_a_new_one(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port)
    first, second = oru("P-6", "S-6"), oru("P-7", "S-7")

    async def analyser() -> None:
        peer = MllpPeer(*await connect(port))
        for message in (first, first, second, first):
            assert (await peer.send(message)).code == "AA"
        await peer.close()

    asyncio.run(analyser())
    outcomes = query(database_url, "SELECT outcome FROM raw_transmissions ORDER BY stream_offset")
    # Our ACK of the first was missed (sent again at once); the analyser went on, then
    # measured the same sample again: a new message.
    assert outcomes == [("message",), ("duplicate",), ("message",), ("message",)]
    assert query(database_url, "SELECT count(*) FROM results") == [(42,)]


def test_a_message_sent_again_with_its_header_built_anew_is_taken_once(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    lis = LisPeer()
    first = oru("P-30", "S-30")
    header, rest = first.split(b"\r", 1)
    fields = header.split(b"|")
    fields[6] = b"20260101000000"  # MSH-7: the time the copy was sent
    again = b"|".join(fields) + b"\r" + rest
    # The same control id on other content: another message.
    other = oru("P-30", "S-30", {"WBC": "7.00"})

    async def analyser() -> None:
        lis_port = await lis.start()
        lis_settings = {"host": "127.0.0.1", "port": lis_port, "ack_timeout": 2.0}
        await asyncio.to_thread(
            start_daemon,
            port,
            settings={"rules_dir": str(ROOT / "rules"), "lis": lis_settings},
            control_pattern=r"^QC-(?P<lot>HC-2411-[LNH])$",
        )
        peer = MllpPeer(*await connect(port))
        for level, values in TARGETS.items():
            assert (await peer.send(oru(f"Q-{level}", f"QC-HC-2411-{level}", values))).code == "AA"
        for message in (first, again, other):
            answer = await peer.send(message)
            assert (answer.code, answer.control_id) == ("AA", "P-30")
        await peer.close()
        # Queued with the decisions, before the answers: all there is for the LIS.
        assert query(database_url, "SELECT count(*) FROM outbox") == [(2,)]
        await lis.wait_for(2)
        await lis.stop()

    asyncio.run(analyser())
    assert [r.specimen_id for r in lis.received] == ["S-30", "S-30"]
    assert "|6.75|" in lis.received[0].text and "|7.00|" in lis.received[1].text
    outcomes = query(database_url, "SELECT outcome FROM raw_transmissions ORDER BY stream_offset")
    assert outcomes[3:] == [("message",), ("duplicate",), ("message",)]
    assert query(database_url, "SELECT count(*) FROM results WHERE specimen_id = 'S-30'") == [(28,)]


def test_two_connections_at_once_never_mix(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    start_daemon(port, connections="all")
    one, two = frame(oru("A-1", "S-A")), frame(oru("B-1", "S-B"))

    async def analysers() -> None:
        a = MllpPeer(*await connect(port))
        b = MllpPeer(*await connect(port))
        await a.write(one[:200])
        await b.write(two[:300])
        await a.write(one[200:])
        await b.write(two[300:])
        assert (await a.answer()).control_id == "A-1"
        assert (await b.answer()).control_id == "B-1"
        await a.close()
        await b.close()

    asyncio.run(analysers())
    specimens = query(
        database_url,
        "SELECT m.text LIKE '%A-1%', r.specimen_id, count(*) FROM results r "
        "JOIN messages m ON m.id = r.message_id GROUP BY m.text LIKE '%A-1%', r.specimen_id",
    )
    assert sorted(specimens) == [(False, "S-B", 14), (True, "S-A", 14)]


def _config(**fields: Any) -> InstrumentConfig:
    return InstrumentConfig.model_validate({"name": "a", "transport": "tcp-server", "port": 1}
                                           | fields)  # fmt: skip


def test_the_protocol_follows_the_driver_and_must_agree_with_it() -> None:
    assert _config(driver="mindray_hl7").speaks == "hl7"
    assert _config(driver="auto", protocol="hl7").speaks == "hl7"
    # driver: auto on a port analysers connect to: each connection's first bytes tell.
    assert (_config().speaks, _config().sniffs) == ("auto", True)
    assert _config(protocol="astm").speaks == "astm"
    assert _config(transport="tcp-client", host="10.0.0.9").speaks == "astm"
    assert _config(driver="sysmex_xn").speaks == "astm"
    assert _config(worklist={"tests": ["GLU"]}).speaks == "astm"
    with pytest.raises(
        ValidationError, match="driver mindray_hl7 reads HL7, not the protocol astm"
    ):
        _config(driver="mindray_hl7", protocol="astm")
    with pytest.raises(ValidationError, match="driver sysmex_xn reads ASTM"):
        _config(driver="sysmex_xn", protocol="hl7")
    with pytest.raises(ValidationError, match="connects over TCP"):
        _config(driver="hl7", transport="serial", serial={"port": "/dev/ttyS0"})


def test_a_message_left_unfinished_is_kept_and_the_connection_goes_on(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    daemon = start_daemon(port, frame_timeout=0.5)

    async def analyser() -> None:
        peer = MllpPeer(*await connect(port))
        await peer.write(frame(oru("P-8", "S-8"))[:150])
        await asyncio.sleep(2.0)  # silent well past the frame timeout
        assert (await peer.send(oru("P-9", "S-9"))).code == "AA"
        # Stopped with the connection open: the daemon ends cleanly, nothing left behind.
        assert await asyncio.to_thread(daemon.stop) == 0
        assert await peer.reader.read() == b""

    asyncio.run(analyser())
    [(reason,)] = query(database_url, "SELECT reason FROM quarantine")
    assert reason == "message cut short: silent for 0.5 s before its FS"
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]


def test_a_message_ended_by_fs_without_cr_is_answered_at_once(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """An analyser that ends its block with FS alone waits for our ACK: it is answered
    when nothing follows, not when the connection's idle timer runs out."""
    port = free_port()
    start_daemon(port)

    async def analyser() -> None:
        peer = MllpPeer(*await connect(port))
        await peer.write(frame(oru("P-10", "S-10"))[:-1])
        assert (await peer.answer(timeout=5)).code == "AA"
        # and the connection goes on as before; the ACK names the sender as it named
        # itself, a whole HD (namespace^universal id^its type)
        named = oru("P-11", "S-11").replace(b"|ELite 580|", b"|ELite 580^1.2.250^ISO|", 1)
        await peer.write(frame(named))
        answer = await peer.message()
        assert "|LAB|ELite 580^1.2.250^ISO|Erba|" in answer and "MSA|AA|P-11" in answer
        await peer.close()

    asyncio.run(analyser())
    assert query(database_url, "SELECT count(*) FROM results") == [(28,)]
    outcomes = query(database_url, "SELECT outcome FROM raw_transmissions ORDER BY stream_offset")
    assert outcomes == [("message",), ("message",)]


def test_the_daemon_connects_out_to_an_hl7_analyser_and_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()

    async def scenario() -> None:
        connected: asyncio.Queue[MllpPeer] = asyncio.Queue()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await connected.put(MllpPeer(reader, writer))

        server = await asyncio.start_server(accept, "127.0.0.1", port)
        config = {"name": "elite", "transport": "tcp-client", "host": "127.0.0.1",
                  "port": port, "driver": "mindray_hl7"}  # fmt: skip
        daemon = DaemonProcess(tmp_path, [config], database_url=database_url)
        await asyncio.to_thread(daemon.start)
        try:
            peer = await asyncio.wait_for(connected.get(), 10)
            answer = await peer.send(oru("P-20", "S-20"))
            assert (answer.code, answer.control_id) == ("AA", "P-20")
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
        assert await asyncio.wait_for(peer.reader.read(), 10) == b""
        server.close()

    asyncio.run(scenario())
    assert query(database_url, "SELECT count(*) FROM results") == [(14,)]
