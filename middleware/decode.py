"""``lis-middleware decode``: what a capture holds, as JSON or text, for lab IT."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import drivers
from drivers import AUTO, Driver
from drivers.detect import AutoDriver
from drivers.hl7 import Hl7AutoDriver, Hl7Driver
from middleware.astm.capture import Capture, CapturedMessage, CaptureError, read_capture
from middleware.astm.frames import FrameTolerances
from middleware.astm.records import DecodedMessage, decode_message
from middleware.domain import ControlResult, HostQuery, Result
from middleware.hl7.capture import CapturedHl7, Hl7Capture, looks_like_hl7, read_hl7_capture
from middleware.hl7.segments import Hl7Error, Hl7Message, decode_text, parse_message
from middleware.sniff import spoken_on_astm_line


@dataclass(slots=True)
class DecodeReport:
    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(not m["errors"] for m in self.messages)

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "errors": self.errors}


def parse_tolerances(names: str | None, base: FrameTolerances) -> FrameTolerances:
    """``long_frames,no_checksum`` (dashes or underscores) switched on over ``base``."""
    if not names:
        return base
    known = FrameTolerances.names()
    chosen: dict[str, bool] = {}
    for raw in names.split(","):
        name = raw.strip().replace("-", "_")
        if not name:
            continue
        if name not in known:
            raise ValueError(f"unknown tolerance {raw.strip()!r}; known: {', '.join(known)}")
        chosen[name] = True
    values = {n: getattr(base, n) for n in known} | chosen
    return FrameTolerances(**values)


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """One message of a capture, its records, and the driver that reads it (and why)."""

    captured: CapturedMessage
    decoded: DecodedMessage
    driver: Driver
    reason: str


def read_messages(
    data: bytes, driver_name: str | None = AUTO, tolerate: str | None = None
) -> tuple[Capture, list[ReadMessage]]:
    """The capture's messages, each with its driver: the one named, or with ``auto`` the
    one each message's sender or layout names. The framing tolerances are the driver's:
    with ``auto``, those of the driver the first message names (the capture is read again
    with them when they differ from the generic reading's)."""
    driver = drivers.get(driver_name)
    capture = read_capture(data, parse_tolerances(tolerate, driver.tolerances))
    if isinstance(driver, AutoDriver) and capture.messages:
        first = drivers.identify(decode_message(capture.messages[0].lines).records).driver
        if first.tolerances != driver.tolerances:
            capture = read_capture(data, parse_tolerances(tolerate, first.tolerances))
    out: list[ReadMessage] = []
    for captured in capture.messages:
        decoded = decode_message(captured.lines)
        chosen = driver.choose(decoded.records)
        if isinstance(driver, AutoDriver) and driver.detection is not None:
            reason = driver.detection.reason
        else:
            reason = f"named: --driver {driver.name}"
        out.append(ReadMessage(captured, decoded, chosen, reason))
    return capture, out


def decode_capture(
    data: bytes, driver_name: str | None = AUTO, tolerate: str | None = None
) -> DecodeReport:
    if looks_like_hl7(data):
        return decode_hl7_capture(data, driver_name)
    if drivers.protocol(driver_name) == "hl7":
        detail = f"the capture is ASTM; driver {driver_name} reads HL7"
        return DecodeReport(errors=[{"kind": "driver", "detail": detail, "offset": 0}])
    capture, read = read_messages(data, driver_name, tolerate)
    report = DecodeReport(errors=[e.as_dict() for e in capture.errors])
    foreign = spoken_on_astm_line(data)
    if foreign is not None:
        spoken, offset = foreign
        report.errors.insert(0, {"kind": "protocol", "detail": spoken.advice, "offset": offset})
    for message in read:
        captured, decoded = message.captured, message.decoded
        reading = message.driver.read(decoded.records)
        errors = [e.as_dict() for e in captured.errors] + [
            CaptureError(
                "syntax",
                str(err),
                captured.offsets[err.index] if err.index is not None else captured.offsets[0],
            ).as_dict()
            for err in decoded.errors
        ]
        if decoded.records and decoded.records[-1].type != "L":
            last = captured.offsets[-1]
            errors.append(
                CaptureError(
                    "incomplete", "the message ends without its L record (cut short?)", last
                ).as_dict()
            )
        # What the driver refused or could not map (a date that is not one, a result
        # without a test code): the rest of the message was read.
        errors += [
            CaptureError("reading", problem, captured.offsets[0]).as_dict()
            for problem in reading.problems
        ]
        report.messages.append(
            {
                "sender": reading.sender or None,
                "driver": message.driver.name,
                "driver_reason": message.reason,
                "records": len(decoded.records),
                "results": [
                    _result_row(result, control) for result, control in reading.measurements()
                ],
                "queries": [_query_row(q) for q in reading.queries],
                "errors": errors,
                "offset": captured.offsets[0],
            }
        )
    if not capture.messages and not capture.errors:
        report.errors.append({"kind": "empty", "detail": "no records found", "offset": 0})
    return report


@dataclass(frozen=True, slots=True)
class ReadHl7:
    """One analyser message of an HL7 capture, the driver that reads it (and why), and
    what was wrong with its bytes and segments."""

    captured: CapturedHl7
    message: Hl7Message
    driver: Hl7Driver
    reason: str
    errors: list[CaptureError]


def read_hl7_messages(
    data: bytes, driver_name: str | None = AUTO
) -> tuple[Hl7Capture, list[ReadHl7], list[CaptureError]]:
    """The capture's analyser messages (not the other side's ACKs), each with its driver,
    and the blocks that are no HL7 message at all. ValueError when the driver named reads
    ASTM."""
    if drivers.protocol(driver_name) != "hl7" and driver_name not in (None, AUTO):
        raise ValueError(f"the capture is HL7; driver {driver_name} reads ASTM")
    driver = drivers.get_hl7(driver_name)
    capture = read_hl7_capture(data)
    read: list[ReadHl7] = []
    unreadable: list[CaptureError] = []
    for captured in capture.messages:
        text, problem = decode_text(captured.data)
        try:
            message = parse_message(text)
        except Hl7Error as exc:
            unreadable.append(CaptureError("syntax", str(exc), captured.offset))
            continue
        if message.message_type.startswith("ACK"):
            continue  # the other side's answer
        chosen = driver.choose(message)
        if isinstance(driver, Hl7AutoDriver) and driver.detection is not None:
            reason = driver.detection.reason
        else:
            reason = f"named: --driver {driver.name}"
        errors = list(captured.errors)
        if problem:
            errors.append(CaptureError("charset", problem, captured.offset))
        errors += [CaptureError("syntax", p, captured.offset) for p in message.problems]
        read.append(ReadHl7(captured, message, chosen, reason, errors))
    return capture, read, unreadable


def decode_hl7_capture(data: bytes, driver_name: str | None = AUTO) -> DecodeReport:
    """What an HL7 capture holds, read by the HL7 driver named, or detected per message."""
    report = DecodeReport()
    try:
        capture, read, unreadable = read_hl7_messages(data, driver_name)
    except ValueError as exc:
        report.errors.append({"kind": "driver", "detail": str(exc), "offset": 0})
        return report
    report.errors += [e.as_dict() for e in [*capture.errors, *unreadable]]
    for one in read:
        message, offset = one.message, one.captured.offset
        reading = one.driver.read(message)
        errors = one.errors + [CaptureError("reading", p, offset) for p in reading.problems]
        report.messages.append(
            {
                "sender": reading.sender or None,
                "driver": one.driver.name,
                "driver_reason": one.reason,
                "control_id": message.control_id,
                "records": len(message.segments),
                "results": [_result_row(r, c) for r, c in reading.measurements()],
                "queries": [_query_row(q) for q in reading.queries],
                "errors": [e.as_dict() for e in errors],
                "offset": offset,
            }
        )
    if not capture.messages and not capture.errors:
        report.errors.append({"kind": "empty", "detail": "no HL7 message found", "offset": 0})
    return report


def _query_row(query: HostQuery) -> dict[str, Any]:
    return {
        "specimen_ids": list(query.specimen_ids),
        "test_codes": None if query.all_tests else list(query.test_codes),
    }


def _result_row(result: Result, control: ControlResult | None) -> dict[str, Any]:
    return {
        "specimen_id": result.specimen_id,
        "test_code": result.instrument_test_code,
        "value": result.value.text,
        "units": result.units,
        "reference_range": result.reference_range,
        "flags": list(result.abnormal_flags),
        "status": result.status,
        "completed_at": result.completed_at.isoformat() if result.completed_at else None,
        "control": control is not None,
        "patient_id": result.patient_id,
        "sequence": str(result.sequence or ""),
        "lab_test_code": result.test_code,
        "numeric_value": str(result.value.number) if result.value.number is not None else None,
        "censor": result.value.censor or None,
        "instrument_flags": list(result.instrument_flags),
        "reagents": [
            {
                "reagent": r.reagent,
                "lot": r.lot,
                "expiry": r.expiry.isoformat() if r.expiry else None,
            }
            for r in result.reagents
        ],
        "control_material": control.control_material if control else None,
        "control_lot": control.lot if control else None,
        "control_level": control.level if control else None,
    }


def render_text(report: DecodeReport) -> str:
    lines: list[str] = []
    for n, message in enumerate(report.messages, start=1):
        sender = message["sender"] or "unknown sender"
        lines.append(
            f"message {n} from {sender}: {message['records']} records, "
            f"{len(message['results'])} results (offset {message['offset']})"
        )
        lines.append(f"  read by {message['driver']}: {message['driver_reason']}")
        for r in message["results"]:
            flags = ",".join(r["flags"])
            tag = " [control]" if r["control"] else ""
            lines.append(
                f"  {r['specimen_id'] or '-':<16} {r['test_code']:<16} {r['value']:>12} "
                f"{r['units']:<10} {r['reference_range']:<14} {flags:<6} {r['status']:<2} "
                f"{r['completed_at'] or ''}{tag}"
            )
        for q in message["queries"]:
            tests = ", ".join(q["test_codes"]) if q["test_codes"] is not None else "all tests"
            lines.append(f"  host query for {', '.join(q['specimen_ids'])}: {tests}")
        for e in message["errors"]:
            lines.append(f"  error {e['kind']} at {e['offset']}: {e['detail']}")
    for e in report.errors:
        lines.append(f"error {e['kind']} at {e['offset']}: {e['detail']}")
    lines.append("ok" if report.ok else "problems found")
    return "\n".join(lines)


def render_json(report: DecodeReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
