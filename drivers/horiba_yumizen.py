"""Horiba haematology analysers in ASTM (LIS2-A2) mode: Yumizen H500/H550 and the ABX
Pentra family.

As the Yumizen H500 and H550 in the corpus send it (astm/yumizen-h500_raw_multi-frame.bin,
astm/yumizen-h550_records_qc-run.astm):

* H.5 = model^serial number^software version (``H500^906YOXH02459^2.2.0.5``); H.12 is
  ``P`` for a patient run, ``Q`` for a quality-control run.
* O.3 is the sample id. On a QC run it is the control blood's lot number (``PX449L``) and
  O.16 = ``CTRL^^CTRLLOW`` says that the tube is a control and of which level; a patient's
  O.16 is ``BLOOD``.
* The sample's flags come in a C record right after the O, not after a result: C.4
  repeats category^parameter^flag (``NON_COMPLIANT_DATA^WBC^LL_OR_LL1_INTERFERE``); the
  parameter is empty when the flag is about the whole sample
  (``SUSPECTED_PATHOLOGY^^ANEMIA``). A flag about a parameter the run has no result of
  (``WBC`` on a run of the differential alone) goes to every result of the sample, as a
  whole sample's does, rather than be dropped.
* M records after the O: HISTOGRAM and MATRIX (curves, compressed) and REAGENT, whose M.4
  repeats the reagent names and M.5 repeats lot^opened on^expiry in the same order.
* R.3 = ``^^^<parameter>^<LOINC code>``; R.7 is already N, L, H, LL or HH; R.9 is ``W``
  instead of ``F`` for a result whose parameter the instrument flagged; R.11 is the
  operator^^role; the run's time is in R.12, R.13 stays empty.

The Pentra DX/XLR ASTM output, which the Yumizen H series continues, is read the same way;
no Pentra capture was at hand to show a difference, so there is no separate class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import ClassVar

from drivers.base import (
    Context,
    ControlInfo,
    Driver,
    ResultRecords,
    field_name,
)
from drivers.codes import HAEMATOLOGY
from middleware.astm.records import Record
from middleware.domain import InstrumentMessage, ReagentUse, Result

#: O.16, first component, of a control tube.
_CONTROL_KIND = "CTRL"


@dataclass(frozen=True, slots=True)
class _SampleNotes:
    """What the records between an O and its first R say about the whole sample."""

    order_index: int
    flags: tuple[tuple[str, str], ...]  # (parameter or "", flag as written)
    reagents: tuple[tuple[str, str, str, str], ...]  # (name, lot, expiry, its field)


def _sample_notes(records: Sequence[Record]) -> list[_SampleNotes]:
    notes: list[_SampleNotes] = []
    for index, record in enumerate(records):
        if record.type != "O":
            continue
        flags: list[tuple[str, str]] = []
        reagents: list[tuple[str, str, str, str]] = []
        for following in records[index + 1 :]:
            if following.type == "C":
                for rep in following.repeats(4):
                    if any(rep):
                        parameter = rep[1] if len(rep) > 1 else ""
                        flags.append((parameter, "^".join(rep).rstrip("^")))
            elif following.type == "M":
                if following.value(3) == "REAGENT":
                    reagents.extend(_reagent_rows(following))
            else:
                break
        notes.append(_SampleNotes(index, tuple(flags), tuple(reagents)))
    return notes


def _reagent_rows(record: Record) -> list[tuple[str, str, str, str]]:
    # Empty repeats are dropped on both sides: the H550 writes its repeat delimiter
    # doubled (``CLEANER\\DILUENT``), like its header, which puts an empty one between each.
    names = [rep[0] for rep in record.repeats(4) if rep[0]]
    lots = [rep for rep in record.repeats(5) if rep[0]]
    pairs = zip(names, lots, strict=False)
    where = field_name(record, 5)
    return [(name, lot[0], lot[2] if len(lot) > 2 else "", where) for name, lot in pairs]


def _of(result: Result, notes: list[_SampleNotes]) -> _SampleNotes | None:
    """The notes of the sample (the O record) a result comes after."""
    return next((n for n in reversed(notes) if n.order_index < result.record_index), None)


class HoribaYumizenDriver(Driver):
    name = "horiba_yumizen"
    description = "Horiba Yumizen H500/H550 and ABX Pentra haematology (ASTM mode)"
    sender_pattern = re.compile(r"^(?:H500|H550|H1500|H2500|YUMIZEN|PENTRA|ABX)\b", re.I)
    test_map: ClassVar[Mapping[str, str]] = {
        **HAEMATOLOGY,
        # The Pentra's RDW is the coefficient of variation.
        "RDW": "RDW-CV",
    }

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        message = super().read(records)
        notes = _sample_notes(records)
        if not any(n.flags or n.reagents for n in notes):
            return message
        # What each sample (by its notes) has results of, found in one pass.
        measured: dict[int, set[str]] = {}
        for result in [*message.results, *(c.result for c in message.controls)]:
            sample = _of(result, notes)
            if sample is not None:
                measured.setdefault(id(sample), set()).add(result.instrument_test_code)
        message.results = [self._annotated(r, notes, measured) for r in message.results]
        message.controls = [
            replace(c, result=self._annotated(c.result, notes, measured)) for c in message.controls
        ]
        return message

    def _annotated(
        self, result: Result, notes: list[_SampleNotes], measured: Mapping[int, set[str]]
    ) -> Result:
        """The result with the flags and reagents its sample's O-level records give. A
        flag about a parameter the sample has no result of (``WBC`` on a run of the
        differential only) goes to every result of the sample: never dropped."""
        sample = _of(result, notes)
        if sample is None:
            return result
        code, present = result.instrument_test_code, measured[id(sample)]
        flags = tuple(
            text
            for parameter, text in sample.flags
            if parameter in ("", code) or parameter not in present
        )
        reagents = tuple(
            ReagentUse(name, lot, result.test_code, self.read_date(expiry, where))
            for name, lot, expiry, where in sample.reagents
        )
        return replace(
            result,
            instrument_flags=flags + result.instrument_flags,
            reagents=result.reagents + reagents,
        )

    def completed_at(self, result: Record) -> datetime | None:
        # The Yumizen leaves R.13 empty; its one time, R.12, is when the sample was run.
        return super().completed_at(result) or self.read_timestamp(
            result.value(12), field_name(result, 12)
        )

    def flags(self, result: Record) -> tuple[str, ...]:
        flags = super().flags(result)
        # R.9 = W: the instrument doubts the value; the lab's flag for that is W.
        if result.value(9) == "W" and "W" not in flags:
            flags += ("W",)
        return flags

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        order = context.order
        kind = order.components(16) if order is not None else ("",)
        if kind[0] != _CONTROL_KIND:
            return super().control_info(context, group)
        named = next((c for c in reversed(kind[1:]) if c), "")
        return ControlInfo(
            material=named or context.specimen_id,
            lot=context.specimen_id,
            level=named.removeprefix(_CONTROL_KIND).strip(),  # "CTRL MEDIUM" too
        )
