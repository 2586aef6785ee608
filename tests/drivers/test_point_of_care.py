"""Point-of-care analysers that name the sample in the P record (Abbott Afinion 2, Siemens
DCA Vantage), on messages written after the layout of real uploads published by another
project (values our own): the sample id is read from P, not from the run counters in O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import drivers
from drivers.abbott_afinion import AbbottAfinionDriver
from drivers.siemens_dca import SiemensDcaDriver
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from tests.drivers import header

AFINION = [
    "H|\\^&|||Afinion 2 Analyzer^^AF20051234|||||||P|1|20250411093012",
    "P|1||LAB-77121|||||U",
    "O|1||12|^^^HbA1c|||||||N||||^O||||||||^10229999||F",
    "R|1|^^^HbA1c|6.4|%||||F||op7||20250411092540",
    "L|1|N",
]
DCA = [
    "H|\\^&|||DCA VANTAGE^04.04.00.00^S061234|||||||P||20250411101746",
    "P|1|URN-5521",
    "O|1||702^0101||||||||||||||||||||||F",
    "R|1|^^^Alb|48.2|mg/L||||F|||20250411101030",
    "C|1|I|1.000^0.0 mg/L|G",
    "R|2|^^^Crt|120.4|mg/dL||||F|||20250411101030",
    "C|1|I|1.000^0.0 mg/dL|G",
    "R|3|^^^Ratio|40.0|mg/g||||F|||20250411101030",
    "L|1|N",
]


def _decode(lines: list[str]) -> dict[str, Any]:
    report = decode_capture("\r\n".join(lines).encode())
    assert report.ok, report.as_dict()
    (message,) = report.messages
    return message


def test_recognised_by_their_sender() -> None:
    assert drivers.identify(header("Afinion 2 Analyzer^^AF20052397")).driver is AbbottAfinionDriver
    assert drivers.identify(header("Afinion AS100")).driver is AbbottAfinionDriver
    assert drivers.identify(header("DCA VANTAGE^04.04.00.00^S067337")).driver is SiemensDcaDriver


def test_the_afinion_sample_is_named_in_p_not_by_its_run_number() -> None:
    message = _decode(AFINION)
    assert message["driver"] == "abbott_afinion"
    (result,) = message["results"]
    assert (result["specimen_id"], result["test_code"], result["value"], result["units"]) == (
        "LAB-77121", "HbA1c", "6.4", "%"
    )  # fmt: skip
    assert result["completed_at"] == "2025-04-11T09:25:40"
    # The generic reading takes the run number for the sample.
    generic = decode_capture("\r\n".join(AFINION).encode(), "generic").messages[0]
    assert generic["results"][0]["specimen_id"] == "12"


def test_the_dca_sample_is_named_in_p_and_each_quantity_is_a_result() -> None:
    message = _decode(DCA)
    assert message["driver"] == "siemens_dca"
    rows = [(r["specimen_id"], r["test_code"], r["value"], r["units"]) for r in message["results"]]
    assert rows == [
        ("URN-5521", "Alb", "48.2", "mg/L"),
        ("URN-5521", "Crt", "120.4", "mg/dL"),
        ("URN-5521", "Ratio", "40.0", "mg/g"),
    ]
    read = SiemensDcaDriver().read(decode_message(DCA).records)
    assert read.specimens[0].position == "702^0101"
    assert [c.text for c in read.results[0].comments] == ["1.000^0.0 mg/L"]
    assert read.results[0].completed_at == datetime(2025, 4, 11, 10, 10, 30)
