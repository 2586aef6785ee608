"""Siemens ADVIA Centaur immunoassay analysers (Centaur, XP, XPT, CP), ASTM.

After the layout of Siemens' ADVIA Centaur interface specification, checked against
public captures of Centaur XP and CP uploads kept as other projects' test data (read, not
copied; no message of them is used here):

* H.5 is the system name the site gave it (``NG_LIS``, ``ACCP1``), not the model: the
  driver is found by its layout (R.3's result aspects), or named in the configuration.
* O.3 = sample id^rack^position (``K1908322^0007^A``), or the sample id alone (CP).
* R.3 = ``^^^<test>^<dilution protocol>^<dilution ratio>^<replicate>^<aspect>``: each
  aspect of a test's result is an R record of its own: ``DOSE`` (the concentration),
  ``INDX`` (an index), ``INTR`` (the interpretation: ``NR``, ``React``...), ``COFF`` (the
  assay's cut-off) and ``RLU`` (the light units measured).
* R.4 as ``2.80``, ``< 0.10``, ``> 100.0``; R.5 units (``µIU/mL`` in Latin-1); R.7 ``<``
  or ``>`` beyond the assay's range; R.9 ``F`` or ``F\\R`` (its first repeat is the
  status); R.13 the time the test was completed.
* A control sample's order has action code Q (O.12), and a manufacturer record after the
  order names the control and its lot: ``M|1|CCD^ACS:NG^V1^O|<control>|<lot>``.

Mapping: DOSE is the test's result under the test's code; INDX and INTR are results of
their own as ``<test>/INDX`` and ``<test>/INTR`` (for the instrument's test map to name);
COFF and RLU are not results but how one was obtained: kept as comments of the test's
result of the same sample.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from drivers.base import Context, ControlInfo, Driver, DriverOptions, ResultRecords
from middleware.astm.records import Record
from middleware.domain import Comment, InstrumentMessage, Result, Specimen

_ASPECTS = ("DOSE", "INDX", "INTR", "COFF", "RLU")
#: Aspects that say how a result was obtained, not a result.
_TECHNICAL = {"COFF": "cut-off", "RLU": "RLU"}
_ASPECT_INDEX = 7  # R.3's eighth component
T = TypeVar("T")


def _aspect(result: Record) -> str:
    return result.value(3, _ASPECT_INDEX).upper()


class SiemensCentaurDriver(Driver):
    name = "siemens_centaur"
    description = "Siemens ADVIA Centaur, XP, XPT and CP (immunoassay)"
    # Most sites name the system themselves; these are the names that say what it is.
    sender_pattern = re.compile(r"ADVIA|CENTAUR", re.IGNORECASE)

    def __init__(self, options: DriverOptions | None = None, instrument: str = "") -> None:
        super().__init__(options, instrument)
        self._controls: dict[str, tuple[str, str]] = {}
        """The message being read's control samples: control name and lot, by sample id."""

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """Result aspects in R.3's eighth component: the Centaur's layout."""
        results = [r for r in records if r.type == "R"]
        if results and all(_aspect(r) in _ASPECTS for r in results):
            return 3, "R.3 ^^^test^^^replicate^aspect (DOSE, INDX, INTR, COFF, RLU)"
        return 0, ""

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        self._controls = {}
        specimen = ""
        for record in records:
            if record.type == "O":
                specimen = record.value(3)
            elif record.type == "M" and specimen and record.value(4):
                # M.3 says what the record is (CCD: control data), M.4 and M.5 the control.
                self._controls[specimen] = (record.value(4), record.value(5))
        message = super().read(records)
        message.results = _fold_technical(
            message.results, lambda r: r, lambda _, r: r, message.problems
        )
        message.controls = _fold_technical(
            message.controls, lambda c: c.result, lambda c, r: replace(c, result=r),
            message.problems,
        )  # fmt: skip
        return message

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        return replace(specimen, rack=order.value(3, 1), position=order.value(3, 2))

    def instrument_test_code(self, result: Record) -> str:
        test, aspect = result.value(3, 3), _aspect(result)
        return test if aspect in ("", "DOSE") else f"{test}/{aspect}"

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        control = super().control_info(context, group)
        if control is None:
            return None
        name, lot = self._controls.get(context.specimen_id, ("", ""))
        return ControlInfo(material=name or control.material, lot=lot)


def _aspect_of(result: Result) -> str:
    return result.instrument_test_code.partition("/")[2]


def _fold_technical(
    items: list[T],
    result_of: Callable[[T], Result],
    with_result: Callable[[T, Result], T],
    problems: list[str],
) -> list[T]:
    """COFF and RLU records become comments of their test's result of the same sample;
    one with no such result stays a result, said in the message's problems."""
    main: dict[tuple[str, str], int] = {}
    out: list[T] = []
    technical: list[Result] = []
    for item in items:
        result = result_of(item)
        if _aspect_of(result) in _TECHNICAL:
            technical.append(result)
            continue
        test = result.instrument_test_code.partition("/")[0]
        main.setdefault((result.specimen_id, test), len(out))
        out.append(item)
    leftover = {id(r) for r in technical}
    for result in technical:
        test, _, aspect = result.instrument_test_code.partition("/")
        at = main.get((result.specimen_id, test))
        if at is None:
            problems.append(
                f"sample {result.specimen_id}: {test} {aspect} without a result of {test}"
            )
            continue
        leftover.discard(id(result))
        units = f" {result.units}" if result.units else ""
        note = Comment(f"{_TECHNICAL[aspect]} {result.value.text}{units}", "instrument", aspect)
        owner = result_of(out[at])
        out[at] = with_result(out[at], replace(owner, comments=(*owner.comments, note)))
    # Kept as they came, where nothing could take them.
    out += [item for item in items if id(result_of(item)) in leftover]
    return out
