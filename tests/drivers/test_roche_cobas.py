"""Roche cobas driver. The corpus holds no capture of these analysers: the messages below
are written after the layout of Roche's host interface manuals for the cobas c 311 and
cobas e 411 ("cobas" protocol) -- H.11 RSUPL/TSREQ/TSDWN, O.4 = sequence no.^rack id^
position^^sample type^container, ^^^ACN^dilution test ids, R.3 ACN/dilution/pre-dilution,
data alarm codes in C records after each R, Q.3 = ^^sample id^sequence no.^rack^position^^
sample type^container -- and the c 111's H.5 and O.4 as its ASTM description gives them.
The sample ids, values and times are made up.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import drivers
from drivers.base import DriverOptions
from drivers.roche_cobas import RocheCobasDriver
from middleware.astm.records import decode_message, encode_record
from middleware.domain import Comment, InstrumentMessage, Order
from tests.drivers import header

E411_RESULTS = [
    "H|\\^&|||cobas-e411^1|||||host|RSUPL^BATCH|P|1|20240115093045",
    "P|1",
    "O|1|24011500123|12^50023^3^^S1^SC|^^^10^1\\^^^900^1\\^^^117^1|R||20240115081000"
    "||||N||||1|||||||20240115093000|||F",
    "R|1|^^^10/1/not|7.45|µIU/mL|0.270^4.20|H||F||ADMIN|20240115091500|20240115093000|E1",
    "C|1|I|0|I",
    "R|2|^^^900/1/not|-1^0.412|COI||N||F||ADMIN|20240115091600|20240115093100|E1",
    "C|1|I|0|I",
    "R|3|^^^117/10/not|<2.00|IU/l||LL||F||ADMIN|20240115091700|20240115093200|E1",
    "C|1|I|27|I",
    "L|1|N",
]

C311_CONTROL = [
    "H|\\^&|||c311^1|||||host|RSUPL^REAL|P|1|20240115100500",
    "P|1|||||||U||||||^",
    "O|1|PCCC2                 |4030^30064^064^^QC^SC|^^^798^\\^^^717^|||||||Q||||1"
    "|||||||20240115100400|||F",
    "C|1|I|^^^^|G",
    "R|1|^^^798/|4.60|mmol/l||A||||ADMIN ||20240115100200|P1",
    "C|1|I|101|I",
    "R|2|^^^717/|13.12|mmol/l||N||||ADMIN ||20240115100300|P1",
    "C|1|I|0|I",
    "L|1|N",
]

C111_RESULT = [
    "H|\\^&|||c111^Roche^c111^4.3.0.1835^1^16850|||||host|RSUPL^BATCH|P|1|20230728151546",
    "P|1||",
    "O|1||T20-10242-GH-D3||R||||||N|||||||||||20230728150931|||F",
    "R|1|^^^413|39.13|g/L||N||F||$SYS$||20230728113801",
    "L|1|N",
]

E411_QUERY = [
    "H|\\^&|||cobas-e411^1|||||host|TSREQ^REAL|P|1|20240115110000",
    "Q|1|^^24011500777^21^50004^2^^S1^SC\\^^24011500778^22^50004^3^^S2^SC||ALL||||||||O",
    "L|1|N",
]


def read(lines: list[str], driver: RocheCobasDriver | None = None) -> InstrumentMessage:
    decoded = decode_message(lines)
    assert not decoded.errors
    return (driver or RocheCobasDriver()).read(decoded.records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("roche_cobas"), RocheCobasDriver)
    for sender in ("cobas-e411^1", "c311^1", "c111^Roche^c111^4.3.0.1835^1^16850"):
        assert drivers.identify(header(sender)).driver is RocheCobasDriver, sender
    # The Roche/Hitachi analysers share the layout (see the test below).
    assert drivers.identify(header("H7600^1")).driver is RocheCobasDriver


def test_e411_results() -> None:
    message = read(E411_RESULTS)
    assert message.sender == "cobas-e411^1" and not message.controls
    tsh, hbsag, anti_hbs = message.results
    (specimen,) = message.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position) == ("24011500123", "50023", "3")
    assert (tsh.specimen_id, tsh.instrument_test_code, tsh.test_code) == (
        "24011500123",
        "10",
        "TSH",
    )
    assert tsh.value.number == Decimal("7.45") and tsh.units == "µIU/mL"
    assert tsh.reference_range == "0.270-4.20"
    assert tsh.abnormal_flags == ("H",) and tsh.instrument_flags == () and tsh.comments == ()
    assert tsh.completed_at == datetime(2024, 1, 15, 9, 30) and tsh.module == "E1"
    assert tsh.operator == "ADMIN" and tsh.dilution == ""
    # Qualitative: the cut-off index is the value, the interpretation a comment.
    assert hbsag.value.text == "0.412" and hbsag.units == "COI"
    assert hbsag.comments == (Comment("non-reactive", "instrument", "interpretation"),)
    # Below the measuring range, data alarm 27, diluted 1:10.
    assert (anti_hbs.value.censor, anti_hbs.value.number) == ("<", Decimal("2.00"))
    assert anti_hbs.abnormal_flags == ("LL",)
    assert anti_hbs.instrument_flags == ("27",)
    assert anti_hbs.dilution == "10"
    (order,) = message.orders
    assert order.test_codes == ("TSH", "900", "117") and order.action_code == "N"


def test_c311_control_results() -> None:
    message = read(C311_CONTROL)
    assert not message.results
    chol, glu = message.controls
    assert (chol.control_material, chol.lot, chol.level) == ("PCCC2", "", "")
    assert (chol.result.test_code, chol.result.value.text) == ("CHOL", "4.60")
    assert chol.result.abnormal_flags == ("A",) and chol.result.instrument_flags == ("101",)
    assert chol.result.module == "P1" and chol.result.operator == "ADMIN"
    assert (glu.result.test_code, glu.result.value.number) == ("GLU", Decimal("13.12"))
    assert glu.result.completed_at == datetime(2024, 1, 15, 10, 3)


def test_control_recognised_by_sample_type_alone() -> None:
    lines = [line.replace("|||||||Q|", "|||||||N|") for line in C311_CONTROL]
    assert any("|N|" in line for line in lines)
    assert len(read(lines).controls) == 2


def test_c111_puts_the_sample_id_in_o4() -> None:
    message = read(C111_RESULT)
    (result,) = message.results
    assert (result.specimen_id, result.test_code, result.value.text, result.units) == (
        "T20-10242-GH-D3",
        "ALB",
        "39.13",
        "g/L",
    )
    assert result.operator == "$SYS$"
    assert result.completed_at == datetime(2023, 7, 28, 11, 38, 1)


def test_acns_are_overridden_by_configuration() -> None:
    driver = RocheCobasDriver(DriverOptions(test_map={"900": "HBSAG", "10": "TSH3"}))
    codes = [r.test_code for r in read(E411_RESULTS, driver).results]
    assert codes == ["TSH3", "HBSAG", "117"]


def test_query_and_test_selection_download() -> None:
    driver = RocheCobasDriver()
    message = read(E411_QUERY, driver)
    (query,) = message.queries
    assert query.specimen_ids == ("24011500777", "24011500778") and query.all_tests
    answer = driver.answer_query(
        query,
        [Order("24011500777", ("TSH", "117"), patient_id="P-1")],
        datetime(2024, 1, 15, 11, 0, 5),
    )
    assert [encode_record(r) for r in answer] == [
        "H|\\^&|||host^1|||||cobas-e411|TSDWN^REPLY|P|1|20240115110005",
        "P|1",
        "O|1|24011500777|21^50004^2^^S1^SC|^^^10^\\^^^117^|R||||||A||||1||||||||||O",
        "P|2",
        "O|1|24011500778|22^50004^3^^S2^SC||R||||||A||||2||||||||||O",
        "L|1|N",
    ]
    # What the analyser said about a tube is used once.
    again = driver.answer_query(query, [], datetime(2024, 1, 15, 11, 0, 6))
    assert encode_record(again[2]).split("|")[3] == ""


def test_a_sample_id_after_a_counter_in_o3() -> None:
    lines = [
        "H|\\^&|||c501^1|||||host^1|RSUPL^REAL|P|1|20240315103000",
        "P|1",
        "O|1|57^S240315-9^^|0^50012^3^^S1^SC|^^^717^|R||||||N||||1||||||||||F",
        "R|1|^^^717/|5.4|mmol/L||N||F||admin^||20240315103000|P1",
        "L|1|N",
    ]
    message = RocheCobasDriver().read(decode_message("\r".join(lines)).records)
    assert [r.specimen_id for r in message.results] == ["S240315-9"]


def test_the_roche_hitachi_analysers_share_the_layout() -> None:
    """A Hitachi 7600 upload, written after a real one published by another project."""
    lines = [
        "H|\\^&|||H7600^1|||||host|RSUPL^BATCH|P|1",
        "P|1",
        "O|1|0^                    42^1^^006|R1|^^^989/\\^^^717/|R||||||N||^^||SC|||lab"
        "||||20260609095815|||F",
        "R|1|^^^989/|141|mmol/l||N||F|||||ISE1",
        "C|1|I|0|I",
        "R|2|^^^717/|4.1|mmol/l||N||F|||||P1",
        "C|1|I|0|I",
        "L|1|N",
    ]
    assert drivers.identify(decode_message(lines).records).driver is RocheCobasDriver
    for sender in ("H917^1", "MODULAR^1", "h7180"):
        assert drivers.identify(header(sender)).driver is RocheCobasDriver, sender
    message = RocheCobasDriver().read(decode_message(lines).records)
    assert not message.problems
    assert [(r.specimen_id, r.instrument_test_code, r.value.text, r.module)
            for r in message.results] == [
        ("42", "989", "141", "ISE1"), ("42", "717", "4.1", "P1"),
    ]  # fmt: skip
