"""What the fuzzers feed: one function per reader of outside input, taking any bytes.

A target lets through only the exceptions its code documents for bad input (each such
refusal must say why: an empty message is a failure too); anything else escaping is a
crash. Where the code makes a promise about every input, the target checks it: the E1381
link and the MLLP reader account for every byte received, a query's answer is HL7 the
reader reads back.

Bytes are turned into what each reader takes without a fuzzing library, so the same
targets run under atheris (``make fuzz``, coverage-guided) and under hypothesis (the short
run in ``make test``); see fuzz/run.py.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import drivers
from middleware.astm.capture import read_capture
from middleware.astm.frames import FrameTolerances
from middleware.astm.link import Link, LinkSettings, Role, TextReceived
from middleware.astm.records import (
    DEFAULT_DELIMITERS,
    Delimiters,
    RecordError,
    decode_message,
    decode_record,
    encode_record,
    split_records,
)
from middleware.decode import decode_capture
from middleware.domain import Order
from middleware.engine.qc_cli import InputError, evaluate_rows, read_rows
from middleware.engine.rules import load_rules
from middleware.engine.westgard import RuleSet
from middleware.hl7.ack import read_answer
from middleware.hl7.capture import read_hl7_capture
from middleware.hl7.mllp import Discarded, MllpReader
from middleware.hl7.orders import OrderRefused, read_order
from middleware.hl7.segments import Hl7Error, parse_message
from middleware.settings import ConfigError, load_settings
from middleware.yamlfile import FileError

Target = Callable[[bytes], None]

_TOLERANCES = [f.name for f in fields(FrameTolerances)]
_AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
_HELD = [Order("S1", ("GLU", "K"), "S", patient_id="P1")]
_ASTM_DRIVERS = [n for n in drivers.names() if drivers.protocol(n) == "astm"]
_HL7_DRIVERS = [n for n in drivers.names() if drivers.protocol(n) == "hl7"]


def _refused(exc: Exception) -> None:
    """A documented refusal must say why."""
    if not str(exc).strip():
        raise AssertionError(f"{type(exc).__name__} refused the input without a reason")


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    """The input cut into pieces as a connection delivers them: each piece's first byte
    is an operation code, then up to 64 bytes of data."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        code = data[at]
        size = code % 64 + 1
        out.append((code, data[at + 1 : at + 1 + size]))
        at += 1 + size
    return out


def astm_link(data: bytes) -> None:
    """The E1381 state machine fed any bytes, in pieces, with timers expiring, messages of
    its own to send and texts kept or refused: it never raises, and counts every byte."""
    if not data:
        return
    mode = data[0]
    tolerances = FrameTolerances(
        **{name: bool(mode >> i & 1) for i, name in enumerate(_TOLERANCES)}
    )
    role = Role.INSTRUMENT if mode & 0x80 else Role.HOST
    link = Link(LinkSettings(role=role, tolerances=tolerances, max_text=8 + mode % 240))
    now, fed = 0.0, 0
    for code, piece in _chunks(data[1:]):
        if code & 0x40:
            now += 1.0 + code % 40  # past the reply and frame timers, now and then
            link.handle_timer(now)
        if code & 0x80 and code & 0x01:
            link.send_message([b"H|\\^&|||LIS", b"L|1|N"], now)
        link.receive_data(piece, now)
        fed += len(piece)
        while (event := link.next_event()) is not None:
            if isinstance(event, TextReceived):
                (link.refuse if code & 0x02 else link.acknowledge)(now)
        link.data_to_send()
    link.close()
    if link.received != fed:
        raise AssertionError(f"the link counted {link.received} bytes of {fed}")


def astm_records(data: bytes) -> None:
    """E1394 records decoded from any text; each record read, written with its message's
    delimiters and read again is the same record (but for an H record's delimiter
    definition, written as the delimiters in force)."""
    text = data.decode("latin-1")
    decode_message(split_records(text))
    d = DEFAULT_DELIMITERS
    for line in split_records(text):
        try:
            if line[:1] in ("H", "h"):
                d = Delimiters.from_header(line)
            record = decode_record(line, d)
        except RecordError as exc:
            _refused(exc)
            continue
        again = decode_record(encode_record(record, d), d)
        skip = 2 if record.type == "H" else 1
        if again.type != record.type or again.fields[skip:] != record.fields[skip:]:
            raise AssertionError(f"{record!r} read back as {again!r}")


def astm_capture(data: bytes) -> None:
    """A capture file of any bytes: read, and decoded by the driver detection picks."""
    read_capture(data)
    decode_capture(data)


def _one_of(names: list[str], data: bytes) -> str:
    """The driver an input is for, by its last byte: over many inputs, every driver. The
    input is read whole, so a seed that is a message is read as that message."""
    return names[data[-1] % len(names)] if data else names[0]


def astm_drivers(data: bytes) -> None:
    """An ASTM driver (each in turn, by the input's last byte) reading the records of any
    text, and answering the queries among them."""
    name = _one_of(_ASTM_DRIVERS, data)
    records = decode_message(split_records(data.decode("latin-1"))).records
    driver = drivers.get(name)
    reading = driver.read(records)
    for query in reading.queries:
        driver.answer_query(query, _HELD, _AT)
    for record in records:
        if record.type == "Q":
            driver.query(record)


def hl7_messages(data: bytes) -> None:
    """Any text as an analyser's HL7 message (read by an HL7 driver, each in turn by the
    input's last byte; a query answered, the answers HL7 that reads back), as the LIS's
    acknowledgment, and as an order from the LIS."""
    name = _one_of(_HL7_DRIVERS, data)
    text = data.decode("latin-1")
    try:
        message = parse_message(text)
    except Hl7Error as exc:
        _refused(exc)
    else:
        driver = drivers.get_hl7(name)
        reading = driver.read(message)
        for query in reading.queries:
            for answer in driver.answer_query(message, query, _HELD, _AT, UTC):
                parse_message(answer)
    try:
        read_answer(text)
    except ValueError as exc:
        _refused(exc)
    try:
        read_order(text)
    except OrderRefused as exc:
        _refused(exc)


def hl7_capture(data: bytes) -> None:
    """A capture file of any bytes read as HL7 (MLLP, logs, plain messages), and decoded."""
    read_hl7_capture(data)
    decode_capture(data, "hl7")


def mllp(data: bytes) -> None:
    """The MLLP reader fed any bytes in pieces: every byte is in exactly one message or
    one discarded span, in order."""
    if not data:
        return
    reader = MllpReader(max_message_bytes=16 + data[0] * 4)
    events = []
    for _, piece in _chunks(data[1:]):
        events += reader.receive_data(piece)
    events += reader.end_of_stream()
    at = 0
    for event in events:
        if event.start != at or event.end < event.start:
            raise AssertionError(f"{event!r} does not follow offset {at}")
        whole = not isinstance(event, Discarded) or event.reason != "too-long"
        if isinstance(event, Discarded) and whole and len(event.data) != event.end - event.start:
            raise AssertionError(f"{event!r} does not hold the bytes it spans")
        at = event.end
    if at != reader.received:
        raise AssertionError(f"events cover {at} bytes of {reader.received}")


def _in_a_file(data: bytes, name: str, load: Callable[[Path], object]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        load(path)


def rule_file(data: bytes) -> None:
    """Any bytes as a rule file: rules, or a FileError naming file, line and field."""
    try:
        _in_a_file(data, "rules.yaml", lambda path: load_rules(path.parent))
    except FileError as exc:
        _refused(exc)


def configuration(data: bytes) -> None:
    """Any bytes as the daemon's configuration: settings, or a ConfigError saying where."""
    try:
        _in_a_file(data, "middleware.yaml", load_settings)
    except ConfigError as exc:
        _refused(exc)


def qc_evaluate(data: bytes) -> None:
    """Any bytes as the CSV of ``qc evaluate``: evaluated, or an InputError per problem."""
    try:
        rows = read_rows(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    except InputError as exc:
        _refused(exc)
        return
    evaluate_rows(rows, RuleSet())


TARGETS: dict[str, Target] = {
    "astm_link": astm_link,
    "astm_records": astm_records,
    "astm_capture": astm_capture,
    "astm_drivers": astm_drivers,
    "hl7_messages": hl7_messages,
    "hl7_capture": hl7_capture,
    "mllp": mllp,
    "rule_file": rule_file,
    "configuration": configuration,
    "qc_evaluate": qc_evaluate,
}

#: Where each target's seeds are: folders of the shared corpus (``corpus:astm``, read where
#: they lie, never copied here), the messages read from its captures (``messages:hl7``, for
#: the targets that take a message rather than a capture: a capture's framing or log lines
#: would be refused at the first byte, and the fuzzer would learn nothing past it), or the
#: project's own files.
SEEDS: dict[str, tuple[str, ...]] = {
    "astm_link": ("corpus:astm",),
    "astm_records": ("messages:astm",),
    "astm_capture": ("corpus:astm",),
    "astm_drivers": ("messages:astm",),
    "hl7_messages": ("messages:hl7",),
    "hl7_capture": ("corpus:hl7",),
    "mllp": ("corpus:hl7",),
    "rule_file": ("rules",),
    "configuration": ("config",),
    "qc_evaluate": (),
}


def captured_messages(protocol: str, data: bytes) -> list[bytes]:
    """The messages of a capture file (``astm`` or ``hl7``), each as the targets that
    read a message take it: HL7 as sent, ASTM as its records, one per line."""
    if protocol == "hl7":
        return [message.data for message in read_hl7_capture(data).messages]
    return [
        "\r".join(message.lines).encode("latin-1", "replace")
        for message in read_capture(data).messages
    ]
