"""Results as HL7 v2.5.1 (or v2.3.1) ORU^R01, or v2.5.1 OUL^R22, for the laboratory
information system.

Built as plain text in our own code (a message of twenty observations is a string join,
not an object tree); the tests check every message built from the captures against
hl7apy's strict validation. One message per specimen and instrument: each result an OBX
followed by what must travel with it (accept-with-reservation comments, the analyser's
comments, the reagent lots that made it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from middleware.domain import Patient, ReagentUse, Result
from middleware.hl7.segments import can_carry

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


# Any of the above: most values have none, and go as they are.
_TO_ESCAPE = re.compile(r"[\\|^&~\x00-\x1f\x7f]")


def escape(text: str) -> str:
    """Text as an HL7 field value: delimiters escaped, line breaks as ``\\.br\\``, other
    control characters left out."""
    if not _TO_ESCAPE.search(text):
        return text
    text = _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\.br\\")
    return _CONTROL.sub("", text.replace("\t", " "))


def new_control_id() -> str:
    """A message control id (MSH-10), unique across daemons and restarts: 20 characters,
    the most HL7 v2.3 allows."""
    return "MW" + secrets.token_hex(9).upper()


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
class CatalogEntry:
    """How the LIS knows one of the laboratory's tests (``lis.tests`` in the configuration)."""

    name: str = ""
    """OBX-3's text."""
    code: str = ""
    """The LIS's code (a LOINC code, say) when it is not the laboratory's; the laboratory's
    code then follows as the alternate identifier."""
    coding_system: str = "L"
    """HL7 table 0396: ``LN`` for LOINC, ``L`` for a local code."""
    method: str = ""
    """OBX-17, the observation method."""


@dataclass(frozen=True, slots=True)
class PerformingLab:
    """OBX-23 to OBX-25 (v2.5.1): who produced the results, as a report must say."""

    name: str
    street: str = ""
    city: str = ""
    postal_code: str = ""
    country: str = ""
    director_id: str = ""
    director_family_name: str = ""
    director_given_name: str = ""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends what to whom: MSH-3 to MSH-6, the message type and version, and what the
    laboratory configured to go with each result."""

    application: str = "LIS-MIDDLEWARE"
    facility: str = "LAB"
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    version: str = "2.5.1"
    """2.5.1, or 2.3.1 for an older LIS: no OBX-18 (instrument), OBX-19 (analysis time)
    or OBX-23..25 (performing laboratory) there, OBX-4 (sub-id) given, and MSH-9 without
    its message structure."""
    message_type: str = "ORU^R01"
    """ORU^R01, or OUL^R22 (v2.5.1 only: IHE's laboratory results with specimen)."""
    review_status: str = "F"
    """OBX-11 of a released result sent again because a later QC failure put it under
    review: F with the note (default), or C for a LIS that takes it as a correction."""
    reagent_lots: str = "note"
    """How an ORU^R01 carries the reagent lots of a result: ``note`` (an NTE after it) or
    ``observation`` (an OBX of its own, with the result's OBX-4 sub-id). OUL^R22 carries
    them in SID segments, whatever this says."""
    tests: Mapping[str, CatalogEntry] = field(default_factory=dict)
    """Names, LIS codes and methods of the laboratory's tests, by laboratory code."""
    performing_lab: PerformingLab | None = None


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
    """One message per specimen and instrument of ``reported``, of the sender's type, in
    the order their first results come, each with the patient of ``patients`` its results
    name."""
    build = oul_r22 if sender.message_type == "OUL^R22" else oru_r01
    groups: dict[tuple[str, str], list[Reported]] = {}
    for item in reported:
        groups.setdefault((item.result.specimen_id, item.result.instrument), []).append(item)
    built = []
    for (specimen, instrument), items in groups.items():
        patient_id = items[0].result.patient_id
        patient = next((p for p in patients if p.patient_id == patient_id), None)
        control_id = next_control_id()
        message = build(control_id, at, specimen, patient, items, sender)
        built.append(Built(specimen, instrument, control_id, message))
    return built


#: The longest ST HL7 v2.5.1 allows (a strict LIS refuses more).
_ST_LONGEST = 199


def value_type(result: Result) -> tuple[str, str]:
    """OBX-2 and OBX-5: NM for a number, SN for a censored one (``<^15``), ST for text,
    FT for text longer than an ST or on several lines (the line break escape is
    formatting, which only FT has)."""
    value = result.value
    if value.number is not None:
        # Plain digits: HL7's NM has no exponent (Decimal would write 1.2E+3).
        number = format(value.number, "f")
        return ("SN", f"{value.censor}{COMPONENT}{number}") if value.censor else ("NM", number)
    text = escape(value.text)
    lines = "\n" in value.text or "\r" in value.text
    return ("FT" if lines or len(text) > _ST_LONGEST else "ST"), text


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
    structure = "" if sender.version == "2.3.1" else "ORU_R01"
    segments = [
        _msh("ORU^R01", structure, control_id, at, sender, processing_id),
        _pid(patient, reported[0].result.patient_id),
        _obr(specimen_id, reported, at),
    ]
    number = 0
    for item in reported:
        number += 1
        sub_id = ""
        lots = _lots(item.result)
        if sender.version == "2.3.1":
            sub_id = "1"  # required there
        if sender.reagent_lots == "observation" and lots:
            sub_id = str(number)  # ties the lots' OBX to their result
        segments.append(_obx(number, item, sender, sub_id))
        if sender.reagent_lots == "observation":
            # The result's notes stay right after it: an NTE belongs to the OBX before it.
            segments += _ntes(_notes(item))
            # Each lot its own sub-id under its result's (1.1, 1.2): OBX-3 and OBX-4 must
            # tell apart the observations of one OBR, or a LIS keeps one lot of two.
            for lot_number, use in enumerate(lots, start=1):
                number += 1
                segments.append(_lot_obx(number, f"{sub_id}.{lot_number}", use, item))
        else:
            segments += _ntes([*_notes(item), *(_lot_note(use) for use in lots)])
    return _declare_charset("\r".join(segments), sender.version)


def oul_r22(
    control_id: str,
    at: datetime,
    specimen_id: str,
    patient: Patient | None,
    reported: Sequence[Reported],
    sender: Sender = Sender(),
    processing_id: str = "P",
) -> str:
    """The OUL^R22 (HL7 v2.5.1, IHE laboratory) of one specimen's results: the specimen
    (SPM) and its container (SAC), then the order with each result's OBX, the reagent
    lots that made it (SID: lot, and the reagent as its method) and its notes."""
    if not reported:
        raise ValueError("an OUL^R22 needs at least one result")
    if sender.version != "2.5.1":
        raise ValueError(f"OUL^R22 is HL7 v2.5.1; cannot build it in {sender.version}")
    specimen = escape(specimen_id)
    segments = [
        _msh("OUL^R22", "OUL_R22", control_id, at, sender, processing_id),
        _pid(patient, reported[0].result.patient_id),
        # SPM-4 (specimen type) is required; the analyser does not say it: HL7's null.
        _segment("SPM", "1", specimen, "", NULL),
        _segment("SAC", "", "", specimen),
        _obr(specimen_id, reported, at),
    ]
    for number, item in enumerate(reported, start=1):
        segments.append(_obx(number, item, sender, ""))
        segments += [
            _segment(
                "SID",
                f"{escape(use.reagent)}{COMPONENT}{COMPONENT}L",
                escape(use.lot),
                escape(use.serial),
            )
            for use in _lots(item.result)
        ]
        segments += _ntes([*_notes(item), *(_lot_note(u) for u in _lots(item.result) if u.expiry)])
    return _declare_charset("\r".join(segments), "2.5.1")


def _msh(
    message_type: str,
    structure: str,
    control_id: str,
    at: datetime,
    sender: Sender,
    processing_id: str,
) -> str:
    return _segment(
        "MSH",
        f"{COMPONENT}{REPETITION}{ESCAPE}{SUBCOMPONENT}",
        escape(sender.application),
        escape(sender.facility),
        escape(sender.receiving_application),
        escape(sender.receiving_facility),
        timestamp(at),
        "",
        message_type + (f"{COMPONENT}{structure}" if structure else ""),
        escape(control_id),
        processing_id,
        sender.version,
    )


def _declare_charset(text: str, version: str) -> str:
    """MSH-18 for text that is not ASCII, for the LIS to read µmol/L as written: UTF-8,
    but 8859/1 in 2.3.1, whose table 0211 has no UTF-8 (an older LIS would read the
    bytes as 8859/1 and show Âµmol/L), unless the text holds a character 8859/1 has not."""
    if text.isascii():
        return text
    charset = "UNICODE UTF-8"
    if version == "2.3.1" and can_carry(text, "latin-1"):
        charset = "8859/1"
    msh, rest = text.split("\r", 1)
    fields = msh.split(FIELD)
    fields += [""] * (18 - len(fields))
    fields[17] = charset
    return FIELD.join(fields) + "\r" + rest


def _obr(specimen_id: str, reported: Sequence[Reported], at: datetime) -> str:
    """OBR-7 when the first result was made; OBR-22, when the report's status (OBR-25)
    was set, is when this message was made (a LIS may order reports by it)."""
    instrument = reported[0].result.instrument
    completed = [r.result.completed_at for r in reported if r.result.completed_at is not None]
    return _segment(
        "OBR",
        "1",
        "",
        escape(specimen_id),
        f"{escape(instrument)}{COMPONENT}{escape(instrument)} results{COMPONENT}L",
        "",
        "",
        timestamp(min(completed) if completed else None),
        *([""] * 14),
        timestamp(at),
        "",
        "",
        _report_status({r.status for r in reported}),
    )


def _lots(result: Result) -> list[ReagentUse]:
    return [use for use in result.reagents if use.lot]


def _lot_note(use: ReagentUse) -> str:
    expiry = f" expiry {use.expiry.isoformat()}" if use.expiry else ""
    return f"reagent {use.reagent} lot {use.lot}{expiry}"


def _notes(item: Reported) -> list[str]:
    return [*item.comments, *(c.text for c in item.result.comments)]


def _ntes(notes: Sequence[str]) -> list[str]:
    return [_segment("NTE", str(i), "L", escape(text)) for i, text in enumerate(notes, start=1)]


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


def _observation_id(test_code: str, sender: Sender) -> str:
    """OBX-3: the laboratory's code, or the LIS's with the laboratory's as alternate."""
    entry = sender.tests.get(test_code, _UNNAMED)
    name = escape(entry.name)
    if entry.code and entry.code != test_code:
        return COMPONENT.join(
            (escape(entry.code), name, escape(entry.coding_system), escape(test_code), "", "L")
        )
    return COMPONENT.join((escape(test_code), name, escape(entry.coding_system)))


_UNNAMED = CatalogEntry()


def _obx(number: int, item: Reported, sender: Sender, sub_id: str) -> str:
    result = item.result
    kind, value = value_type(result)
    if item.status == "X":
        value = ""
    equipment = escape(result.instrument)
    if result.module:
        equipment += REPETITION + escape(f"{result.instrument}/{result.module}")
    method = sender.tests.get(result.test_code, _UNNAMED).method
    fields = [
        str(number),
        kind,
        _observation_id(result.test_code, sender),
        sub_id,
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
        f"{escape(method)}{COMPONENT}{COMPONENT}L" if method else "",
    ]
    if sender.version != "2.3.1":
        # OBX-18, OBX-19, three reserved fields, then the performing laboratory.
        fields += [equipment, timestamp(result.completed_at), "", "", ""]
        fields += _performing_lab(sender.performing_lab)
    return _segment("OBX", *fields)


def _lot_obx(number: int, sub_id: str, use: ReagentUse, item: Reported) -> str:
    """A reagent lot as an observation of its own, after the result it made."""
    return _segment(
        "OBX",
        str(number),
        "ST",
        f"REAGENT-LOT{COMPONENT}reagent lot{COMPONENT}L",
        sub_id,
        escape(_lot_note(use).removeprefix("reagent ")),
        *([""] * 5),
        item.status,
    )


def _performing_lab(lab: PerformingLab | None) -> list[str]:
    """OBX-23 (XON), OBX-24 (XAD), OBX-25 (XCN)."""
    if lab is None:
        return []
    address = COMPONENT.join(
        (escape(lab.street), "", escape(lab.city), "", escape(lab.postal_code), escape(lab.country))
    )
    director = COMPONENT.join(
        (
            escape(lab.director_id),
            escape(lab.director_family_name),
            escape(lab.director_given_name),
        )
    )
    return [escape(lab.name), address.rstrip(COMPONENT), director.rstrip(COMPONENT)]
