"""Beckman Coulter AU chemistry analysers (AU480, AU680, AU5800 series, DxC 700 AU) in their
ASTM host-interface mode (CLSI LIS2-A2 records over an E1381 link).

No public copy of the AU's ASTM-mode specification, and no capture of its ASTM traffic,
could be found: the layout below is the LIS2-A2 standard's, carrying what the AU's own
host protocol says about a sample and a result. That protocol is described in Beckman
Coulter's "AU680/AU480 Online Specifications" (2011), the "AU5800 Online Specification"
(D-160845) and the "DxC 700 AU Online Specification" (2016), whose public copies show
their contents, and in the Olympus "AU2700/5400 Online Specifications" (message classes
for normal, rerun, QC, calibration and reagent-blank results); it was checked against a
public DxC 700 AU traffic log in the AU's own format (JaskiratOberoi/Stellar-Synapse,
``eLabs logs/DxC700AU``; no licence stated; read, nothing copied). Check a capture of the
ASTM mode before use.

* H.5 names the model (``AU680^01``, ``DxC 700 AU``): the only way the family is found.
  Its layout is the standard's, so no layout score is given (a score would claim any
  LIS2-A2 analyser that numbers its tests).
* A sample is identified as the AU identifies it: O.3 = the sample ID (bar code) when it
  has one; O.4 = ``<rack no.>^<cup position>^<sample no.>``, the sample number standing
  for the sample when it has no bar code. O.16 is the AU's sample type (serum, urine,
  other).
* Tests are the AU's online test numbers, set per analyser on its online test menu
  (``^^^<test no.>``, three digits in the log): there is no fixed name to map, so each
  site maps its numbers in the instrument's ``test_map``.
* R.7 holds the AU's data flags, one character each, up to two per result (the log's
  two-character flag field: ``G``, ``%?``). ``H`` and ``L`` (above, below the reference
  range) are the laboratory's flags; every other character (reagent, sample, reaction,
  range and edit checks) is kept as an instrument flag, as sent. The standard's two-letter
  codes (``HH``, ``LL``) are read as the standard means them.
* A result the AU could not measure comes without a value, its data flags saying why; it
  is kept, and said in the message's problems (unless R.9 is X, "cannot be done").
* Control samples: the standard's marking (H.12 or O.12 = ``Q``), or the instrument's
  control pattern. The control is named in O.3 as ``<control name>^<lot no.>^<level>``;
  named groups ``lot`` and ``level`` of a configured pattern are read from the sample ID
  instead.
* Calibration and reagent-blank results, which the AU's own protocol sends in messages of
  their own, have no marking in this layout; no dilution or reagent lot is read.
* Host queries and their answers are the standard's (Q.3 ``^<sample ID>``, tests
  ``^^^<test no.>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar

from drivers.base import Context, ControlInfo, Driver, ResultRecords
from middleware.astm.records import Record
from middleware.domain import Specimen

#: R.7 codes of the standard's own that are more than one character: read whole, not
#: as two AU data flags.
_STANDARD_CODES = frozenset({"HH", "LL"})


class BeckmanAUDriver(Driver):
    name = "beckman_au"
    description = "Beckman Coulter AU480, AU680, AU5800 and DxC 700 AU chemistry (ASTM mode)"
    # Only the AU models that have an ASTM mode; the lookarounds keep the model number from
    # being read out of a longer name or number. Access and DxI senders (``ACCESS^...``)
    # and the UniCel DxC (``DxC 800``) name no AU.
    sender_pattern = re.compile(
        r"(?<![A-Z0-9])(?:AU[ -]?(?:480|680|58[0-9]{2})|DXC[ -]?700[ -]?AU)(?![0-9])",
        re.IGNORECASE,
    )
    # Only the reference-range flags are the laboratory's; the AU's other data flags are
    # checks on the measurement, kept as instrument flags.
    flag_map: ClassVar[Mapping[str, str]] = {"H": "H", "L": "L", "HH": "HH", "LL": "LL"}

    def specimen_id(self, context: Context, order: Record) -> str:
        """The sample ID (O.3), else the AU's sample number (O.4's third component): the
        base reading's fallback, O.4's first component, is the AU's rack."""
        return order.value(3).strip() or order.value(4, 2).strip()

    def specimen(self, context: Context, order: Record) -> Specimen:
        specimen = super().specimen(context, order)
        return replace(specimen, rack=order.value(4, 0).strip(), position=order.value(4, 1).strip())

    def data_flags(self, result: Record) -> tuple[str, ...]:
        """R.7's AU data flags, one character each (a repeat may hold two, as the AU's
        two-character flag field does)."""
        found: list[str] = []
        for repeat in result.repeats(7):
            text = "".join(repeat[:1]).strip()
            if text.upper() in _STANDARD_CODES:
                found.append(text.upper())
            else:
                found += [c for c in text if not c.isspace()]
        return tuple(found)

    def flags(self, result: Record) -> tuple[str, ...]:
        return tuple(self.flag_map[f] for f in self.data_flags(result) if f in self.flag_map)

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        own = tuple(f for f in self.data_flags(group.result) if f not in self.flag_map)
        return (*own, *super().instrument_flags(group))

    def no_value_reason(self, result: Record) -> str:
        # The AU leaves the value out when it could not measure; the flags say why.
        flags = "".join(self.data_flags(result))
        return f"data flags {flags!r}" if flags else "no data flag"

    def control_info(self, context: Context, group: ResultRecords) -> ControlInfo | None:
        control = super().control_info(context, group)
        if control is None:
            return None
        order = context.order
        lot = order.value(3, 1).strip() if order is not None else ""
        level = order.value(3, 2).strip() if order is not None else ""
        match = self.control_re.search(context.specimen_id) if self.control_re else None
        if match is not None:
            named = match.groupdict()
            lot = (named.get("lot") or lot).strip()
            level = (named.get("level") or level).strip()
        return ControlInfo(material=control.material, lot=lot, level=level)
