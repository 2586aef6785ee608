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
* Besides numeric results (OBX-2 NM), IS observations say how the sample was run
  (``Take Mode``, ``Blood Mode``, ``Test Mode``, ``Ref Group``, ``Remark``) and which
  suspect flags were raised (``Lymphocytosis``, ``Atypical Lymphs?``, value ``T``). The
  first are kept as the sample's comments, the flags given to every result of the sample
  as instrument flags. An attribute left empty (``Age``) is nothing to keep.
* OBX-7 is ``low-high``; OBX-8 the abnormal flag then A/N (``H~A``, ``~N``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import ClassVar

from drivers.codes import HAEMATOLOGY
from drivers.hl7 import Hl7Driver, Observation, Request
from middleware.domain import Comment, Result
from middleware.hl7.segments import Hl7Message, Segment

#: OBX-3 codes (Mindray's and LOINC) of what describes the sample rather than measures it.
_ATTRIBUTES = frozenset({"02001", "02002", "02003", "03001", "09001", "30525-0"})
#: Mindray's coding system for what LOINC has no code for.
_CODING_SYSTEM = "99MRC"


def _is_flag(observation: Observation) -> bool:
    obx = observation.obx
    return obx.value(2).upper() == "IS" and obx.value(3) not in _ATTRIBUTES


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
        return observation.obx.value(3) not in _ATTRIBUTES and not _is_flag(observation)

    def sample_comments(self, request: Request) -> list[Comment]:
        said = super().sample_comments(request)
        for observation in request.observations:
            obx = observation.obx
            if obx.value(3) in _ATTRIBUTES and obx.text(5):
                said.append(Comment(f"{obx.value(3, 2)}: {obx.text(5)}", "instrument", "attribute"))
        return said

    def finish(self, request: Request, results: list[Result]) -> Iterable[Result]:
        flags = tuple(
            o.obx.value(3, 2) or o.obx.value(3)
            for o in request.observations
            if _is_flag(o) and o.obx.value(5).upper() == "T"
        )
        if not flags:
            return results
        return [replace(r, instrument_flags=(*r.instrument_flags, *flags)) for r in results]
