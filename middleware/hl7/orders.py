"""Orders from the LIS (ORM^O01, OML^O21, OML^O33), read into the worklist host queries
are answered from, and the acknowledgments that answer them.

The header is checked first, and a message it does not suit is rejected (AR) whole:
MSH-9 an order, MSH-12 a version 2.x, MSH-11 the daemon's processing id (``P``), MSH-10
given. One patient per message, PID-3's first identifier given: a PID naming another
patient is refused (the same one repeated in each order group is taken).
Per order group (ORC and its OBR segments): the specimen is SPM-2's entity identifier
when the message has one, else OBR-3's (the filler order number, which laboratories give
the tube's barcode; OBR-2, the LIS's own order number, is not a specimen); the tests are
OBR-4's first components (the laboratory's codes); the priority the most urgent of
ORC-7, TQ1-9, OBR-27 (priority component) and OBR-5: S stat, A as soon as possible, else
R; the specimen's collection time, type and container from its SPM (SPM-17, SPM-4,
SPM-27), else OBR-7 and OBR-15, each from the first of its OBRs that gives it; a time
without an offset is the LIS's wall clock, read in the laboratory's zone. Each order is
the LIS's number for it (ORC-2, else OBR-2): a specimen may carry several. ORC-1 says
what to do: NW new (an order already known by its number replaces it), XO changed
(replaces it), CA / OC / DC cancel the tests named, or, an ORC without OBR, the whole
order its number names. What cannot be read is refused (AE) with the segment and field
named.

Segments may be separated by CR, LF or CR LF. Fields are split on the message's own
delimiters (MSH-1, MSH-2), the first repeat of a field read (of PID-3, the first naming
the patient), and each value has HL7's escapes undone as analysers' messages have them
(:func:`segments.unescape`), each subcomponent on its own (so that ``\\T\\`` is not taken
for a subcomponent's end): a specimen sent as ``SP\\F\\X`` is ``SP|X``, as the analyser's
barcode reads.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from middleware.domain import Order, most_urgent
from middleware.hl7.results import escape, new_control_id, timestamp
from middleware.hl7.segments import Encoding, split_segments, unescape

TYPES = frozenset({"ORM^O01", "OML^O21", "OML^O33"})
NEW, REPLACE, CANCEL = "new", "replace", "cancel"
_ACTIONS = {"NW": NEW, "XO": REPLACE, "CA": CANCEL, "OC": CANCEL, "DC": CANCEL}
#: The daemon's processing id (MSH-11): its results go as production (``P``, as
#: ``results.oru_r01`` writes them), and orders are taken in production only.
PROCESSING_ID = "P"
_PROCESSING = {"P": "production", "T": "training", "D": "debugging"}  # HL7 table 0103
#: Versions taken (MSH-12's first component): any 2.x.
VERSIONS = re.compile(r"2\.[0-9]{1,2}(?:\.[0-9]{1,2})?")
_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")

#: HL7 table 0357, message error condition codes: ERR-3 of a refusal.
CONDITIONS = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


class OrderRefused(ValueError):
    """The message cannot be taken; the text names the segment and field. ``condition``
    (HL7 table 0357) and ``location`` (segment, its occurrence among segments of its name,
    field; 0 when no field) make the answer's ERR segment; ``code`` is its MSA-1: AE for
    what the message holds, AR for a message not taken at all (its header, its size)."""

    def __init__(
        self,
        text: str,
        condition: str = "207",
        location: tuple[str, int, int] | None = None,
        *,
        code: str = "AE",
    ) -> None:
        super().__init__(text)
        self.condition = condition if condition in CONDITIONS else "207"
        self.location = location
        self.code = code


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


@dataclass(frozen=True, slots=True)
class Header:
    """What an answer repeats of the message it answers, as far as its MSH can be read."""

    control_id: str = ""
    """MSH-10 as written, escapes and all: MSA-2 names it so."""
    message_type: str = ""
    """MSH-9's type and trigger: ``ORM^O01``."""
    sender: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    """MSH-3 and MSH-4, each its components; None when there was no MSH to read."""
    processing: str = ""
    """MSH-11's first component."""
    version: str = ""
    """MSH-12's first component."""
    unreadable: OrderRefused | None = dataclasses.field(default=None, compare=False)
    """Why the MSH could not be read as such (no MSH, its delimiters unusable)."""

    @property
    def trigger(self) -> str:
        parts = self.message_type.split("^")
        return parts[1] if len(parts) > 1 and parts[1].isalnum() else "O01"


# --- the message as segments and fields -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    name: str
    fields: tuple[str, ...]
    """``fields[n]`` is field n as written; in MSH, ``fields[1]`` the field separator."""
    position: int
    """In the message, from 1."""
    occurrence: int
    """Among the message's segments of its name, from 1."""
    enc: Encoding

    def raw(self, n: int) -> str:
        """Field n's first repeat as written."""
        if not 0 < n < len(self.fields):
            return ""
        if self.name == "MSH" and n <= 2:
            return self.fields[n]
        return self.fields[n].split(self.enc.repetition, 1)[0]

    def components(self, n: int) -> list[str]:
        return self.raw(n).split(self.enc.component)

    def subcomponents(self, n: int, component: int = 1) -> list[str]:
        """A component's subcomponents, each plain text."""
        components = self.components(n)
        text = components[component - 1] if component <= len(components) else ""
        return [unescape(part, self.enc).strip() for part in text.split(self.enc.subcomponent)]

    def value(self, n: int, component: int = 1) -> str:
        """A component's first subcomponent, plain text."""
        return self.subcomponents(n, component)[0]

    def repeats(self, n: int) -> list[str]:
        """Field n's repeats as written (MSH-1 and MSH-2 have none)."""
        if not 0 < n < len(self.fields) or (self.name == "MSH" and n <= 2):
            return [self.raw(n)]
        return self.fields[n].split(self.enc.repetition)

    def at(self, n: int = 0) -> tuple[str, int, int]:
        return (self.name, self.occurrence, n)


def _no_msh() -> OrderRefused:
    return OrderRefused(
        "MSH: the message does not begin with an MSH segment and its delimiters",
        "100", ("MSH", 1, 0), code="AR",
    )  # fmt: skip


def _encoding(first: str) -> Encoding:
    """The delimiters the first segment declares; refused when it is no MSH or they are
    unusable."""
    if not first.startswith("MSH") or len(first) < 4:
        raise _no_msh()
    separator = first[3]
    declared = first[4:].split(separator, 1)[0]
    chars = (separator, *declared[:4])
    if separator.isalnum() or separator.isspace():
        raise _no_msh()
    if len(declared) < 4 or len(set(chars)) != 5 or any(c.isalnum() or c.isspace() for c in chars):
        raise OrderRefused(
            f"MSH-2: the encoding characters '{declared[:10]}' are not four delimiters "
            "(^~\\& as HL7 has them)", "102", ("MSH", 1, 2), code="AR",
        )  # fmt: skip
    return Encoding(separator, *declared[:4])


def _msh(first: str, enc: Encoding) -> _Segment:
    return _Segment("MSH", ("MSH", enc.field, *first.split(enc.field)[1:]), 1, 1, enc)


def _segments(text: str) -> list[_Segment]:
    lines = split_segments(text)
    first = lines[0] if lines else ""
    enc = _encoding(first)
    segments = [_msh(first, enc)]
    seen = {"MSH": 1}
    for position, line in enumerate(lines[1:], start=2):
        fields = tuple(line.split(enc.field))
        seen[fields[0]] = seen.get(fields[0], 0) + 1
        segments.append(_Segment(fields[0], fields, position, seen[fields[0]], enc))
    return segments


def _header(msh: _Segment) -> Header:
    kind = [msh.value(9, 1), msh.value(9, 2)]
    return Header(
        control_id=msh.fields[10] if len(msh.fields) > 10 else "",
        message_type="^".join(kind).strip("^"),
        sender=(
            tuple(unescape(c, msh.enc) for c in msh.components(3)),
            tuple(unescape(c, msh.enc) for c in msh.components(4)),
        ),
        processing=msh.value(11).upper(),
        version=msh.value(12),
    )


def read_header(text: str) -> Header:
    """The header of a message, or of the first bytes of one, as far as it can be read:
    never refused (an empty header when there is no MSH)."""
    lines = split_segments(text)
    first = lines[0] if lines else ""
    try:
        return _header(_msh(first, _encoding(first)))
    except OrderRefused as refusal:
        # The fields as far as the separator gives them, for the answer to repeat.
        separator = first[3] if first.startswith("MSH") and len(first) > 3 else "^"
        if separator.isalnum() or separator.isspace() or separator in "^~\\&":
            return Header(unreadable=refusal)
        read = _header(_msh(first, Encoding(field=first[3])))
        return dataclasses.replace(read, unreadable=refusal)


def check_header(header: Header, processing_id: str = PROCESSING_ID) -> None:
    """Refuse (AR) a message whose header does not make it an order this daemon takes:
    MSH-9, MSH-12, MSH-11, MSH-10, in that order, once it could be read at all."""
    if header.unreadable is not None:
        raise header.unreadable
    kind = header.message_type
    if kind not in TYPES:
        taken = ", ".join(sorted(TYPES))
        known = kind.split("^")[0] in {t.split("^")[0] for t in TYPES}
        said = f"{kind[:40]} is not an order" if kind else "no message type"
        raise OrderRefused(
            f"MSH-9: {said}; orders are {taken}", "201" if known else "200", ("MSH", 1, 9),
            code="AR",
        )  # fmt: skip
    # Left empty (a LIS that writes a bare header), MSH-12 and MSH-11 refuse nothing: a
    # training or test order says so, and that is what is refused.
    if header.version and not VERSIONS.fullmatch(header.version):
        raise OrderRefused(
            f"MSH-12: HL7 version {header.version[:20] or 'not given'}; orders are taken in 2.x",
            "203", ("MSH", 1, 12), code="AR",
        )  # fmt: skip
    if header.processing and header.processing != processing_id:
        name = _PROCESSING.get(processing_id, processing_id)
        raise OrderRefused(
            f"MSH-11: processing id {header.processing[:20] or 'not given'}; orders are "
            f"taken in {processing_id} ({name}) only", "202", ("MSH", 1, 11), code="AR",
        )  # fmt: skip
    if not header.control_id.strip():
        raise OrderRefused("MSH-10: no message control id", "101", ("MSH", 1, 10), code="AR")


# --- the orders -------------------------------------------------------------------------


def _specimen_id(obr: _Segment, spm: _Segment | None) -> str:
    """The specimen id: SPM-2's (an EIP, ``placer&namespace^filler&namespace``) placer's
    entity identifier, else its filler's, else OBR-3's (an EI). Only an EI's first part is
    an identifier: the namespace after it names who gave it (``^LABNS`` gives none)."""
    found = (spm.value(2, 1) or spm.value(2, 2)) if spm is not None else ""
    return found or obr.value(3, 1)


def _patient_id(pid: _Segment) -> str:
    """PID-3's first identifier (CX.1) given: a LIS may leave the first repeat empty and
    name the patient in the next (``~PAT1^^^H^MR``)."""
    enc = pid.enc
    for repeat in pid.repeats(3):
        first = repeat.split(enc.component, 1)[0].split(enc.subcomponent, 1)[0]
        found = unescape(first, enc).strip()
        if found:
            return found
    return ""


def _specimens_of_requests(kind: str, segments: list[_Segment]) -> dict[int, _Segment]:
    """The SPM of each OBR's specimen, by the OBR's position: in OML^O33 the SPM comes
    before the orders on it, in OML^O21 after the OBR it belongs to."""
    names = [segment.name for segment in segments]
    found: dict[int, _Segment] = {}
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


#: Order priorities as the worklist and the analysers' O.6 (E1394) have them, most urgent
#: first: HL7's S stat and A as soon as possible (table 0027, TQ1-9's 0485) are kept; the
#: others (R, P preoperative, C callback, T timing critical...) are routine to an analyser.
STAT, ASAP, ROUTINE = "S", "A", "R"


def _priority(code: str) -> str:
    code = code.upper()
    return code if code in (STAT, ASAP) else ROUTINE


def _coded(parts: Sequence[str]) -> str:
    """A coded value's text (second part), else its code."""
    return (parts[1] if len(parts) > 1 and parts[1] else parts[0]) if parts else ""


@dataclass(frozen=True, slots=True)
class _Specimen:
    collected_at: datetime | None
    specimen_type: str
    container: str


def _specimen(spm: _Segment | None, obr: _Segment, zone: tzinfo) -> _Specimen:
    """What the LIS says of a specimen: SPM-17 (else OBR-7) collected, SPM-4 (else OBR-15,
    v2.3's specimen source) its type, SPM-27 its container."""
    collected = (
        _moment(spm, 17, zone, to_the_minute=True)
        if spm is not None and spm.value(17)
        else _moment(obr, 7, zone, to_the_minute=True)
    )
    kind = _coded([spm.value(4, 1), spm.value(4, 2)]) if spm is not None else ""
    return _Specimen(
        collected,
        kind or _coded(obr.subcomponents(15, 1)),
        _coded([spm.value(27, 1), spm.value(27, 2)]) if spm is not None else "",
    )


def _first_given(known: _Specimen | None, told: _Specimen) -> _Specimen:
    """What is known of a specimen, with what a later OBR (or its SPM) tells of it where
    nothing was: a LIS may give the SPM with the second of a tube's OBRs only."""
    if known is None:
        return told
    return _Specimen(
        known.collected_at or told.collected_at,
        known.specimen_type or told.specimen_type,
        known.container or told.container,
    )


def _where(segment: _Segment, n: int = 0) -> str:
    """``OBR-3 (segment 4)``; ``segment 4`` alone when it has no segment's name."""
    if not _NAME.fullmatch(segment.name):
        return f"segment {segment.position}"
    return f"{segment.name}{f'-{n}' if n else ''} (segment {segment.position})"


def read_order(text: str, processing_id: str = PROCESSING_ID, zone: tzinfo = UTC) -> OrderMessage:
    """The orders a message gives; :class:`OrderRefused`, saying why, when it gives none
    this daemon takes. A time without an offset is the LIS's wall clock, read in ``zone``
    (the laboratory's)."""
    segments = _segments(text)
    header = _header(segments[0])
    check_header(header, processing_id)
    kind = header.message_type
    for segment in segments:
        holding = next((n for n, f in enumerate(segment.fields) if "\x00" in f), None)
        if holding is not None:
            raise OrderRefused(
                f"{_where(segment, holding)}: a NUL character, which no text may hold",
                "102", segment.at(holding) if _NAME.fullmatch(segment.name) else None,
            )  # fmt: skip
    patients = [segment for segment in segments if segment.name == "PID"]
    other = next((p for p in patients[1:] if _patient_id(p) != _patient_id(patients[0])), None)
    if other is not None:
        # ORM^O01, OML^O21 and OML^O33 have one PATIENT group, not a repeating one: the
        # orders after a second patient would be kept under a patient the message does
        # not give them, whichever of the two were chosen. The same patient repeated (a
        # LIS writing the PID in each order group) is that one patient.
        raise OrderRefused(
            f"{_where(other)}: a second patient; an order message carries one patient's "
            "orders (send each patient's in a message of their own)", "100", other.at(),
        )  # fmt: skip
    patient_id = _patient_id(patients[0]) if patients else ""
    spm = _specimens_of_requests(kind, segments)
    action, group_priority, ordered_at, placer = "", ROUTINE, None, ""
    # One change per action, specimen and order number: a message naming a specimen's
    # tests in several OBRs (routine and STAT among them) orders them all.
    tests: dict[tuple[str, str, str], list[str]] = {}
    details: dict[tuple[str, str, str], _Specimen] = {}
    # ORC-9 belongs to its own order group; a specimen ordered in several takes the first
    # group's that gives one.
    ordered: dict[tuple[str, str, str], datetime] = {}
    priorities: dict[tuple[str, str, str], str] = {}
    # A cancel's ORC alone names its whole order by its number (ORM^O01's order detail
    # is optional): every test of it goes.
    whole: list[tuple[str, _Segment]] = []
    requests_after = _next_in_group(segments)
    for position, segment in enumerate(segments):
        name = segment.name
        if name == "ORC":
            code = segment.value(1).upper()
            if code not in _ACTIONS:
                raise OrderRefused(
                    f"{_where(segment, 1)}: order control {code[:20]!r} not taken",
                    "103" if code else "101", segment.at(1),
                )  # fmt: skip
            action = _ACTIONS[code]
            group_priority = _priority(segment.value(7, 6))
            ordered_at = _moment(segment, 9, zone)
            placer = segment.value(2)
            if action == CANCEL and requests_after.get(position) != "OBR":
                whole.append((placer, segment))
        elif name == "TQ1":  # TQ1-9, where v2.5 puts the priority
            group_priority = most_urgent((group_priority, _priority(segment.value(9))))
        elif name == "OBR":
            if not action:
                raise OrderRefused(f"{_where(segment)}: no ORC before it", "100", segment.at())
            own = spm.get(position)
            specimen = _specimen_id(segment, own)
            test = segment.value(4)
            number = placer or segment.value(2)
            if not specimen and not (action == CANCEL and number):
                raise OrderRefused(
                    f"{_where(segment, 3)}: no specimen id (nor SPM-2)", "101", segment.at(3)
                )
            if not test:
                raise OrderRefused(f"{_where(segment, 4)}: no test code", "101", segment.at(4))
            key = (action, specimen, number)
            tests.setdefault(key, []).append(test)
            details[key] = _first_given(details.get(key), _specimen(own, segment, zone))
            if ordered_at is not None:
                ordered.setdefault(key, ordered_at)
            own_priority = _priority(segment.value(5)), _priority(segment.value(27, 6))
            priorities[key] = most_urgent(
                (priorities.get(key, ROUTINE), group_priority, *own_priority)
            )
    # A specimen's OBRs without a number, in a message that numbers its others, belong
    # to its (first) numbered order: kept apart, the order without a number would replace
    # the numbered one it came with.
    for key in [k for k in tests if not k[2]]:
        into = next((k for k in tests if k[:2] == key[:2] and k[2]), None)
        if into is not None:
            tests[into] += tests.pop(key)
            details[into] = _first_given(details[into], details.pop(key))
            if key in ordered:
                ordered.setdefault(into, ordered.pop(key))
            priorities[into] = most_urgent((priorities[into], priorities.pop(key)))
    for number, orc in whole:
        if not number:
            raise OrderRefused(
                f"{_where(orc, 2)}: a cancel without OBR names its order by its number, and "
                "none is given", "101", orc.at(2),
            )  # fmt: skip
    if not tests and not whole:
        raise OrderRefused("OBR: the message orders no test", "100")
    changes = [
        OrderChange(CANCEL, Order("", (), patient_id=patient_id, placer_order=number))
        for number, _ in whole
    ]
    for key, codes in tests.items():
        act, specimen, number = key
        priority = priorities[key]
        about = details[key]
        order = Order(
            specimen, tuple(dict.fromkeys(codes)), priority, ordered_at=ordered.get(key),
            patient_id=patient_id, collected_at=about.collected_at,
            specimen_type=about.specimen_type, container=about.container,
            placer_order=number,
        )  # fmt: skip
        changes.append(OrderChange(act, order))
    return OrderMessage(header.control_id, kind, tuple(changes))


def _next_in_group(segments: list[_Segment]) -> dict[int, str]:
    """For each ORC, by its position, the name of the ORC or OBR that follows it ("" at
    the end): an ORC followed by another, or by nothing, has no request of its own."""
    found: dict[int, str] = {}
    after = ""
    for position in range(len(segments) - 1, -1, -1):
        name = segments[position].name
        if name == "ORC":
            found[position] = after
        if name in ("ORC", "OBR"):
            after = name
    return found


# HL7's DTM: YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ].
_DTM = re.compile(r"^(\d{4}(?:\d{2}){0,5})(?:\.\d+)?(?:([+-])(\d{2})(\d{2}))?$")
_FORMS = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _moment(
    segment: _Segment, n: int, zone: tzinfo, *, to_the_minute: bool = False
) -> datetime | None:
    """A DTM, to the year, month, day, hour, minute or second (read as its first moment),
    in UTC: read in its offset, else in ``zone`` (HL7's DTM without an offset is the
    sender's local time). ``to_the_minute``: a time less precise is none (a collection to
    the day would judge the delay to analysis by a moment nobody noted).

    An hour that comes twice when the clocks go back is read as the first: a collection
    then looks an hour older, and a sample is rather refused as delayed than a delayed one
    accepted."""
    text = segment.value(n)
    if not text:
        return None
    match = _DTM.match(text)
    if match:
        digits, sign, hours, minutes = match.groups()
        if sign:
            offset = timedelta(hours=int(hours), minutes=int(minutes))
            zone = timezone(offset if sign == "+" else -offset)
        try:
            moment = datetime.strptime(digits, _FORMS[len(digits)]).replace(tzinfo=zone)
            found = moment.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
        else:
            return None if to_the_minute and len(digits) < 12 else found
    raise OrderRefused(
        f"{_where(segment, n)}: {text[:40]!r} is not a date and time", "102", segment.at(n)
    )


# --- the answer -------------------------------------------------------------------------


def acknowledgment(
    control_id: str,
    code: str,
    at: datetime,
    text: str = "",
    trigger: str = "O01",
    *,
    receiver: tuple[str | Sequence[str], str | Sequence[str]] = ("LIS", "LAB"),
    sender: tuple[str, str] = ("LIS-MIDDLEWARE", "LAB"),
    version: str = "2.5.1",
    processing: str = "P",
    charset: str = "",
    error: OrderRefused | None = None,
) -> str:
    """The ACK of a message: MSA-1 ``code`` (AA, AE, AR), MSA-2 the control id it answers
    as it came (already in HL7's escaped form), MSA-3 the reason of a refusal; its own
    control id is new. ``receiver`` (MSH-5, MSH-6: each a text, or its components),
    ``processing`` (MSH-11) and ``version`` (MSH-12) are those of the message answered,
    whose sender may expect its own; ``sender`` (MSH-3, MSH-4) the middleware's own names
    (the ``lis`` settings' ``sending_application`` and ``sending_facility`` towards the
    LIS); ``charset`` (MSH-18) the character set it is sent
    in. A refusal's ``error`` adds an ERR segment: in v2.5 and later ERR-2 where, ERR-3 the
    condition (HL7 table 0357), ERR-4 ``E`` and ERR-8 the text; before, ERR-1."""
    moment = timestamp(at if at.tzinfo else at.replace(tzinfo=UTC))
    answered = re.sub(r"[\x00-\x1f|]", "", control_id)  # a control character would cut it
    application, facility = (_hd(part) for part in receiver)
    version = version if VERSIONS.fullmatch(version) else "2.5.1"
    processing = processing if processing in _PROCESSING else "P"
    header = (
        f"MSH|^~\\&|{escape(sender[0])}|{escape(sender[1])}|{application}|{facility}|{moment}||"
        f"ACK^{escape(trigger)}^ACK|{new_control_id()}|{processing}|{version}"
    )
    if re.fullmatch(r"[A-Z0-9][A-Z0-9 /_-]{0,29}", charset):
        header += "||||||" + charset  # MSH-13 to MSH-17 empty, then MSH-18
    # Cut before escaping: an escape sequence cut in two would not read back.
    said = escape(text[:400]) if text else ""
    segments = [header, f"MSA|{code}|{answered}" + (f"|{said}" if said else "")]
    if error is not None and code != "AA":
        segments.append(_err(error, said, version))
    return "\r".join(segments)


def _hd(part: str | Sequence[str]) -> str:
    """MSH-5 or MSH-6: a text, or the components of the sender's MSH-3 or MSH-4."""
    if isinstance(part, str):
        return escape(part)
    return "^".join(escape(component) for component in part).rstrip("^")


def _err(error: OrderRefused, said: str, version: str) -> str:
    condition = (error.condition, CONDITIONS[error.condition], "HL70357")
    segment, occurrence, field = error.location or ("", 0, 0)
    place = [escape(segment), str(occurrence) if segment else "", str(field) if field else ""]
    if tuple(int(n) for n in version.split(".")[:2]) < (2, 5):
        return "ERR|" + "^".join([*place, "&".join(condition)])  # ERR-1, ELD
    where = "^".join(place).rstrip("^")
    return "|".join(["ERR", "", where, "^".join(condition), "E", "", "", "", said]).rstrip("|")
