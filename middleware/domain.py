"""The laboratory's objects, in the laboratory's words.

Drivers turn decoded records into these; the store keeps them; the rules engine reasons
about them. They know nothing of ASTM, HL7 or databases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation


@dataclass(frozen=True, slots=True)
class Instrument:
    """An analyser as configured: its name in the lab, its driver, and where it is."""

    name: str
    driver: str
    serial_number: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True)
class Patient:
    """Who a specimen belongs to, as far as the middleware needs to know: reference ranges
    depend on sex and age."""

    patient_id: str
    sex: str = ""  # M, F, or empty when unknown
    birth_date: date | None = None

    def age_years(self, on: date) -> Decimal | None:
        if self.birth_date is None:
            return None
        return Decimal((on - self.birth_date).days) / Decimal("365.25")


@dataclass(frozen=True, slots=True)
class Specimen:
    """A sample tube as the analyser saw it."""

    specimen_id: str
    patient_id: str = ""
    specimen_type: str = ""  # serum, plasma, whole blood, urine...
    container: str = ""
    collected_at: datetime | None = None
    received_at: datetime | None = None
    analysed_at: datetime | None = None
    rack: str = ""
    position: str = ""


#: How far ahead of the middleware's clock an analyser's may be when an hour that comes
#: twice is read (:meth:`InstrumentMessage.in_timezone`).
CLOCK_DRIFT = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Order:
    """Tests asked for a specimen (from the LIS, or echoed by the analyser)."""

    specimen_id: str
    test_codes: tuple[str, ...]
    priority: str = "R"  # R routine, A as soon as possible, S stat (E1394 O.6)
    action_code: str = ""  # E1394 O.12: N new, Q control, A add...
    ordered_at: datetime | None = None
    patient_id: str = ""
    collected_at: datetime | None = None
    specimen_type: str = ""
    container: str = ""
    """What the LIS says of the specimen (collection, type, container), for sample
    acceptance where the analyser does not say it."""
    placer_order: str = ""
    """The LIS's number of the order (HL7 ORC-2, else OBR-2): a specimen may carry
    several orders (a test added later is an order of its own), each replaced or
    cancelled on its own. Empty: the specimen's only order."""


def most_urgent(priorities: Iterable[str]) -> str:
    """The most urgent of these priorities: S stat, then A as soon as possible, else R
    (a specimen's orders' give the priority it is run at, a test added STAT in an order
    of its own included)."""
    found = set(priorities)
    return next((p for p in ("S", "A") if p in found), "R")


@dataclass(frozen=True, slots=True)
class ReagentUse:
    """A reagent (or calibrator) lot that took part in producing a result."""

    reagent: str
    lot: str
    test_code: str = ""
    expiry: date | None = None
    calibration_id: str = ""
    serial: str = ""
    kind: str = "reagent"  # reagent, calibrator, diluent


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    source: str = "instrument"  # instrument, lis, middleware
    kind: str = ""  # E1394 C.5 comment type (G generic, I instrument flag...)


# ASCII digits only: ``\d`` also matches other scripts' digits, which Decimal then reads.
_NUMBER = re.compile(
    r"^\s*([<>]=?|=)?\s*([-+]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)(?:[eE][-+]?[0-9]+)?)\s*$"
)

# Bounds on a number read from outside. Exact arithmetic on 1e999999999 (quantize, a
# fraction for a z-score) runs for minutes or exhausts memory, and the store keeps numbers
# as NUMERIC(24, 8): 24 digits, 16 before the point. No result in any unit a laboratory
# reports comes near these bounds, so a value beyond them is a corrupt or hostile one.
MAX_DIGITS = 24
#: Adjusted exponents (that of the first digit): at most 15 keeps a number below 10**16...
MAX_EXPONENT = 15
#: ...and at least -24 keeps the denominator of its exact fraction small.
MIN_EXPONENT = -24
_OUT_OF_RANGE = f"is out of range (magnitude 1E{MIN_EXPONENT} to 1E{MAX_EXPONENT + 1})"


def bounded_number(digits: str) -> tuple[Decimal | None, str]:
    """Plain decimal notation as a number within the bounds, or None and why not. The
    caller checks the notation: Decimal() alone would also read NaN, Infinity and 1_0."""
    try:
        number = Decimal(digits)
    except InvalidOperation:  # an exponent beyond even what Decimal holds
        return None, _OUT_OF_RANGE
    if len(number.as_tuple().digits) > MAX_DIGITS:
        return None, f"has more than {MAX_DIGITS} significant digits"
    if not MIN_EXPONENT <= number.adjusted() <= MAX_EXPONENT:
        return None, _OUT_OF_RANGE
    return number, ""


@dataclass(frozen=True, slots=True)
class Measurement:
    """A value as the analyser wrote it, and as a number when it is one.

    Censored values (``<15``, ``>8``) keep their sign in ``censor`` and their limit in
    ``number``: the number alone would be a different, wrong, result. Only plain decimal
    notation within the bounds above is a number: never NaN or Infinity.
    """

    text: str
    number: Decimal | None = None
    censor: str = ""  # "", "<", ">", "<=", ">="

    @classmethod
    def parse(cls, text: str) -> Measurement:
        return cls.read(text)[0]

    @classmethod
    def read(cls, text: str) -> tuple[Measurement, str]:
        """The measurement, and why its text, written as a number, is not taken as one
        ("" when it is, or when the text is not written as a number at all)."""
        match = _NUMBER.match(text)
        if not match:
            return cls(text), ""
        sign, digits = match.group(1) or "", match.group(2).replace(",", ".")
        number, problem = bounded_number(digits)
        if number is None:
            return cls(text), problem
        return cls(text, number, "" if sign == "=" else sign), ""

    @property
    def is_numeric(self) -> bool:
        return self.number is not None and not self.censor


@dataclass(frozen=True, slots=True)
class Result:
    """One patient (or control) result, with everything needed to trace it."""

    specimen_id: str
    test_code: str  # the laboratory's code, after the driver's map
    instrument_test_code: str  # what the analyser called it
    value: Measurement
    units: str = ""
    reference_range: str = ""
    abnormal_flags: tuple[str, ...] = ()
    instrument_flags: tuple[str, ...] = ()
    status: str = ""  # E1394 R.9: F final, C correction, P preliminary, X cannot be done...
    operator: str = ""
    completed_at: datetime | None = None
    instrument: str = ""
    module: str = ""
    patient_id: str = ""
    sequence: int = 0
    comments: tuple[Comment, ...] = ()
    reagents: tuple[ReagentUse, ...] = ()
    dilution: str = ""
    record_index: int = 0
    """Position of the R record in its message, to keep the analyser's order."""


@dataclass(frozen=True, slots=True)
class ControlResult:
    """A quality-control measurement: a result on a control material of a known lot."""

    result: Result
    control_material: str
    lot: str = ""
    level: str = ""


@dataclass(frozen=True, slots=True)
class HostQuery:
    """An analyser asking the host what to run on specimens (E1394 Q record)."""

    specimen_ids: tuple[str, ...]
    test_codes: tuple[str, ...] = ()
    all_tests: bool = True
    request_status: str = "O"


@dataclass(slots=True)
class InstrumentMessage:
    """What one message from an analyser said, once read by its driver."""

    instrument: str
    sender: str = ""
    driver: str = ""
    """The driver that read it (chosen by configuration, or detected)."""
    patients: list[Patient] = field(default_factory=list)
    specimens: list[Specimen] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    controls: list[ControlResult] = field(default_factory=list)
    queries: list[HostQuery] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Things the driver could not map and fields it refused (a time that is not one); a
    message with problems and nothing else is quarantined, otherwise the problems travel
    with it."""

    def specimen_ids(self) -> list[str]:
        """The specimens the message concerns (what its log line names: never a patient)."""
        return sorted({s.specimen_id for s in self.specimens if s.specimen_id})

    def in_timezone(self, zone: tzinfo, received: datetime | None = None) -> InstrumentMessage:
        """The same message with the analyser's wall-clock times (which carry no zone)
        read in ``zone`` and given in UTC, so they compare with the middleware's clock.
        A time that cannot be placed in UTC is left out, and the message says so.

        A time of the hour that comes twice when the clocks go back is the later of the
        two if that one is not after the message was ``received`` (give or take
        :data:`CLOCK_DRIFT`): analysers send what they measure within minutes, and the
        earlier reading would date a result of the second hour an hour early. A time of a
        specimen or of its order (collected, received, analysed, ordered) is moreover not
        read after the last of the specimen's results: stamped in the first hour and sent
        in the second, it would come after them."""
        problems = list(self.problems)
        latest = received + CLOCK_DRIFT if received is not None else None

        def utc(
            moment: datetime | None, what: Callable[[], str], before: datetime | None = None
        ) -> datetime | None:
            if moment is None or moment.tzinfo is not None:
                return moment
            try:
                first = moment.replace(tzinfo=zone).astimezone(UTC)
                if latest is not None:
                    second = moment.replace(tzinfo=zone, fold=1).astimezone(UTC)
                    if first < second <= (latest if before is None else min(latest, before)):
                        return second
                return first
            except OverflowError:  # year 1 east of UTC, year 9999 west of it
                problems.append(
                    f"{what()} {moment.isoformat(sep=' ')} in {zone} cannot be given in UTC;"
                    " left out"
                )
                return None

        def result(r: Result) -> Result:
            if r.completed_at is None or r.completed_at.tzinfo is not None:
                return r

            def what() -> str:
                return f"result {r.test_code} of {r.specimen_id or '?'}: completed"

            return replace(r, completed_at=utc(r.completed_at, what))

        results = [result(r) for r in self.results]
        controls = [replace(c, result=result(c.result)) for c in self.controls]
        # By specimen id: specimens without one are not told apart, and bound nothing.
        last_result: dict[str, datetime] = {}
        for r in [*results, *(c.result for c in controls)]:
            if r.completed_at is not None and r.specimen_id:
                known = last_result.get(r.specimen_id)
                last_result[r.specimen_id] = (
                    r.completed_at if known is None else max(known, r.completed_at)
                )

        def specimen(s: Specimen) -> Specimen:
            what = f"specimen {s.specimen_id or '?'}:"
            before = last_result.get(s.specimen_id)
            return replace(
                s,
                collected_at=utc(s.collected_at, lambda: f"{what} collected", before),
                received_at=utc(s.received_at, lambda: f"{what} received", before),
                analysed_at=utc(s.analysed_at, lambda: f"{what} analysed", before),
            )

        def order(o: Order) -> Order:
            what = f"order of {o.specimen_id or '?'}: ordered"
            before = last_result.get(o.specimen_id)
            return replace(o, ordered_at=utc(o.ordered_at, lambda: what, before))

        return replace(
            self,
            specimens=[specimen(s) for s in self.specimens],
            results=results,
            controls=controls,
            orders=[order(o) for o in self.orders],
            problems=problems,
        )

    def measurements(self) -> list[tuple[Result, ControlResult | None]]:
        """Patient and control results together, in the order the analyser sent them."""
        both = [(r, None) for r in self.results] + [(c.result, c) for c in self.controls]
        return sorted(both, key=lambda pair: pair[0].record_index)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Something received that could not be decoded or mapped, kept raw with the reason."""

    connection: str
    reason: str
    raw: bytes
    received_at: datetime
    instrument: str = ""
