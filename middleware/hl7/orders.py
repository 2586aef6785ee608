"""Orders from the LIS (ORM^O01, OML^O21, OML^O33), read into the worklist host queries
are answered from, and the acknowledgments that answer them.

Per order group (ORC and its OBR segments): the specimen is SPM-2 when the message has
one, else OBR-3 (the filler order number, which laboratories give the tube's barcode;
OBR-2, the LIS's own order number, is not a specimen); the tests are OBR-4's first
components (the laboratory's codes); STAT when ORC-7 or OBR-27 (priority component) or
OBR-5 says S. ORC-1 says what to do: NW new (an order for a specimen already known
replaces it), XO changed (replaces it), CA / OC / DC cancel the tests named. What cannot
be read is refused with the segment and field named.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import hl7

from middleware.domain import Order
from middleware.hl7.results import escape, timestamp

TYPES = frozenset({"ORM^O01", "OML^O21", "OML^O33"})
NEW, REPLACE, CANCEL = "new", "replace", "cancel"
_ACTIONS = {"NW": NEW, "XO": REPLACE, "CA": CANCEL, "OC": CANCEL, "DC": CANCEL}


class OrderRefused(ValueError):
    """The message cannot be taken; the text names the segment and field."""


@dataclass(frozen=True, slots=True)
class OrderChange:
    action: str
    """new, replace or cancel"""
    order: Order


@dataclass(frozen=True, slots=True)
class OrderMessage:
    control_id: str
    message_type: str
    changes: tuple[OrderChange, ...]


def _field(segment: hl7.Segment, number: int) -> str:
    return str(segment[number]) if len(segment) > number else ""


def _first(segment: hl7.Segment, number: int) -> str:
    """The first component of a field."""
    return _field(segment, number).split("^", 1)[0].strip()


#: What python-hl7 raises on text it cannot parse (an assertion among them).
PARSE_ERRORS = (hl7.ParseException, AssertionError, IndexError, KeyError, ValueError)


def _name(segment: hl7.Segment) -> str:
    return str(segment[0]) if len(segment) else ""


def read_order(text: str) -> OrderMessage:
    try:
        message = hl7.parse(text.replace("\n", "\r"))
        msh = message.segment("MSH")
    except PARSE_ERRORS as exc:
        raise OrderRefused(f"MSH: not an HL7 message: {exc!s:.200}") from None
    kind = "^".join(_field(msh, 9).split("^")[:2])
    control_id = _field(msh, 10)
    if kind not in TYPES:
        raise OrderRefused(f"MSH-9: {kind or 'no'} message type; orders are {sorted(TYPES)}")
    patient_id = ""
    specimen_of_message = ""
    for segment in message:
        name = _name(segment)
        if name == "PID":
            patient_id = _first(segment, 3)
        elif name == "SPM" and not specimen_of_message:
            specimen_of_message = _first(segment, 2)
    changes: list[OrderChange] = []
    action, priority, ordered_at = "", "R", None
    tests: dict[tuple[str, str, str], list[str]] = {}
    for index, segment in enumerate(message, start=1):
        name = _name(segment)
        if name == "ORC":
            code = _field(segment, 1).strip().upper()
            if code not in _ACTIONS:
                raise OrderRefused(f"ORC-1 (segment {index}): order control {code!r} not taken")
            action = _ACTIONS[code]
            priority = "S" if _field(segment, 7).split("^")[5:6] == ["S"] else "R"
            ordered_at = _moment(_first(segment, 9), f"ORC-9 (segment {index})")
        elif name == "OBR":
            if not action:
                raise OrderRefused(f"OBR (segment {index}): no ORC before it")
            specimen = specimen_of_message or _first(segment, 3)
            test = _first(segment, 4)
            if not specimen:
                raise OrderRefused(f"OBR-3 (segment {index}): no specimen id (nor SPM-2)")
            if not test:
                raise OrderRefused(f"OBR-4 (segment {index}): no test code")
            if _first(segment, 5).upper() == "S" or _field(segment, 27).split("^")[5:6] == ["S"]:
                priority = "S"
            tests.setdefault((action, specimen, priority), []).append(test)
    if not tests:
        raise OrderRefused("OBR: the message orders no test")
    for (act, specimen, urgency), codes in tests.items():
        unique = tuple(dict.fromkeys(codes))
        order = Order(specimen, unique, urgency, ordered_at=ordered_at, patient_id=patient_id)
        changes.append(OrderChange(act, order))
    return OrderMessage(control_id, kind, tuple(changes))


def _moment(text: str, where: str) -> datetime | None:
    """A DTM, to the day, minute or second; UTC when it gives no offset of its own."""
    digits = text.split("+")[0].split("-")[0].split(".")[0].strip()
    if not digits:
        return None
    for length, form in ((14, "%Y%m%d%H%M%S"), (12, "%Y%m%d%H%M"), (8, "%Y%m%d")):
        if len(digits) >= length:
            try:
                return datetime.strptime(digits[:length], form).replace(tzinfo=UTC)
            except ValueError:
                break
    raise OrderRefused(f"{where}: {text!r} is not a date and time")


def acknowledgment(
    control_id: str, code: str, at: datetime, text: str = "", trigger: str = "O01"
) -> str:
    """The ACK of an order message: MSA-1 ``code`` (AA, AE, AR), MSA-2 the control id it
    answers, MSA-3 the reason of a refusal."""
    moment = timestamp(at if at.tzinfo else at.replace(tzinfo=UTC))
    segments = [
        f"MSH|^~\\&|LIS-MIDDLEWARE|LAB|LIS|LAB|{moment}||ACK^{trigger}^ACK|"
        f"A{escape(control_id)[:19]}|P|2.5.1",
        f"MSA|{code}|{escape(control_id)}" + (f"|{escape(text)[:500]}" if text else ""),
    ]
    return "\r".join(segments)
