"""Ortho Clinical Diagnostics VITROS systems (3600, 5600, 4600, 350...), LIS2-A layout.

As the VITROS 3600 in the corpus sends it (astm/vitros-3600_*), after the VITROS LIS
interface layout:

* H.5 is the system's name (the captured one calls itself ``3600796``), H.13 ``LIS2-A``.
* O.3 = sample id^tray^cup. The test id is ``^^^<manual dilution>+<assay>+<analyser
  dilution>`` (``^^^1.0000+002+1.0``); a repeat after the first carries only
  ``<assay>+<analyser dilution>`` (``950+1.0``). The assay number is the lab's handle.
* R.7 repeats ``^<range indicator>^<condition code>``: no LIS2-A flag in the first
  component; the condition codes (``NR``, ``NQ``, ``FRMN``...) are instrument flags.
* A result may be followed by an M record on the reagents that made it:
  M.4 = reagent pack lot^expiry on board^loaded on^^^(a number different packs share,
  left unread), M.5 = calibration time^status^calibration expiry, M.6 = signal reagent
  lot^loaded on^signal reagent lot expiry. The pack's expiry on board (load time plus
  its stability) is the only one sent, so it stands for the pack's expiry.
* Values may be ``No Result`` or censored (``<15``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from drivers.base import Context, Driver, ResultRecords, field_name
from middleware.astm.records import Record
from middleware.domain import HostQuery, Order, ReagentUse, most_urgent


def _assay(test_id: str) -> str:
    """The assay number of ``1.0000+002+1.0`` or ``002+1.0``."""
    parts = test_id.split("+")
    return parts[-2] if len(parts) >= 2 else test_id


def _is_one(factor: str) -> bool:
    try:
        return not factor or Decimal(factor) == 1
    except InvalidOperation:
        return False


class OrthoVitrosDriver(Driver):
    name = "ortho_vitros"
    # Its host interface writes stat or routine only (O.6 S or R).
    priorities = frozenset({"S", "R"})
    description = "Ortho Clinical Diagnostics VITROS (3600, 5600, 4600, 350...)"
    # The name is the operator's choice; by default it is the system number followed by
    # the unit's serial digits, as the captured 3600 (3600796) sends.
    sender_pattern = re.compile(r"^(?:VITROS\b|(?:3600|5600|4600|350|250|950)\d{3,}$)", re.I)
    # VITROS assay numbers depend on the menu each system runs, and nothing in a capture
    # says which assay a number is: each site maps its own in the instrument's test_map.
    test_map: ClassVar[Mapping[str, str]] = {}
    #: VITROS body fluid code of the orders we send (5: serum/plasma).
    body_fluid: ClassVar[str] = "5"

    def instrument_test_code(self, result: Record) -> str:
        return _assay(result.value(3, 3))

    def dilution(self, result: Record) -> str:
        """``manual+analyser`` dilution factors, when either is not 1."""
        parts = result.value(3, 3).split("+")
        if len(parts) == 3 and not (_is_one(parts[0]) and _is_one(parts[2])):
            return f"{parts[0]}+{parts[2]}"
        return ""

    @staticmethod
    def _test_code_of(components: tuple[str, ...]) -> str:
        # Order and query test ids (and ALL): the assay number, whichever form the repeat has.
        return _assay(next((c for c in reversed(components) if c), ""))

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        codes = [rep[2] for rep in group.result.repeats(7) if len(rep) > 2 and rep[2]]
        return tuple(dict.fromkeys(codes)) + super().instrument_flags(group)

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        lab_code = self.lab_code(code)
        uses: list[ReagentUse] = []
        for m in group.manufacturer:
            pack, calibration, signal = m.components(4), m.components(5), m.components(6)
            if pack[0]:
                uses.append(
                    ReagentUse(
                        reagent=f"VITROS {code} reagent pack",
                        lot=pack[0],
                        test_code=lab_code,
                        expiry=self.read_date(m.value(4, 1), field_name(m, 4)),
                        calibration_id=calibration[0],
                    )
                )
            if signal[0]:
                uses.append(
                    ReagentUse(
                        reagent="VITROS signal reagent",
                        lot=signal[0],
                        test_code=lab_code,
                        expiry=self.read_date(m.value(6, 2), field_name(m, 6)),
                    )
                )
        return tuple(uses)

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """The reply the VITROS takes: P with placeholder patient id and name, one O per
        specimen asked about with tests in the VITROS's own form, report type O."""
        stamp = now.strftime("%Y%m%d%H%M%S")
        records = [Record.of("H", "\\^&", "", "", "LIS", *[""] * 7, "LIS2-A", stamp)]
        number = 0
        for specimen_id, found, assays in self.requested(query, orders):
            if not assays:
                continue
            number += 1
            patient = found[0].patient_id or "NOPID"
            records.append(Record.of("P", str(number), patient, "", "", "NONAME"))
            first, *others = assays
            tests = (("", "", "", f"1.0000+{first}+1.0"), *((f"{a}+1.0",) for a in others))
            fields = [""] * 25  # O.2 to O.26
            fields[0] = "1"
            fields[1] = specimen_id
            fields[4] = self.analyser_priority(most_urgent(o.priority for o in found))
            fields[6] = stamp  # O.8, as the captured host's reply has it
            fields[10] = "N"
            fields[14] = self.body_fluid
            fields[24] = "O"
            plain = Record.of("O", *fields)
            records.append(Record((*plain.fields[:4], tests, *plain.fields[5:])))
        # LIS2-A termination code I: nothing known about the specimens asked about.
        records.append(Record.of("L", "1", "N" if number else "I"))
        return records
