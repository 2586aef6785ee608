"""Beckman Coulter AU (AU480, AU680, AU5800, DxC 700 AU) in ASTM mode.

No capture of the AU's ASTM mode is public, nor its ASTM specification: the messages here
are our own, written after the layout in drivers/beckman_au.py, that is the LIS2-A2
records carrying the AU's sample identification (sample ID; rack, cup, sample number),
its three-digit online test numbers and its one-character data flags as Beckman Coulter's
AU "Online Specification" documents and a public DxC 700 AU log in the AU's own format
show them. Values, ids and test numbers are invented.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.base import DriverOptions
from drivers.beckman_access import BeckmanAccessDriver
from drivers.beckman_au import BeckmanAUDriver
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from tests.drivers import header

PATIENT = [
    "H|\\^&|||AU680^01|||||||P|LIS2-A2|20261203101500",
    "P|1||PT-40112",
    "O|1|26120301|0012^03^0045|^^^001\\^^^005\\^^^018|R||||||N||||SERUM||||||||||F",
    "R|1|^^^001|5.4|mmol/L|3.9 to 6.1|||F||||20261203101210",
    "R|2|^^^005|132|umol/L|62 to 106|H||F||||20261203101214",
    "R|3|^^^018|0.8|mmol/L|1.0 to 2.3|Lr||F||||20261203101218",
    "L|1|N",
]
CONTROL = [
    "H|\\^&|||AU680^01|||||||P|LIS2-A2|20261203103000",
    "P|1",
    "O|1|Control Serum 2^L240611^2|0901^01^Q002|^^^001\\^^^005|R||||||Q||||SERUM||||||||||F",
    "R|1|^^^001|16.2|mmol/L||||F||||20261203102845",
    "R|2|^^^005|402|umol/L||||F||||20261203102849",
    "L|1|N",
]
UNREADABLE = [
    "H|\\^&|||DxC 700 AU^1|||||||P|LIS2-A2|20261203104000",
    "P|1||PT-40113",
    "O|1||0013^01^0046|^^^001\\^^^010|R||||||N||||SERUM||||||||||F",
    "R|1|^^^001|6.9|mmol/L|3.9 to 6.1|H||F||||20261203103710",
    "R|2|^^^010||mg/dL||%?||F||||20261203103714",
    "R|3||1.4|mg/dL||||F||||20261203103718",
    "L|1|N",
]


def test_registered() -> None:
    assert isinstance(drivers.get("beckman_au"), BeckmanAUDriver)
    assert "beckman_au" in drivers.names()


def test_recognised_by_the_model_in_its_sender() -> None:
    for sender in ("AU680^01", "AU480", "AU5800^2", "AU5831^1", "DxC 700 AU^1", "DxC700AU"):
        found = drivers.identify(header(sender))
        assert found.driver is BeckmanAUDriver, sender
        assert "names the Beckman Coulter AU480, AU680" in found.reason
    # whatever its case and padding
    assert drivers.identify(header("  au 680 ^ 01 ")).driver is BeckmanAUDriver
    assert drivers.identify(header("dxc  700  au")).driver is BeckmanAUDriver


def test_other_beckman_senders_are_not_taken() -> None:
    assert drivers.identify(header("ACCESS^575707")).driver is BeckmanAccessDriver
    assert not BeckmanAUDriver.recognises(header("ACCESS^575707")[0])
    for sender in ("DxC 800", "UniCel DxI 800", "AU6800", "XAU680", "LAU480"):
        assert drivers.identify(header(sender)).driver.name == "generic", sender


def test_a_patient_message() -> None:
    message = BeckmanAUDriver().read(decode_message(PATIENT).records)
    assert message.problems == []
    assert message.sender == "AU680^01"
    (specimen,) = message.specimens
    assert (specimen.specimen_id, specimen.patient_id) == ("26120301", "PT-40112")
    assert (specimen.rack, specimen.position, specimen.specimen_type) == ("0012", "03", "SERUM")
    (order,) = message.orders
    assert order.test_codes == ("001", "005", "018")
    rows = [
        (r.specimen_id, r.test_code, r.value.number, r.units, r.reference_range,
         r.abnormal_flags, r.instrument_flags, r.status, r.completed_at)
        for r in message.results
    ]  # fmt: skip
    assert rows == [
        ("26120301", "001", Decimal("5.4"), "mmol/L", "3.9 to 6.1", (), (), "F",
         datetime(2026, 12, 3, 10, 12, 10)),
        ("26120301", "005", Decimal("132"), "umol/L", "62 to 106", ("H",), (), "F",
         datetime(2026, 12, 3, 10, 12, 14)),
        # two data flags in one field: the range flag is the laboratory's, the other the AU's
        ("26120301", "018", Decimal("0.8"), "mmol/L", "1.0 to 2.3", ("L",), ("r",), "F",
         datetime(2026, 12, 3, 10, 12, 18)),
    ]  # fmt: skip
    assert all(r.patient_id == "PT-40112" for r in message.results)
    assert message.controls == []


def test_the_site_maps_its_online_test_numbers() -> None:
    options = DriverOptions(test_map={"001": "GLU", "005": "CREA"})
    message = BeckmanAUDriver(options).read(decode_message(PATIENT).records)
    assert [(r.instrument_test_code, r.test_code) for r in message.results] == [
        ("001", "GLU"),
        ("005", "CREA"),
        ("018", "018"),
    ]


def test_a_control_message() -> None:
    message = BeckmanAUDriver().read(decode_message(CONTROL).records)
    assert message.results == [] and message.problems == []
    first, second = message.controls
    assert (first.control_material, first.lot, first.level) == ("Control Serum 2", "L240611", "2")
    assert (first.result.specimen_id, first.result.test_code, first.result.value.text) == (
        "Control Serum 2",
        "001",
        "16.2",
    )
    assert (second.result.test_code, second.result.value.number) == ("005", Decimal("402"))
    (specimen,) = message.specimens
    assert (specimen.rack, specimen.position) == ("0901", "01")


def test_a_configured_control_pattern_names_lot_and_level() -> None:
    lines = [line.replace("Control Serum 2^L240611^2", "QC2-L88") for line in CONTROL]
    lines = [line.replace("|Q||||SERUM", "|N||||SERUM") for line in lines]
    options = DriverOptions(control_pattern=r"^QC(?P<level>\d)-(?P<lot>\w+)$")
    message = BeckmanAUDriver(options).read(decode_message(lines).records)
    assert [(c.control_material, c.lot, c.level) for c in message.controls] == [
        ("QC2-L88", "L88", "2"),
        ("QC2-L88", "L88", "2"),
    ]


def test_results_that_cannot_be_read_are_said() -> None:
    message = BeckmanAUDriver().read(decode_message(UNREADABLE).records)
    # no bar code: the AU's sample number stands for the sample
    (specimen,) = message.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position) == ("0046", "0013", "01")
    assert message.problems == [
        "result 2, R.4: test 010 has no value (data flags '%?'); kept without one",
        "result 3 has no test code",
    ]
    glucose, unmeasured = message.results
    assert (glucose.test_code, glucose.value.number, glucose.abnormal_flags) == (
        "001",
        Decimal("6.9"),
        ("H",),
    )
    assert (unmeasured.test_code, unmeasured.value.text, unmeasured.value.number) == (
        "010",
        "",
        None,
    )
    assert (unmeasured.abnormal_flags, unmeasured.instrument_flags) == ((), ("%", "?"))


def test_not_done_is_not_a_problem() -> None:
    lines = [*UNREADABLE[:3], "R|1|^^^010||mg/dL||%||X||||20261203103714", "L|1|N"]
    message = BeckmanAUDriver().read(decode_message(lines).records)
    assert message.problems == []
    (result,) = message.results
    assert (result.status, result.instrument_flags) == ("X", ("%",))


def test_decode_chooses_the_driver_by_itself() -> None:
    report = decode_capture("\r\n".join(PATIENT).encode("latin-1"))
    assert report.ok, report.as_dict()
    (message,) = report.messages
    assert message["driver"] == "beckman_au"
    assert message["driver_reason"].startswith("sender 'AU680^01' names the Beckman Coulter AU")
    rows = [(r["specimen_id"], r["test_code"], r["value"], r["units"], r["flags"],
             r["instrument_flags"], r["completed_at"]) for r in message["results"]]  # fmt: skip
    assert rows == [
        ("26120301", "001", "5.4", "mmol/L", [], [], "2026-12-03T10:12:10"),
        ("26120301", "005", "132", "umol/L", ["H"], [], "2026-12-03T10:12:14"),
        ("26120301", "018", "0.8", "mmol/L", ["L"], ["r"], "2026-12-03T10:12:18"),
    ]
    unreadable = decode_capture("\r\n".join(UNREADABLE).encode("latin-1"))
    assert not unreadable.ok
    (read,) = unreadable.messages
    assert read["driver"] == "beckman_au"
    assert [e["detail"] for e in read["errors"]] == [
        "result 2, R.4: test 010 has no value (data flags '%?'); kept without one",
        "result 3 has no test code",
    ]
