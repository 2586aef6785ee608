"""Results as HL7 v2.5.1 (or v2.3.1) ORU^R01 for the laboratory information system.

Built as plain text in our own code (a message of twenty observations is a string join,
not an object tree); the tests check every message built from the captures against
hl7apy's strict validation. One message per specimen: PID, then one OBR for the
specimen's results from one instrument, each result an OBX followed by NTE segments for
what must travel with it (accept-with-reservation comments, the analyser's comments, the
reagent lots that made it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from middleware.domain import Patient, Result

#: HL7's delimiters as this builder writes them (MSH-1 and MSH-2).
FIELD, COMPONENT, REPETITION, ESCAPE, SUBCOMPONENT = "|", "^", "~", "\\", "&"
_ESCAPES = {
    ESCAPE: "\\E\\",
    FIELD: "\\F\\",
    COMPONENT: "\\S\\",
    SUBCOMPONENT: "\\T\\",
    REPETITION: "\\R\\",
}
_SPECIAL = re.compile(r"[\\|^&~]")
# What is left out of text: control characters (a CR would end the segment), and the MLLP
# framing bytes among them.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def escape(text: str) -> str:
    """Text as an HL7 field value: delimiters escaped, line breaks as ``\\.br\\``, other
    control characters left out."""
    text = _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\.br\\")
    return _CONTROL.sub("", text.replace("\t", " "))


def timestamp(moment: datetime | None) -> str:
    """A DTM in UTC with its offset, to the second: ``20261130110500+0000``."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _day(day: date | None) -> str:
    return day.strftime("%Y%m%d") if day else ""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends and who receives (MSH-3 to MSH-6)."""

    application: str = "LIS-MIDDLEWARE"
    facility: str = "LAB"
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    version: str = "2.5.1"
    """2.5.1, or 2.3.1 for an older LIS: no OBX-18 (instrument) or OBX-19 (analysis
    time) there, OBX-4 (sub-id) given, and MSH-9 without its message structure."""
    review_status: str = "F"
    """OBX-11 of a released result sent again because a later QC failure put it under
    review: F with the note (default), or C for a LIS that takes it as a correction."""


@dataclass(frozen=True, slots=True)
class Reported:
    """A result as it goes to the LIS."""

    result: Result
    status: str = "F"
    """OBX-11: F final, P preliminary, C corrected, X not obtained (a rejected sample:
    sent without its value)."""
    comments: tuple[str, ...] = ()
    """What must travel with it (accept-with-reservation comments)."""


@dataclass(frozen=True, slots=True)
class Built:
    """One message built, with what the outbox keeps beside it."""

    specimen_id: str
    instrument: str
    control_id: str
    message: str


def by_specimen(
    reported: Iterable[Reported],
    patients: Sequence[Patient],
    at: datetime,
    sender: Sender,
    next_control_id: Callable[[], str],
) -> list[Built]:
    """One ORU^R01 per specimen and instrument of ``reported``, in the order their first
    results come, each with the patient of ``patients`` its results name."""
    groups: dict[tuple[str, str], list[Reported]] = {}
    for item in reported:
        groups.setdefault((item.result.specimen_id, item.result.instrument), []).append(item)
    built = []
    for (specimen, instrument), items in groups.items():
        patient_id = items[0].result.patient_id
        patient = next((p for p in patients if p.patient_id == patient_id), None)
        control_id = next_control_id()
        message = oru_r01(control_id, at, specimen, patient, items, sender)
        built.append(Built(specimen, instrument, control_id, message))
    return built


def value_type(result: Result) -> tuple[str, str]:
    """OBX-2 and OBX-5: NM for a number, SN for a censored one (``<^15``), ST for text."""
    value = result.value
    if value.number is not None:
        # Plain digits: HL7's NM has no exponent (Decimal would write 1.2E+3).
        number = format(value.number, "f")
        return ("SN", f"{value.censor}{COMPONENT}{number}") if value.censor else ("NM", number)
    return "ST", escape(value.text)


def _segment(name: str, *fields: str) -> str:
    trimmed = list(fields)
    while trimmed and not trimmed[-1]:
        trimmed.pop()
    return FIELD.join((name, *trimmed))


def oru_r01(
    control_id: str,
    at: datetime,
    specimen_id: str,
    patient: Patient | None,
    reported: Sequence[Reported],
    sender: Sender = Sender(),
    processing_id: str = "P",
) -> str:
    """The ORU^R01 of one specimen's results, segments separated by CR. ``control_id``
    (MSH-10) must be unique: the LIS's ACK names it."""
    if not reported:
        raise ValueError("an ORU^R01 needs at least one result")
    results = [r.result for r in reported]
    instrument = results[0].instrument
    segments = [
        _segment(
            "MSH",
            f"{COMPONENT}{REPETITION}{ESCAPE}{SUBCOMPONENT}",
            escape(sender.application),
            escape(sender.facility),
            escape(sender.receiving_application),
            escape(sender.receiving_facility),
            timestamp(at),
            "",
            f"ORU{COMPONENT}R01" + (f"{COMPONENT}ORU_R01" if sender.version != "2.3.1" else ""),
            escape(control_id),
            processing_id,
            sender.version,
        ),
        _pid(patient, results[0].patient_id),
    ]
    completed = [r.completed_at for r in results if r.completed_at is not None]
    statuses = {r.status for r in reported}
    segments.append(
        _segment(
            "OBR",
            "1",
            "",
            escape(specimen_id),
            f"{escape(instrument)}{COMPONENT}{escape(instrument)} results{COMPONENT}L",
            "",
            "",
            timestamp(min(completed) if completed else None),
            *([""] * 17),
            _report_status(statuses),
        )
    )
    for number, item in enumerate(reported, start=1):
        segments.append(_obx(number, item, sender.version))
        notes = [
            *item.comments,
            *(c.text for c in item.result.comments),
            *(
                f"reagent {use.reagent} lot {use.lot}"
                + (f" expiry {use.expiry.isoformat()}" if use.expiry else "")
                for use in item.result.reagents
                if use.lot
            ),
        ]
        segments += [
            _segment("NTE", str(i), "L", escape(text)) for i, text in enumerate(notes, start=1)
        ]
    text = "\r".join(segments)
    if not text.isascii():
        # Sent as UTF-8: MSH-18 says so, for the LIS to read µmol/L as written.
        msh, rest = text.split("\r", 1)
        fields = msh.split(FIELD)
        fields += [""] * (18 - len(fields))
        fields[17] = "UNICODE UTF-8"
        text = FIELD.join(fields) + "\r" + rest
    return text


#: HL7's explicit null: the field is required and known to be empty.
NULL = '""'


def _report_status(statuses: set[str]) -> str:
    """OBR-25: corrected or preliminary when one result is; X when none was obtained."""
    for status in ("C", "P"):
        if status in statuses:
            return status
    return "X" if statuses == {"X"} else "F"


def _pid(patient: Patient | None, patient_id: str) -> str:
    identifier = (patient.patient_id if patient else "") or patient_id
    return _segment(
        "PID",
        "1",
        "",
        # Required; an analyser may not know the patient: the LIS matches the specimen.
        f"{escape(identifier)}{COMPONENT * 4}MR" if identifier else f"UNKNOWN{COMPONENT * 4}U",
        "",
        NULL,  # required, and the middleware never holds a patient's name
        "",
        _day(patient.birth_date) if patient else "",
        escape(patient.sex) if patient and patient.sex in ("M", "F") else "",
    )


def _obx(number: int, item: Reported, version: str) -> str:
    result = item.result
    kind, value = value_type(result)
    if item.status == "X":
        value = ""
    equipment = escape(result.instrument)
    if result.module:
        equipment += REPETITION + escape(f"{result.instrument}/{result.module}")
    return _segment(
        "OBX",
        str(number),
        kind,
        f"{escape(result.test_code)}{COMPONENT}{COMPONENT}L",
        "1" if version == "2.3.1" else "",  # OBX-4, required in 2.3.1
        value,
        escape(result.units),
        escape(result.reference_range),
        REPETITION.join(escape(flag) for flag in result.abnormal_flags),
        "",
        "",
        item.status,
        "",
        "",
        timestamp(result.completed_at),
        "",
        escape(result.operator),
        *(("", equipment, timestamp(result.completed_at)) if version != "2.3.1" else ()),
    )
