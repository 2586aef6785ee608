"""What point-of-care analysers share: the id typed or scanned at the analyser is written
in the P record, and the O record carries only the analyser's own run or test counters.
Not a driver of its own: the base of those that read so."""

from __future__ import annotations

from dataclasses import replace

from drivers.base import Context, Driver
from middleware.astm.records import Record
from middleware.domain import Specimen


class SampleInPatientDriver(Driver):
    def specimen_id(self, context: Context, order: Record) -> str:
        """P.3, P.4 or P.5, where the analyser writes the id; else O.3."""
        patient = context.patient
        named = patient.value(3) or patient.value(4) or patient.value(5) if patient else ""
        return named.strip() or order.value(3)

    def specimen(self, context: Context, order: Record) -> Specimen:
        """The counters of O.4 kept as the specimen's position, not as its id."""
        return replace(super().specimen(context, order), position=order.text(4))
