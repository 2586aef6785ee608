"""Mindray BS series chemistry analysers (BS-240, BS-380, BS-480...), ASTM host protocol.

Layout as the BS-240 in the corpus sends it (astm/mindray-bs240_log.txt), which follows
Mindray's BS-series ASTM host interface:

* H.5 is ``Mindry`` (sic) and H.12 says what the message holds: ``PR`` patient results,
  ``QR`` quality-control results.
* A whole message travels in one frame of up to about 2,600 characters.
* Patient messages: O.3 = sample no.^disk^position, O.4 = the barcode (the lab's specimen
  id); R.3 = test code^test name^^F, calculated items carry the name only
  (``^A/G^^F``); the value is in R.4 and again in R.10; the only time is R.12.
* QC messages have no R record: the O record is the result. O.5 = test code^name, O.7 =
  when the control ran, O.12 = control no.^control name^lot^expiry^target mean^level
  (H/M/L; M for both controls of the capture)^target SD^measured value. The expiry,
  target mean and SD have no place in a control result and are not kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import ClassVar

from drivers.base import Context, ControlInfo, Driver, ResultRecords, field_name
from middleware.astm.frames import FrameTolerances
from middleware.astm.records import Record
from middleware.domain import InstrumentMessage, Specimen

# O.12 of a QC order, component by component (0-based).
_CONTROL_NAME, _CONTROL_LOT, _CONTROL_LEVEL, _MEASURED = 1, 2, 5, 7


def _is_qc(header: Record | None) -> bool:
    return header is not None and header.value(12).startswith("Q")


def _control_block(order: Record) -> tuple[str, ...] | None:
    block = order.components(12)
    return block if len(block) > _MEASURED else None


class MindrayBSDriver(Driver):
    name = "mindray_bs"
    description = "Mindray BS series chemistry (BS-240, BS-380, BS-480...)"
    sender_pattern = re.compile(r"^Mind(?:ray|ry)\b", re.IGNORECASE)
    # A whole message in one frame; several messages in one transfer, each from frame 1.
    tolerances = FrameTolerances(long_frames=True, numbering_restarts=True)
    # Test codes as the captured BS-240 names them (CREAS, ALBII, SGPT...) and the usual
    # short names; sites that renamed a test map it in the instrument's configuration.
    test_map: ClassVar[Mapping[str, str]] = {
        "GLU": "GLU",
        "HbA1c": "HBA1C",
        "CREA": "CREA",
        "CREAS": "CREA",
        "UREA": "UREA",
        "TP": "TP",
        "ALB": "ALB",
        "ALBII": "ALB",
        "TBIL": "TBIL",
        "DBIL": "DBIL",
        "FE": "FE",
        "TIBC": "TIBC",
        "SGOT": "AST",
        "AST": "AST",
        "SGPT": "ALT",
        "ALT": "ALT",
        "CK": "CK",
        "CK-MB": "CKMB",
        "ALP": "ALP",
        "GGT": "GGT",
        "AMY": "AMY",
        "UA": "UA",
        "TC": "CHOL",
        "TG": "TG",
        "HDLC": "HDL",
        "LDLC": "LDL",
        "K": "K",
        "Na": "NA",
        "Cl": "CL",
        "CA": "CA",
        "P": "PHOS",
        "MG": "MG",
        "MGII": "MG",
        "LDH": "LDH",
        "CRP": "CRP",
        "CRPII": "CRP",
    }

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        return super().read(list(_with_qc_results(records)))

    def specimen_id(self, context: Context, order: Record) -> str:
        if _is_qc(context.header):
            block = _control_block(order)
            return block[_CONTROL_NAME] if block else ""
        return order.value(4) or order.value(3)

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        if _is_qc(context.header):
            return specimen
        return replace(specimen, rack=order.value(3, 1), position=order.value(3, 2))

    def instrument_test_code(self, result: Record) -> str:
        # Calculated items (A/G, globulin...) have no code, only their name.
        return result.value(3) or result.value(3, 1)

    def completed_at(self, result: Record) -> datetime | None:
        stamp = self.read_timestamp(result.value(13), field_name(result, 13))
        return stamp or self.read_timestamp(result.value(12), field_name(result, 12))

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        if not _is_qc(context.header) or context.order is None:
            return super().control_info(context, group)
        block = _control_block(context.order)
        if block is None:
            return ControlInfo(material=context.specimen_id)
        return ControlInfo(block[_CONTROL_NAME], block[_CONTROL_LOT], block[_CONTROL_LEVEL])


def _with_qc_results(records: Sequence[Record]) -> Iterable[Record]:
    """The records, with an R record after each QC order that carries its own result, so
    that the result is read like any other."""
    header: Record | None = None
    for index, record in enumerate(records):
        yield record
        if record.type == "H":
            header = record
        if record.type != "O" or not _is_qc(header):
            continue
        following = records[index + 1] if index + 1 < len(records) else None
        block = _control_block(record)
        if block is None or (following is not None and following.type == "R"):
            continue
        test = record.components(5)
        fields = [""] * 12  # R.2 to R.13
        fields[0] = "1"
        fields[2] = block[_MEASURED]
        fields[7] = record.value(26) or "F"
        fields[11] = record.value(7)
        plain = Record.of("R", *fields)
        yield Record((*plain.fields[:2], (test,), *plain.fields[3:]))
