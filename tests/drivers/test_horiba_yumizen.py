"""Horiba Yumizen driver against the two Yumizen captures in the corpus:
astm/yumizen-h500_raw_multi-frame.bin (a patient run) and
astm/yumizen-h550_records_qc-run.astm (a low control). Values were read off the files with
``cat -v``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import drivers
from drivers.base import DriverOptions
from drivers.horiba_yumizen import HoribaYumizenDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import InstrumentMessage, ReagentUse, Result
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
H500 = ASTM / "yumizen-h500_raw_multi-frame.bin"
H550 = ASTM / "yumizen-h550_records_qc-run.astm"


def read(path: Path, driver: HoribaYumizenDriver | None = None) -> InstrumentMessage:
    capture = read_capture(path.read_bytes(), HoribaYumizenDriver.tolerances)
    assert not capture.errors
    (message,) = capture.messages
    decoded = decode_message(message.lines)
    assert not decoded.errors
    return (driver or HoribaYumizenDriver()).read(decoded.records)


@pytest.fixture(scope="module")
def patient() -> InstrumentMessage:
    return read(H500)


@pytest.fixture(scope="module")
def qc() -> InstrumentMessage:
    return read(H550)


def by_code(results: list[Result]) -> dict[str, Result]:
    return {r.instrument_test_code: r for r in results}


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("horiba_yumizen"), HoribaYumizenDriver)
    assert drivers.identify(header("H500^906YOXH02459^2.2.0.5")).driver is HoribaYumizenDriver
    assert drivers.identify(header("H550^909YAXH02732^1.2.1.4")).driver is HoribaYumizenDriver
    assert drivers.identify(header("H5000^1")).driver is not HoribaYumizenDriver


def test_patient_run_results_and_lab_codes(patient: InstrumentMessage) -> None:
    assert patient.sender == "H500^906YOXH02459^2.2.0.5"
    assert patient.controls == []
    assert len(patient.results) == 27
    assert {r.specimen_id for r in patient.results} == {"2021679"}
    assert [s.specimen_type for s in patient.specimens] == ["BLOOD"]
    rows = by_code(patient.results)
    assert {c: rows[c].test_code for c in ("NEU#", "LYM%", "MON#", "EOS%", "BAS%", "RDW-CV")} == {
        "NEU#": "NEUT#",
        "LYM%": "LYMPH%",
        "MON#": "MONO#",
        "EOS%": "EO%",
        "BAS%": "BASO%",
        "RDW-CV": "RDW-CV",
    }
    # parameters the laboratory has no code for keep the analyser's
    assert [rows[c].test_code for c in ("P-LCR", "P-LCC", "LIC#", "LIC%")] == [
        "P-LCR",
        "P-LCC",
        "LIC#",
        "LIC%",
    ]
    hgb = rows["HGB"]
    assert (hgb.value.text, hgb.value.number, hgb.units) == ("4.6", Decimal("4.6"), "g/dL")
    assert hgb.reference_range == "11.5 - 17.0"
    assert hgb.abnormal_flags == ("LL",)
    assert hgb.status == "F"
    assert hgb.operator == "PATHO"
    # the only time the H500 gives is R.12
    assert hgb.completed_at == datetime(2020, 4, 7, 15, 15, 58)
    assert rows["RDW-SD"].abnormal_flags == ("HH",)


def test_a_doubted_result_carries_the_warning_flag(patient: InstrumentMessage) -> None:
    rows = by_code(patient.results)
    pct = rows["PCT"]
    assert (pct.status, pct.value.text, pct.abnormal_flags) == ("W", "0.13", ("L", "W"))
    assert rows["WBC"].abnormal_flags == ("N", "W")
    # F results are not doubted
    assert rows["MCV"].abnormal_flags == ("N",)
    doubted = {r.instrument_test_code for r in patient.results if "W" in r.abnormal_flags}
    assert doubted == {r.instrument_test_code for r in patient.results if r.status == "W"}
    assert len(doubted) == 19


def test_sample_flags_go_to_their_parameter_and_whole_sample_ones_to_all(
    patient: InstrumentMessage,
) -> None:
    rows = by_code(patient.results)
    whole = (
        "SUSPECTED_PATHOLOGY^^ANEMIA",
        "SUSPECTED_PATHOLOGY^^ANISOCYTOSIS",
        "SUSPECTED_PATHOLOGY^^PLT_AGGREGATES_OR_E",
    )
    assert rows["WBC"].instrument_flags == ("NON_COMPLIANT_DATA^WBC^LL_OR_LL1_INTERFERE", *whole)
    assert rows["PLT"].instrument_flags == ("NON_COMPLIANT_DATA^PLT^SEP_RBC_PLT", *whole)
    assert rows["HGB"].instrument_flags == whole
    assert all(r.instrument_flags[-3:] == whole for r in patient.results)


def test_a_flag_about_a_parameter_the_run_did_not_report_goes_to_all_its_results() -> None:
    """A run of the differential alone reports no WBC: the WBC flag is not dropped, it
    goes to every result of the sample (written after the H550's layout, not copied)."""
    lines = [
        "H|\\^&|||H550^000TEST^1.2|||||||P|LIS2-A2|20261130090000",
        "P|1",
        "O|1|S-DIF||^^^DIF|R|20261130085900|||||||||BLOOD||||||||||F",
        "C|1|I|NON_COMPLIANT_message^WBC^ABNORMAL_DIFF\\SUSPECTED_PATHOLOGY^^ANEMIA\\"
        "NON_COMPLIANT_message^NEU%^LOW_COUNT|I",
        "R|1|^^^NEU#^751-8|0.90|10E3/uL|1.60 - 7.00^REFERENCE_RANGE|L||W||LAB^^USER|20261130085900",
        "R|2|^^^NEU%^770-8|12.5|%|40.0 - 73.0^REFERENCE_RANGE|L||W||LAB^^USER|20261130085900",
        "L|1|N",
    ]
    decoded = decode_message(lines)
    assert not decoded.errors
    rows = by_code(HoribaYumizenDriver().read(decoded.records).results)
    assert rows["NEU#"].instrument_flags == (
        "NON_COMPLIANT_message^WBC^ABNORMAL_DIFF", "SUSPECTED_PATHOLOGY^^ANEMIA",
    )  # fmt: skip
    assert rows["NEU%"].instrument_flags == (
        "NON_COMPLIANT_message^WBC^ABNORMAL_DIFF", "SUSPECTED_PATHOLOGY^^ANEMIA",
        "NON_COMPLIANT_message^NEU%^LOW_COUNT",
    )  # fmt: skip


def test_reagent_lots_from_the_m_record_after_the_order(patient: InstrumentMessage) -> None:
    rows = by_code(patient.results)
    assert rows["WBC"].reagents == (
        ReagentUse("CLEANER", "200203I13", "WBC", date(2020, 7, 7)),
        ReagentUse("DILUENT", "200130H19", "WBC", date(2020, 10, 7)),
        ReagentUse("LYSE", "191107M11", "WBC", date(2020, 6, 7)),
    )
    assert [u.test_code for u in rows["NEU#"].reagents] == ["NEUT#"] * 3
    assert all(len(r.reagents) == 3 for r in patient.results)


def test_qc_run_is_a_low_control_with_its_lot(qc: InstrumentMessage) -> None:
    assert qc.results == []
    assert len(qc.controls) == 20
    assert {(c.control_material, c.lot, c.level) for c in qc.controls} == {
        ("CTRLLOW", "PX449L", "LOW")
    }
    first = qc.controls[0].result
    assert (first.specimen_id, first.test_code, first.value.text, first.units) == (
        "PX449L",
        "MCV",
        "78.4",
        "um3",
    )
    assert first.reference_range == "73.5-83.5"
    assert first.completed_at == datetime(2024, 9, 12, 7, 3, 43)
    eos = by_code([c.result for c in qc.controls])["EOS%"]
    assert (eos.test_code, eos.value.number) == ("EO%", Decimal("8.4"))


def test_qc_reagents_despite_the_doubled_repeat_delimiter(qc: InstrumentMessage) -> None:
    # M|3|REAGENT|CLEANER\\DILUENT\\LYSE|240415I1(^20240902000000^20241202\\423H1(^...
    reagents = qc.controls[0].result.reagents
    assert [(u.reagent, u.lot, u.expiry) for u in reagents] == [
        ("CLEANER", "240415I1(", date(2024, 12, 2)),
        ("DILUENT", "423H1(", date(2025, 3, 5)),
        ("LYSE", "411M11", date(2024, 10, 28)),
    ]
    assert all(c.result.instrument_flags == () for c in qc.controls)


def test_decode_command_with_the_driver() -> None:
    report = decode_capture(H500.read_bytes(), "horiba_yumizen")
    assert report.ok
    (message,) = report.messages
    pct = message["results"][0]
    assert (pct["test_code"], pct["lab_test_code"], pct["flags"]) == ("PCT", "PCT", ["L", "W"])
    assert pct["completed_at"] == "2020-04-07T15:15:58"
    assert pct["reagents"][2] == {"reagent": "LYSE", "lot": "191107M11", "expiry": "2020-06-07"}
    qc = decode_capture(H550.read_bytes(), "horiba_yumizen")
    assert qc.ok
    row = qc.messages[0]["results"][4]
    assert (row["test_code"], row["lab_test_code"], row["value"]) == ("RBC", "RBC", "2.35")
    assert (row["control_material"], row["control_lot"], row["control_level"]) == (
        "CTRLLOW",
        "PX449L",
        "LOW",
    )


def test_configuration_overrides_a_code() -> None:
    driver = HoribaYumizenDriver(DriverOptions(test_map={"LIC#": "IG#"}))
    rows = by_code(read(H500, driver).results)
    assert rows["LIC#"].test_code == "IG#"
    assert rows["NEU#"].test_code == "NEUT#"


def test_a_control_level_written_after_a_space_has_none_in_front(tmp_path: Path) -> None:
    medium = tmp_path / "medium.astm"
    medium.write_bytes(H550.read_bytes().replace(b"CTRL^^CTRLLOW", b"CTRL^^CTRL MEDIUM"))
    assert {c.level for c in read(medium).controls} == {"MEDIUM"}
