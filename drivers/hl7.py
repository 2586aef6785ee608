"""Analysers that send their results as HL7 v2 (ORU^R01, OUL^R21/R22) instead of ASTM:
the base reading of their OBX segments, and the detection of their family.

The base class is the reading HL7 v2.5.1 chapter 7 gives an observation:

* the patient from PID (PID-3, else PID-2 or PID-4; PID-7 birth date, PID-8 sex);
* the specimen id from SPM-2 (its placer id, else its filler id), else SAC-3 (container),
  else OBR-3 (filler order number, the analyser's), else OBR-2 (placer order number, the
  LIS's); an OBR-3 of a few digits beside another id in OBR-2 is said, as it may be the
  number of the day's run, which comes round again; in an ORU^R01 a request's SPM follows
  its OBX, and the OBX after it describe the specimen (kept as its comments);
* each OBX a result: OBX-3 the test (its identifier, else its text), OBX-5 the value as
  OBX-2 types it (SN ``<^15`` is ``<15``; CE/CWE its text), OBX-6 units, OBX-7 reference
  range, OBX-8 abnormal flags (each repeat), OBX-11 status, OBX-16 operator, OBX-18
  instrument or module, and the time OBX-19 (analysis), else OBX-14, else OBR-7;
* an OBR without OBX is a problem of the message: what it held is not read;
* NTE after an OBX are its comments; NTE before the first OBX of an OBR the specimen's;
* SID after an OBX names a reagent lot that produced it (SID-1 reagent, SID-2 lot,
  SID-3 container);
* a control when SPM-11 (specimen role) is Q, MSH-11 (processing id) is Q as several
  analysers mark their QC messages, or the specimen id matches the control pattern, whose
  named groups ``lot`` and ``level`` (when it has them) give the control's lot and level.

A family overrides tables and hooks, like the ASTM drivers of :mod:`drivers.base`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import ClassVar

from drivers.base import NOT_TO_THE_MINUTE, ControlInfo, DriverOptions, Tables, to_the_minute
from drivers.detect import Detection, Instances, by_sender_then_layout, or_before
from drivers.hl7_query import QUERY_MESSAGES, answers, read_query
from middleware.domain import (
    Comment,
    ControlResult,
    HostQuery,
    InstrumentMessage,
    Measurement,
    Order,
    Patient,
    ReagentUse,
    Result,
    Specimen,
)
from middleware.hl7.segments import Hl7Message, Segment

_STAMP = re.compile(r"([0-9]{8}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2})?)?)?)(?:\.[0-9]{1,4})?"
                    r"(?:([+-])([0-9]{2})([0-9]{2}))?")  # fmt: skip
# A filler order number of up to 4 digits: more likely a sample's number in the day's run
# than an id that stays the tube's.
_RUN_NUMBER = re.compile(r"[0-9]{1,4}")
# Up to 9 digits: a sequence number is kept in a 32-bit integer column.
_SEQUENCE = re.compile(r"[0-9]{1,9}")


def sequence_number(text: str) -> int:
    """A set id (OBX-1, OBR-1) as the result's sequence number; 0 when it is none."""
    return int(text) if _SEQUENCE.fullmatch(text) else 0


#: Message types that carry results.
RESULT_MESSAGES = frozenset({"ORU^R01", "OUL^R21", "OUL^R22", "OUL^R23", "OUL^R24"})


def is_acknowledgment(message: Hl7Message) -> bool:
    """An ACK (MSH-9 ``ACK``, any trigger): the answer to a message, not one to answer."""
    return message.header.value(9).strip().upper() == "ACK"


def parse_hl7_time(text: str) -> datetime | None:
    """An HL7 DTM/TS (``YYYYMMDD[HH[MM[SS]]][.S][+ZZZZ]``): in UTC when it gives its
    offset, without zone (the analyser's wall clock) when not; None when not a time."""
    match = _STAMP.fullmatch(text.strip())
    if not match:
        return None
    digits, sign, hours, minutes = match.groups()
    hour, minute, second = (
        int(digits[i : i + 2]) if len(digits) >= i + 2 else 0 for i in (8, 10, 12)
    )
    try:
        day = (int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
        moment = datetime(*day, hour, minute, second)
        if sign:
            offset = timedelta(hours=int(hours), minutes=int(minutes))
            moment = moment.replace(tzinfo=timezone(offset if sign == "+" else -offset))
            return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment


@dataclass(slots=True)
class Observation:
    """An OBX with the segments that follow it up to the next OBX or OBR."""

    obx: Segment
    notes: list[Segment] = field(default_factory=list)
    substances: list[Segment] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    """An OBR (or a message's specimen without one) and what it holds."""

    patient: Segment | None
    specimen: Segment | None
    container: Segment | None
    obr: Segment | None
    notes: list[Segment] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    of_specimen: list[Segment] = field(default_factory=list)
    """OBX that describe the specimen (after its SPM in an ORU), not results."""


def requests_of(message: Hl7Message) -> list[Request]:
    """The message's observations grouped under their OBR, with the patient and specimen
    segments that stand with them. In an ORU^R01 a request's SPM follows its OBX (and the
    OBX after the SPM describe the specimen); in the OUL messages the SPM comes first and
    stands over the requests that follow it."""
    out: list[Request] = []
    patient = specimen = container = None
    current: Request | None = None
    trailing_specimen = message.message_type.startswith("ORU")
    in_specimen = False
    for segment in message.segments[1:]:
        name = segment.name
        if name == "PID":
            patient, specimen, container, current = segment, None, None, None
        elif name == "SPM" and trailing_specimen and current is not None:
            current.specimen, in_specimen = segment, True
        elif name == "OBX" and in_specimen and current is not None:
            current.of_specimen.append(segment)
        elif name == "SPM":
            specimen, current = segment, None
        elif name == "SAC":
            container, current = segment, None
        elif name == "OBR":
            current, in_specimen = Request(patient, specimen, container, segment), False
            out.append(current)
        elif name == "OBX":
            if current is None:
                current = Request(patient, specimen, container, None)
                out.append(current)
            current.observations.append(Observation(segment))
        elif name == "NTE" and current is not None:
            if current.observations:
                current.observations[-1].notes.append(segment)
            else:
                current.notes.append(segment)
        elif name == "SID" and current is not None and current.observations:
            current.observations[-1].substances.append(segment)
    return out


class Hl7Driver(Tables):
    """The HL7 v2 reading of an analyser's results; subclasses override tables and hooks."""

    name: ClassVar[str] = "hl7"
    description: ClassVar[str] = "any analyser sending HL7 v2 results (ORU^R01, OUL^R22)"
    protocol: ClassVar[str] = "hl7"

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        super().__init__(options, instrument)
        self._sub = "&"

    # --- detection -------------------------------------------------------------------------

    @classmethod
    def recognises(cls, message: Hl7Message) -> bool:
        return cls.sender_pattern is not None and bool(cls.sender_pattern.search(message.sender))

    @classmethod
    def score(cls, message: Hl7Message) -> tuple[int, str]:
        """How surely the message's layout is this family's; 0 for no sign."""
        return 0, ""

    def choose(self, message: Hl7Message) -> Hl7Driver:
        return self

    # --- hooks -----------------------------------------------------------------------------

    def specimen_id(self, request: Request) -> str:
        if request.specimen is not None:
            placer, filler = (request.specimen.value(2, n).split(self._sub)[0] for n in (1, 2))
            if placer or filler:
                return placer or filler
        if request.container is not None and request.container.value(3):
            return request.container.value(3)
        obr = request.obr
        if obr is None:
            return ""
        filler, placer = obr.value(3), obr.value(2)
        if _RUN_NUMBER.fullmatch(filler) and placer and placer != filler:
            # An analyser's number of the day's sample (a Mindray BS writes it there, the
            # barcode in OBR-2) comes round again: taken for the id, it would put two
            # tubes' results on one specimen.
            self._problems.append(
                f"{obr.where(3)}: the specimen id {filler!r} is a short number, as an "
                f"analyser numbers its runs, where OBR-2 holds {placer[:40]!r}; check "
                "which of the two is the tube's id"
            )
        return filler or placer

    def patient(self, pid: Segment) -> Patient | None:
        patient_id = self.patient_id(pid)
        if not patient_id:
            return None
        sex = pid.value(8).upper()
        birth = self.read_time(pid.value(7), pid.where(7))
        day: date | None = birth.date() if birth else None
        return Patient(patient_id, sex if sex in ("M", "F") else "", day)

    def patient_id(self, pid: Segment) -> str:
        return pid.value(3) or pid.value(2) or pid.value(4)

    def specimen(self, request: Request, specimen_id: str) -> Specimen:
        spm, obr = request.specimen, request.obr
        collected = spm.value(17) if spm is not None else ""
        if not collected and obr is not None:
            collected = obr.value(7)
        where = spm.where(17) if spm is not None and spm.value(17) else "OBR-7"
        collected_at = self.read_time(collected, where)
        if collected_at is not None and not to_the_minute(collected):
            # A collection to the day or hour would judge the delay by a moment nobody noted.
            self._problems.append(f"{where}: {collected.strip()[:40]!r} {NOT_TO_THE_MINUTE}")
            collected_at = None
        return Specimen(
            specimen_id=specimen_id,
            patient_id=self.patient_id(request.patient) if request.patient else "",
            specimen_type=(spm.value(4, 2) or spm.value(4)) if spm is not None else "",
            collected_at=collected_at,
        )

    def is_result(self, observation: Observation) -> bool:
        """Whether an OBX is a result (rather than an attribute of the sample)."""
        return True

    def instrument_test_code(self, obx: Segment) -> str:
        return obx.value(3) or obx.value(3, 2)

    def value_text(self, obx: Segment) -> str:
        kind = obx.value(2).upper()
        parts = obx.components(5)
        if kind == "SN":
            comparator, first, separator, second = [*parts, "", "", "", ""][:4]
            return f"{comparator}{first}{separator}{second}"
        if kind in ("CE", "CWE", "CNE"):
            return (parts[1] if len(parts) > 1 and parts[1] else parts[0]).strip()
        return obx.text(5)

    def flags(self, obx: Segment) -> tuple[str, ...]:
        raw = [rep[0] for rep in obx.repeats(8) if rep and rep[0]]
        return tuple(self.flag_map.get(f, f) for f in raw)

    def completed_at(self, obx: Segment, request: Request) -> datetime | None:
        for n in (19, 14):
            if obx.value(n):
                return self.read_time(obx.value(n), obx.where(n))
        if request.obr is not None and request.obr.value(7):
            return self.read_time(request.obr.value(7), "OBR-7")
        return None

    def module(self, obx: Segment) -> str:
        """OBX-18, the equipment that made the observation."""
        return obx.value(18)

    def reagents(self, observation: Observation, code: str) -> tuple[ReagentUse, ...]:
        return tuple(
            ReagentUse(
                reagent=sid.value(1, 2) or sid.value(1) or code,
                lot=sid.value(2),
                test_code=code,
                serial=sid.value(3),
            )
            for sid in observation.substances
            if sid.value(2)
        )

    def control(
        self, message: Hl7Message, request: Request, specimen_id: str
    ) -> ControlInfo | None:
        spm = request.specimen
        match = self.control_re.search(specimen_id) if self.control_re else None
        if match is not None:
            # Named groups ``lot`` and ``level`` say where they stand in the sample id.
            found = match.groupdict()
            lot, level = (found.get("lot") or "").strip(), (found.get("level") or "").strip()
            return ControlInfo(specimen_id, lot, level)
        is_control = (spm is not None and spm.value(11).upper() == "Q") or (
            message.header.value(11).upper() == "Q"
        )
        return ControlInfo(specimen_id) if is_control else None

    def read_time(self, text: str, where: str) -> datetime | None:
        moment = parse_hl7_time(text)
        if moment is None and text.strip():
            problem = f"{where}: {text.strip()[:40]!r} is not a date and time; left out"
            if problem not in self._problems:
                self._problems.append(problem)
        return moment

    # --- host queries ----------------------------------------------------------------------

    def query(self, message: Hl7Message) -> tuple[HostQuery | None, str]:
        """The tubes a query asks about, or None and why it cannot be read."""
        return read_query(message)

    def answer_query(
        self,
        message: Hl7Message,
        query: HostQuery,
        orders: Iterable[Order],
        now: datetime,
        zone: tzinfo,
    ) -> list[str]:
        """The messages answering a query, in the order they are sent."""
        return answers(message, self.requested(query, orders), now, zone)

    # --- reading ---------------------------------------------------------------------------

    def read(self, message: Hl7Message) -> InstrumentMessage:
        reading = InstrumentMessage(
            instrument=self.instrument, driver=self.name, sender=message.sender
        )
        self._problems = reading.problems
        self._sub = message.encoding.subcomponent
        kind = message.message_type
        if kind in QUERY_MESSAGES:
            query, why = self.query(message)
            if query is None:
                reading.problems.append(why)
            else:
                reading.queries.append(query)
            return reading
        if is_acknowledgment(message):
            # The analyser's answer to one of ours (a query's DSR): nothing to read.
            return reading
        if kind not in RESULT_MESSAGES:
            reading.problems.append(f"MSH-9: a {kind or 'message without type'} carries no results")
            return reading
        index = 0
        patients: set[str] = set()
        for request in requests_of(message):
            if request.patient is not None:
                found = self.patient(request.patient)
                if found is not None and found.patient_id not in patients:
                    patients.add(found.patient_id)
                    reading.patients.append(found)
            specimen_id = self.specimen_id(request)
            reading.specimens.append(self.specimen(request, specimen_id))
            control = self.control(message, request, specimen_id)
            reading.comments += self.sample_comments(request)
            self._check_numbering(request)
            if request.obr is not None and not request.observations:
                # Results written into the OBR itself (a layout this reading does not
                # know), or OBX lost on the way: either way not an empty message.
                reading.problems.append(
                    f"OBR {request.obr.value(1) or '?'}: no OBX follows it; "
                    "the request's results, if any, are not read"
                )
            produced: list[Result] = []
            for observation in request.observations:
                if not self.is_result(observation):
                    continue
                result = self._result(observation, request, specimen_id, index)
                index += 1
                if result is not None:
                    produced.append(result)
            for result in self.finish(request, produced):
                if control is None:
                    reading.results.append(result)
                else:
                    reading.controls.append(
                        ControlResult(result, control.material, control.lot, control.level)
                    )
        return reading

    def sample_comments(self, request: Request) -> list[Comment]:
        """What is said of the sample rather than of one result: the NTE before its OBX,
        and the OBX that describe the specimen."""
        notes = [Comment(n.text(3), "instrument", n.value(4)) for n in request.notes if n.text(3)]
        described = [
            Comment(f"{obx.value(3, 2) or obx.value(3)}: {obx.text(5)}", "instrument", "specimen")
            for obx in request.of_specimen
            if obx.text(5)
        ]
        return notes + described

    def _check_numbering(self, request: Request) -> None:
        """OBX-1 counts the observations of a request from 1: a gap means segments lost
        or cut into one another on the way, which no field of those left may show."""
        numbers = [o.obx.value(1).strip() for o in request.observations]
        if not all(_SEQUENCE.fullmatch(n) for n in numbers):
            return
        for before, after in itertools.pairwise(numbers):
            if int(after) != int(before) + 1:
                self._problems.append(
                    f"OBX-1 goes from {before} to {after}: observations missing or cut short"
                )
                return

    def finish(self, request: Request, results: list[Result]) -> Iterable[Result]:
        """The results of one request, once all its OBX are read (a family adds what the
        other OBX said: flags of the sample)."""
        return results

    def _result(
        self, observation: Observation, request: Request, specimen_id: str, index: int
    ) -> Result | None:
        obx = observation.obx
        code = self.instrument_test_code(obx)
        if not code:
            self._problems.append(f"{obx.where(3)}: no test code; result left out")
            return None
        status = obx.value(11).strip().upper()
        text = self.value_text(obx)
        if not text.strip() and status not in ("X", "D"):
            self._problems.append(f"{obx.where(5)}: {code} has no value; left out")
            return None
        value, refused = Measurement.read(text)
        if refused:
            self._problems.append(f"{obx.where(5)}: {value.text[:40]!r} {refused}; kept as text")
        elif value.number is None and obx.value(2).upper() == "NM" and text.strip():
            self._problems.append(
                f"{obx.where(5)}: {value.text[:40]!r} is not a number as OBX-2 NM says; "
                "kept as text"
            )
        sequence = obx.value(1).strip()
        return Result(
            specimen_id=specimen_id,
            test_code=self.lab_code(code),
            instrument_test_code=code,
            value=value,
            units=obx.value(6) or obx.value(6, 2),
            reference_range=obx.value(7),
            abnormal_flags=self.flags(obx),
            instrument_flags=_NOT_FINAL_IN_HL7.get(status, ()),
            status=status,
            operator=obx.value(16),
            completed_at=self.completed_at(obx, request),
            instrument=self.instrument,
            module=self.module(obx),
            patient_id=self.patient_id(request.patient) if request.patient else "",
            sequence=sequence_number(sequence),
            comments=tuple(
                Comment(note.text(3), "instrument", note.value(4))
                for note in observation.notes
                if note.text(3)
            ),
            reagents=self.reagents(observation, self.lab_code(code)),
            record_index=index,
        )


#: OBX-11 statuses that HL7 (table 0085) gives a meaning other than E1394's R.9 does, and
#: that are no result to report: the engine knows them as E1394 has them (previously
#: transmitted, with new information), so the driver flags them, which holds the result.
_NOT_FINAL_IN_HL7 = {
    "R": ("OBX-11 R: results entered, not verified",),
    "N": ("OBX-11 N: not asked for",),
}


def detect_hl7(message: Hl7Message, candidates: Sequence[type[Hl7Driver]]) -> Detection[Hl7Driver]:
    """The family a message's sender (MSH-3, MSH-4) or layout names, else the base reading."""
    sender = message.sender
    return by_sender_then_layout(
        candidates,
        lambda cls: cls.recognises(message),
        lambda cls: cls.score(message),
        sender,
        f"sender {sender!r} not known" if sender else "no sender (MSH-3 empty)",
        Hl7Driver,
        "HL7 v2 reading",
    )


class Hl7AutoDriver(Hl7Driver):
    """Reads each message with the family detected for it; one instance per connection,
    which keeps the family of the message before when one names none."""

    name = "auto"
    description = "the HL7 driver detected from each message (sender, then layout)"

    def __init__(
        self,
        options: DriverOptions | None,
        instrument: str,
        candidates: Sequence[type[Hl7Driver]],
    ) -> None:
        super().__init__(options, instrument)
        self._made: Instances[Hl7Driver] = Instances(options, instrument)
        self._candidates = candidates
        self.detection: Detection[Hl7Driver] | None = None

    def choose(self, message: Hl7Message) -> Hl7Driver:
        found = or_before(detect_hl7(message, self._candidates), self.detection, Hl7Driver)
        self.detection = found
        return self._made.of(found.driver)

    def read(self, message: Hl7Message) -> InstrumentMessage:
        return self.choose(message).read(message)
