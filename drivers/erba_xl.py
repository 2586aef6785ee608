"""Erba Mannheim XL series chemistry analysers (XL-200, XL-640, XL-1000), E1394-97.

As the XL in the corpus sends it (astm/erba-xl_*):

* The repeat delimiter is a backtick (``H|`^&``), in both directions.
* H.5 is empty: the analyser does not name itself, so the instrument's configuration
  has to say ``driver: erba_xl``; the pattern only serves firmware that does.
* Instrument flags come as ``C|1|I|Instrument Flag A``: comment source I (C.3) and no
  comment type (C.5).
* A host query lists several specimens as repeats of Q.3: ``^1007149`1007152`...``;
  the first repeat has the LIS2-A2 form (patient^specimen), the others the id alone.
* Orders from the host (astm/erba-xl_framed_BAD-CHECKSUM.bin, and Erba's example in the
  XL host manual): ``O|1|<specimen>||^^^Na`^^^K`^^^ALB|<priority>||<date and time>||||A||||
  Serum``, action code A adding the tests to the sample on board.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import ClassVar

from drivers.base import Driver, ResultRecords, header_of
from middleware.astm.records import Delimiters, Record
from middleware.domain import HostQuery, Order, most_urgent


class ErbaXLDriver(Driver):
    name = "erba_xl"
    # Its host interface writes stat or routine only (O.6 S or R).
    priorities = frozenset({"S", "R"})
    description = "Erba Mannheim XL series chemistry (XL-200, XL-640, XL-1000)"
    sender_pattern = re.compile(r"\b(?:ERBA|XL-?(?:180|200|300|600|640|1000))\b", re.I)
    delimiters = Delimiters("|", "`", "^", "&")

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """The XL leaves H.5 empty, but no other family writes a backtick repeat."""
        header = header_of(records)
        if header is not None and header.text(2).startswith("`"):
            return 2, "a backtick as the repeat delimiter (H.2 `^&)"
        return 0, ""

    # Test codes are the names set on the XL's test definition screen: these are the ones
    # seen from XLs (DBILL, SGOTD, Na...) and the usual short names. Sites map their own
    # in the instrument's test_map.
    test_map: ClassVar[Mapping[str, str]] = {
        "GLU": "GLU",
        "HBA1C": "HBA1C",
        "CREA": "CREA",
        "UREA": "UREA",
        "BUN": "UREA",
        "TP": "TP",
        "ALB": "ALB",
        "TBIL": "TBIL",
        "TBILL": "TBIL",
        "DBIL": "DBIL",
        "DBILL": "DBIL",
        "IRON": "FE",
        "TIBC": "TIBC",
        "SGOT": "AST",
        "SGOTD": "AST",
        "SGPT": "ALT",
        "SGPTD": "ALT",
        "CK": "CK",
        "CKMB": "CKMB",
        "ALP": "ALP",
        "GGT": "GGT",
        "AMY": "AMY",
        "URIC": "UA",
        "CHOL": "CHOL",
        "TRIG": "TG",
        "HDL": "HDL",
        "LDL": "LDL",
        "K": "K",
        "Na": "NA",
        "Cl": "CL",
        "CA": "CA",
        "PHOS": "PHOS",
        "MG": "MG",
        "LDH": "LDH",
        "CRP": "CRP",
    }
    #: O.16 of the orders we send: the XL host manual's example and the captured host
    #: both name the specimen type, and an order carries none of its own.
    specimen_type: ClassVar[str] = "Serum"

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        return tuple(
            c.text(4) for c in group.comments if "I" in (c.value(3), c.value(5)) and c.text(4)
        )

    def query(self, record: Record) -> HostQuery:
        ids = tuple((rep[1] if len(rep) > 1 else rep[0]).strip() for rep in record.repeats(3))
        base = super().query(record)
        return HostQuery(
            specimen_ids=tuple(i for i in ids if i),
            test_codes=base.test_codes,
            all_tests=base.all_tests,
            request_status=base.request_status,
        )

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """One P and O per specimen asked about that has tests waiting; the others are left
        out, and an answer with none ends in L termination code I (no information)."""
        stamp = now.strftime("%Y%m%d%H%M%S")
        records = [Record.of("H", self.delimiters.definition, "", "", "LIS", *[""] * 6, "P",
                             "E 1394-97", stamp)]  # fmt: skip
        number = 0
        for specimen_id, found, codes in self.requested(query, orders):
            if not codes:
                continue
            number += 1
            patient = found[0].patient_id
            records.append(Record.of("P", str(number), *([patient] if patient else [])))
            fields = [""] * 15  # O.2 to O.16
            fields[0] = "1"
            fields[1] = specimen_id
            fields[4] = self.analyser_priority(most_urgent(o.priority for o in found))
            fields[6] = stamp  # O.8, where Erba's example has it
            fields[10] = "A"
            fields[14] = self.specimen_type
            plain = Record.of("O", *fields)
            tests = tuple(("", "", "", code) for code in codes)
            records.append(Record((*plain.fields[:4], tests, *plain.fields[5:])))
        records.append(Record.of("L", "1", "N" if number else "I"))
        return records
