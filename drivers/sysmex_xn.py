"""Sysmex XN series haematology analysers (XN-L: XN-350/450/550; XN-1000 to XN-9000),
ASTM host interface, and the older XS, XT, XE and XP series, which share its layout
(recognised by their sender, ``XS-1000i^00-13^...``; not checked against a capture of
theirs).

After the layout of Sysmex's XN / XN-L ASTM host interface specification (E1381-95 link,
E1394-97 records):

* H.5 = analyser name^software version^analyser number... (``XN-350^00-18^11001``).
* O.4, the instrument's specimen id, is rack^tube position^sample no.^attribute, the
  sample number right-aligned in its field, so padded with spaces in front
  (``1^3^          1234567890^B``). O.3 stays empty in what the analyser sends; in what
  the host sends (query answers) the same four components go in O.3.
* R.3 = ``^^^^<parameter>^<dilution>`` (``^^^^WBC^1``): the parameter is the 5th
  component. Its names are the laboratory's own (WBC, NEUT#, RDW-SD...).
* R.7 is L, H or N, or W for a low-reliability value (shown with an asterisk on screen).
* A host query's Q.3 is rack^tube position^sample no.^attribute, like O.4.
* Control samples carry a QC sample number, ``QC-`` followed by the QC lot (or file)
  they were measured as.
* Besides the parameters, R records carry the sample's IP messages (flags such as
  ``Blasts?``, ``WBC_Abn_Scattergram``, ``Positive_Diff``) and references to its
  scattergram and distribution images (``SCAT_WDF``, ``DIST_RBC``, the value a file
  reference such as ``PNG&R&20240315&R&...PNG``). Neither is a result: the flags are
  given to every result of the sample as instrument flags, the image references are kept
  as the message's comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from drivers.base import Context, ControlInfo, Driver, ResultRecords
from drivers.sysmex import SysmexDriver
from middleware.astm.records import Record
from middleware.domain import (
    Comment,
    ControlResult,
    HostQuery,
    InstrumentMessage,
    Order,
    Result,
)

#: Width of the sample number component in O.3/O.4 and Q.3.
_SAMPLE_NO_WIDTH = 22


#: IP messages the XN reports as R records: those ending in "?" (suspect flags), and these.
_FLAGS = frozenset({
    "WBC_Abn_Scattergram", "RBC_Abn_Distribution", "PLT_Abn_Distribution",
    "PLT_Abn_Scattergram", "Positive_Diff", "Positive_Morph", "Positive_Count",
    "Negative", "Error_Func", "Error_Result", "Leukocytosis", "Leukocytopenia",
    "Neutrophilia", "Neutropenia", "Lymphocytosis", "Lymphopenia", "Monocytosis",
    "Eosinophilia", "Basophilia", "IG_Present", "Erythrocytosis", "Anemia",
    "Anisocytosis", "Microcytosis", "Macrocytosis", "Hypochromia", "Dimorphic_Population",
    "RET_Abn_Scattergram", "Reticulocytosis", "Thrombocytosis", "Thrombocytopenia",
    "Pancytopenia",
})  # fmt: skip
_IMAGE_FILE = re.compile(r"\.(?:PNG|BMP|JPE?G)\s*$", re.IGNORECASE)


def _is_flag(code: str) -> bool:
    return code.endswith("?") or code in _FLAGS


def _is_image(code: str, value: str) -> bool:
    return code.startswith(("SCAT_", "DIST_")) or bool(_IMAGE_FILE.search(value))


class SysmexXNDriver(SysmexDriver):
    name = "sysmex_xn"
    description = (
        "Sysmex XN series haematology (XN-L, XN-1000 to XN-9000) and the XS, XT, XE and XP series"
    )
    # The older series share the XN's ASTM layout (Sysmex wrote one host interface for
    # its haematology analysers); their sender names them as the XN's does.
    sender_pattern = re.compile(r"^X[NSTEP]-", re.IGNORECASE)
    # A named group ``lot`` (and ``level``) in the pattern, here or in the instrument's
    # configuration, says where the control's lot (and level) stand in the sample number.
    control_pattern = re.compile(r"^QC-(?P<lot>.+)$")

    test_layout = "^^^^parameter"

    @classmethod
    def is_test_layout(cls, test: tuple[str, ...]) -> bool:
        """The parameter in R.3's fifth component: the XN and the siblings sharing it."""
        return len(test) > 4 and not test[3] and bool(test[4])

    # The XN's parameter names are the laboratory's codes: nothing to map.

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        """The standard reading, then the sample's flags and image references taken out
        of its results (see the module's notes)."""
        message = super().read(records)
        flags: dict[str, list[str]] = {}
        kept: list[tuple[Result, ControlResult | None]] = []
        for result, control in message.measurements():
            code, value = result.instrument_test_code, result.value.text
            if _is_image(code, value):
                message.comments.append(Comment(f"image {code}: {value}", "instrument", "image"))
            elif _is_flag(code):
                # the value (a Q-flag's 0-300, or 1) stays with the flag
                flags.setdefault(result.specimen_id, []).append(
                    f"{code}={value}" if value else code
                )
            else:
                kept.append((result, control))

        def flagged(result: Result) -> Result:
            extra = flags.get(result.specimen_id, ())
            return replace(result, instrument_flags=(*result.instrument_flags, *extra))

        message.results = [flagged(r) for r, c in kept if c is None]
        message.controls = [replace(c, result=flagged(r)) for r, c in kept if c is not None]
        for specimen_id in flags.keys() - {r.specimen_id for r, _ in kept}:
            message.problems.append(
                f"sample {specimen_id}: flags {', '.join(flags[specimen_id])} without results"
            )
        return message

    def instrument_test_code(self, result: Record) -> str:
        return result.value(3, 4) or super().instrument_test_code(result)

    @staticmethod
    def _test_code_of(components: tuple[str, ...]) -> str:
        if len(components) > 4 and components[4]:
            return components[4]
        return Driver._test_code_of(components)

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        match = self.control_re.search(context.specimen_id) if self.control_re else None
        if match is None:
            return super().control_info(context, group)
        found = match.groupdict()
        return ControlInfo(
            material=context.specimen_id,
            lot=(found.get("lot") or "").strip(),
            level=(found.get("level") or "").strip(),
        )

    def query(self, record: Record) -> HostQuery:
        """Q.3 repeats rack^position^sample no.^attribute: the sample number is the id."""
        query = super().query(record)
        ids = tuple(rep[2].strip() for rep in record.repeats(3) if len(rep) > 2 and rep[2].strip())
        return replace(query, specimen_ids=ids) if ids else query

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        """One P and O per sample asked about: O.3 = ``^^<sample no.>^B``, the tests as
        ``^^^^<parameter>``; an O without tests when nothing is held for the sample."""
        stamp = now.strftime("%Y%m%d%H%M%S")
        records = [Record.of("H", "\\^&", *[""] * 10, "E1394-97", stamp)]
        asked = self.requested(query, orders)
        for number, (specimen_id, found, codes) in enumerate(asked, start=1):
            patient = found[0].patient_id if found else ""
            # P.5, where the XN puts the patient id, when there is one.
            records.append(Record.of("P", str(number), *(("", "", patient) if patient else ())))
            fields: list[str] = [""] * 25  # O.2 to O.26
            fields[0] = "1"
            fields[4] = (found[0].priority if found else "") or "R"
            fields[10] = "N" if codes else ""
            fields[24] = "Q" if codes else "Y"
            plain = Record.of("O", *fields)
            sample = ("", "", specimen_id.rjust(_SAMPLE_NO_WIDTH), "B")
            tests = tuple(("", "", "", "", code) for code in codes) or (("",),)
            placed = (*plain.fields[:2], (sample,), (("",),), tests, *plain.fields[5:])
            records.append(Record(placed))
        records.append(Record.of("L", "1", "N"))
        return records
