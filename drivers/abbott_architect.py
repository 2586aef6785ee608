"""Abbott ARCHITECT c and i series (c4000, c8000, c16000, i1000SR, i2000SR, ci...).

No capture of an ARCHITECT is in the corpus. The layout followed is the ASTM section of
Abbott's ARCHITECT System LIS interface manual (record layouts of the result upload):

* H.5 = ARCHITECT^software version^serial number^interface version.
* O.3 = specimen id (for a control: the control's name), O.4 = specimen id^carrier^
  position, O.12 = Q for a control.
* R.3 = ``^^^assay number^assay name^dilution^status^reagent lot^reagent serial no.^
  control lot no.^result type``; status P preliminary or F final; result type F the final
  result (concentration), I its interpretation (Reactive, Nonreactive...), P the raw
  signal in relative light units (RLU), which is not a result: it goes with the final one
  as a comment, as the interpretation does. An assay's F and I results come as a pair of R records.
* R.7 = abnormal flags (L, H, LL, HH, <, >, N, A) and result flags (EXP, EXPC, CNTL,
  A#1...) as repeats; R.10 = date and time of the calibration in use (the standard's
  date of change in instrument normative values); R.11 = operator^releasing operator;
  R.13 = completed; R.14 = the module's serial number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

from drivers.base import Context, ControlInfo, Driver, ResultRecords
from middleware.astm.records import Record
from middleware.domain import Comment, ControlResult, InstrumentMessage, ReagentUse, Result

# R.3 components (0-based).
_NUMBER, _NAME, _DILUTION, _REAGENT_LOT, _REAGENT_SERIAL, _CONTROL_LOT, _TYPE = 3, 4, 5, 7, 8, 9, 10
_STATUS = 6  # where interfaces without the lot components give the result type
_ABNORMAL = frozenset({"L", "H", "LL", "HH", "<", ">", "N", "A", "AA"})
_PAIRED = {"I": "interpretation", "P": "RLU"}


def _result_type(result: Record) -> str:
    components = result.components(3)
    if len(components) > _TYPE:
        return components[_TYPE]
    return components[_STATUS] if len(components) > _STATUS else ""


class AbbottArchitectDriver(Driver):
    name = "abbott_architect"
    description = "Abbott ARCHITECT c and i series (c4000/c8000/c16000, i1000SR/i2000SR, ci)"
    sender_pattern = re.compile(r"^ARCHITECT\b", re.IGNORECASE)
    # Assay numbers differ between assay versions and sites: they are mapped in the
    # instrument's configuration. Unmapped numbers fall back on the assay name, as
    # Abbott names its immunoassays.
    test_map: ClassVar[Mapping[str, str]] = {}
    assay_names: ClassVar[Mapping[str, str]] = {
        "TSH": "TSH",
        "Free T4": "FT4",
        "Free T3": "FT3",
        "Total T3": "TT3",
        "Total T4": "TT4",
        "Insulin": "INS",
        "Total B-hCG": "HCG",
        "B12": "B12",
        "Folate": "FOL",
        "Ferritin": "FER",
        "Total PSA": "PSA",
        "CA 125 II": "CA125",
        "STAT Troponin-I": "TROP",
        "CK-MB": "CKMB",
    }
    flag_map: ClassVar[Mapping[str, str]] = {"<": "L", ">": "H"}

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """R.3 of eleven components ending in a result type is the ARCHITECT's layout."""
        for record in records:
            if record.type == "R":
                components = record.components(3)
                if len(components) > _TYPE and components[_TYPE] in ("F", "I", "P"):
                    return 2, "R.3 with assay number, name, dilution, status, lots and result type"
                return 0, ""
        return 0, ""

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        """The standard reading, then each interpretation (or RLU signal) joined to
        its assay's final result as a comment, and assay names where numbers are unmapped."""
        message = super().read(records)
        pairs = message.measurements()
        kinds = [_result_type(records[r.record_index]) for r, _ in pairs]
        finals = {
            (r.specimen_id, r.instrument_test_code): i
            for i, ((r, _), kind) in enumerate(zip(pairs, kinds, strict=True))
            if kind not in _PAIRED
        }
        kept: dict[int, tuple[Result, ControlResult | None]] = {}
        for i, ((result, control), kind) in enumerate(zip(pairs, kinds, strict=True)):
            final = finals.get((result.specimen_id, result.instrument_test_code))
            if kind in _PAIRED and final is not None:
                into, into_control = kept.get(final, pairs[final])
                comment = Comment(result.value.text, "instrument", _PAIRED[kind])
                kept[final] = (replace(into, comments=(*into.comments, comment)), into_control)
            else:
                kept.setdefault(i, (result, control))
        named = [
            (replace(r, test_code=self._lab_code_of(records[r.record_index])), c)
            for _, (r, c) in sorted(kept.items())
        ]
        message.results = [r for r, c in named if c is None]
        message.controls = [replace(c, result=r) for r, c in named if c is not None]
        return message

    def _lab_code_of(self, result: Record) -> str:
        number = result.value(3, _NUMBER)
        if number in self.codes:
            return self.codes[number]
        return self.assay_names.get(result.value(3, _NAME), number)

    def instrument_test_code(self, result: Record) -> str:
        return result.value(3, _NUMBER)

    def dilution(self, result: Record) -> str:
        dilution = result.value(3, _DILUTION)
        return "" if dilution.upper() == "UNDILUTED" else dilution

    def flags(self, result: Record) -> tuple[str, ...]:
        return tuple(self.flag_map.get(f, f) for f in self._r7(result) if f in _ABNORMAL)

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        own = tuple(f for f in self._r7(group.result) if f not in _ABNORMAL)
        return own + super().instrument_flags(group)

    @staticmethod
    def _r7(result: Record) -> list[str]:
        return [rep[0] for rep in result.repeats(7) if rep and rep[0]]

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        result = group.result
        lot = result.value(3, _REAGENT_LOT)
        if not lot:
            return ()
        return (
            ReagentUse(
                reagent=f"ARCHITECT {result.value(3, _NAME) or code} reagent",
                lot=lot,
                test_code=self._lab_code_of(result),
                calibration_id=result.value(10),
                serial=result.value(3, _REAGENT_SERIAL),
            ),
        )

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        control = super().control_info(context, group)
        if control is None:
            return None
        return replace(control, lot=group.result.value(3, _CONTROL_LOT))
