"""Beckman Coulter Access 2 immunoassay analyser (and the UniCel DxI, which shares its LIS
interface), ASTM.

As the Access 2 in the corpus sends it (astm/beckman-access2_log_fragmented-reads.txt),
after the layout of Beckman Coulter's "UniCel DxI and Access 2 LIS Vendor Information":

* H.5 = ``ACCESS^<instrument serial number>``; H.13 is ``1``; every message ends ``L|1|F``.
* One sample per message: O.3 = the sample id, O.4 = ``^<rack>^<position>``, O.16 the
  sample type (``Serum``).
* Test ids are ``^^^<test name>^<replicate>``: the Access's own test name (``Insulin``,
  ``HCG5``, ``OV125Ag``, ``B12II``), then which replicate this result is (in an order,
  how many to run). Each replicate comes in a message of its own.
* R.6 = low ``to`` high^range name (``222 to 1439^normal``); R.7 = N, L or H; R.14 is the
  instrument's serial number again.
* A result may be followed by ``C|1|I|<flags>|I``: the instrument's result flags (``ORL``),
  several separated by semicolons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import ClassVar

from drivers.base import Context, Driver, ResultRecords
from middleware.astm.records import Record
from middleware.domain import HostQuery, Order, Specimen


class BeckmanAccessDriver(Driver):
    name = "beckman_access"
    description = "Beckman Coulter Access 2 / UniCel DxI immunoassay"
    sender_pattern = re.compile(r"^ACCESS(?:\^|$)", re.I)
    # The Access's test names (the captured log has Insulin, HCG5, OV125Ag, B12II, TSH3), one
    # per laboratory code so that a host-query answer asks for the assay by the name the
    # analyser runs; a site's other assays, or other names on its menu, map in its test_map.
    test_map: ClassVar[Mapping[str, str]] = {
        "TSH3": "TSH",
        "FrT4": "FT4",
        "FrT3": "FT3",
        "TotT3": "TT3",
        "TotT4": "TT4",
        "Insulin": "INS",
        "HCG5": "HCG",
        "B12II": "B12",
        "Folate": "FOL",
        "Ferritin": "FER",
        "PSA": "PSA",
        "OV125Ag": "CA125",
        "hsTnI": "TROP",
    }
    #: Sample type stated in the orders we send (O.16); the Access reports it on each order.
    sample_type: ClassVar[str] = "Serum"

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        return replace(specimen, rack=order.value(4, 1), position=order.value(4, 2))

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        return tuple(
            flag.strip()
            for text in super().instrument_flags(group)
            for flag in text.split(";")
            if flag.strip()
        )

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """The generic answer, with each test asked for once (``^^^<test>^1``) and the
        sample type in O.16."""
        records = super().answer_query(query, orders, now)
        answered: list[Record] = []
        for record in records:
            if record.type == "O" and record.value(5, 3):
                tests = tuple((*rep[:4], "1") for rep in record.repeats(5))
                fields = list(record.fields)
                fields[4] = tests
                fields[15] = ((self.sample_type,),)
                record = Record(tuple(fields))
            answered.append(record)
        return answered
