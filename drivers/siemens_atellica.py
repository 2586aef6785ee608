"""Siemens Healthineers Atellica Solution (Atellica CH 930 chemistry, Atellica IM 1300 and
1600 immunoassay analysers), Atellica CI Analyzer and Atellica Data Manager, in ASTM (CLSI
LIS2-A2) mode.

No capture of an Atellica upload is public, nor Siemens' Atellica interface specification.
What is public, and was read (nothing copied):

* Siemens' "Atellica Solution and Atellica CI Analyzer, Configuration Instructions -
  System, LIS Interface" (2022) and the "Atellica Data Manager LIS Interface Guide"
  (11314645 Rev. 02, 2019-05), as far as their public extracts go: one LIS connection for
  the whole system, in ASTM or HL7, both ways (host query, work order download).
* Another public project's order download to an Atellica CI (host to analyser), checked
  there against a wire log: H.13 ``LIS2-A2`` and a full date and time in H.14; all of a
  sample's tests in one O record, each written ``^^^<assay>^^^1`` (a bare ``^^^<assay>``
  was refused as an unknown test); the Atellica's own assay names (``GluH_3``, ``Na``,
  ``A1c_E``); O.16 the specimen type, an order without one refused.

That test id is the ADVIA Centaur's (drivers/siemens_centaur.py), whose successor the
Atellica IM is, and the rest of the layout is taken to be the Centaur's:

* H.5 is the system's name: recognised when it says ``Atellica`` (``Atellica``,
  ``ATELLICA IM``, ``Atellica^1.27``), but not the Atellica UAS 800 and 1500 (urinalysis),
  COAG 360 or NEPH 630, other instruments with interfaces of their own.
* O.3 = sample id^rack^position; O.16 the specimen type.
* R.3 = ``^^^<test>^<dilution protocol>^<dilution ratio>^<replicate>^<aspect>``, one R
  per aspect of a result: ``DOSE`` the result, ``INDX`` and ``INTR`` results of their own
  (``<test>/INDX``, ``<test>/INTR``), ``COFF`` and ``RLU`` comments of the test's result.
  Chemistry results are taken with or without an aspect.
* R.7 the abnormal flags as LIS2-A2 has them (``L``, ``H``, ``<``, ``>``); R.9 the status
  (``F``, or ``F\\R``: its first repeat); R.13 the time the test was completed.
* A control sample's order has action code Q (O.12); a manufacturer record after the
  order names the control and its lot (``M|1|CCD...|<control>|<lot>``), as on the Centaur.

Where this driver differs from the Centaur's: the dilution in R.3 is read; a test id not
in the Centaur's form (relayed through the Data Manager) is read as LIS2-A2 has it; and
what is sent to the analyser (query answers, downloads) names each test
``^^^<test>^^^1`` with the order's specimen type in O.16. It has no layout score of its
own: an Atellica whose H.5 does not say so is read by the Centaur's driver (by its layout),
which reads the same results without their dilution and answers in the standard's form;
configure ``driver: siemens_atellica`` for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime

from drivers.base import Driver
from drivers.siemens_centaur import SiemensCentaurDriver
from middleware.astm.records import Record
from middleware.domain import HostQuery, Order

#: R.3's components (0-based): the dilution protocol and ratio.
_DILUTION_PROTOCOL, _DILUTION_RATIO = 4, 5
#: What a test is ordered with in its 7th component; without it the Atellica refuses it.
_REPLICATES = "1"
_UNDILUTED = {"", "1", "1.0", "UNDILUTED"}
_ORDER_TESTS, _ORDER_SPECIMEN_TYPE = 4, 15  # indexes in Record.fields: O.5, O.16


class SiemensAtellicaDriver(SiemensCentaurDriver):
    name = "siemens_atellica"
    description = (
        "Siemens Healthineers Atellica Solution (CH 930, IM 1300/1600), Atellica CI "
        "Analyzer and Atellica Data Manager"
    )
    # The other Atellica-branded instruments speak interfaces of their own (the COAG 360
    # is a Sysmex CS): the name alone must not claim them.
    sender_pattern = re.compile(
        r"(?<![A-Z0-9])ATELLICA(?![A-Z0-9])(?![\s^_-]*(?:UAS|1500|COAG|NEPH)(?![A-Z0-9]))",
        re.IGNORECASE,
    )

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """None: the layout is the Centaur's, and its driver scores it (a score of the same
        points here would take the Centaur's own messages)."""
        return 0, ""

    def instrument_test_code(self, result: Record) -> str:
        if result.value(3, 3):
            return super().instrument_test_code(result)
        # Not the Centaur's form: a result of another analyser relayed by the Data Manager.
        return Driver.instrument_test_code(self, result)

    def dilution(self, result: Record) -> str:
        """R.3's dilution protocol and ratio, when the sample was diluted."""
        parts = (result.value(3, _DILUTION_PROTOCOL), result.value(3, _DILUTION_RATIO))
        return "/".join(p.strip() for p in parts if p.strip().upper() not in _UNDILUTED)

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """The standard's answer, in the test ids the Atellica takes and with each held
        order's specimen type."""
        held = list(orders)
        types = iter(
            [found[0].specimen_type if found else "" for _, found, _ in self.requested(query, held)]
        )
        return [
            _as_atellica_order(record, next(types, "")) if record.type == "O" else record
            for record in super().answer_query(query, held, now)
        ]

    def download(self, order: Order, cancel: bool, now: datetime) -> list[Record]:
        return [
            _as_atellica_order(record, order.specimen_type) if record.type == "O" else record
            for record in super().download(order, cancel, now)
        ]


def _as_atellica_order(order: Record, specimen_type: str) -> Record:
    """An O record written by the base driver, each test as ``^^^<test>^^^1`` and, when
    known, the specimen type in O.16. An order naming no test (no order held) is left as
    it is. The type is not guessed when unknown: a sample run as the wrong type gives a
    wrong result where a refused order is seen."""
    tests = tuple(
        ("", "", "", rep[3], "", "", _REPLICATES)
        for rep in order.repeats(5)
        if len(rep) > 3 and rep[3]
    )
    if not tests:
        return order
    fields = list(order.fields)
    fields[_ORDER_TESTS] = tests
    if specimen_type and not order.value(16):
        fields[_ORDER_SPECIMEN_TYPE] = ((specimen_type,),)
    return Record(tuple(fields))
