"""Bio-Rad IH-Com (the IH-1000 and IH-500 blood bank systems' host software), ASTM.

As IH-Com v5.2 sends it in the corpus (astm/biorad-ihcom_records_reagent-lots*.astm):

* H.5 = ``Bio-Rad``, H.6 = ``IH v5.2``.
* O.3 = the sample id; O.5 = ``^^^<profile>^^<profile no.>`` (``MO10``: an ABD
  confirmation).
* Each reaction of the profile is an R record, R.3 = ``^^^<reaction>^<profile>^<profile
  name>`` (``^^^AntiA^MO10^Bloodgroup: A,B,D Confirmation...``), R.4 its strength (``40``,
  ``0``); the profile's conclusion comes last as reaction ``Result``, R.4 its parts
  (``A^NEG^NEG^ccee^K-^NEG``: group, Rh, ...). A reaction alone does not name a test: the
  test is profile and reaction, ``MO10/AntiA``, ``MO10/Result``.
* R.15 = the instrument (``IH-1000``), R.16 its serial number.
* A C record after each reaction names what it used: C.3 = the diluent as
  ``name^^lot^expiry``, C.4 = the gel card as ``type^card no.^lot^expiry^well``.
"""

from __future__ import annotations

import re
from dataclasses import replace

from drivers.base import Context, Driver, ResultRecords, parse_date
from middleware.astm.records import Record
from middleware.domain import Comment, ReagentUse


class BioRadIHDriver(Driver):
    name = "biorad_ih"
    description = "Bio-Rad IH-1000 and IH-500 through IH-Com (blood bank)"
    sender_pattern = re.compile(r"^Bio-?Rad\b", re.IGNORECASE)

    def instrument_test_code(self, result: Record) -> str:
        reaction, profile = result.value(3, 3), result.value(3, 4)
        if profile and reaction:
            return f"{profile}/{reaction}"
        return super().instrument_test_code(result)

    def module(self, result: Record) -> str:
        return result.value(15)

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        used: list[ReagentUse] = []
        for comment in group.comments:
            name, lot, expiry = comment.value(3, 0), comment.value(3, 2), comment.value(3, 3)
            if name and lot:
                used.append(ReagentUse(name, lot, code, parse_date(expiry), kind="diluent"))
            card = comment.components(4)
            if len(card) > 3 and card[2]:
                used.append(
                    ReagentUse(
                        f"{card[0]} card", card[2], code, parse_date(card[3]), serial=card[1]
                    )
                )
        return tuple(used)

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        # Its C records name the diluent and the card (see reagents), not remarks.
        return super().comments(replace(group, comments=()))
