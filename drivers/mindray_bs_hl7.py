"""Mindray BS series chemistry analysers (BS-120 to BS-2000: BS-200E, BS-240, BS-380,
BS-480, BS-800...) and their clones (BIOBASE BK-200), with the LIS interface set to HL7.

After Mindray's BS-series host interface manual (HL7 v2.3.1), as its examples show and as
public projects that read it quote them (checked field by field against copies of those
messages; none is copied here):

* MSH-3/MSH-4 name maker and model (``Mindray|BS-480``, ``BIOBASE|BK-200``), or the
  model alone in MSH-3 (``Mindray BS-200E``); some send neither, and are known by their
  layout: every OBX with the test no. in OBX-3 and a name in OBX-4, or, where the site set
  the analyser to send the host's test codes (``GLU``) in OBX-3, MSH-16 as below with
  every OBX named in OBX-4. MSH-16, the standard's acknowledgment type, says what the
  message holds: ``0`` patient results, ``1`` a calibration result, ``2`` a QC result.
* Patient results: PID-2 (or PID-3) the patient id, PID-4 the bed (never an id). OBR-2 is
  the sample's barcode, the specimen id; OBR-3 the analyser's sample number, kept as the
  specimen's position and never taken for its id. OBR-7 the time of the measurement,
  OBR-15 the sample type (``serum``). One OBX per test: OBX-3 the test no., OBX-4 its name
  (``TBil``), OBX-5 value, OBX-6 units (sometimes padded with spaces), OBX-7 the reference
  range (``-`` for none, ``low~high`` on the BK-200), OBX-8 the flag, OBX-14 the time.
* QC results have no PID and no OBX: the OBR is the result. OBR-2 the test no., OBR-3 its
  name, OBR-6 when the control ran, OBR-13 the control's name, OBR-14 its lot, OBR-15 the
  lot's expiry, OBR-17 its level (H/M/L), OBR-18 and OBR-19 the target mean and SD set on
  the analyser, OBR-20 the measured value, OBR-21 its units. The expiry, mean and SD are
  not kept: the rules' ``control_materials`` hold the lot's expiry and targets.
* Calibration results are no patient's nor control's: not read, and said (the message is
  kept in quarantine with the reason, its bytes as they came).

The test no. (OBX-3, OBR-2) is what a laboratory maps: it is the test's identity on the
analyser, the code the analyser takes back in a host-query answer (``DSP-29`` on), and
never changes when someone edits the name printed beside it. The name (OBX-4, OBR-3) is
free text set on the analyser (``R FAKTOR``, ``NEWTEST``); it stands in for the number only
when the number is not in the instrument's ``test_map`` (common names are mapped, as the
ASTM driver maps them) or when the analyser sends no number. An analyser set to send the
host's test codes writes them where the number would be, and they are read the same way: a
code the table knows (``GLU``) gives the laboratory's, another passes through as it came.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar

from drivers.hl7 import (
    RESULT_MESSAGES,
    Hl7Driver,
    Observation,
    Request,
    requests_of,
    sequence_number,
)
from drivers.mindray_bs import MindrayBSDriver
from middleware.domain import (
    ControlResult,
    InstrumentMessage,
    Measurement,
    Result,
    Specimen,
)
from middleware.hl7.segments import Hl7Message, Segment

#: MSH-16: what a BS-series message holds.
_PATIENT, _CALIBRATION, _QC = "0", "1", "2"
_KINDS = (_PATIENT, _CALIBRATION, _QC)
_TEST_NO = re.compile(r"[0-9]{1,6}")
_WORD = re.compile(r"[A-Za-z]")


def _kind(message: Hl7Message) -> str:
    return message.header.value(16).strip()


def _reference_range(obx: Segment) -> str:
    """OBX-7: ``-`` is no range; ``0~5`` (the BK-200 writes the range with the repeat
    separator) is ``0-5``."""
    bounds = [rep[0].strip() for rep in obx.field(7)]
    if len(bounds) == 2 and all(bounds):
        return f"{bounds[0]}-{bounds[1]}"
    text = obx.value(7).strip()
    return "" if text == "-" else text


class MindrayBSHl7Driver(Hl7Driver):
    name = "mindray_bs_hl7"
    description = "Mindray BS series chemistry and its clones (BIOBASE BK-200), HL7 mode"
    sender_pattern = re.compile(r"\b(?:BS|BK)-\d{3,4}", re.IGNORECASE)
    #: Common test names, as the ASTM driver maps them; test numbers are the site's own.
    test_map: ClassVar[Mapping[str, str]] = {
        name.upper(): code for name, code in MindrayBSDriver.test_map.items()
    }
    codes_any_case = True

    @classmethod
    def score(cls, message: Hl7Message) -> tuple[int, str]:
        observations = message.all("OBX")
        named = [
            s for s in observations
            if _TEST_NO.fullmatch(s.value(3)) and _WORD.search(s.value(4))
        ]  # fmt: skip
        if observations and len(named) == len(observations):
            return 3, f"{len(named)} OBX with the test no. in OBX-3 and its name in OBX-4"
        # A BS set up with the host's own test codes writes them in OBX-3 (GLU), where the
        # test no. would be: MSH-16 then tells it, as no standard message writes a digit
        # there (AL, NE, ER, SU) nor a name in OBX-4 (a sub-id). No OBR field is asked
        # for: a tube without a barcode is still the BS's, and its reading says so.
        kind = _kind(message)
        coded = [s for s in observations if s.value(3) and _WORD.search(s.value(4))]
        if kind in _KINDS and observations and len(coded) == len(observations):
            return 3, (
                f"MSH-16 = {kind} (what a BS-series message holds) and {len(coded)} OBX "
                "with a code in OBX-3 and its name in OBX-4"
            )
        qc = [s for s in message.all("OBR") if s.value(13) and s.value(20)]
        if not observations and qc and kind == _QC:
            return 3, "MSH-16 = 2 and a control in the OBR (name OBR-13, value OBR-20)"
        return 0, ""

    # --- patient results -------------------------------------------------------------------

    def patient_id(self, pid: Segment) -> str:
        # PID-4 is the bed.
        return pid.value(3) or pid.value(2)

    def specimen_id(self, request: Request) -> str:
        obr = request.obr
        if obr is None:
            return ""
        if not obr.value(2):
            number = (
                f"; sample no. {obr.value(3)[:20]!r} (OBR-3) is not one" if obr.value(3) else ""
            )
            self._problems.append(f"{obr.where(2)}: no barcode, so no specimen id{number}")
        return obr.value(2)

    def specimen(self, request: Request, specimen_id: str) -> Specimen:
        found = super().specimen(request, specimen_id)
        obr = request.obr
        if obr is None:
            return found
        return replace(found, specimen_type=obr.value(15), position=obr.value(3))

    def instrument_test_code(self, obx: Segment) -> str:
        return obx.value(3) or _name(obx)

    def _result(
        self, observation: Observation, request: Request, specimen_id: str, index: int
    ) -> Result | None:
        result = super()._result(observation, request, specimen_id, index)
        if result is None:
            return None
        obx = observation.obx
        return replace(
            result,
            test_code=self._lab_code(obx.value(3), _name(obx)),
            units=result.units.strip(),
            reference_range=_reference_range(obx),
        )

    def _lab_code(self, number: str, name: str) -> str:
        """The laboratory's code of a test: its number's, else its name's, else the
        number as it came."""
        code = number or name
        if not name or code in self.codes:
            return self.lab_code(code)
        return self.codes.get(name) or self.codes.get(name.upper()) or self.lab_code(code)

    def analyser_code(self, lab_code: str) -> str:
        """A host-query answer asks for a test by the number the site mapped to it (the
        analyser's own code for it); the names of the table are for reading results only,
        so a test with no number mapped goes as the laboratory names it."""
        for analyser, lab in self.codes.items():
            if lab == lab_code and _TEST_NO.fullmatch(analyser):
                return analyser
        return lab_code

    # --- reading ---------------------------------------------------------------------------

    def read(self, message: Hl7Message) -> InstrumentMessage:
        kind = _kind(message)
        # MSH-16 as HL7 has it (accept acknowledgment: AL, NE, ER, SU), from a clone that
        # follows the standard there: a message of patient results.
        standard = kind.upper() in ("AL", "NE", "ER", "SU")
        if message.message_type not in RESULT_MESSAGES or kind in ("", _PATIENT) or standard:
            return super().read(message)
        reading = InstrumentMessage(
            instrument=self.instrument, driver=self.name, sender=message.sender
        )
        self._problems = reading.problems
        self._sub = message.encoding.subcomponent
        requests = requests_of(message)
        if kind == _QC:
            self._controls(requests, reading)
        elif kind == _CALIBRATION:
            tests = ", ".join(
                " ".join(p for p in (r.obr.value(2), r.obr.value(3)) if p) or "?"
                for r in requests
                if r.obr is not None
            )
            reading.problems.append(
                f"MSH-16 = 1: a calibration result ({tests or 'no OBR'}), not a patient's "
                "or a control's; not read"
            )
        else:
            reading.problems.append(
                f"MSH-16 = {kind[:10]!r}: not a kind of BS-series message (0 patient "
                "results, 1 calibration, 2 QC); not read"
            )
        return reading

    def _controls(self, requests: list[Request], reading: InstrumentMessage) -> None:
        """A QC message: each OBR a control result."""
        if not requests:
            reading.problems.append("MSH-16 = 2 (QC) but no OBR: no control result read")
        for index, request in enumerate(requests):
            obr = request.obr
            if obr is None:
                reading.problems.append(
                    f"{len(request.observations)} OBX without an OBR in a QC message "
                    "(MSH-16 = 2); not read"
                )
                continue
            if request.observations:
                reading.problems.append(
                    f"OBR {obr.value(1) or '?'}: {len(request.observations)} OBX in a QC "
                    "message (MSH-16 = 2), where the OBR is the result; not read"
                )
            control = self._control(obr, index)
            if control is not None:
                reading.specimens.append(Specimen(control.result.specimen_id))
                reading.controls.append(control)

    def _control(self, obr: Segment, index: int) -> ControlResult | None:
        number, name = obr.value(2), obr.value(3)
        code = number or name
        if not code:
            self._problems.append(f"{obr.where(2)}: no test no. nor name; control left out")
            return None
        text = obr.value(20).strip()
        if not text:
            self._problems.append(f"{obr.where(20)}: the control of {code} has no value; left out")
            return None
        value, refused = Measurement.read(text)
        if refused:
            self._problems.append(f"{obr.where(20)}: {text[:40]!r} {refused}; kept as text")
        elif value.number is None:
            self._problems.append(f"{obr.where(20)}: {text[:40]!r} is not a number; kept as text")
        material, lot, level = (obr.value(n).strip() for n in (13, 14, 17))
        if not material and not lot:
            self._problems.append(
                f"{obr.where(13)}: the control of {code} names no material nor lot (OBR-14)"
            )
        ran = 6 if obr.value(6) else 7
        sequence = obr.value(1).strip()
        result = Result(
            specimen_id=material or lot,
            test_code=self._lab_code(number, name),
            instrument_test_code=code,
            value=value,
            units=obr.value(21).strip(),
            status="F",
            completed_at=self.read_time(obr.value(ran), obr.where(ran)),
            instrument=self.instrument,
            sequence=sequence_number(sequence),
            record_index=index,
        )
        return ControlResult(result, material, lot, level)


def _name(obx: Segment) -> str:
    """The test's name: OBX-4, or OBX-3.2 from analysers that write ``no.^name``."""
    return obx.value(4) or obx.value(3, 2)
