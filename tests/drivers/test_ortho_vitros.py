"""VITROS driver against the VITROS 3600 captures in the corpus (astm/vitros-3600_*).

Values below were read off the files with ``cat -v``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import drivers
from drivers.base import DriverOptions
from drivers.ortho_vitros import OrthoVitrosDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order, ReagentUse
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"


def read(name: str, driver: OrthoVitrosDriver | None = None) -> InstrumentMessage:
    driver = driver or OrthoVitrosDriver()
    capture = read_capture((ASTM / name).read_bytes(), driver.tolerances)
    assert not capture.errors
    (message,) = capture.messages
    return driver.read(decode_message(message.lines).records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("ortho_vitros"), OrthoVitrosDriver)
    assert drivers.identify(header("3600796")).driver is OrthoVitrosDriver
    assert drivers.identify(header("VITROS 5600")).driver is OrthoVitrosDriver
    assert drivers.identify(header("36")).driver.name == "generic"


def test_results_and_their_reagent_lots() -> None:
    message = read("vitros-3600_raw_results-reagent-lots.bin")
    assert message.sender == "3600796"
    assert len(message.results) == 8 and not message.controls
    first, second = message.results[:2]
    assert (first.specimen_id, first.test_code, first.value.number, first.units) == (
        "1111112",
        "002",
        Decimal("34.26"),
        "nmol/L",
    )
    assert first.status == "V" and first.abnormal_flags == ()
    assert first.instrument_flags == ("FRMN", "NR")
    assert first.completed_at == datetime(2020, 11, 11, 22, 17, 45)
    assert first.reagents == ()  # no M record follows the first result
    assert second.value.text == "34.81" and second.instrument_flags == ("NQ", "NR")
    assert second.reagents == (
        ReagentUse(
            reagent="VITROS 002 reagent pack",
            lot="2365",
            test_code="002",
            expiry=date(2020, 12, 8),
            calibration_id="20201111211018",
        ),
        ReagentUse(
            reagent="VITROS signal reagent",
            lot="0780",
            test_code="002",
            expiry=date(2022, 5, 31),
        ),
    )
    assert [r.value.number for r in message.results[1:5]] == [
        Decimal("34.81"),
        Decimal("34.61"),
        Decimal("33.53"),
        Decimal("34.09"),
    ]
    assert all(len(r.reagents) == 2 for r in message.results[1:5])


def test_no_result_is_kept_as_text() -> None:
    message = read("vitros-3600_raw_results-reagent-lots.bin")
    indices = message.results[5:]
    assert [r.instrument_test_code for r in indices] == ["950", "951", "952"]
    assert all(r.value.text == "No Result" and r.value.number is None for r in indices)
    assert all(not r.value.is_numeric for r in indices)


def test_censored_values_and_the_order_echo() -> None:
    message = read("vitros-3600_raw_censored-values.bin")
    tsh_like, *indices = message.results
    assert (tsh_like.specimen_id, tsh_like.instrument_test_code, tsh_like.units) == (
        "1068616",
        "001",
        "mIU/L",
    )
    assert tsh_like.value.number == Decimal("8.25") and tsh_like.value.censor == ""
    assert tsh_like.reagents[0].lot == "6190"
    assert tsh_like.reagents[0].expiry == date(2021, 1, 5)
    assert [(r.value.censor, r.value.number) for r in indices] == [
        ("<", Decimal("15")),
        ("<", Decimal("2")),
        ("<", Decimal("20")),
    ]
    (order,) = message.orders
    # The echo writes the first test in full and the others as assay+dilution.
    assert order.test_codes == ("001", "950", "951", "952")


def test_assay_numbers_map_through_configuration() -> None:
    driver = OrthoVitrosDriver(DriverOptions(test_map={"001": "TSH"}))
    message = read("vitros-3600_raw_censored-values.bin", driver)
    assert message.results[0].test_code == "TSH"
    assert message.results[0].reagents[0].test_code == "TSH"
    assert message.orders[0].test_codes[0] == "TSH"


def test_decode_command_output() -> None:
    data = (ASTM / "vitros-3600_raw_results-reagent-lots.bin").read_bytes()
    rows = decode_capture(data, "ortho_vitros").as_dict()["messages"][0]["results"]
    assert rows[1]["reagents"][0] == {
        "reagent": "VITROS 002 reagent pack",
        "lot": "2365",
        "expiry": "2020-12-08",
    }
    assert rows[1]["instrument_flags"] == ["NQ", "NR"]


def test_host_query_and_its_answer() -> None:
    # Assay 002 mapped as a site would map it: which assay it is depends on the menu.
    driver = OrthoVitrosDriver(DriverOptions(test_map={"002": "FT4"}))
    message = read("vitros-3600_raw_host-query.bin", driver)
    (query,) = message.queries
    assert query == HostQuery(specimen_ids=("1068687",), all_tests=True, request_status="O")
    answer = driver.answer_query(
        query, [Order("1068687", ("FT4",))], datetime(2020, 11, 21, 13, 10, 56)
    )
    assert [encode_record(r) for r in answer] == [
        "H|\\^&|||LIS||||||||LIS2-A|20201121131056",
        "P|1|NOPID|||NONAME",
        "O|1|1068687||^^^1.0000+002+1.0|R||20201121131056||||N||||5||||||||||O",
        "L|1|N",
    ]
    # The host program's reply the 3600 took: the same O record, field for field; its H.5
    # repeats the analyser's name and its P record adds a sex.
    replied = (ASTM / "vitros-3600_framed_order-reply-from-host.bin").read_bytes()
    (reply,) = read_capture(replied).messages
    assert reply.lines[2] == encode_record(answer[2])
    assert [line[0] for line in reply.lines] == [encode_record(r)[0] for r in answer]


def test_answer_with_several_tests_and_unknown_specimens() -> None:
    driver = OrthoVitrosDriver()
    query = HostQuery(specimen_ids=("A1", "B2"))
    answer = driver.answer_query(
        query,
        [Order("A1", ("001", "950"), priority="S", patient_id="P7")],
        datetime(2021, 1, 2, 3, 4, 5),
    )
    assert [encode_record(r) for r in answer] == [
        "H|\\^&|||LIS||||||||LIS2-A|20210102030405",
        "P|1|P7|||NONAME",
        "O|1|A1||^^^1.0000+001+1.0\\950+1.0|S||20210102030405||||N||||5||||||||||O",
        "L|1|N",
    ]
    nothing = driver.answer_query(HostQuery(specimen_ids=("B2",)), [], datetime(2021, 1, 2))
    assert [encode_record(r) for r in nothing][1:] == ["L|1|I"]
