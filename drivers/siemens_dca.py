"""Siemens DCA Vantage point-of-care analyser (HbA1c; urine albumin, creatinine and their
ratio), ASTM.

After the layout a real DCA Vantage upload shows (public message of another project;
read, not copied):

* H.5 = ``DCA VANTAGE^<software version>^<serial number>``.
* The sample's id (the patient id typed or scanned) is in P.3 (``P|1|BU24R554``); O.3 is
  empty and O.4 holds the analyser's record and test counters (``660^0090``), kept as the
  specimen's position.
* One R per measured quantity: ``^^^Alb``, ``^^^Crt``, ``^^^Ratio`` (the
  albumin/creatinine ratio), ``^^^HbA1c``; the time of the measurement in R.12 (the
  standard's "started"), R.13 empty.
* After each R a generic comment (C.5 ``G``) from the instrument, ``1.000^0.0 mg/L``:
  kept as the result's comment.
"""

from __future__ import annotations

import re
from datetime import datetime

from drivers.base import field_name
from drivers.point_of_care import SampleInPatientDriver
from middleware.astm.records import Record


class SiemensDcaDriver(SampleInPatientDriver):
    name = "siemens_dca"
    description = "Siemens DCA Vantage (point of care)"
    sender_pattern = re.compile(r"^DCA\s*VANTAGE", re.IGNORECASE)

    def completed_at(self, result: Record) -> datetime | None:
        return super().completed_at(result) or self.read_timestamp(
            result.value(12), field_name(result, 12)
        )
