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

from drivers.point_of_care import SampleInPatientDriver


class AbbottAfinionDriver(SampleInPatientDriver):
    name = "abbott_afinion"
    description = "Abbott Afinion 2 and Afinion AS100 (point of care)"
    sender_pattern = re.compile(r"^Afinion", re.IGNORECASE)
