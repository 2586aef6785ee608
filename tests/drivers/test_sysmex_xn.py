"""Sysmex XN driver. The corpus has no XN capture: the messages below are written after the
layout of Sysmex's XN / XN-L ASTM host interface specification (E1394-97 records):
H.5 = analyser name^software version^analyser number; O.4 = rack^tube position^sample
no.^attribute with the sample number right-aligned (space-padded); R.3 =
``^^^^<parameter>^<dilution>``; R.7 = L/H/N, or W for low reliability; R.13 = completion
time; Q.3 = rack^tube position^sample no.^attribute.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.base import DriverOptions
from drivers.sysmex_xn import SysmexXNDriver
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order
from middleware.engine.autoverify import flag_findings
from middleware.engine.rules import Autoverification
from tests.drivers import header

SAMPLE_NO = "1234567890".rjust(22)

PATIENT = "\r".join(
    [
        "H|\\^&|||XN-350^00-18^11001^^^^12345678||||||||E1394-97",
        "P|1|||100|^Jim^Brown||20010820|M|||||^Dr.1||||||||||||^^^WEST",
        f"O|1||1^3^{SAMPLE_NO}^B|^^^^WBC\\^^^^RBC\\^^^^HGB\\^^^^PLT\\^^^^NEUT#\\^^^^LYMPH%"
        "|||||||N||||||||||||||F",
        "R|1|^^^^WBC^1|7.80|10*3/uL||N||||||20240315103000",
        "R|2|^^^^RBC^1|4.65|10*6/uL||N||||||20240315103000",
        "R|3|^^^^HGB^1|9.8|g/dL||L||||||20240315103000",
        "R|4|^^^^PLT^1|112|10*3/uL||W||||||20240315103000",
        "R|5|^^^^NEUT#^1|----|10*3/uL||||||||20240315103000",
        "R|6|^^^^LYMPH%^1|45.1|%||H||||||20240315103000",
        "L|1|N",
    ]
)

CONTROL = "\r".join(
    [
        "H|\\^&|||XN-350^00-18^11001^^^^12345678||||||||E1394-97",
        "P|1",
        f"O|1||^^{'QC-12345601'.rjust(22)}^M|^^^^WBC\\^^^^HGB|||||||N||||||||||||||F",
        "R|1|^^^^WBC^1|6.95|10*3/uL||N||||||20240315080000",
        "R|2|^^^^HGB^1|12.1|g/dL||N||||||20240315080000",
        "L|1|N",
    ]
)

QUERY = "\r".join(
    [
        "H|\\^&|||XN-350^00-18^11001^^^^12345678||||||||E1394-97",
        f"Q|1|2^1^{SAMPLE_NO}^B\\2^2^{'77'.rjust(22)}^B||||20240315103000||||||O",
        "L|1|N",
    ]
)


def read(text: str, driver: SysmexXNDriver | None = None) -> InstrumentMessage:
    decoded = decode_message(text)
    assert not decoded.errors
    return (driver or SysmexXNDriver()).read(decoded.records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("sysmex_xn"), SysmexXNDriver)
    assert drivers.identify(header("XN-350^00-18^11001^^^^12345678")).driver is SysmexXNDriver
    assert drivers.identify(header("XN-10^00-22^12345")).driver is SysmexXNDriver
    # A sibling series sharing the layout.
    assert drivers.identify(header("XS-1000i^00-11")).driver is SysmexXNDriver


def test_senders_of_the_family_as_the_analysers_write_them() -> None:
    # The XS names its series alone, then its software version and analyser number.
    for sender in (
        *("XS^00-20^40711^^^^01234567", "XS", "xs^00-16", "XS-1000i^00-13", "XS-500i"),
        *("XN-1000^00-22", "XN-10^00-22^12345", "XN-L 550", "XT-4000i", "XT-2000i^00-13"),
        *("XE-2100^00-22^11001", "XP-300^00-07"),
    ):
        found = drivers.identify(header(sender))
        assert found.driver is SysmexXNDriver, sender
        assert "names the Sysmex XN" in found.reason, sender
    # Names that only begin with the series' letters are not the family's.
    for sender in ("XL-640", "XPERT^1", "XSCAN", "XE2100", "XNET-LAB"):
        assert drivers.identify(header(sender)).driver is not SysmexXNDriver, sender


def test_an_xs_header_names_the_driver_of_a_whole_message() -> None:
    text = PATIENT.replace("XN-350^00-18^11001^^^^12345678", "XS^00-20^40711^^^^01234567")
    found = drivers.identify(decode_message(text).records)
    assert found.driver is SysmexXNDriver
    assert found.reason.startswith("sender 'XS^00-20^40711^^^^01234567' names the Sysmex XN")


def test_sample_number_from_o4_without_its_padding() -> None:
    message = read(PATIENT)
    (specimen,) = message.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position) == ("1234567890", "1", "3")
    assert specimen.patient_id == "100"
    assert {r.specimen_id for r in message.results} == {"1234567890"}
    (order,) = message.orders
    assert order.test_codes == ("WBC", "RBC", "HGB", "PLT", "NEUT#", "LYMPH%")


def test_results_flags_and_low_reliability() -> None:
    message = read(PATIENT)
    assert message.controls == []
    rows = {r.test_code: r for r in message.results}
    assert list(rows) == ["WBC", "RBC", "HGB", "PLT", "NEUT#", "LYMPH%"]
    wbc = rows["WBC"]
    assert (wbc.instrument_test_code, wbc.value.number, wbc.units) == (
        "WBC",
        Decimal("7.80"),
        "10*3/uL",
    )
    assert wbc.completed_at == datetime(2024, 3, 15, 10, 30)
    assert rows["HGB"].abnormal_flags == ("L",)
    assert rows["LYMPH%"].abnormal_flags == ("H",)
    assert rows["PLT"].abnormal_flags == ("W",)
    # a masked value stays as the analyser wrote it, with no number
    neut = rows["NEUT#"].value
    assert (neut.text, neut.number, neut.is_numeric) == ("----", None, False)


def test_qc_sample_number_marks_a_control_with_its_lot() -> None:
    message = read(CONTROL)
    assert message.results == []
    assert [(c.control_material, c.lot, c.level) for c in message.controls] == [
        ("QC-12345601", "12345601", ""),
        ("QC-12345601", "12345601", ""),
    ]
    assert message.controls[1].result.value.text == "12.1"


def test_configured_control_pattern_with_a_level() -> None:
    options = DriverOptions(control_pattern=r"^CTL(?P<level>[123])-(?P<lot>\d+)$")
    patient = PATIENT.replace("1234567890", "CTL2-4711".rjust(10))
    message = read(patient, SysmexXNDriver(options))
    assert message.results == []
    assert {(c.control_material, c.lot, c.level) for c in message.controls} == {
        ("CTL2-4711", "4711", "2")
    }
    # the QC- prefix is the driver's default only
    assert read(CONTROL, SysmexXNDriver(options)).controls == []


def test_query_sample_numbers() -> None:
    decoded = decode_message(QUERY)
    (query,) = SysmexXNDriver().read(decoded.records).queries
    assert query.specimen_ids == ("1234567890", "77")
    assert query.all_tests


def test_answer_query_records() -> None:
    driver = SysmexXNDriver()
    query = HostQuery(specimen_ids=("1234567890", "77"))
    held = [Order("1234567890", ("WBC", "RBC", "HGB", "PLT"), patient_id="P-100")]
    records = driver.answer_query(query, held, datetime(2024, 3, 15, 10, 30, 5))
    assert [encode_record(r) for r in records] == [
        "H|\\^&|||||||||||E1394-97|20240315103005",
        "P|1|||P-100",
        f"O|1|^^{SAMPLE_NO}^B||^^^^WBC\\^^^^RBC\\^^^^HGB\\^^^^PLT|R||||||N||||||||||||||Q",
        "P|2",
        f"O|1|^^{'77'.rjust(22)}^B|||R||||||||||||||||||||Y",
        "L|1|N",
    ]
    # read back, the answer's O.3 is the sample number the analyser asked about
    answered = decode_message("\r".join(encode_record(r) for r in records)).records
    assert [r.value(3, 2).strip() for r in answered if r.type == "O"] == ["1234567890", "77"]
    order = answered[2]
    assert (order.value(6), order.value(12), order.value(26)) == ("R", "N", "Q")
    assert [rep[4] for rep in order.repeats(5)] == ["WBC", "RBC", "HGB", "PLT"]
    assert answered[0].value(13) == "E1394-97"
    assert answered[4].value(26) == "Y"


def test_decode_command_with_the_driver() -> None:
    report = decode_capture(PATIENT.encode(), "sysmex_xn")
    assert report.ok
    rows = report.messages[0]["results"]
    assert [(r["specimen_id"], r["lab_test_code"], r["flags"]) for r in rows[2:4]] == [
        ("1234567890", "HGB", ["L"]),
        ("1234567890", "PLT", ["W"]),
    ]


def test_flags_and_image_references_are_not_results() -> None:
    records = PATIENT.split("\r")
    extra = [
        "R|7|^^^^Blasts?^1|150|||A||||||20240315103000",
        "R|8|^^^^WBC_Abn_Scattergram^1||||A||||||20240315103000",
        "R|9|^^^^SCAT_WDF^1|PNG&R&20240315&R&2024_03_15_10_30_1234567890_WDF.PNG|||||||||"
        "20240315103000",
    ]
    message = read("\r".join([*records[:-1], *extra, records[-1]]))
    assert [r.test_code for r in message.results] == ["WBC", "RBC", "HGB", "PLT", "NEUT#",
                                                      "LYMPH%"]  # fmt: skip
    assert all(
        r.instrument_flags[-2:] == ("Blasts?=150", "WBC_Abn_Scattergram") for r in message.results
    )
    (image,) = message.comments
    # &R& is the escaped repeat delimiter: the path reads with it
    assert image.kind == "image"
    assert image.text == "image SCAT_WDF: PNG\\20240315\\2024_03_15_10_30_1234567890_WDF.PNG"
    assert not message.problems


def test_flags_of_a_sample_without_results_are_said() -> None:
    lines = PATIENT.split("\r")
    flags_only = [*lines[:3], "R|1|^^^^Blasts?^1|120|||A||||||20240315103000", lines[-1]]
    message = read("\r".join(flags_only))
    assert message.results == []
    assert message.problems == ["sample 1234567890: flags Blasts?=120 without results"]


def test_a_qc_sample_s_flags_and_images_are_not_control_results() -> None:
    lines = CONTROL.split("\r")
    extra = [
        "R|9|^^^^Blasts?^1|100|||||||||20240315103000",
        "R|10|^^^^DIST_RBC^1|PNG&R&20240315&R&QC_RBC.PNG|||||||||20240315103000",
    ]
    message = read("\r".join([*lines[:-1], *extra, lines[-1]]))
    assert message.results == [] and message.controls
    assert all(c.result.test_code not in ("Blasts?", "DIST_RBC") for c in message.controls)
    assert all(c.result.instrument_flags[-1] == "Blasts?=100" for c in message.controls)
    assert [c.kind for c in message.comments] == ["image"]


# Q-flags as the XS and XN send them (Sysmex's host interface layout, IP messages of the
# suspect kind): on every sample, R.3 ``^^^^<name>?`` without a dilution, a value 0-300,
# R.7 ``A`` only on those the analyser reports (from 100). Values of our own.
def _with(*extra: str) -> InstrumentMessage:
    lines = PATIENT.split("\r")
    return read("\r".join([*lines[:-1], *extra, lines[-1]]))


def _q(number: int, name: str, value: str, flag: str = "") -> str:
    return f"R|{number}|^^^^{name}|{value}|||{flag}||||||20240315103000"


def test_q_flags_below_100_are_not_instrument_flags() -> None:
    message = _with(
        _q(7, "Blasts?", "0"),
        _q(8, "NRBC?", "20"),
        _q(9, "Left_Shift?", "90"),
        _q(10, "Turbidity/HGB_Interference?", "30"),
        _q(11, "PLT_Clumps?", "0"),
    )
    assert [r.test_code for r in message.results] == ["WBC", "RBC", "HGB", "PLT", "NEUT#",
                                                      "LYMPH%"]  # fmt: skip
    assert all(r.instrument_flags == () for r in message.results)
    # their values kept, once for the sample, not on every result sent to the LIS
    assert all(r.comments == () for r in message.results)
    assert [(c.kind, c.text) for c in message.comments] == [
        (
            "q-flag",
            "sample 1234567890: Q-flags below 100, negative: Blasts?=0, NRBC?=20, "
            "Left_Shift?=90, Turbidity/HGB_Interference?=30, PLT_Clumps?=0",
        )
    ]
    assert not message.problems


def test_a_q_flag_the_analyser_reports_is_an_instrument_flag() -> None:
    message = _with(
        _q(7, "Blasts?", "20"),
        _q(8, "Atypical_Lympho?", "100", "A"),
        _q(9, "NRBC?", "0"),
        # 100 or more without the A still flags: the factory threshold
        _q(10, "Fragments?", "130"),
        # the A flags a value below 100: the analyser's threshold set lower
        _q(11, "PLT_Clumps?", "80", "A"),
        # not a number, no A: it cannot be called negative
        _q(12, "RBC_Agglutination?", "----"),
    )
    assert {r.instrument_flags for r in message.results} == {
        ("Atypical_Lympho?=100", "Fragments?=130", "PLT_Clumps?=80", "RBC_Agglutination?=----")
    }
    (negative,) = message.comments
    assert negative.text == "sample 1234567890: Q-flags below 100, negative: Blasts?=20, NRBC?=0"
    assert not message.problems


def test_a_positive_message_without_a_value_is_a_flag_not_a_result_without_one() -> None:
    message = _with(_q(7, "Blasts?", "10"), _q(8, "Positive_Morph", "", "A"))
    assert {r.instrument_flags for r in message.results} == {("Positive_Morph",)}
    # an IP message carries no value: nothing to say of it
    assert not message.problems


def test_under_the_default_rules_a_negative_q_flag_holds_nothing_a_positive_one_holds() -> None:
    default = Autoverification()
    assert default.hold_instrument_flags == ["*"]

    def findings(message: InstrumentMessage) -> set[str]:
        return {f.code for r in message.results for f in flag_findings(r, default)}

    assert findings(_with(_q(7, "Blasts?", "20"), _q(8, "NRBC?", "0"))) == set()
    assert findings(_with(_q(7, "Blasts?", "150", "A"), _q(8, "NRBC?", "0"))) == {"instrument-flag"}
