"""Abbott Afinion 2 and Afinion AS100 point-of-care analysers (HbA1c, CRP, lipids, ACR),
ASTM.

After the layout a real Afinion 2 upload shows (public message of another project; read,
not copied):

* H.5 = ``Afinion 2 Analyzer^^<serial number>``.
* The id typed or scanned at the analyser is in P (P.4 there, ``P|1||3643``): it is the
  sample's id. O.3 is empty and O.4 carries the analyser's run number (``5``), which is no
  sample id and is kept as the specimen's position.
* O.5 and R.3 name the test (``^^^HbA1c``); R.11 the operator, R.13 when it was measured.
* The P record carries no other patient identity: the id stands for the sample.
"""

from __future__ import annotations

import re
from dataclasses import replace

from drivers.base import Context, Driver
from middleware.astm.records import Record
from middleware.domain import Specimen


def sample_id_in_patient(context: Context) -> str:
    """The id a point-of-care analyser writes in its P record: P.3, P.4 or P.5."""
    patient = context.patient
    if patient is None:
        return ""
    return (patient.value(3) or patient.value(4) or patient.value(5)).strip()


class AbbottAfinionDriver(Driver):
    name = "abbott_afinion"
    description = "Abbott Afinion 2 and Afinion AS100 (point of care)"
    sender_pattern = re.compile(r"^Afinion", re.IGNORECASE)

    def specimen_id(self, context: Context, order: Record) -> str:
        return sample_id_in_patient(context) or order.value(3)

    def specimen(self, context: Context, order: Record) -> Specimen:
        return replace(super().specimen(context, order), position=order.value(4))
