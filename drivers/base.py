"""What a driver is: the tables and hooks that make one analyser family's records
into the laboratory's objects.

The base class is the CLSI LIS2-A2 (E1394) reading. A driver for an instrument family
overrides the tables (test codes, flags, control pattern, timers, tolerances) and, where
its records differ from the standard, a hook or two. See docs/drivers.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import ClassVar

from middleware.astm.frames import FrameTolerances
from middleware.astm.link import LinkSettings
from middleware.astm.records import DEFAULT_DELIMITERS, Delimiters, Record
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
    most_urgent,
)
from middleware.hl7.segments import can_carry

# ASCII digits only: str.isdigit() and int() also take superscripts, which stray bytes
# decoded as latin-1 become (0xB2 is '²'), and other scripts' digits.
# E1394's YYYYMMDD[HH[MM[SS]]], whole pairs only, and what some analysers add: a fraction
# of a second (dropped) and an offset from UTC (honoured).
_STAMP = re.compile(r"([0-9]{8}(?:[0-9]{2}){0,3})(?:\.[0-9]{1,6})?(?:([+-])([0-9]{2})([0-9]{2}))?")
_LEADING_DIGITS = re.compile(r"[0-9]*")


#: Said of a collection time to the day or the hour only, left out by every driver.
NOT_TO_THE_MINUTE = "gives the collection to the day or hour only; its delay is not judged"


def to_the_minute(text: str) -> bool:
    """Whether a time gives its minute (YYYYMMDDHHMM at least, before a fraction or an
    offset)."""
    found = _LEADING_DIGITS.match(text.strip())
    return found is not None and len(found.group()) >= 12


# Up to 9 digits: a sequence number is kept in a 32-bit integer column.
_SEQUENCE = re.compile(r"[0-9]{1,9}")
_LIMIT = re.compile(r"(?:[+-]?[0-9]+(?:[.,][0-9]*)?)?")
"""A reference limit written in a component of R.6: a number, or nothing."""

_RECORD_NAMES = {
    "H": "header",
    "P": "patient",
    "O": "order",
    "R": "result",
    "C": "comment",
    "Q": "query",
    "M": "manufacturer record",
    "S": "scientific record",
    "L": "terminator",
}


def parse_timestamp(text: str) -> datetime | None:
    """E1394 date and time (YYYYMMDD[HH[MM[SS]]]): the analyser's wall clock, without a
    zone; with an offset after it (``+0100``), that moment in UTC. None when absent or not
    a date: an odd digit, or more than the seconds, is refused rather than cut short (a
    ``+0000`` cut off would read the time in the wrong zone)."""
    found = _STAMP.fullmatch(text.strip())
    if found is None:
        return None
    digits, sign, hours, minutes = found.groups()
    hour, minute, second = (
        int(digits[i : i + 2]) if len(digits) >= i + 2 else 0 for i in (8, 10, 12)
    )
    try:
        stamp = datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), hour, minute, second)
        if not sign:
            return stamp
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        return stamp.replace(tzinfo=timezone(offset if sign == "+" else -offset)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def parse_date(text: str) -> date | None:
    stamp = parse_timestamp(text)
    return stamp.date() if stamp else None


def range_of(low: str, high: str) -> str:
    """A reference range from its limits, either of which may be missing."""
    if low and high:
        return f"{low}-{high}"
    return f">={low}" if low else f"<={high}" if high else ""


def sender_of(header: Record) -> str:
    """H.5 with runs of spaces made one and none at either end, as operators and firmware
    versions pad it."""
    return " ".join(header.text(5).split())


def header_of(records: Sequence[Record]) -> Record | None:
    """The message's H record (its first), if it has one."""
    return records[0] if records and records[0].type == "H" else None


def field_name(record: Record, n: int) -> str:
    """Where field n of a record is, as a person looks for it: ``result 2, R.13``."""
    number = record.value(2) if record.type not in ("H", "L") else ""
    if not _SEQUENCE.fullmatch(number):
        return f"{record.type}.{n}"
    return f"{_RECORD_NAMES.get(record.type, record.type)} {number}, {record.type}.{n}"


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 40 else text[:40] + "...")


#: Words an analyser writes beside a number in R.4 to interpret it.
_INTERPRETATIONS = frozenset({
    "reactive", "nonreactive", "non-reactive", "non reactive", "positive", "negative",
    "pos", "neg", "indeterminate", "equivocal", "borderline", "grey zone", "gray zone",
    "detected", "not detected", "invalid",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ControlInfo:
    material: str
    lot: str = ""
    level: str = ""


@dataclass(slots=True)
class Context:
    """Where a record stands in its message: the records above it."""

    header: Record | None = None
    patient: Record | None = None
    order: Record | None = None
    specimen_id: str = ""


@dataclass(frozen=True, slots=True)
class ResultRecords:
    """An R record and the C and M records that follow it."""

    result: Record
    comments: tuple[Record, ...] = ()
    manufacturer: tuple[Record, ...] = ()
    index: int = 0


@dataclass(slots=True)
class DriverOptions:
    """What configuration may change in a driver, per instrument."""

    test_map: dict[str, str] = field(default_factory=dict)
    control_pattern: str | None = None


class Tables:
    """What every driver, of either protocol, states about its analysers: names, the
    sender that recognises them, their codes and flags, how their controls are marked;
    and the configuration's changes to those."""

    name: ClassVar[str] = "generic"
    description: ClassVar[str] = "any analyser following CLSI LIS2-A2 (ASTM E1394)"
    #: Searched in the sender: H.5 for ASTM, MSH-3 and MSH-4 for HL7 (as text).
    sender_pattern: ClassVar[re.Pattern[str] | None] = None
    #: Analyser test code -> laboratory test code; unmapped codes pass through.
    test_map: ClassVar[Mapping[str, str]] = {}
    #: Analyser abnormal flag -> laboratory flag (L, H, LL, HH, N, A, AA...).
    flag_map: ClassVar[Mapping[str, str]] = {}
    #: A specimen id matching this marks a control sample.
    control_pattern: ClassVar[re.Pattern[str] | None] = None
    #: Test codes are looked up in upper case too, when the analyser writes them in
    #: another case than its printouts and the LIS (``Neu#`` for ``NEU#``).
    codes_any_case: ClassVar[bool] = False
    #: The priorities (O.6) the analyser takes in an order: E1394's S (stat), A (as soon
    #: as possible) and R (routine); one whose host interface knows only S and R is sent
    #: an A as R, as routine as it was before there was an A.
    priorities: ClassVar[frozenset[str]] = frozenset({"S", "A", "R"})

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        options = options or DriverOptions()
        self.instrument = instrument or self.name
        self.codes = {**self.test_map, **options.test_map}
        self.control_re = (
            re.compile(options.control_pattern) if options.control_pattern else self.control_pattern
        )
        # The problems of the message being read, where hooks say which fields they refused.
        self._problems: list[str] = []

    def lab_code(self, code: str) -> str:
        if self.codes_any_case:
            return self.codes.get(code) or self.codes.get(code.upper(), code)
        return self.codes.get(code, code)

    def analyser_priority(self, priority: str) -> str:
        """An order's priority as the analyser takes it (R when it takes no such one)."""
        return priority if priority in self.priorities else "R"

    def analyser_code(self, lab_code: str) -> str:
        for analyser, lab in self.codes.items():
            if lab == lab_code:
                return analyser
        return lab_code

    def writable(self, orders: Iterable[Order], encoding: str) -> tuple[list[Order], list[str]]:
        """The orders as the analyser's character set can carry them, and what had to be
        left out. A patient id it cannot write is left empty (never sent with a character
        replaced: that is another patient's id), a test whose code it cannot write is
        left out (no code of its own is written so); the specimen's other tests are
        still asked for, so the tube is run with all it can be."""
        kept: list[Order] = []
        left_out: list[str] = []
        for order in orders:
            patient = order.patient_id if can_carry(order.patient_id, encoding) else ""
            codes = tuple(
                code for code in order.test_codes if can_carry(self.analyser_code(code), encoding)
            )
            if patient != order.patient_id:
                left_out.append(f"{order.specimen_id}: patient id {order.patient_id!r}")
            left_out += [
                f"{order.specimen_id}: test {code!r}"
                for code in order.test_codes
                if code not in codes
            ]
            kept.append(replace(order, patient_id=patient, test_codes=codes))
        return kept, left_out

    def requested(
        self, query: HostQuery, orders: Iterable[Order]
    ) -> list[tuple[str, list[Order], list[str]]]:
        """For each specimen a query asks about: the orders held for it and the analyser's
        codes of the tests to run (those asked for, once each, in order)."""
        by_specimen: dict[str, list[Order]] = {}
        for order in orders:
            by_specimen.setdefault(order.specimen_id, []).append(order)
        out = []
        for specimen_id in query.specimen_ids:
            held = by_specimen.get(specimen_id, [])
            codes = dict.fromkeys(
                self.analyser_code(c)
                for o in held
                for c in o.test_codes
                if query.all_tests or c in query.test_codes
            )
            out.append((specimen_id, held, list(codes)))
        return out


class Driver(Tables):
    """The LIS2-A2 reading; subclasses override tables and hooks."""

    tolerances: ClassVar[FrameTolerances] = FrameTolerances()
    reply_timeout: ClassVar[float] = 15.0
    frame_timeout: ClassVar[float] = 30.0
    #: Delimiters of what we send the analyser (host-query answers, orders).
    delimiters: ClassVar[Delimiters] = DEFAULT_DELIMITERS
    #: Messages that do not begin with an H record are taken (and flagged) rather than
    #: quarantined: only for analysers known to send them so.
    headerless_messages: ClassVar[bool] = False

    # --- link ------------------------------------------------------------------------------

    def link_settings(self, **overrides: object) -> LinkSettings:
        base = LinkSettings(
            reply_timeout=self.reply_timeout,
            frame_timeout=self.frame_timeout,
            tolerances=self.tolerances,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @classmethod
    def recognises(cls, header: Record) -> bool:
        """Whether the H record's sender (H.5, see :func:`sender_of`) names this driver's
        family."""
        return cls.sender_pattern is not None and bool(cls.sender_pattern.search(sender_of(header)))

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """How surely a message's layout is this family's, when its sender does not say:
        0 for no sign, more for more; and what was seen, for a person to check."""
        return 0, ""

    def choose(self, records: Sequence[Record]) -> Driver:
        """The driver that reads ``records``: this one, when configured by name."""
        return self

    def fallback(self) -> Driver:
        """The driver that reads a message when :meth:`choose` failed on it."""
        return self

    # --- hooks -----------------------------------------------------------------------------

    def specimen_id(self, context: Context, order: Record) -> str:
        """O.3 (specimen id), else the first component of O.4 (instrument specimen id)."""
        return order.value(3) or order.value(4)

    def specimen(self, context: Context, order: Record) -> Specimen:
        patient = context.patient
        return Specimen(
            specimen_id=context.specimen_id,
            patient_id=self.patient_id(patient) if patient else "",
            specimen_type=order.value(16),
            collected_at=self.collection_time(order, 8),
            received_at=self.timestamp_at(order, 18),
        )

    def patient(self, record: Record) -> Patient | None:
        """P.8 birth date and P.9 sex (M, F; anything else is unknown)."""
        patient_id = self.patient_id(record)
        if not patient_id:
            return None
        sex = record.value(9).upper()
        birth = self.read_date(record.value(8), field_name(record, 8))
        return Patient(patient_id, sex if sex in ("M", "F") else "", birth)

    def patient_id(self, patient: Record) -> str:
        return patient.value(3) or patient.value(4) or patient.value(5)

    def instrument_test_code(self, result: Record) -> str:
        """The manufacturer's component (4th) of the universal test id, else the first
        non-empty one."""
        components = result.components(3)
        if len(components) > 3 and components[3]:
            return components[3]
        return next((c for c in components if c), "")

    def value_text(self, result: Record) -> str:
        """R.4: the value; of two parts, an interpretation and a number
        (``Reactive^12.5``, ``Positive^>1000``), the number, the interpretation going with
        it as a comment (:meth:`comments`). Anything else of several parts (a blood
        group, reaction grades ``3+^3+^45``, ``-1^0.750``, ``<^0.5``) all of it, as text:
        which part would be the value is the analyser's to say, in its driver."""
        return self._value_parts(result)[0]

    def _value_parts(self, result: Record) -> tuple[str, tuple[str, ...]]:
        parts = [c for c in result.components(4) if c.strip()]
        if len(parts) <= 1:
            return (parts[0] if parts else result.value(4)), ()
        if len(parts) == 2:
            words = [p for p in parts if p.strip().lower() in _INTERPRETATIONS]
            numbers = [p for p in parts if Measurement.parse(p).number is not None]
            if len(words) == 1 and len(numbers) == 1 and words[0] != numbers[0]:
                return numbers[0], (words[0],)
        return result.text(4), ()

    def reference_range(self, result: Record) -> str:
        """R.6 as the standard writes it (``3.5 to 5.1``); written as two limits in
        components (``0.5^4.0``, as many analysers do), as one text (``0.5-4.0``). Other
        components are not limits (an Access names the range: ``10 to 20^normal``)."""
        limits = [c.strip() for c in result.components(6)[:2]]
        if len(limits) < 2 or not any(limits) or not all(map(_LIMIT.fullmatch, limits)):
            return result.value(6)
        return range_of(*limits)

    def flags(self, result: Record) -> tuple[str, ...]:
        raw = [rep[0] for rep in result.repeats(7) if rep and rep[0]]
        return tuple(self.flag_map.get(f, f) for f in raw)

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        """Comments of type I (instrument flags) after the result."""
        return tuple(c.text(4) for c in group.comments if c.value(5) == "I" and c.text(4))

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        """The C records after the result, and the parts of a composite R.4 that are not
        its value (an interpretation)."""
        _, others = self._value_parts(group.result)
        return tuple(
            Comment(c.text(4), "instrument", c.value(5)) for c in group.comments if c.text(4)
        ) + tuple(Comment(part, "instrument", "interpretation") for part in others)

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        """Reagent lots the standard has no place for: none by default."""
        return ()

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        """A control when the message is a QC message (H.12 = Q), the order's action code
        is Q, or the specimen id matches the control pattern."""
        header, order = context.header, context.order
        is_control = (
            (header is not None and header.value(12) == "Q")
            or (order is not None and order.value(12) == "Q")
            or (self.control_re is not None and bool(self.control_re.search(context.specimen_id)))
        )
        if not is_control:
            return None
        return ControlInfo(material=context.specimen_id)

    def operator(self, result: Record) -> str:
        return result.value(11)

    def completed_at(self, result: Record) -> datetime | None:
        """R.13, the date and time the test was completed."""
        return self.timestamp_at(result, 13)

    def no_value_reason(self, result: Record) -> str:
        """Why a result came without a value, where the analyser says so elsewhere than in
        its comments: nothing by default."""
        return ""

    def dilution(self, result: Record) -> str:
        """The standard has no place for a dilution: none by default."""
        return ""

    def module(self, result: Record) -> str:
        return result.value(14)

    # --- refused fields --------------------------------------------------------------------

    def timestamp_at(self, record: Record, n: int) -> datetime | None:
        """Field n of ``record`` read as :meth:`read_timestamp` reads it; the field's name
        is worked out only for a refusal, not for every result."""
        text = record.value(n)
        stamp = parse_timestamp(text)
        if stamp is None and text.strip():
            return self.read_timestamp(text, field_name(record, n))  # says it is refused
        return stamp

    def collection_time(self, record: Record, n: int) -> datetime | None:
        """A specimen's collection time, to the minute at least: a time to the day or the
        hour (read as its first minute) would judge the delay to analysis by a moment
        nobody noted, and reject a sample analysed within it. Left out, and said."""
        stamp = self.timestamp_at(record, n)
        if stamp is not None and not to_the_minute(record.value(n)):
            self._refuse(field_name(record, n), record.value(n), NOT_TO_THE_MINUTE)
            return None
        return stamp

    def read_timestamp(self, text: str, where: str) -> datetime | None:
        """``text`` as a date and time. Text that is not one is left out and the message
        says so, naming ``where`` it was (see :func:`field_name`): the rest of the message
        stands."""
        stamp = parse_timestamp(text)
        if stamp is None and text.strip():
            self._refuse(where, text, "is not a date and time; left out")
        return stamp

    def read_date(self, text: str, where: str) -> date | None:
        day = parse_date(text)
        if day is None and text.strip():
            self._refuse(where, text, "is not a date; left out")
        return day

    def _refuse(self, where: str, text: str, why: str) -> None:
        """Say in the message being read, once, that a field was not taken as it came."""
        self._refuse_once(f"{where}: {_shown(text)} {why}")

    def _refuse_once(self, problem: str) -> None:
        if problem not in self._problems:
            self._problems.append(problem)

    # --- reading ---------------------------------------------------------------------------

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        message = InstrumentMessage(instrument=self.instrument, driver=self.name)
        self._problems = message.problems
        context = Context()
        for index, record, trailing in _with_trailing(records):
            kind = record.type
            if kind == "H":
                context = Context(header=record)
                message.sender = record.text(5)
            elif kind == "P":
                context.patient, context.order, context.specimen_id = record, None, ""
                found = self.patient(record)
                if found is not None:
                    message.patients.append(found)
            elif kind == "O":
                context.order = record
                context.specimen_id = self.specimen_id(context, record)
                message.specimens.append(self.specimen(context, record))
                self._order(context, record, message)
            elif kind == "R":
                group = ResultRecords(
                    record,
                    tuple(r for r in trailing if r.type == "C"),
                    tuple(r for r in trailing if r.type == "M"),
                    index,
                )
                self._result(context, group, message)
            elif kind == "Q":
                message.queries.append(self.query(record))
            elif kind == "C" and context.order is None and record.text(4):
                message.comments.append(Comment(record.text(4), "instrument", record.value(5)))
        return message

    def _order(self, context: Context, order: Record, message: InstrumentMessage) -> None:
        codes = tuple(
            self.lab_code(self._test_code_of(rep)) for rep in order.repeats(5) if any(rep)
        )
        message.orders.append(
            Order(
                specimen_id=context.specimen_id,
                test_codes=tuple(c for c in codes if c),
                priority=order.value(6) or "R",
                action_code=order.value(12),
                ordered_at=self.timestamp_at(order, 7),
                patient_id=self.patient_id(context.patient) if context.patient else "",
            )
        )

    @staticmethod
    def _test_code_of(components: tuple[str, ...]) -> str:
        if len(components) > 3 and components[3]:
            return components[3]
        return next((c for c in components if c), "")

    def _result(self, context: Context, group: ResultRecords, message: InstrumentMessage) -> None:
        record = group.result
        code = self.instrument_test_code(record)
        if not code:
            message.problems.append(f"result {record.value(2) or '?'} has no test code")
            return
        sequence_text = record.value(2).strip()
        sequence = 0
        if _SEQUENCE.fullmatch(sequence_text):
            sequence = int(sequence_text)
        elif sequence_text:
            self._refuse(field_name(record, 2), sequence_text, "is not a sequence number; left out")
        value, refused = Measurement.read(self.value_text(record))
        if refused:
            self._refuse(field_name(record, 4), value.text, f"{refused}; kept as text only")
        elif not value.text.strip() and record.value(9).upper() != "X":
            # Kept: its flags and comments say why; the rules hold it (``no-value``).
            why = self.no_value_reason(record)
            self._refuse_once(
                f"{field_name(record, 4)}: test {code} has no value"
                f"{f' ({why})' if why else ''}; kept without one"
            )
        result = Result(
            specimen_id=context.specimen_id,
            test_code=self.lab_code(code),
            instrument_test_code=code,
            value=value,
            units=record.value(5),
            reference_range=self.reference_range(record),
            abnormal_flags=self.flags(record),
            instrument_flags=self.instrument_flags(group),
            status=record.value(9).strip().upper(),
            operator=self.operator(record),
            completed_at=self.completed_at(record),
            instrument=self.instrument,
            module=self.module(record),
            patient_id=self.patient_id(context.patient) if context.patient else "",
            sequence=sequence,
            comments=self.comments(group),
            reagents=self.reagents(context, group, code),
            dilution=self.dilution(record),
            record_index=group.index,
        )
        control = self.control_info(context, group)
        if control is None:
            message.results.append(result)
        else:
            message.controls.append(
                ControlResult(result, control.material, control.lot, control.level)
            )

    def query(self, record: Record) -> HostQuery:
        """Q.3 holds the specimen ids (2nd component of each repeat), Q.5 the tests.

        An id is compared without the spaces around it, as the LIS's orders keep it: an
        analyser padding its barcode field (``  000123  ``) asks for 000123, leading zeros
        and all."""
        asked = record.repeats(3)
        ids = tuple(i for i in (rep[1].strip() for rep in asked if len(rep) > 1) if i)
        if not ids:
            ids = tuple(i for i in (rep[0].strip() for rep in asked if rep) if i)
        tests = tuple(
            self._test_code_of(rep) for rep in record.repeats(5) if self._test_code_of(rep)
        )
        all_tests = not tests or tests == ("ALL",)
        return HostQuery(
            specimen_ids=ids,
            test_codes=() if all_tests else tuple(self.lab_code(t) for t in tests),
            all_tests=all_tests,
            request_status=record.value(13) or "O",
        )

    # --- answering -------------------------------------------------------------------------

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """Records answering a host query: the orders held for each specimen asked about,
        or an order marked 'no order' (O.26 = Y) when there are none; a query naming no
        specimen we can read is answered at once with L.3 ``Q`` (error in the last request
        for information), so the analyser knows it was not understood."""
        records = [_host_header(now)]
        if not query.specimen_ids:
            return [*records, Record.of("L", "1", "Q")]
        asked = self.requested(query, orders)
        for number, (specimen_id, held, codes) in enumerate(asked, start=1):
            patient = held[0].patient_id if held else ""
            priority = self.analyser_priority(most_urgent(o.priority for o in held))
            records.append(Record.of("P", str(number), patient))
            action, report = ("N", "Q") if codes else ("", "Y")
            records.append(_order_record(specimen_id, codes, priority, action, report))
        records.append(Record.of("L", "1", "N"))
        return records

    def download(self, order: Order, cancel: bool, now: datetime) -> list[Record]:
        """The records that send an analyser taking a downloaded worklist an order (O.12
        ``N``), or cancel its tests (``C``), in the analyser's test codes."""
        codes = list(dict.fromkeys(self.analyser_code(code) for code in order.test_codes))
        priority = self.analyser_priority(order.priority)
        return [
            _host_header(now),
            Record.of("P", "1", order.patient_id),
            _order_record(order.specimen_id, codes, priority, "C" if cancel else "N", "O"),
            Record.of("L", "1", "N"),
        ]


def _host_header(now: datetime) -> Record:
    stamp = now.strftime("%Y%m%d%H%M%S")
    return Record.of("H", "\\^&", "", "", "LIS", "", "", "", "", "", "", "P", "LIS2-A2", stamp)


def _order_record(
    specimen_id: str, codes: Sequence[str], priority: str, action: str, report: str
) -> Record:
    """An O record from the host: O.3 the specimen, O.5 the tests (one repeat each, the
    code in the fourth component), O.6 the priority, O.12 the action code, O.26 the report
    type (O order, Q answer to a query, Y no order)."""
    tests = tuple(("", "", "", code) for code in codes) or (("", "", "", ""),)
    fields: list[str] = [""] * 25  # O.2 to O.26
    fields[0] = "1"
    fields[1] = specimen_id
    fields[4] = priority
    fields[10] = action
    fields[24] = report
    plain = Record.of("O", *fields)
    return Record((*plain.fields[:4], tests, *plain.fields[5:]))


def _with_trailing(
    records: Sequence[Record],
) -> Iterable[tuple[int, Record, tuple[Record, ...]]]:
    """Each record with the C and M records that directly follow it."""
    n = len(records)
    for i, record in enumerate(records):
        j = i + 1
        while j < n and records[j].type in ("C", "M"):
            j += 1
        yield i, record, tuple(records[i + 1 : j])
