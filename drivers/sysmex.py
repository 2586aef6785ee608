"""What Sysmex's ASTM host interfaces share (XN haematology, CA and CS coagulation): O.4 is
rack^tube position^sample no.^attribute, the sample number right-aligned in its component,
so padded with spaces in front. Not a driver of its own: the base of those that read so."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from drivers.base import Context, Driver
from middleware.astm.records import Record
from middleware.domain import Specimen


class SysmexDriver(Driver):
    #: The family's R.3, as ``score`` says it saw it.
    test_layout: str = ""

    @classmethod
    def is_test_layout(cls, test: tuple[str, ...]) -> bool:
        """Whether R.3's components are laid out the family's way."""
        return False

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """A space-padded sample number in O.4 and the family's R.3."""
        order = next((r for r in records if r.type == "O"), None)
        result = next((r for r in records if r.type == "R"), None)
        if order is None or result is None:
            return 0, ""
        sample = order.components(4)
        padded = len(sample) > 2 and sample[2].startswith(" ")
        if padded and cls.is_test_layout(result.components(3)):
            return 2, f"O.4 rack^position^padded sample no. and R.3 {cls.test_layout}"
        return 0, ""

    def specimen_id(self, context: Context, order: Record) -> str:
        """The sample number of O.4; of O.3 where the host writes the same components."""
        return order.value(4, 2).strip() or order.value(3, 2).strip() or order.value(3)

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        return replace(specimen, rack=order.value(4, 0), position=order.value(4, 1))
