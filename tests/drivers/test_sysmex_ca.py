"""Sysmex CA and CS coagulation analysers, on messages written after the layout of their
ASTM host interface (values our own): the padded sample number is the specimen, each
parameter its own test with its dilution, named from its group and what its name says it
is (never from its number alone), a value beyond the measuring range censored, and the
calibration and reagent-lot comments are traceability, not flags that would hold every
result."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.base import DriverOptions
from drivers.sysmex_ca import SysmexCaDriver
from middleware.astm.frames import build_frame
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import Measurement, ReagentUse
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
        # R.7 > : above what the analyser measures, so the censored value, not 131.5.
        ("S77001", "051", "APTT", ">131.5", "sec", [">"]),
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


# The CS-1600's layout (after the record layout of a public CS-1600 upload; values ours):
# its PT group numbers INR 044 and derived fibrinogen 045, names without the reagent, R.4
# without padding.
CS1600 = [
    "H|\\^&|||CS-1600^00-21^10077^^^CS-1600^XX000002||||||||E1394-97",
    "P|1||||^^",
    "O|1||000004^05^     S88002^B^^||R||||||N",
    "R|1|^^^041^PT~sec^100.00^A^^^^|33.9|sec||N||||||20261202101500",
    "R|2|^^^042^PT~%^100.00^A^^^^|21.5|%||N||||||20261202101500",
    "R|3|^^^044^PT cal~INR^100.00^A^^^^|3.87|||N||||||20261202101500",
    "R|4|^^^045^DFbg~gL^100.00^A^^^^|2.6|g/L||N||||||20261202101500",
    "L|1|N",
]

# The CS-2500's PT group with its derived fibrinogen (INR 043, fibrinogen 044).
CS2500 = [
    "H|\\^&|||CS-2500^01-70^10342^^^LAB-2^XX000001||||||||E1394-97",
    "P|1",
    "O|1||000002^01^           S77002^B^||R||||||N",
    "R|1|^^^041^PT INN~sec^100.00^A^^^|  11.4|sec||N||||||20261201091000",
    "R|2|^^^043^PT INN cal~INR^100.00^A^^^|  1.02|||N||||||20261201091000",
    "C|1|I|CAL^043^^4^|I",
    "R|3|^^^044^DFbg INN~g_L^100.00^A^^^|   3.1|g/L||N||||||20261201091000",
    "C|1|I|CAL^044^^4^|I",
    "C|2|I|LOT^040^PT Innovin^A55121|I",
    "L|1|N",
]


def _named(lines: list[str], driver: SysmexCaDriver | None = None) -> list[tuple[str, str]]:
    read = (driver or SysmexCaDriver()).read(decode_message(lines).records)
    return [(r.instrument_test_code, r.test_code) for r in read.results]


def test_a_cs1600_inr_at_044_is_named_inr_never_derived_fibrinogen() -> None:
    # By number alone (044 is FIB-D on a CS-2500) this INR of 3.87 would be a fibrinogen.
    assert _named(CS1600) == [("041", "PT"), ("042", "PT%"), ("044", "INR"), ("045", "FIB-D")]
    (message,) = decode_capture("\r\n".join(CS1600).encode()).messages
    inr = message["results"][2]
    assert (inr["test_code"], inr["lab_test_code"], inr["value"], inr["units"]) == (
        "044", "INR", "3.87", "",
    )  # fmt: skip


def test_the_cs2500_layout_names_its_inr_043_and_fibrinogen_044() -> None:
    read = SysmexCaDriver().read(decode_message(CS2500).records)
    assert [(r.instrument_test_code, r.test_code) for r in read.results] == [
        ("041", "PT"), ("043", "INR"), ("044", "FIB-D"),
    ]  # fmt: skip
    fibrinogen = read.results[2]
    assert (fibrinogen.value, fibrinogen.units) == (Measurement("3.1", Decimal("3.1")), "g/L")
    assert fibrinogen.reagents == (
        ReagentUse("PT Innovin", "A55121", test_code="FIB-D", calibration_id="4"),
    )
    # The same records' kinds in mg/dL, and written with a slash, name it the same.
    in_mg = [r.replace("DFbg INN~g_L", "DFbg~mg/dL") for r in CS2500]
    assert _named(in_mg)[2] == ("044", "FIB-D")


def test_what_the_record_does_not_say_clearly_passes_through_as_its_number() -> None:
    lines = [
        *CS2500[:3],
        "R|1|^^^041^PT^100.00^A^^^|  11.4|sec||N",  # no ~: what it is not said
        "R|2|^^^046^PT ratio~R^100.00^A^^^|  1.01|||N",  # a ratio: no name of ours
        "R|3|^^^061^Fbg Clauss~g_L^100.00^A^^^|   2.9|g/L||N",  # group 06x: not in the rule
        "R|4|^^^052^APTT FS~%^100.00^A^^^|  95.0|%||N",  # APTT in %: not in the rule
        "R|5|^^^041^~sec^100.00^A^^^|  11.4|sec||N",  # nameless, yet 04x seconds: PT
        "L|1|N",
    ]
    assert _named(lines) == [
        ("041", "041"), ("046", "046"), ("061", "061"), ("052", "052"), ("041", "PT"),
    ]  # fmt: skip


def test_the_instruments_configured_test_map_wins_over_the_records_names() -> None:
    options = DriverOptions(test_map={"044": "FIB-CS", "046": "PTR", "045": "FIBD-1600"})
    assert _named(CS2500, SysmexCaDriver(options)) == [
        ("041", "PT"), ("043", "INR"), ("044", "FIB-CS"),
    ]  # fmt: skip
    read = SysmexCaDriver(options).read(decode_message(CS2500).records)
    assert read.results[2].reagents[0].test_code == "FIB-CS"
    assert _named(CS1600, SysmexCaDriver(options))[2:] == [("044", "FIB-CS"), ("045", "FIBD-1600")]
    # A control (O.12 = Q) is named the same way.
    control = [line.replace("||R||||||N", "||R||||||Q") for line in CS1600]
    read = SysmexCaDriver(options).read(decode_message(control).records)
    assert [c.result.test_code for c in read.controls] == ["PT", "PT%", "FIB-CS", "FIBD-1600"]


def test_r7_above_or_below_the_measuring_range_censors_the_value() -> None:
    records = [
        b"H|\\^&|||CS-2500^01-70^10342^^^LAB-2^XX000001||||||||E1394-97\r",
        b"P|1\r",
        b"O|1||000001^04^           S77003^B^||R||||||N\r",
        b"R|1|^^^044^DFbg INN~g_L^100.00^A^^^|   6.0|g/L||>||||||20261201094500\r",
        b"R|2|^^^051^APTT FS~sec^100.00^A^^^|  20.0|sec||<||||||20261201094500\r",
        b"R|3|^^^041^PT INN~sec^100.00^A^^^|  12.3|sec||N||||||20261201094500\r",
        b"R|4|^^^042^PT INN~%^100.00^A^^^|      |%||>||||||20261201094500\r",
        b"L|1|N\r",
    ]
    wire = b"\x05" + b"".join(build_frame(n, r, True) for n, r in enumerate(records, 1)) + b"\x04"
    report = decode_capture(wire)
    (message,) = report.messages
    assert message["driver"] == "sysmex_ca"
    rows = [(r["lab_test_code"], r["value"], r["numeric_value"], r["censor"], r["flags"])
            for r in message["results"]]  # fmt: skip
    assert rows == [
        ("FIB-D", ">6.0", "6.0", ">", [">"]),
        ("APTT", "<20.0", "20.0", "<", ["<"]),
        ("PT", "12.3", "12.3", None, ["N"]),
        ("PT%", "", None, None, [">"]),  # no value: nothing to censor, and it says so
    ]
    assert [e["detail"] for e in message["errors"]] == [
        "result 4, R.4: test 042 has no value; kept without one"
    ]
    read = SysmexCaDriver().read(decode_message([r.decode()[:-1] for r in records]).records)
    fibrinogen, aptt, pt, _ = read.results
    assert fibrinogen.value == Measurement(">6.0", Decimal("6.0"), ">")
    assert aptt.value == Measurement("<20.0", Decimal("20.0"), "<")
    assert not fibrinogen.value.is_numeric and pt.value.is_numeric
