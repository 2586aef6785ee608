"""Erba XL driver against the Erba XL files in the corpus (astm/erba-xl_*).

Values below were read off the files with ``cat -v``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

import drivers
from drivers.erba_xl import ErbaXLDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"


def read(name: str) -> tuple[InstrumentMessage, list[str]]:
    driver = ErbaXLDriver()
    capture = read_capture((ASTM / name).read_bytes(), driver.tolerances)
    (message,) = capture.messages
    errors = [e.kind for e in capture.errors]
    return driver.read(decode_message(message.lines).records), errors


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("erba_xl"), ErbaXLDriver)
    assert drivers.identify(header("XL-640")).driver is ErbaXLDriver
    assert drivers.identify(header("ERBA XL 1000")).driver is ErbaXLDriver
    # The captured XL leaves H.5 empty: its backtick repeat delimiter gives it away.
    capture = read_capture((ASTM / "erba-xl_raw_backtick-repeat.bin").read_bytes())
    records = decode_message(capture.messages[0].lines).records
    assert records[0].text(5) == ""
    found = drivers.identify(records)
    assert found.driver is ErbaXLDriver and "backtick" in found.reason


def test_result_with_backtick_delimiter_and_instrument_flag() -> None:
    message, errors = read("erba-xl_raw_backtick-repeat.bin")
    assert errors == []
    (result,) = message.results
    assert (result.specimen_id, result.instrument_test_code, result.test_code) == (
        "1044041",
        "DBILL",
        "DBIL",
    )
    assert result.value.number == Decimal("0.3") and result.units == "mg/dl"
    assert result.abnormal_flags == ("A",)
    assert result.instrument_flags == ("Instrument Flag A",)
    assert result.status == "F"
    assert result.completed_at == datetime(2020, 9, 28, 13, 23, 12)
    assert message.specimens[0].specimen_type == "SERUM"


def test_query_for_five_specimens() -> None:
    message, _ = read("erba-xl_log_multi-sample-query.txt")
    (query,) = message.queries
    assert query.specimen_ids == ("1007149", "1007152", "1007151", "1007150", "1007148")
    assert query.all_tests and query.request_status == "O"


def test_reading_a_host_order() -> None:
    # A host's order to an XL, hand-made with a wrong checksum: the frame is reported and
    # its records are still read.
    message, errors = read("erba-xl_framed_BAD-CHECKSUM.bin")
    assert errors == ["checksum"]
    assert message.sender == "MBDC_Online V2.11"
    (order,) = message.orders
    assert order == Order(
        specimen_id="12121212",
        test_codes=("NA", "K", "ALB"),
        priority="S",
        action_code="A",
        patient_id="0009281",
    )
    assert message.specimens[0].collected_at == datetime(2010, 6, 7, 7, 44, 16)


def test_answer_has_the_layout_of_the_host_order() -> None:
    driver = ErbaXLDriver()
    message, _ = read("erba-xl_log_multi-sample-query.txt")
    held = [
        Order("1007152", ("NA", "K", "ALB"), priority="S", patient_id="0009281"),
        Order("1007148", ("GLU",)),
        Order("9999999", ("CREA",)),
    ]
    answer = driver.answer_query(message.queries[0], held, datetime(2020, 5, 28, 18, 45, 30))
    text = [encode_record(r, driver.delimiters) for r in answer]
    assert text == [
        "H|`^&|||LIS|||||||P|E 1394-97|20200528184530",
        "P|1|0009281",
        "O|1|1007152||^^^Na`^^^K`^^^ALB|S||20200528184530||||A||||Serum",
        "P|2",
        "O|1|1007148||^^^GLU|R||20200528184530||||A||||Serum",
        "L|1|N",
    ]
    # Field for field the host order's O record, but for the specimen and the time.
    host = (ASTM / "erba-xl_framed_BAD-CHECKSUM.bin").read_bytes()
    (order_message,) = read_capture(host).messages
    host_o = order_message.lines[2].split("|")
    ours = text[2].split("|")
    assert len(ours) == len(host_o)
    different = {i for i, (a, b) in enumerate(zip(host_o, ours, strict=True)) if a != b}
    assert different == {2, 7}  # O.3 specimen id, O.8 date and time


def test_nothing_to_run() -> None:
    driver = ErbaXLDriver()
    answer = driver.answer_query(HostQuery(specimen_ids=("1",)), [], datetime(2020, 1, 1))
    assert [r.type for r in answer] == ["H", "L"]
    assert encode_record(answer[-1], driver.delimiters) == "L|1|I"


def test_decode_command_output() -> None:
    data = (ASTM / "erba-xl_raw_backtick-repeat.bin").read_bytes()
    (row,) = decode_capture(data, "erba_xl").as_dict()["messages"][0]["results"]
    assert row["lab_test_code"] == "DBIL"
    assert row["instrument_flags"] == ["Instrument Flag A"]
