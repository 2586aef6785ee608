"""ARCHITECT driver. The corpus holds no ARCHITECT capture: the messages below are written
after the result upload layout of Abbott's ARCHITECT System LIS interface manual (ASTM):
H.5 = ARCHITECT^version^serial^interface version; O.4 = specimen id^carrier^position;
O.12 = Q for controls; R.3 = ^^^assay number^assay name^dilution^status^reagent lot^
reagent serial no.^control lot no.^result type (F final, I interpretation); R.10 =
calibration date and time; R.11 = operator^releasing operator; R.14 = module serial.
Assay numbers (901...), lots, values and times are made up.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.abbott_architect import AbbottArchitectDriver
from drivers.base import DriverOptions
from middleware.astm.records import decode_message
from middleware.domain import Comment, InstrumentMessage, ReagentUse
from tests.drivers import header

HEADER = "H|\\^&|||ARCHITECT^9.45^I2SR12345^H1P1O1R1C1Q1L1|||||||P|1|20240311094512"

PATIENT = [
    HEADER,
    "P|1|||PAT0042|^DOE^JANE||19700101|F",
    "O|1|S240311-7|S240311-7^C0123^3|^^^901^TSH^UNDILUTED\\^^^902^HBsAgQ2^UNDILUTED"
    "\\^^^903^Total B-hCG^1:10|R||||||||||||||||||||F",
    "R|1|^^^901^TSH^UNDILUTED^F^52038M200^00245^^F|7.8912|uIU/mL|0.35 TO 4.94|H\\EXP||F"
    "|20240301080000|ADMIN^ADMIN||20240311094200|i1SR12345",
    "R|2|^^^902^HBsAgQ2^UNDILUTED^F^49127FN00^00112^^F|0.27|S/CO|0.00 TO 0.99|N||F"
    "|20240229151500|ADMIN^ADMIN||20240311094300|i1SR12345",
    "R|3|^^^902^HBsAgQ2^UNDILUTED^F^49127FN00^00112^^I|Nonreactive|||||F"
    "|20240229151500|ADMIN^ADMIN||20240311094300|i1SR12345",
    "R|4|^^^903^Total B-hCG^1:10^F^61204UI00^00033^^F|>15000.00|mIU/mL||>||F"
    "|20240305120000|ADMIN^ADMIN||20240311094400|i1SR12345",
    "L|1",
]

CONTROL = [
    HEADER,
    "P|1",
    "O|1|TSH CTL L|TSH CTL L^C0007^1|^^^901^TSH^UNDILUTED|R||||||Q||||||||||||||F",
    "R|1|^^^901^TSH^UNDILUTED^F^52038M200^00245^33417Q100^F|0.125|uIU/mL||N||F"
    "|20240301080000|ADMIN^ADMIN||20240311070100|i1SR12345",
    "L|1",
]


def read(lines: list[str], driver: AbbottArchitectDriver | None = None) -> InstrumentMessage:
    decoded = decode_message(lines)
    assert not decoded.errors
    return (driver or AbbottArchitectDriver()).read(decoded.records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("abbott_architect"), AbbottArchitectDriver)
    found = drivers.identify(header("ARCHITECT^9.45^I2SR12345^H1P1O1R1C1Q1L1"))
    assert found.driver is AbbottArchitectDriver
    assert drivers.identify(header("ALINITY")).driver.name == "generic"


def test_patient_results() -> None:
    message = read(PATIENT)
    assert not message.controls and not message.problems
    tsh, _, hcg = message.results
    assert (tsh.specimen_id, tsh.patient_id, tsh.instrument_test_code) == (
        "S240311-7",
        "PAT0042",
        "901",
    )
    assert tsh.test_code == "TSH"  # by its assay name: 901 is not mapped
    assert tsh.value.number == Decimal("7.8912") and tsh.units == "uIU/mL"
    assert tsh.reference_range == "0.35 TO 4.94"
    assert tsh.abnormal_flags == ("H",) and tsh.instrument_flags == ("EXP",)
    assert (tsh.status, tsh.operator, tsh.module) == ("F", "ADMIN", "i1SR12345")
    assert tsh.completed_at == datetime(2024, 3, 11, 9, 42)
    assert tsh.reagents == (
        ReagentUse(
            reagent="ARCHITECT TSH reagent",
            lot="52038M200",
            test_code="TSH",
            calibration_id="20240301080000",
            serial="00245",
        ),
    )
    assert tsh.dilution == ""
    assert (hcg.test_code, hcg.dilution, hcg.abnormal_flags) == ("HCG", "1:10", ("H",))
    assert (hcg.value.censor, hcg.value.number) == (">", Decimal("15000.00"))


def test_interpretation_joins_its_final_result() -> None:
    message = read(PATIENT)
    hbsag = message.results[1]
    assert (hbsag.instrument_test_code, hbsag.test_code, hbsag.value.text) == ("902", "902", "0.27")
    assert hbsag.comments == (Comment("Nonreactive", "instrument", "interpretation"),)
    assert hbsag.record_index == 4
    assert [r.sequence for r in message.results] == [1, 2, 4]


def test_interpretation_alone_stays_a_result() -> None:
    lines = [line for line in PATIENT if not line.startswith("R|2|")]
    message = read(lines)
    alone = message.results[1]
    assert (alone.instrument_test_code, alone.value.text, alone.comments) == (
        "902",
        "Nonreactive",
        (),
    )


def test_assay_numbers_mapped_by_configuration_win() -> None:
    driver = AbbottArchitectDriver(DriverOptions(test_map={"901": "TT4", "902": "HBSAG"}))
    message = read(PATIENT, driver)
    assert [r.test_code for r in message.results] == ["TT4", "HBSAG", "HCG"]
    assert message.results[0].reagents[0].test_code == "TT4"


def test_control_results() -> None:
    message = read(CONTROL)
    assert not message.results
    (control,) = message.controls
    assert (control.control_material, control.lot) == ("TSH CTL L", "33417Q100")
    assert control.result.test_code == "TSH"
    assert control.result.value.number == Decimal("0.125")
    assert control.result.reagents[0].lot == "52038M200"
    assert control.result.completed_at == datetime(2024, 3, 11, 7, 1)


def test_the_rlu_signal_goes_with_its_final_result_not_as_preliminary() -> None:
    rlu = (
        "R|3|^^^902^HBsAgQ2^UNDILUTED^F^49127FN00^00112^^P|1843|RLU||||F"
        "|20240229151500|ADMIN^ADMIN||20240311094300|i1SR12345"
    )
    lines = [rlu if line.startswith("R|3|") else line for line in PATIENT]
    hbsag = read(lines).results[1]
    assert hbsag.value.text == "0.27" and hbsag.status == "F"
    assert hbsag.comments == (Comment("1843", "instrument", "RLU"),)
