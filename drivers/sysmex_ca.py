"""Sysmex CA and CS series coagulation analysers (CA-500, CA-600, CA-1500, CA-7000;
CS-1600, CS-2000i, CS-2100i, CS-2500, CS-5100), ASTM.

After the layout Sysmex publishes for their ASTM host interface, checked against the
record layout of public CS-2500 and CS-1600 uploads (another project's test data; read,
not copied, and no message of it is used here):

* H.5 = model^software version^analyser number^^^user's analyser name...
  (``CS-2500^01-70^21768``); H.13 = ``E1394-97``.
* O.3 is empty; O.4 = rack^tube position^sample no.^attribute, the sample number
  right-aligned in its component, padded with spaces in front.
* R.3 = ``^^^<parameter>^<name>^<dilution %>^<result type>``: a three-digit parameter
  code whose first two digits are the test's group (04x prothrombin time, 05x APTT: the
  group the ``LOT`` comments name), the parameter's name as set on the analyser, ending
  in ``~`` and what the parameter is (``PT INN~sec``, ``PT~%``, ``PT cal~INR``,
  ``DFbg INN~g_L``, ``DFbg~gL``, ``APTT FS~sec``: the ``~`` is text here, the repeat
  delimiter being ``\\``), the dilution in percent and the kind of result.
* R.4 right-aligned, padded with spaces (or not: the CS-1600 writes ``4.22``); R.5 the
  unit; R.7 ``N``, ``<`` or ``>`` (below or above what the analyser measures: R.4 is then
  the limit, read as the censored value ``<limit`` or ``>limit``), ``W`` low reliability;
  R.13 the time of the measurement.
* Comment records after the results say which calibration a parameter was computed with
  (``CAL^<parameter>^^<curve no.>^``, after the parameter's result) and which reagent lot
  a test group used (``LOT^<group>^<reagent>^<lot>``, after the group's last result).
  Both are traceability, not instrument flags: the calibration is kept with the result's
  reagent lot, the lot with every result of its group.

Naming results. The parameter number alone does not say which test a result is: the
numbers within a group are set per model and setup. The CS-2500 upload has ``043`` INR
(``PT INN cal~INR``) and ``044`` derived fibrinogen (``DFbg INN~g_L``); the CS-1600 upload
has ``044`` INR (``PT cal~INR``, 4.22, no unit) and ``045`` derived fibrinogen
(``DFbg~gL``). A table of numbers would have named that INR of 4.22 a fibrinogen of
4.22 g/L. So a result is named from what its record says: the group of its parameter
(04x, 05x) together with what its name says it is after the last ``~`` (compared without
case, spaces, ``_``, ``/`` or ``.``):

* 04x ``sec``: ``PT``; 04x ``%``: ``PT%``; 04x ``INR``: ``INR``;
* 04x ``g_L`` or ``mg_dL`` (``gL``, ``g/L``...): ``FIB-D``, fibrinogen derived from the PT;
* 05x ``sec``: ``APTT``.

Anything else (no ``~``, a ratio, another group or kind) is not guessed: the parameter
number passes through unchanged, for the instrument's ``test_map`` to name. The
instrument's ``test_map``, keyed on the parameter number, always wins over these names.
Host-query answers and downloaded orders ask for tests by the same map read backwards: a
laboratory code the instrument's ``test_map`` does not give a parameter number goes out
unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar

from drivers.base import Context, DriverOptions, ResultRecords
from drivers.sysmex import SysmexDriver
from middleware.astm.records import Record
from middleware.domain import Comment, InstrumentMessage, Measurement, ReagentUse, Result

_CALIBRATION, _LOT = "CAL", "LOT"
_PARAMETER = re.compile(r"[0-9]{3}")
_NOT_KIND = re.compile(r"[\s_/.]")
_CENSORS = frozenset({"<", ">"})

#: (test group, what the parameter's name says it is after ``~``) -> the test's name.
#: What is not here passes through as the parameter number (see the module docstring).
_NAMES: Mapping[tuple[str, str], str] = {
    ("04", "sec"): "PT",
    ("04", "%"): "PT%",
    ("04", "inr"): "INR",
    ("04", "gl"): "FIB-D",
    ("04", "mgdl"): "FIB-D",
    ("05", "sec"): "APTT",
}


def _group(parameter: str) -> str:
    """``041`` -> ``040``: the test group a parameter belongs to."""
    return parameter[:2] + "0" if _PARAMETER.fullmatch(parameter) else parameter


def _named(parameter: str, name: str) -> str:
    """The test a parameter is, from its group and what its name says after ``~``; ""
    when the two do not say it clearly."""
    if not _PARAMETER.fullmatch(parameter) or "~" not in name:
        return ""
    kind = _NOT_KIND.sub("", name.rpartition("~")[2]).lower()
    return _NAMES.get((parameter[:2], kind), "")


def _traceability(comment: Record) -> tuple[str, ...]:
    """The components of a CAL or LOT comment; () for any other comment."""
    parts = comment.components(4)
    return parts if parts and parts[0] in (_CALIBRATION, _LOT) else ()


class SysmexCaDriver(SysmexDriver):
    name = "sysmex_ca"
    description = "Sysmex CA and CS series coagulation (CA-500 to CA-7000, CS-1600 to CS-5100)"
    sender_pattern = re.compile(r"^C[AS]-\d", re.IGNORECASE)
    # No table of parameter numbers: they differ between models and setups (044 is INR on
    # a CS-1600, derived fibrinogen on a CS-2500). Results are named from their records
    # (test_name); the instrument's test_map, keyed on the number, wins.
    test_map: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        super().__init__(options, instrument)
        self._lots: dict[str, tuple[str, str]] = {}
        """The message being read's reagent lots, by test group: reagent and lot."""

    test_layout = "^^^parameter^name^dilution"

    @classmethod
    def is_test_layout(cls, test: tuple[str, ...]) -> bool:
        """A three-digit parameter with its dilution in R.3: the CA/CS layout."""
        return len(test) > 5 and bool(_PARAMETER.fullmatch(test[3])) and bool(test[5])

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        # A group's lot comes after its last result: known before any result is read.
        self._lots = {}
        for record in records:
            if record.type == "C":
                parts = _traceability(record)
                if parts and parts[0] == _LOT and len(parts) > 3 and parts[3]:
                    self._lots[_group(parts[1])] = (parts[2], parts[3])
        message = super().read(records)
        # Named here, after the base reading, which names a result from its code alone.
        message.results = [self._renamed(r, records) for r in message.results]
        message.controls = [
            replace(c, result=self._renamed(c.result, records)) for c in message.controls
        ]
        return message

    def test_name(self, result: Record) -> str:
        """The laboratory's code of a result: the instrument's test_map's for its
        parameter number, else the name its group and kind give it, else the number."""
        parameter = self.instrument_test_code(result)
        if parameter in self.codes:
            return self.lab_code(parameter)
        return _named(parameter, result.value(3, 4)) or parameter

    def _renamed(self, result: Result, records: Sequence[Record]) -> Result:
        record = records[result.record_index]
        return replace(result, test_code=self.test_name(record))

    def value_text(self, result: Record) -> str:
        """R.4 without its padding; with R.7 ``<`` or ``>``, the limit R.4 holds read as
        a censored value (``>5.0``): the number alone would be a result the analyser did
        not measure."""
        text = super().value_text(result).strip()
        signs = {rep[0] for rep in result.repeats(7) if rep and rep[0] in _CENSORS}
        if len(signs) != 1:
            return text
        value = Measurement.parse(text)
        if value.number is None or value.censor:
            return text
        return f"{signs.pop()}{text}"

    def dilution(self, result: Record) -> str:
        return result.value(3, 5)

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        kept = tuple(c for c in group.comments if not _traceability(c))
        return super().instrument_flags(replace(group, comments=kept))

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        kept = tuple(c for c in group.comments if not _traceability(c))
        return super().comments(replace(group, comments=kept))

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        parameter = group.result.value(3, 3)
        lot = self._lots.get(_group(parameter))
        if lot is None:
            return ()
        calibration = next(
            (
                parts[3] if len(parts) > 3 else ""
                for parts in map(_traceability, group.comments)
                if parts and parts[0] == _CALIBRATION and parts[1:2] == (parameter,)
            ),
            "",
        )
        return (
            ReagentUse(
                reagent=lot[0], lot=lot[1], test_code=self.test_name(group.result),
                calibration_id=calibration,
            ),
        )  # fmt: skip
