"""Mindray BC driver. The corpus has no BC capture: the messages below are written after the
layout of Mindray's host interface in its ASTM form as drivers/mindray_bc.py describes it
(H.5 = model^software version^serial number, H.12 = PR patient results / QR QC results,
O.3 = sample id, R.3 = parameter name and LOINC code, R.7 = L/H/N, R.13 = completion time).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.mindray_bc import MindrayBCDriver
from drivers.mindray_bs import MindrayBSDriver
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import InstrumentMessage
from tests.drivers import header

HEADER = "H|\\^&|||BC-5380^01.02.00.1234^WT-12345678|||||||{kind}|E1394-97|20240315103000"

PATIENT = "\r".join(
    [
        HEADER.format(kind="PR"),
        "P|1||PID-42",
        "O|1|240315001||^^^CBC+DIFF|R|20240315102500",
        "R|1|^^^WBC^6690-2|6.52|10*3/uL|4.00-10.00|N||F||||20240315103000",
        "R|2|^^^Neu#^751-8|4.10|10*3/uL|2.00-7.00|N||F||||20240315103000",
        "R|3|^^^HGB^718-7|10.2|g/dL|11.0-16.0|L||F||||20240315103000",
        "R|4|^^^770-8^NEU%|62.9|%|50.0-70.0|N||F||||20240315103000",
        "R|5|^^^PLT^777-3|450|10*3/uL|100-300|H||F||||20240315103000",
        "R|6|^^^IMG#^51584-1|0.03|10*3/uL||N||F||||20240315103000",
        "L|1|N",
    ]
)

QC = "\r".join(
    [
        HEADER.format(kind="QR"),
        "P|1",
        "O|1|L-2403||^^^CBC|R|20240315080000",
        "R|1|^^^WBC^6690-2|3.01|10*3/uL||N||F||||20240315080000",
        "R|2|^^^HGB^718-7|8.1|g/dL||N||F||||20240315080000",
        "L|1|N",
    ]
)


def read(text: str) -> InstrumentMessage:
    decoded = decode_message(text)
    assert not decoded.errors
    return MindrayBCDriver().read(decoded.records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("mindray_bc"), MindrayBCDriver)
    assert drivers.identify(header("BC-5380^01.02.00.1234^WT-12345678")).driver is MindrayBCDriver
    assert drivers.identify(header("BC-6800^01.00")).driver is MindrayBCDriver
    # the chemistry analysers are the other Mindray driver's
    assert drivers.identify(header("Mindry")).driver is MindrayBSDriver


def test_results_with_the_parameter_name_wherever_it_stands() -> None:
    message = read(PATIENT)
    assert message.controls == []
    assert {r.specimen_id for r in message.results} == {"240315001"}
    assert [(r.instrument_test_code, r.test_code) for r in message.results] == [
        ("WBC", "WBC"),
        ("Neu#", "NEUT#"),
        ("HGB", "HGB"),
        ("NEU%", "NEUT%"),
        ("PLT", "PLT"),
        ("IMG#", "IMG#"),
    ]
    hgb = message.results[2]
    assert (hgb.value.number, hgb.units, hgb.reference_range) == (
        Decimal("10.2"),
        "g/dL",
        "11.0-16.0",
    )
    assert hgb.completed_at == datetime(2024, 3, 15, 10, 30)
    assert hgb.patient_id == "PID-42"
    assert [r.abnormal_flags for r in message.results] == [
        ("N",),
        ("N",),
        ("L",),
        ("N",),
        ("H",),
        ("N",),
    ]


def test_qc_message_is_controls() -> None:
    message = read(QC)
    assert message.results == []
    assert [(c.result.test_code, c.control_material) for c in message.controls] == [
        ("WBC", "L-2403"),
        ("HGB", "L-2403"),
    ]
    # the same records with PR in H.12 are a patient's
    assert len(read(QC.replace("|QR|", "|PR|")).results) == 2


def test_decode_command_with_the_driver() -> None:
    report = decode_capture(PATIENT.encode(), "mindray_bc")
    assert report.ok
    rows = report.messages[0]["results"]
    assert [(r["test_code"], r["lab_test_code"]) for r in rows[:2]] == [
        ("WBC", "WBC"),
        ("Neu#", "NEUT#"),
    ]
