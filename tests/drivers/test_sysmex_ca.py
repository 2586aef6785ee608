"""Sysmex CA and CS coagulation analysers, on messages written after the layout of their
ASTM host interface (values our own): the padded sample number is the specimen, each
parameter its own test with its dilution, and the calibration and reagent-lot comments are
traceability, not flags that would hold every result."""

from __future__ import annotations

from datetime import datetime

import drivers
from drivers.sysmex_ca import SysmexCaDriver
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import ReagentUse
from tests.drivers import header

CS = [
    "H|\\^&|||CS-2500^01-70^10342^^^LAB-2^XX000001||||||||E1394-97",
    "P|1",
    "O|1||000001^03^           S77001^B^||R||||||N",
    "R|1|^^^041^PT INN~sec^100.00^A^^^|  12.1|sec||N||||||20261201083012",
    "R|2|^^^042^PT INN~%^100.00^A^^^|  88.4|%||N||||||20261201083012",
    "C|1|I|CAL^042^^3^|I",
    "R|3|^^^043^PT INN cal~INR^100.00^A^^^|  1.08|||N||||||20261201083012",
    "C|1|I|LOT^040^PT Innovin^A55120|I",
    "R|4|^^^051^APTT FS~sec^100.00^A^^^| 131.5|sec||>||||||20261201083012",
    "C|1|I|LOT^050^APTT FS^B10220|I",
    "L|1|N",
]


def test_recognised_by_their_sender_and_by_their_layout() -> None:
    for sender in ("CS-2500^01-70^10342", "CA-1500^00-24^1", "ca-600", "CS-5100"):
        assert drivers.identify(header(sender)).driver is SysmexCaDriver, sender
    renamed = [CS[0].replace("CS-2500", "COAG LAB 2"), *CS[1:]]
    found = drivers.identify(decode_message(renamed).records)
    assert found.driver is SysmexCaDriver and "R.3" in found.reason


def test_each_parameter_is_a_result_of_the_padded_sample_number() -> None:
    report = decode_capture("\r\n".join(CS).encode())
    assert report.ok, report.as_dict()
    (message,) = report.messages
    assert message["driver"] == "sysmex_ca"
    rows = [(r["specimen_id"], r["test_code"], r["lab_test_code"], r["value"], r["units"],
             r["flags"]) for r in message["results"]]  # fmt: skip
    assert rows == [
        ("S77001", "041", "PT", "12.1", "sec", ["N"]),
        ("S77001", "042", "PT%", "88.4", "%", ["N"]),
        ("S77001", "043", "INR", "1.08", "", ["N"]),
        ("S77001", "051", "APTT", "131.5", "sec", [">"]),
    ]


def test_calibration_and_lot_comments_trace_the_results_and_hold_nothing() -> None:
    read = SysmexCaDriver().read(decode_message(CS).records)
    pt, pt_percent, inr, aptt = read.results
    assert all(not r.instrument_flags and not r.comments for r in read.results)
    # A group's lot comes after its last result, and holds for every result of it.
    assert pt.reagents == (ReagentUse("PT Innovin", "A55120", test_code="PT"),)
    assert pt_percent.reagents == (
        ReagentUse("PT Innovin", "A55120", test_code="PT%", calibration_id="3"),
    )
    assert inr.reagents[0].lot == "A55120"
    assert aptt.reagents == (ReagentUse("APTT FS", "B10220", test_code="APTT"),)
    assert (pt.dilution, pt.completed_at) == ("100.00", datetime(2026, 12, 1, 8, 30, 12))
    assert (read.specimens[0].rack, read.specimens[0].position) == ("000001", "03")
    # Read as a generic analyser, the comments would be flags: every result held.
    generic = drivers.get("generic").read(decode_message(CS).records)
    assert generic.results[1].instrument_flags == ("CAL^042^^3",)


def test_a_message_without_lots_reads_without_reagents() -> None:
    plain = [line for line in CS if not line.startswith("C|")]
    read = SysmexCaDriver().read(decode_message(plain).records)
    assert [r.reagents for r in read.results] == [(), (), (), ()]
    # The lots of one message are not those of the next one the same driver reads.
    driver = SysmexCaDriver()
    assert driver.read(decode_message(CS).records).results[0].reagents
    assert driver.read(decode_message(plain).records).results[0].reagents == ()
