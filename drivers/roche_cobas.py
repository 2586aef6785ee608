"""Roche cobas c 311, c 111 and e 411: Roche's "cobas ASTM" host interface.

No capture of these analysers is in the corpus. The layout followed is the result upload,
test selection request and download of Roche's host interface manuals for the cobas
c 311 and the cobas e 411 ("cobas" protocol type), which the c 111 shares:

* H.5 = analyser^version... (``c311^1``, ``cobas-e411^1``, ``c111^Roche^c111^<sw>^1^<serial>``);
  H.11 = message type^mode: ``RSUPL^REAL``/``RSUPL^BATCH`` results, ``TSREQ^REAL`` a
  query; the host answers ``TSDWN^REPLY``.
* O.3 = sample id (space-padded to 22 characters), or counter^sample id^... in some c 311
  and c 501 interfaces; O.4 = sequence no.^rack id^position^^
  sample type^container type, sample type S1-S5 for patient samples and QC for controls;
  O.5 = ``^^^ACN^dilution`` repeats; O.12 = N routine, Q control. For a control, O.3 is the
  control's name (``PCCC1``): the result upload does not carry the control lot.
* R.3 = ``^^^ACN/dilution/pre-dilution`` (``^^^117/1/not`` on the e 411, ``^^^717/`` on the
  c 311; ``^^^10^^0`` in the older Elecsys form). R.4 = the value, or for qualitative
  e 411 assays interpretation^cut-off index (``-1^0.750``). R.7 = N, L, H, LL, HH, <, >,
  A. R.6 = low^high. R.14 = the module (``E1``, ``P1``).
* A C record after each R carries the data alarm code in C.4 (``C|1|I|27|I``; 0 is none).
* Q.3 = ``^^<sample id>^<sequence no.>^<rack id>^<position>^^<sample type>^<container>``.

The Roche/Hitachi 7600, 917 and MODULAR analysers send the same upload (``H7600^1``,
``RSUPL^BATCH``; O.3 ``0^<padded sample id>^...``, R.3 ``^^^989/``, R.14 ``ISE1``, ``P1``),
as a real 7600 upload published by another project shows.

Reagent and calibration data travel in messages of their own (reagent loading, photometric
calibration upload), not with results, so results carry no reagent lots.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import ClassVar

from drivers.base import (
    Context,
    ControlInfo,
    Driver,
    DriverOptions,
    ResultRecords,
    header_of,
    range_of,
)
from middleware.astm.records import Record
from middleware.domain import (
    Comment,
    HostQuery,
    InstrumentMessage,
    Order,
    Specimen,
    most_urgent,
)

# e 411 qualitative results: the interpretation before the cut-off index.
_INTERPRETATIONS = {"-1": "non-reactive", "0": "indeterminate", "1": "reactive"}
_NO_DILUTION = frozenset({"", "1", "not"})
_NO_ALARM = "0"
# Queries not answered yet; the answer needs what the analyser said about each tube.
_REMEMBERED = 500


class RocheCobasDriver(Driver):
    name = "roche_cobas"
    # Its host interface writes stat or routine only (O.6 S or R).
    priorities = frozenset({"S", "R"})
    description = (
        "Roche cobas c 311, c 111, e 411 and the Roche/Hitachi analysers (cobas ASTM host "
        "interface)"
    )
    # The Roche/Hitachi 7600, 917 and MODULAR analysers upload in the same layout.
    sender_pattern = re.compile(
        r"^(?:cobas[- ]?)?[ce] ?(?:111|311|411)\b|^H ?(?:7[0-9]{3}|91[27])\b|^MODULAR",
        re.IGNORECASE,
    )
    # Application codes (ACNs) as Roche assigns them to the common c 311 applications,
    # the ISE and e 411 TSH. ACNs are set per analyser (and host codes may replace them):
    # check each against the analyser's application list and override in configuration.
    test_map: ClassVar[Mapping[str, str]] = {
        "717": "GLU",
        "418": "UREA",
        "413": "ALB",
        "685": "ALT",
        "687": "AST",
        "798": "CHOL",
        "781": "TG",
        "989": "NA",
        "990": "K",
        "991": "CL",
        "10": "TSH",
    }
    # < and > are results off the measuring range; the censored value says which bound.
    flag_map: ClassVar[Mapping[str, str]] = {"<": "L", ">": "H"}

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """The message types of Roche's cobas protocol, in H.11, are its own."""
        header = header_of(records)
        kind = header.value(11) if header is not None else ""
        if kind in ("RSUPL", "TSREQ", "TSDWN", "PCUPL", "QCUPL"):
            return 3, f"the message type Roche's cobas protocol writes in H.11 ({kind})"
        return 0, ""

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        super().__init__(options, instrument)
        self._asked: dict[str, tuple[str, ...]] = {}
        self._analyser = ""

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        if any(r.type == "Q" for r in records):
            header = next((r for r in records if r.type == "H"), None)
            self._analyser = header.value(5) if header is not None else self._analyser
        return super().read(records)

    def specimen_id(self, context: Context, order: Record) -> str:
        # Some c 311/c 501 interfaces write O.3 as counter^sample id^...: the id is the
        # second component there. The c 111 puts the sample id in O.4.
        counter, sample = order.value(3).strip(), order.value(3, 1).strip()
        if counter.isdigit() and sample:
            return sample
        return counter or order.value(4).strip()

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        if not order.value(3).strip():
            return specimen
        return replace(specimen, rack=order.value(4, 1), position=order.value(4, 2))

    def instrument_test_code(self, result: Record) -> str:
        return result.value(3, 3).split("/")[0]

    def dilution(self, result: Record) -> str:
        """Dilution and pre-dilution after the ACN (or the Elecsys form's 5th component);
        1 and ``not`` mean none."""
        parts = [*result.value(3, 3).split("/")[1:], result.value(3, 4)]
        return "/".join(p for p in parts if p not in _NO_DILUTION)

    def value_text(self, result: Record) -> str:
        interpretation, index = result.value(4), result.value(4, 1)
        if interpretation in _INTERPRETATIONS and index:
            return index
        return super().value_text(result)

    def reference_range(self, result: Record) -> str:
        return range_of(result.value(6).strip(), result.value(6, 1).strip())

    def operator(self, result: Record) -> str:
        return result.value(11).strip()

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        return tuple(flag for flag in super().instrument_flags(group) if flag != _NO_ALARM)

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        found = tuple(c for c in super().comments(group) if c.text != _NO_ALARM)
        result = group.result
        interpretation = _INTERPRETATIONS.get(result.value(4)) if result.value(4, 1) else None
        if interpretation:
            found += (Comment(interpretation, "instrument", "interpretation"),)
        return found

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        order = context.order
        if order is not None and order.value(4, 4) == "QC":
            return ControlInfo(material=context.specimen_id)
        return super().control_info(context, group)

    def query(self, record: Record) -> HostQuery:
        ids: list[str] = []
        for rep in record.repeats(3):
            specimen_id = rep[2].strip() if len(rep) > 2 else ""
            if specimen_id:
                ids.append(specimen_id)
                self._asked[specimen_id] = tuple(rep[3:9])
        while len(self._asked) > _REMEMBERED:
            del self._asked[next(iter(self._asked))]
        return replace(super().query(record), specimen_ids=tuple(ids))

    @staticmethod
    def _test_code_of(components: tuple[str, ...]) -> str:
        # Order and query test ids: ^^^ACN^dilution, or ALL.
        if len(components) > 3:
            return components[3].split("/")[0]
        return components[0]

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """A test selection download (TSDWN^REPLY): per sample asked about, its tests as
        ``^^^ACN^``, the tube's sequence no., rack, position and type as the query gave
        them, action code A; a sample without orders gets an O record without tests."""
        stamp = now.strftime("%Y%m%d%H%M%S")
        records = [
            Record.of("H", "\\^&", "", "", ["host", "1"], *[""] * 4, self._analyser,
                      ["TSDWN", "REPLY"], "P", "1", stamp)
        ]  # fmt: skip
        asked = self.requested(query, orders)
        for number, (specimen_id, found, acns) in enumerate(asked, start=1):
            tube = self._asked.pop(specimen_id, ())
            sample_type = tube[4] if len(tube) > 4 else ""
            fields = [""] * 25  # O.2 to O.26
            fields[0] = "1"
            fields[1] = specimen_id
            fields[4] = self.analyser_priority(most_urgent(o.priority for o in found))
            fields[10] = "A"
            # O.16 as the result upload writes it: 1 for S1 (serum/plasma)...
            fields[14] = sample_type[1:] if sample_type.startswith("S") else "1"
            fields[24] = "O"
            plain = Record.of("O", *fields).fields
            tests = tuple(("", "", "", acn, "") for acn in acns) or (("",),)
            records.append(Record.of("P", str(number)))
            records.append(Record((*plain[:3], (tube or ("",),), tests, *plain[5:])))
        records.append(Record.of("L", "1", "N"))
        return records
