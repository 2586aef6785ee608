"""Sysmex CA and CS series coagulation analysers (CA-500, CA-600, CA-1500, CA-7000;
CS-2000i, CS-2100i, CS-2500, CS-5100), ASTM.

After the layout Sysmex publishes for their ASTM host interface, checked against the
record layout of a public CS-2500 upload (another project's test data; read, not copied,
and no message of it is used here):

* H.5 = model^software version^analyser number^^^user's analyser name...
  (``CS-2500^01-70^21768``); H.13 = ``E1394-97``.
* O.3 is empty; O.4 = rack^tube position^sample no.^attribute, the sample number
  right-aligned in its component, padded with spaces in front.
* R.3 = ``^^^<parameter>^<name>^<dilution %>^<result type>``: a three-digit parameter
  code whose first two digits are the test's group (04x prothrombin time: 041 seconds,
  042 activity %, 043 INR, 044 fibrinogen derived from the PT; 05x APTT: 051 seconds), the
  parameter's name as set on the analyser (``PT INN~sec``: the ``~`` is text here, the
  repeat delimiter being ``\\``), the dilution in percent and the kind of result.
* R.4 right-aligned, padded with spaces; R.7 ``N``, ``<`` or ``>`` (below or above what
  the analyser measures), ``W`` low reliability; R.13 the time of the measurement.
* Comment records after the results say which calibration a parameter was computed with
  (``CAL^<parameter>^^<curve no.>^``, after the parameter's result) and which reagent lot
  a test group used (``LOT^<group>^<reagent>^<lot>``, after the group's last result).
  Both are traceability, not instrument flags: the calibration is kept with the result's
  reagent lot, the lot with every result of its group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

from drivers.base import Context, DriverOptions, ResultRecords
from drivers.sysmex import SysmexDriver
from middleware.astm.records import Record
from middleware.domain import Comment, InstrumentMessage, ReagentUse

_CALIBRATION, _LOT = "CAL", "LOT"
_PARAMETER = re.compile(r"^\d{3}$")


def _group(parameter: str) -> str:
    """``041`` -> ``040``: the test group a parameter belongs to."""
    return parameter[:2] + "0" if _PARAMETER.match(parameter) else parameter


def _traceability(comment: Record) -> tuple[str, ...]:
    """The components of a CAL or LOT comment; () for any other comment."""
    parts = comment.components(4)
    return parts if parts and parts[0] in (_CALIBRATION, _LOT) else ()


class SysmexCaDriver(SysmexDriver):
    name = "sysmex_ca"
    description = "Sysmex CA and CS series coagulation (CA-500 to CA-7000, CS-2000i to CS-5100)"
    sender_pattern = re.compile(r"^C[AS]-\d", re.IGNORECASE)
    # The parameter codes Sysmex gives the common tests; others pass through, for the
    # instrument's test_map to name.
    test_map: ClassVar[Mapping[str, str]] = {
        "041": "PT", "042": "PT%", "043": "INR", "044": "FIB-D", "051": "APTT",
    }  # fmt: skip

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        super().__init__(options, instrument)
        self._lots: dict[str, tuple[str, str]] = {}
        """The message being read's reagent lots, by test group: reagent and lot."""

    test_layout = "^^^parameter^name^dilution"

    @classmethod
    def is_test_layout(cls, test: tuple[str, ...]) -> bool:
        """A three-digit parameter with its dilution in R.3: the CA/CS layout."""
        return len(test) > 5 and bool(_PARAMETER.match(test[3])) and bool(test[5])

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        # A group's lot comes after its last result: known before any result is read.
        self._lots = {}
        for record in records:
            if record.type == "C":
                parts = _traceability(record)
                if parts and parts[0] == _LOT and len(parts) > 3 and parts[3]:
                    self._lots[_group(parts[1])] = (parts[2], parts[3])
        return super().read(records)

    def value_text(self, result: Record) -> str:
        return super().value_text(result).strip()

    def dilution(self, result: Record) -> str:
        return result.value(3, 5)

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        kept = tuple(c for c in group.comments if not _traceability(c))
        return super().instrument_flags(replace(group, comments=kept))

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        kept = tuple(c for c in group.comments if not _traceability(c))
        return super().comments(replace(group, comments=kept))

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        parameter = group.result.value(3, 3)
        lot = self._lots.get(_group(parameter))
        if lot is None:
            return ()
        calibration = next(
            (
                parts[3] if len(parts) > 3 else ""
                for parts in map(_traceability, group.comments)
                if parts and parts[0] == _CALIBRATION and parts[1:2] == (parameter,)
            ),
            "",
        )
        return (
            ReagentUse(
                reagent=lot[0], lot=lot[1], test_code=self.lab_code(parameter),
                calibration_id=calibration,
            ),
        )  # fmt: skip
