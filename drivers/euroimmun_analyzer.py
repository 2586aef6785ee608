"""EUROIMMUN Analyzer I and Analyzer I-2P (ELISA and other microplate assays), ASTM.

As the Analyzer I in the corpus sends it (astm/euroimmun-analyzer1_records_decimal-comma.astm):

* H.5 is empty: the analyser does not name itself.
* Each sample is a P record whose P.4 (the standard's laboratory-assigned patient id) is
  the **sample id** (``P|1||TEST-27-079-5-1``), then an
  O with O.3 and O.4 empty, the test in O.5 (``^^^SARSCOV2IGA``) and the run's date and
  time it was ordered in O.7, then its R (without R.13: no time of completion is given).
  The P record carries no patient identity.
* Values use a decimal comma (``7,41``) and may be censored (``>8``); units in R.5
  (``Ratio``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.base import Context, Driver, header_of, sender_of
from middleware.astm.records import Record


class EuroimmunAnalyzerDriver(Driver):
    name = "euroimmun_analyzer"
    description = "EUROIMMUN Analyzer I and I-2P (microplate immunoassay)"
    sender_pattern = re.compile(r"^EUROIMMUN\b|^Analyzer ?I(?:-2P)?\b", re.IGNORECASE)

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """No sender, orders without ids, every sample named in P.4 and nowhere else."""
        header = header_of(records)
        orders = [r for r in records if r.type == "O"]
        patients = [r for r in records if r.type == "P"]
        nameless = header is not None and not sender_of(header)
        anonymous = orders and all(not r.value(3) and not r.value(4) for r in orders)
        named = patients and all(p.value(4) and not p.value(3) for p in patients)
        if nameless and anonymous and named:
            return 1, "no sender, orders without ids (O.3, O.4 empty), each sample named in P.4"
        return 0, ""

    def specimen_id(self, context: Context, order: Record) -> str:
        """O.3 or O.4 should the analyser give one; else P.4, where it writes it."""
        from_order = super().specimen_id(context, order)
        if from_order or context.patient is None:
            return from_order
        return context.patient.value(4).strip()

    def patient_id(self, patient: Record) -> str:
        # P.4 is the sample's id here: a patient is only known from P.3 or P.5.
        return patient.value(3) or patient.value(5)
