"""Sysmex XN series haematology analysers (XN-L: XN-350/450/550; XN-1000 to XN-9000),
ASTM host interface, and the older XS, XT, XE and XP series, which share its layout.

After the layout of Sysmex's XN / XN-L ASTM host interface specification (E1381-95 link,
E1394-97 records), checked against a public replay of an XS's transfer (an ``XS^00-20``
sending a patient CBC with its IP messages and image references; no copy kept):

* H.5 = analyser name^software version^analyser number... The name is the model
  (``XN-350^00-18^11001``, ``XN-10^...`` for an XN-1000's module, ``XE-2100^00-22``,
  ``XP-300^00-07``) or, on the XS, the series alone (``XS^00-20^69652^^^^05342311``):
  the sender pattern takes ``XN``, ``XS``, ``XT``, ``XE`` or ``XP`` followed by ``-``,
  by ``^`` or by nothing, and so not ``XL-640`` (Erba) nor a name that only begins with
  those letters.
* O.4, the instrument's specimen id, is rack^tube position^sample no.^attribute, the
  sample number right-aligned in its field, so padded with spaces in front
  (``1^3^          1234567890^B``). O.3 stays empty in what the analyser sends; in what
  the host sends (query answers) the same four components go in O.3.
* R.3 = ``^^^^<parameter>^<dilution>`` (``^^^^WBC^1``): the parameter is the 5th
  component. Its names are the laboratory's own (WBC, NEUT#, RDW-SD...).
* R.7 is L, H or N, or W for a low-reliability value (shown with an asterisk on screen);
  on an IP message, ``A`` when the analyser reports it.
* A host query's Q.3 is rack^tube position^sample no.^attribute, like O.4.
* Control samples carry a QC sample number, ``QC-`` followed by the QC lot (or file)
  they were measured as.
* Besides the parameters, R records carry the sample's IP messages and references to
  its scattergram and distribution images (``SCAT_WDF``, ``DIST_RBC``, the value a file
  reference such as ``PNG&R&20240315&R&...PNG``). Neither is a result: the IP messages
  the analyser reports are given to every result of the sample as instrument flags, the
  image references are kept as the message's comments.

IP messages come two ways:

* The abnormal and "positive/error" ones (``WBC_Abn_Scattergram``, ``Leukocytopenia``,
  ``Positive_Diff``, ``Positive_Morph``...) are sent only when they apply (in the
  records seen, without a value and with R.7 ``A``: ``^^^^Positive_Morph||||A``): each
  is a flag.
* The suspect ones, the Q-flags, whose names end in ``?`` (``Blasts?``, ``NRBC?``,
  ``Atypical_Lympho?``, ``PLT_Clumps?``...), are sent on every sample, each with a
  value from 0 to 300 (in tens, in every record seen) that says how likely the
  suspicion is. Sysmex reports a Q-flag (on screen, on the printout, and as R.7 ``A``)
  from 100; below, it is negative. In the XS transfer all twelve Q-flags come on one
  sample, at 0 to 90 with R.7 empty and ``Atypical_Lympho?`` at 140 with R.7 ``A``;
  public records of an XN-450 (``HGB_Defect?`` 100 with ``A``, 90 and below without)
  and of other XS units (``Blasts?`` 150 with ``A``, 10 to 90 without) agree, and a
  public XE-2100 host interface reads a Q-flag as positive on R.7 ``A`` alone. Taking
  every Q-flag for an instrument flag would hold every CBC (under the default
  ``hold_instrument_flags: ["*"]``).

  So a Q-flag is an instrument flag (``Atypical_Lympho?=140``, its value kept) when
  R.7 is ``A`` (the analyser's own judgement, at whatever threshold it is set to), or
  when its value is 100 or more even without the ``A`` (the factory threshold: a
  firmware or setting that leaves R.7 empty must not let a positive pass; the cost is
  a hold on a site that raised its threshold). A value below 100 without ``A`` is
  negative: not a flag. A Q-flag whose value is not a number and has no ``A`` cannot be
  called negative, so it stays a flag as it came.

  The negative Q-flags' values (``Blasts?=20``) are kept in one comment of the message
  per sample (kind ``q-flag``), beside the image references: not in comments of its
  results, which go to the LIS as notes of every result (a dozen lines of nothing on
  each of a CBC's results). The raw bytes stored with the message keep them too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from drivers.base import Context, ControlInfo, Driver, ResultRecords
from drivers.sysmex import SysmexDriver
from middleware.astm.records import Record
from middleware.domain import (
    Comment,
    HostQuery,
    InstrumentMessage,
    Measurement,
    Order,
    Result,
    most_urgent,
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


#: A Q-flag's value from which Sysmex reports it positive (see the module's notes).
_Q_FLAG_POSITIVE = Decimal(100)


def _is_flag(code: str) -> bool:
    return _is_q_flag(code) or code in _FLAGS


def _is_q_flag(code: str) -> bool:
    return code.endswith("?")


def _is_image(code: str, value: str) -> bool:
    return code.startswith(("SCAT_", "DIST_")) or bool(_IMAGE_FILE.search(value))


class SysmexXNDriver(SysmexDriver):
    name = "sysmex_xn"
    # Its host interface writes stat or routine only (O.6 S or R).
    priorities = frozenset({"S", "R"})
    description = (
        "Sysmex XN series haematology (XN-L, XN-1000 to XN-9000) and the XS, XT, XE and XP series"
    )
    # The older series share the XN's ASTM layout (Sysmex wrote one host interface for
    # its haematology analysers). The XS names only its series (``XS^00-20^...``), the
    # others their model (``XS-1000i``, ``XN-10``, ``XT-4000i``): the series, then ``-``,
    # ``^`` or the end, so that ``XL-640`` (Erba) or ``XPERT`` are not taken.
    sender_pattern = re.compile(r"^X[NSTEP](?:-|\^|$)", re.IGNORECASE)
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
        """The standard reading, the sample's IP messages and image references taken out
        of its results (see :meth:`_result`), then the IP messages it reports given to
        every result of the sample as instrument flags (see the module's notes)."""
        self._flags: dict[str, list[str]] = {}
        self._negative: dict[str, list[str]] = {}
        message = super().read(records)
        flags, negative = self._flags, self._negative

        def flagged(result: Result) -> Result:
            extra = flags.get(result.specimen_id, ())
            return replace(result, instrument_flags=(*result.instrument_flags, *extra))

        message.results = [flagged(r) for r in message.results]
        message.controls = [replace(c, result=flagged(c.result)) for c in message.controls]
        for specimen_id, values in negative.items():
            shown = ", ".join(values)
            text = f"sample {specimen_id}: Q-flags below {_Q_FLAG_POSITIVE}, negative: {shown}"
            message.comments.append(Comment(text, "instrument", "q-flag"))
        measured = {r.specimen_id for r, _ in message.measurements()}
        for specimen_id in flags.keys() - measured:
            message.problems.append(
                f"sample {specimen_id}: flags {', '.join(flags[specimen_id])} without results"
            )
        return message

    def _result(self, context: Context, group: ResultRecords, message: InstrumentMessage) -> None:
        """An R record that is an image reference becomes a comment of the message, one
        that is an IP message a flag of its sample (or, a negative Q-flag, its value kept
        for the sample's comment); neither is read as a result (nor said to have no
        value, as the IP messages that carry none would be). Others as the standard's."""
        record = group.result
        code = self.instrument_test_code(record)
        value = self.value_text(record).strip()
        if not code:
            super()._result(context, group, message)  # says it has no test code
        elif _is_image(code, value):
            message.comments.append(Comment(f"image {code}: {value}", "instrument", "image"))
        elif _is_flag(code):
            shown = f"{code}={value}" if value else code
            if _is_q_flag(code) and self._negative_q_flag(record, value):
                self._negative.setdefault(context.specimen_id, []).append(shown)
            else:
                # a Q-flag's value stays with it, for the person who looks
                self._flags.setdefault(context.specimen_id, []).append(shown)
        else:
            super()._result(context, group, message)

    def _negative_q_flag(self, record: Record, value: str) -> bool:
        """A Q-flag the analyser does not report: R.7 not ``A`` and a value below 100."""
        if "A" in self.flags(record):
            return False
        level = Measurement.parse(value)
        return level.is_numeric and level.number is not None and level.number < _Q_FLAG_POSITIVE

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
            fields[4] = self.analyser_priority(most_urgent(o.priority for o in found))
            fields[10] = "N" if codes else ""
            fields[24] = "Q" if codes else "Y"
            plain = Record.of("O", *fields)
            sample = ("", "", specimen_id.rjust(_SAMPLE_NO_WIDTH), "B")
            tests = tuple(("", "", "", "", code) for code in codes) or (("",),)
            placed = (*plain.fields[:2], (sample,), (("",),), tests, *plain.fields[5:])
            records.append(Record(placed))
        records.append(Record.of("L", "1", "N"))
        return records
