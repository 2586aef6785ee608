"""Orders from the LIS (ORM^O01, OML^O21, OML^O33), read into the worklist host queries
are answered from, and the acknowledgments that answer them.

Per order group (ORC and its OBR segments): the specimen is SPM-2 when the message has
one, else OBR-3 (the filler order number, which laboratories give the tube's barcode;
OBR-2, the LIS's own order number, is not a specimen); the tests are OBR-4's first
components (the laboratory's codes); STAT when ORC-7 or OBR-27 (priority component) or
OBR-5 says S; the specimen's collection time, type and container from its SPM (SPM-17,
SPM-4, SPM-27), else OBR-7 and OBR-15. ORC-1 says what to do: NW new (an order for a
specimen already known replaces it), XO changed (replaces it), CA / OC / DC cancel the
tests named. What cannot be read is refused with the segment and field named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import hl7

from middleware.domain import Order
from middleware.hl7.results import escape, new_control_id, timestamp

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


def _identifier(segment: hl7.Segment, number: int) -> str:
    """The first identifier a field gives: a component's first subcomponent (SPM-2 is
    ``placer&namespace^filler&namespace``)."""
    for component in _field(segment, number).split("^"):
        found = component.split("&", 1)[0].strip()
        if found:
            return found
    return ""


def _specimens_of_requests(
    kind: str, names: list[str], segments: list[hl7.Segment]
) -> dict[int, hl7.Segment]:
    """The SPM of each OBR's specimen, by the OBR's position: in OML^O33 the SPM comes
    before the orders on it, in OML^O21 after the OBR it belongs to."""
    found: dict[int, hl7.Segment] = {}
    for position, name in enumerate(names):
        if name != "OBR":
            continue
        if kind == "OML^O33":
            before = [i for i in range(position) if names[i] == "SPM"]
            if before:
                found[position] = segments[before[-1]]
        else:
            for after in range(position + 1, len(names)):
                if names[after] in ("OBR", "ORC"):
                    break
                if names[after] == "SPM":
                    found[position] = segments[after]
                    break
    return found


def _coded(field: str) -> str:
    """A coded field's text (second component), else its code; subcomponents dropped."""
    parts = [part.split("&", 1)[0].strip() for part in field.split("^")]
    return (parts[1] if len(parts) > 1 and parts[1] else parts[0]) if parts else ""


@dataclass(frozen=True, slots=True)
class _Specimen:
    collected_at: datetime | None
    specimen_type: str
    container: str


def _specimen(spm: hl7.Segment | None, obr: hl7.Segment, where: str) -> _Specimen:
    """What the LIS says of a specimen: SPM-17 (else OBR-7) collected, SPM-4 (else OBR-15,
    v2.3's specimen source) its type, SPM-27 its container."""
    if spm is not None and _first(spm, 17):
        collected = _moment(_first(spm, 17), f"SPM-17 {where}")
    else:
        collected = _moment(_first(obr, 7), f"OBR-7 {where}")
    kind = _coded(_field(spm, 4)) if spm is not None else ""
    return _Specimen(
        collected,
        kind or _coded(_field(obr, 15).split("^", 1)[0].replace("&", "^")),
        _coded(_field(spm, 27)) if spm is not None else "",
    )


def read_order(text: str) -> OrderMessage:
    try:
        message = hl7.parse(text.replace("\n", "\r"))
        msh = message.segment("MSH")
        segments = list(message)
    except PARSE_ERRORS as exc:
        raise OrderRefused(f"MSH: not an HL7 message: {exc!s:.200}") from None
    kind = "^".join(_field(msh, 9).split("^")[:2])
    control_id = _field(msh, 10)
    if kind not in TYPES:
        raise OrderRefused(f"MSH-9: {kind or 'no'} message type; orders are {sorted(TYPES)}")
    names = [_name(segment) for segment in segments]
    patient_id = next(
        (_first(s, 3) for s, n in zip(segments, names, strict=True) if n == "PID"), ""
    )
    spm = _specimens_of_requests(kind, names, segments)
    action, stat, ordered_at = "", False, None
    # One change per action and specimen: a message naming a specimen's tests in several
    # OBRs (routine and STAT among them) orders them all.
    tests: dict[tuple[str, str], list[str]] = {}
    details: dict[tuple[str, str], _Specimen] = {}
    urgent: set[tuple[str, str]] = set()
    for position, (segment, name) in enumerate(zip(segments, names, strict=True)):
        where = f"(segment {position + 1})"
        if name == "ORC":
            code = _field(segment, 1).strip().upper()
            if code not in _ACTIONS:
                raise OrderRefused(f"ORC-1 {where}: order control {code!r} not taken")
            action = _ACTIONS[code]
            stat = _field(segment, 7).split("^")[5:6] == ["S"]
            ordered_at = _moment(_first(segment, 9), f"ORC-9 {where}")
        elif name == "TQ1" and _first(segment, 9).upper() == "S":
            stat = True  # TQ1-9, where v2.5 puts the priority
        elif name == "OBR":
            if not action:
                raise OrderRefused(f"OBR {where}: no ORC before it")
            own = spm.get(position)
            specimen = (_identifier(own, 2) if own is not None else "") or _identifier(segment, 3)
            test = _first(segment, 4)
            if not specimen:
                raise OrderRefused(f"OBR-3 {where}: no specimen id (nor SPM-2)")
            if not test:
                raise OrderRefused(f"OBR-4 {where}: no test code")
            key = (action, specimen)
            tests.setdefault(key, []).append(test)
            details.setdefault(key, _specimen(own, segment, where))
            if (
                stat
                or _first(segment, 5).upper() == "S"
                or _field(segment, 27).split("^")[5:6] == ["S"]
            ):
                urgent.add(key)
    if not tests:
        raise OrderRefused("OBR: the message orders no test")
    changes = []
    for (act, specimen), codes in tests.items():
        priority = "S" if (act, specimen) in urgent else "R"
        about = details[(act, specimen)]
        order = Order(
            specimen, tuple(dict.fromkeys(codes)), priority, ordered_at=ordered_at,
            patient_id=patient_id, collected_at=about.collected_at,
            specimen_type=about.specimen_type, container=about.container,
        )  # fmt: skip
        changes.append(OrderChange(act, order))
    return OrderMessage(control_id, kind, tuple(changes))


_DTM = re.compile(r"^(\d{8}(?:\d{4}(?:\d{2})?)?)(?:\.\d+)?(?:([+-])(\d{2})(\d{2}))?$")


def _moment(text: str, where: str) -> datetime | None:
    """A DTM, to the day, minute or second, in its offset; UTC when it gives none."""
    text = text.strip()
    if not text:
        return None
    match = _DTM.match(text)
    if match:
        digits, sign, hours, minutes = match.groups()
        form = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(digits)]
        zone = UTC
        if sign:
            offset = timedelta(hours=int(hours), minutes=int(minutes))
            zone = timezone(offset if sign == "+" else -offset)
        try:
            return datetime.strptime(digits, form).replace(tzinfo=zone).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise OrderRefused(f"{where}: {text[:40]!r} is not a date and time")


def acknowledgment(
    control_id: str,
    code: str,
    at: datetime,
    text: str = "",
    trigger: str = "O01",
    *,
    receiver: tuple[str, str] = ("LIS", "LAB"),
    version: str = "2.5.1",
    processing: str = "P",
) -> str:
    """The ACK of a message: MSA-1 ``code`` (AA, AE, AR), MSA-2 the control id it answers
    as it came (already in HL7's escaped form), MSA-3 the reason of a refusal; its own
    control id is new. ``receiver`` (MSH-5, MSH-6), ``processing`` (MSH-11) and
    ``version`` (MSH-12) are those of the message answered, whose sender may expect its
    own."""
    moment = timestamp(at if at.tzinfo else at.replace(tzinfo=UTC))
    answered = re.sub(r"[\x00-\x1f|]", "", control_id)  # a control character would cut it
    application, facility = (escape(part) for part in receiver)
    version = version if re.fullmatch(r"2\.[0-9](?:\.[0-9])?", version) else "2.5.1"
    processing = processing if re.fullmatch(r"[A-Z]", processing) else "P"
    segments = [
        f"MSH|^~\\&|LIS-MIDDLEWARE|LAB|{application}|{facility}|{moment}||"
        f"ACK^{escape(trigger)}^ACK|{new_control_id()}|{processing}|{version}",
        # Cut before escaping: an escape sequence cut in two would not read back.
        f"MSA|{code}|{answered}" + (f"|{escape(text[:400])}" if text else ""),
    ]
    return "\r".join(segments)
