"""Mindray BC series haematology analysers and the models made on them for other brands
(Erba ELite 580), with the LIS interface set to HL7.

Read from a real capture of an Erba ELite 580 (``../shared/corpus/hl7/``), after the
layout of Mindray's HL7 v2.3.1 host interface:

* MSH-3 is the model (``ELite 580``, ``BC-5380``), MSH-4 the maker; MSH-11 is P for
  patient samples and Q for quality control.
* OBR-3 is the sample id; OBR-7 the time it was measured.
* OBX-3 is ``code^parameter name^coding system``: LOINC where one exists (``6690-2^WBC^LN``)
  and Mindray's own codes otherwise (``11003^PCT^99MRC``). The parameter name is the test,
  as the analyser prints it; a leading ``*`` marks a research-use parameter.
* Results are OBX-2 NM, or IS from older firmware that types every observation IS: a
  number, its units, or ``*****`` where the analyser could give no value (kept as that
  text, never as a number, and said).
* Other observations say how the sample was run (``Take Mode``, ``Blood Mode``, ``Test
  Mode``, ``Ref Group``, ``Remark``), known by their codes, which differ between firmware
  (Take Mode is ``02001`` on the ELite, ``08001`` on a BC-3000, BC-5000 or BC-5300, whose
  Remark is ``01001`` typed ST), or else by their names: kept as the sample's comments. An
  attribute left empty (``Age``) is nothing to keep.
* Suspect flags (``Lymphocytosis``, ``Atypical Lymphs?``) are IS, T (raised) or F (not),
  without units, coded by Mindray or by LOINC (``15199-3^Microcytes``): the raised ones are
  given to every result of the sample as instrument flags. An IS observation that is no
  result, attribute nor flag is a problem of the message.
* OBX-7 is ``low-high``; OBX-8 the abnormal flag then A/N (``H~A``, ``~N``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import ClassVar

from drivers.codes import HAEMATOLOGY
from drivers.hl7 import Hl7Driver, Observation, Request
from middleware.domain import Comment, Measurement, Result
from middleware.hl7.segments import Hl7Message, Segment

#: OBX-3 codes (Mindray's and LOINC) of what describes the sample rather than measures it.
#: Mindray's differ between firmware: the ELite's Take Mode is 02001, a BC-5000's 08001.
_ATTRIBUTES = frozenset({
    "02001", "02002", "02003", "03001", "09001",  # ELite 580
    "08001", "08002", "08003", "01002", "01001",  # BC-3000, BC-5000, BC-5300
    "30525-0",  # LOINC: age
})  # fmt: skip
#: Their names (OBX-3.2), the same on every firmware seen, for one whose codes are not above.
_ATTRIBUTE_NAMES = frozenset({"TAKE MODE", "BLOOD MODE", "TEST MODE", "REF GROUP", "REMARK", "AGE"})
#: Mindray's coding system for what LOINC has no code for.
_CODING_SYSTEM = "99MRC"
#: A suspect flag's value: raised (T) or not (F).
_RAISED, _NOT_RAISED = "T", "F"
#: What a BC writes for a parameter it could not give (a count too low to make a
#: differential of).
_NO_VALUE = re.compile(r"\*+")


def _is_attribute(observation: Observation) -> bool:
    obx = observation.obx
    name = " ".join(obx.value(3, 2).split()).upper()
    return obx.value(3) in _ATTRIBUTES or name in _ATTRIBUTE_NAMES


def _is_flag(observation: Observation) -> bool:
    """A suspect flag: IS, T or F, no units. Older firmware types its results IS too (with
    units, a number or ``*****``), and LOINC codes flags as well as results (15199-3
    Microcytes), so neither the type nor the code tells them apart."""
    obx = observation.obx
    return (
        obx.value(2).upper() == "IS"
        and not _is_attribute(observation)
        and not obx.value(6).strip()
        and obx.text(5).strip().upper() in (_RAISED, _NOT_RAISED)
    )


def _is_measured(observation: Observation) -> bool:
    """A result: any OBX but IS; an IS one with units, a number or ``*****``."""
    obx = observation.obx
    if obx.value(2).upper() != "IS":
        return True
    text = obx.text(5).strip()
    value, refused = Measurement.read(text)
    return bool(
        obx.value(6).strip() or value.number is not None or refused or _NO_VALUE.fullmatch(text)
    )


class MindrayHl7Driver(Hl7Driver):
    name = "mindray_hl7"
    description = "Mindray BC series haematology and its OEM models (Erba ELite 580), HL7 mode"
    sender_pattern = re.compile(r"^(?:BC-\d{4}|ELite\s*\d)", re.IGNORECASE)
    test_map: ClassVar[Mapping[str, str]] = HAEMATOLOGY
    codes_any_case = True

    @classmethod
    def score(cls, message: Hl7Message) -> tuple[int, str]:
        coded = [
            s for s in message.segments if s.name in ("OBR", "OBX") and _CODING_SYSTEM in
            (s.value(4, 3) if s.name == "OBR" else s.value(3, 3))
        ]  # fmt: skip
        if not coded:
            return 0, ""
        return 3, f"{len(coded)} segments coded in {_CODING_SYSTEM} (Mindray's codes)"

    def specimen_id(self, request: Request) -> str:
        return request.obr.value(3) if request.obr is not None else ""

    def instrument_test_code(self, obx: Segment) -> str:
        return obx.value(3, 2) or obx.value(3)

    def is_result(self, observation: Observation) -> bool:
        return (
            not _is_attribute(observation)
            and not _is_flag(observation)
            and _is_measured(observation)
        )

    def _result(
        self, observation: Observation, request: Request, specimen_id: str, index: int
    ) -> Result | None:
        result = super()._result(observation, request, specimen_id, index)
        obx = observation.obx
        if result is None or obx.value(2).upper() != "IS":
            return result
        # An IS result is a number to the BC as an NM one is, and the base reading says so
        # of NM only. ``*****`` is none it could give: kept as written, for a person to see,
        # rather than left out or taken as a number.
        text = result.value.text.strip()
        if _NO_VALUE.fullmatch(text):
            self._problems.append(
                f"{obx.where(5)}: {text[:40]!r}, no value the analyser could give; kept as text"
            )
        elif text and result.value.number is None and not Measurement.read(text)[1]:
            self._problems.append(f"{obx.where(5)}: {text[:40]!r} is not a number; kept as text")
        return result

    def sample_comments(self, request: Request) -> list[Comment]:
        said = super().sample_comments(request)
        for observation in request.observations:
            obx = observation.obx
            if _is_attribute(observation) and obx.text(5):
                what = obx.value(3, 2) or obx.value(3)
                said.append(Comment(f"{what}: {obx.text(5)}", "instrument", "attribute"))
        return said

    def finish(self, request: Request, results: list[Result]) -> Iterable[Result]:
        for o in request.observations:
            if not (_is_attribute(o) or _is_flag(o) or _is_measured(o)):
                obx = o.obx
                self._problems.append(
                    f"{obx.where(3)}: {obx.value(3, 2) or obx.value(3) or '?'} = "
                    f"{obx.text(5)[:40]!r} is neither a result (no units, no number), a "
                    "suspect flag (T or F) nor a known run attribute; not read"
                )
        flags = tuple(
            o.obx.value(3, 2) or o.obx.value(3)
            for o in request.observations
            if _is_flag(o) and o.obx.text(5).strip().upper() == _RAISED
        )
        if not flags:
            return results
        return [replace(r, instrument_flags=(*r.instrument_flags, *flags)) for r in results]
