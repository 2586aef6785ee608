"""Cepheid GeneXpert driver, on messages written after Cepheid's LIS interface layout (as
public messages of other projects show it; no capture in the corpus): an assay with one
result, and one with several analytes and their probes' sub-results."""

from __future__ import annotations

from datetime import date, datetime

import drivers
from drivers.cepheid_genexpert import CepheidGeneXpertDriver
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order
from tests.drivers import header

MTB_RIF = [
    "H|@^\\|URM-7Yb2kQUA-01||GeneXpert PC^GeneXpert^6.4|||||LIS||P|1394-97|20250301101500",
    "P|1|||PAT-1204|Doe^John",
    "O|1|SP-55012||^^^G4v5|R|20250301081000|||||||||ORH||||||||||F",
    "R|1|^G4v5^^TBPos^Xpert MTB-RIF Assay G4^5^MTB^|MTB DETECTED VERY LOW^|||||F||Tech A"
    "|20250301082000|20250301095300|GX-PC^700434^612345^334455^12201^20260531",
    "R|3|^G4v5^^TBPos^Xpert MTB-RIF Assay G4^5^Probe D^Ct|31.2|||||F||Tech A"
    "|20250301082000|20250301095300|GX-PC^700434^612345^334455^12201^20260531",
    "R|4|^G4v5^^TBPos^Xpert MTB-RIF Assay G4^5^Rif Resistance^|Rif Resistance NOT DETECTED^"
    "|||||F||Tech A|20250301082000|20250301095300|GX-PC^700434^612345^334455^12201^20260531",
    "L|1|N",
]
GBS = [
    "H|@^\\|URM-qa3hUA-08||GeneXpert PC^GeneXpert^Dx4.8|||||LIS||P|1394-97|20250302120000",
    "P|1||||^^^^",
    "O|1|SP-06571||^^^GBS-TC|R|20250302105211|||||||||ORH|||^^|||||||F",
    "R|1|^^^GBS-TC^Xpert GBS^4^^|POSITIVE^|||||F||R. Ferguson|20250302105211|20250302120634"
    "|^700434^^^^",
    "L|1|N",
]


def _read(lines: list[str]) -> InstrumentMessage:
    return CepheidGeneXpertDriver(instrument="gx").read(decode_message(lines).records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("cepheid_genexpert"), CepheidGeneXpertDriver)
    for sender in ("GeneXpert PC^GeneXpert^4.3", "  genexpert pc^GeneXpert^Dx4.6a", "Cepheid"):
        assert drivers.identify(header(sender)).driver is CepheidGeneXpertDriver, sender


def test_each_analyte_and_probe_is_a_test_of_its_assay() -> None:
    message = _read(MTB_RIF)
    assert not message.problems and not message.controls
    assert [(r.specimen_id, r.test_code, r.value.text) for r in message.results] == [
        ("SP-55012", "TBPos/MTB", "MTB DETECTED VERY LOW"),
        ("SP-55012", "TBPos/Probe D/Ct", "31.2"),
        ("SP-55012", "TBPos/Rif Resistance", "Rif Resistance NOT DETECTED"),
    ]
    first = message.results[0]
    assert first.patient_id == "PAT-1204" and first.operator == "Tech A"
    assert first.completed_at == datetime(2025, 3, 1, 9, 53)
    assert first.module == "612345"
    assert message.results[1].value.number is not None
    (cartridge,) = first.reagents
    assert (cartridge.reagent, cartridge.lot, cartridge.serial, cartridge.expiry) == (
        "Xpert cartridge", "12201", "334455", date(2026, 5, 31)
    )  # fmt: skip


def test_a_single_result_assay_is_its_host_test_code() -> None:
    message = _read(GBS)
    (result,) = message.results
    assert (result.specimen_id, result.test_code, result.value.text) == (
        "SP-06571", "GBS-TC", "POSITIVE"
    )  # fmt: skip
    assert result.module == "700434" and result.reagents == ()
    # The generic reading would have lost the analyte of every multi-analyte result.
    generic = drivers.get("generic").read(decode_message(MTB_RIF).records)
    assert {r.test_code for r in generic.results} == {"TBPos"}


def test_a_renamed_genexpert_is_known_by_its_layout() -> None:
    renamed = [MTB_RIF[0].replace("GeneXpert PC^GeneXpert^6.4", "TB-LAB-2"), *MTB_RIF[1:]]
    found = drivers.identify(decode_message(renamed).records)
    assert found.driver is CepheidGeneXpertDriver
    assert "R.3's eight components and Xpert assays and H.2 @^\\" in found.reason
    report = decode_capture("\r\n".join(MTB_RIF).encode())
    (decoded,) = report.messages
    assert decoded["driver"] == "cepheid_genexpert" and len(decoded["results"]) == 3


def test_query_answers_use_its_delimiters() -> None:
    driver = CepheidGeneXpertDriver()
    held = [Order("SP-1", ("G4v5",), patient_id="PAT-1")]
    query = HostQuery(("SP-1",))
    records = driver.answer_query(query, held, datetime(2025, 3, 1, 8, 0))
    lines = [encode_record(r, driver.delimiters) for r in records]
    assert lines[0].startswith("H|@^\\|")
    assert lines[2].split("|")[4] == "^^^G4v5"
