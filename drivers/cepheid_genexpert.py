"""Cepheid GeneXpert molecular systems (GeneXpert Dx, Infinity), ASTM.

After the layout of Cepheid's GeneXpert LIS interface (E1381-95 link, E1394-97 records),
as the public messages of other projects show it:

* H.2 declares its own delimiters, ``@^\\``: ``@`` repeats, ``\\`` escapes. H.5 =
  ``GeneXpert PC^GeneXpert^<software version>``.
* P.5 (else P.3 or P.4) is the patient id; O.3 the sample id; O.5 ``^^^<host test code>``.
* R.3 names the result in eight components:
  ``^<panel test code>^^<host test code>^<assay name>^<assay version>^<analyte>^<complementary>``.
  An assay reports one result (``^^^GBS-TC^GBS Clinical Trial^4^^``) or several, one per
  analyte (``MTB``, ``Rif Resistance``; ``IMP1``, ``KPC``...), each with sub-results for
  its probes (``Probe D^Ct``, ``EndPt``). The test is the host test code, the analyte and
  the complementary result joined by ``/``: ``TBPos/MTB``, ``TBPos/Probe D/Ct``; a
  single-result assay is its host test code alone.
* R.4 is the result, a call (``MTB DETECTED VERY LOW``, ``NEGATIVE``) or a number (a Ct),
  written with a trailing component (``POSITIVE^``).
* R.11 the operator, R.12 and R.13 when the test started and ended; R.14 the system name,
  the instrument's serial number, the module's, the cartridge's, the cartridge lot and its
  expiry (``GX-PC^700434^612345^334455^12201^20260531``). The cartridge lot is kept as the
  result's reagent lot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.base import Context, Driver, ResultRecords, header_of, parse_date
from middleware.astm.records import Delimiters, Record
from middleware.domain import ReagentUse


class CepheidGeneXpertDriver(Driver):
    name = "cepheid_genexpert"
    description = "Cepheid GeneXpert Dx and Infinity (molecular)"
    sender_pattern = re.compile(r"GeneXpert|Cepheid", re.IGNORECASE)
    delimiters = Delimiters("|", "@", "^", "\\")

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        header = header_of(records)
        named = [
            r.components(3)
            for r in records
            if r.type == "R" and len(r.components(3)) in (7, 8)  # the ARCHITECT's are 11
        ]
        if not named:
            return 0, ""
        seen = [f"{len(named)} results named in R.3's eight components"]
        if any(parts[4].startswith("Xpert") for parts in named):
            seen.append("Xpert assays")
        if header is not None and header.value(2).startswith("@"):
            seen.append("H.2 @^\\")
        return (len(seen), " and ".join(seen)) if len(seen) > 1 else (0, "")

    def patient_id(self, patient: Record) -> str:
        return patient.value(5) or patient.value(3) or patient.value(4)

    def instrument_test_code(self, result: Record) -> str:
        parts = result.components(3)
        host = (parts[3] if len(parts) > 3 else "") or (parts[1] if len(parts) > 1 else "")
        analyte = [p for p in parts[6:8] if p]
        if not host:
            return super().instrument_test_code(result)
        return "/".join([host, *analyte])

    def module(self, result: Record) -> str:
        return result.value(14, 2) or result.value(14, 1)

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        result = group.result
        lot = result.value(14, 4)
        if not lot:
            return ()
        return (
            ReagentUse(
                "Xpert cartridge",
                lot,
                code,
                parse_date(result.value(14, 5)),
                serial=result.value(14, 3),
            ),
        )
