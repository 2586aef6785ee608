"""Mindray BC series haematology analysers (BC-5000, BC-5150, BC-5380, BC-5390, BC-6200,
BC-6800...) with the LIS interface set to ASTM.

No capture of a BC in ASTM mode was at hand. The layout is that of Mindray's host
interface in its ASTM form, as the BC series shares it with Mindray's other ASTM analysers
(see drivers/mindray_bs.py, read from a real BS-240 capture); check it against a capture
of the site's own analyser before relying on it:

* H.5 = model^software version^serial number (``BC-5380^01.02.00.1234^WT-12345678``);
  H.12 says what the message holds: ``PR`` patient results, ``QR`` quality-control
  results (a plain ``Q`` is taken the same way).
* O.3 is the sample id (the barcode, or the number typed at the analyser).
* R.3 carries the parameter's name and its LOINC code (``^^^WBC^6690-2``); the name is
  taken as whichever component is not a LOINC code, so that either order reads.
* Parameter names as the analyser prints them (NEU#, LYM%, RDW-CV...); R.7 is L, H or N.
* Nothing known marks a control's lot or level: a QC result's material is its sample id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from drivers.base import Context, ControlInfo, Driver, ResultRecords
from drivers.codes import HAEMATOLOGY
from middleware.astm.records import Record

_LOINC = re.compile(r"^\d{1,7}-\d$")


class MindrayBCDriver(Driver):
    name = "mindray_bc"
    description = "Mindray BC series haematology (BC-5xxx, BC-6xxx), ASTM mode"
    sender_pattern = re.compile(r"^BC-[56]\d{3}", re.I)
    test_map: ClassVar[Mapping[str, str]] = HAEMATOLOGY
    # The screens write the differential Neu#, Lym%; the printouts and the LIS NEU#, LYM%.
    codes_any_case = True

    def instrument_test_code(self, result: Record) -> str:
        named = [c for c in result.components(3) if c and not _LOINC.match(c)]
        return named[0] if named else super().instrument_test_code(result)

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        header = context.header
        if header is not None and header.value(12).startswith("Q"):
            return ControlInfo(material=context.specimen_id)
        return super().control_info(context, group)
