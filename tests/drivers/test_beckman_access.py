"""Beckman Coulter Access driver against the Access 2 monitor log in the corpus
(astm/beckman-access2_log_fragmented-reads.txt): 12 transfers of one result each, whose
chunks the monitor partly wrote out of order. Only results whose records came through
whole are checked; values were read off the file with ``cat -v``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

import drivers
from drivers.beckman_access import BeckmanAccessDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
LOG = ASTM / "beckman-access2_log_fragmented-reads.txt"


@pytest.fixture(scope="module")
def messages() -> list[InstrumentMessage]:
    capture = read_capture(LOG.read_bytes(), BeckmanAccessDriver.tolerances)
    driver = drivers.get("beckman_access")
    return [driver.read(decode_message(m.lines).records) for m in capture.messages]


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("beckman_access"), BeckmanAccessDriver)
    assert drivers.identify(header("ACCESS^575707")).driver is BeckmanAccessDriver
    assert drivers.identify(header("ACCESSION^1")).driver.name == "generic"


def test_intact_results_through_the_decode_command() -> None:
    report = decode_capture(LOG.read_bytes(), "beckman_access")
    assert not report.ok  # the log's damage is still reported
    assert len(report.messages) == 12
    rows = [r for m in report.messages for r in m["results"]]
    assert len(rows) == 8

    def row(message: int) -> tuple[object, ...]:
        (r,) = report.messages[message]["results"]
        keys = ("specimen_id", "test_code", "lab_test_code", "value", "units", "flags")
        return (*(r[k] for k in keys), r["completed_at"])

    assert row(0) == (
        "25086305",
        "Insulin",
        "INS",
        "16.64",
        "uIU/mL",
        ["N"],
        "2025-07-01T18:11:27",
    )
    assert row(1) == ("25020053", "HCG5", "HCG", "108.66", "mIU/mL", ["N"], "2025-07-01T18:26:26")
    # the O frame of the third transfer is scrambled, its R frame is whole
    assert row(2)[1:] == ("OV125Ag", "CA125", "16.4", "U/mL", ["N"], "2025-07-01T18:31:50")
    assert row(4) == ("2025105867", "B12II", "B12", "131", "pg/mL", ["L"], "2025-07-01T18:45:02")


def test_the_whole_transfer(messages: list[InstrumentMessage]) -> None:
    hcg = messages[1]
    assert hcg.sender == "ACCESS^575707"
    assert hcg.problems == []
    (specimen,) = hcg.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position) == ("25020053", "1316", "4")
    assert specimen.specimen_type == "Serum"
    (order,) = hcg.orders
    assert order.test_codes == ("HCG",)
    (result,) = hcg.results
    assert (result.value.number, result.status, result.module) == (Decimal("108.66"), "F", "575707")
    assert result.completed_at == datetime(2025, 7, 1, 18, 26, 26)
    assert hcg.controls == []


def test_result_flag_comment(messages: list[InstrumentMessage]) -> None:
    (b12,) = messages[4].results
    assert b12.instrument_flags == ("ORL",)
    assert b12.abnormal_flags == ("L",)
    # R.6 = "222to 1439^normal": the log lost a space; the range name is not the range
    assert b12.reference_range == "222to 1439"
    (specimen,) = messages[4].specimens
    assert (specimen.rack, specimen.position) == ("1316", "1")
    assert messages[1].results[0].instrument_flags == ()


def test_several_flags_in_one_comment() -> None:
    # After the "Typical Upload" of Beckman Coulter's LIS Vendor Information: flags
    # separated by semicolons in one C record after the result.
    text = "\r".join(
        [
            "H|\\^&|||ACCESS^500001|||||LIS||P|1|20111231235959",
            "P|1|098765678",
            "O|1|SPEC1234|^1^4|^^^Ferritin^2|||||||||||Serum||||||||||F",
            "R|1|^^^Ferritin^1|105.6|ng/ml||N||F||||20111231235959",
            "C|1|I|CEX;PEX|I",
            "L|1|F",
        ]
    )
    message = BeckmanAccessDriver().read(decode_message(text).records)
    (result,) = message.results
    assert (result.test_code, result.instrument_flags) == ("FER", ("CEX", "PEX"))
    assert (result.specimen_id, result.patient_id) == ("SPEC1234", "098765678")
    (specimen,) = message.specimens
    assert (specimen.rack, specimen.position) == ("1", "4")


def test_answer_query_records() -> None:
    query_text = "\r".join(
        [
            "H|\\^&|||ACCESS^500001|||||LIS||P|1|20111231235959",
            "Q|1|^3588820543||ALL||||||||O",
            "L|1|F",
        ]
    )
    driver = BeckmanAccessDriver()
    (query,) = driver.read(decode_message(query_text).records).queries
    assert query == HostQuery(("3588820543",), (), True, "O")
    held = [Order("3588820543", ("TSH", "FT4", "B12"), patient_id="P-77")]
    records = driver.answer_query(query, held, datetime(2025, 7, 1, 19, 0, 0))
    assert [encode_record(r) for r in records] == [
        "H|\\^&|||LIS|||||||P|LIS2-A2|20250701190000",
        "P|1|P-77",
        "O|1|3588820543||^^^TSH3^1\\^^^FrT4^1\\^^^B12II^1|R||||||N||||Serum||||||||||Q",
        "L|1|N",
    ]
    nothing = driver.answer_query(HostQuery(("999",)), held, datetime(2025, 7, 1, 19, 0, 0))
    assert encode_record(nothing[2]) == "O|1|999||^^^|R||||||||||||||||||||Y"
