"""PixCell HemoScreen point-of-care haematology analyser, HL7 v2.4 (ORU^R01).

After the layout of real HemoScreen messages published by another project (read, not
copied):

* MSH-3 = ``HemoScreen``, MSH-4 = ``PixCell``.
* PID-2 is the id typed or scanned at the analyser: the sample's id (and, for a control
  run, the control's lot). There is no OBR-2, OBR-3 or SPM.
* OBR-4 says what was run: ``OBS`` a patient sample, ``LQC`` (and by the same pattern
  ``NQC``, ``HQC``) a quality-control level, ``PRF`` a proficiency-testing sample; OBR-7
  when it was measured.
* OBX-1 counts from 0; OBX-3 the parameter (``WBC``, ``NEU#``, ``LYM%``); OBX-5 a number,
  or text (OBX-2 ST) where none could be given (``LL``, ``---``); OBX-14 the time; OBX-15
  the analyser's serial number.
* OBX-8 ``*`` marks a result that abnormal cells may affect, said in the NTE that follows:
  an instrument flag, not an abnormality, so kept as the result's instrument flag.

Control and proficiency-testing runs are not patient results: they are read as controls
(a proficiency sample under the material ``proficiency testing``), never released.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import ClassVar

from drivers.base import ControlInfo
from drivers.codes import HAEMATOLOGY
from drivers.hl7 import Hl7Driver, Request
from middleware.domain import Result
from middleware.hl7.segments import Hl7Message, Segment

_QC_LEVEL = re.compile(r"^([LNH])QC$")
_LEVELS = {"L": "low", "N": "normal", "H": "high"}
_SUSPECT = "*"


class PixCellHemoScreenDriver(Hl7Driver):
    name = "pixcell_hemoscreen"
    description = "PixCell HemoScreen (point-of-care haematology), HL7"
    sender_pattern = re.compile(r"^HemoScreen\b|\bPixCell\b", re.IGNORECASE)
    test_map: ClassVar[Mapping[str, str]] = HAEMATOLOGY

    def specimen_id(self, request: Request) -> str:
        return request.patient.value(2) if request.patient is not None else ""

    def control(
        self, message: Hl7Message, request: Request, specimen_id: str
    ) -> ControlInfo | None:
        run = request.obr.value(4).upper() if request.obr is not None else ""
        level = _QC_LEVEL.match(run)
        if level:
            return ControlInfo("HemoScreen control", specimen_id, _LEVELS[level.group(1)])
        if run == "PRF":
            return ControlInfo("proficiency testing", specimen_id)
        return super().control(message, request, specimen_id)

    def flags(self, obx: Segment) -> tuple[str, ...]:
        return tuple(f for f in super().flags(obx) if f != _SUSPECT)

    def module(self, obx: Segment) -> str:
        return obx.value(15)

    def finish(self, request: Request, results: list[Result]) -> Iterable[Result]:
        suspect = {
            o.obx.value(1).strip()
            for o in request.observations
            if any(rep[0] == _SUSPECT for rep in o.obx.repeats(8))
        }
        return [
            replace(r, instrument_flags=(*r.instrument_flags, _SUSPECT))
            if str(r.sequence) in suspect
            else r
            for r in results
        ]
