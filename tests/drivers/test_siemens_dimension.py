"""Siemens Dimension Vista driver. No Siemens Vista interface document is public. The
first messages below are written after CLSI LIS2-A2 (H.5 the sender, O.3 the sample id,
R.3 ``^^^<test abbreviation>``, R.7 the standard's flags, C records of type I after a
result, O.12 = Q for a control, the standard's Q record); ``VISTA`` and those after it
follow the layout of the one public Vista capture the module docstring describes (H.5 a
name set on site, R.3 ``^^^<number>^<number>^<abbreviation>``, comments typed R and E
after a result), written here with values of our own: the sender, sample ids, values,
lots, dates and cartridge numbers are made up; the comment codes and texts are the
capture's.
"""

from __future__ import annotations

from datetime import date, datetime

import drivers
from drivers.siemens_dimension import SiemensDimensionDriver
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import Comment, InstrumentMessage, Order, ReagentUse
from middleware.engine.autoverify import flag_findings
from middleware.engine.rules import Autoverification
from tests.drivers import capture, header

HEADER = "H|\\^&|||Dimension Vista^3.8^V1500-0412|||||LIS||P|LIS2-A2|20261201101500"
PATIENT = [
    HEADER,
    "P|1||PAT-3391",
    "O|1|S2612010042||^^^GLU\\^^^CREA\\^^^TSH|R||20261201083000||||N||||Serum||||||||||F",
    "R|1|^^^GLU|5.4|mmol/L|3.9 to 6.1|N||F||||20261201100512",
    "R|2|^^^CREA|142|umol/L|62 to 106|H||F||||20261201100533",
    "R|3|^^^TSH|>100.00|mIU/L|0.35 to 4.94|>||F||||20261201100701",
    "C|1|I|Result above assay range|I",
    "L|1|N",
]
CONTROL = [
    HEADER,
    "P|1",
    "O|1|QC-CHEM-1||^^^GLU\\^^^CREA|R||20261201060000||||Q||||Serum||||||||||F",
    "R|1|^^^GLU|4.9|mmol/L||N||F||||20261201061011",
    "R|2|^^^CREA|88|umol/L||N||F||||20261201061032",
    "L|1|N",
]


# The capture's layout: H.5 a name the site gave, H.13 as the capture has it; after each R,
# its reagent (R001 lot, R002 expiry, R003 cartridge number) and conditions (E codes).
VISTA_HEADER = "H|\\^&|||LAB CHEM 3|||||||P|DB 100102|20261201101500|"
VISTA = [
    VISTA_HEADER,
    "P|1||||^^^|||U|^||||^^^^|||||^|||||\\||^|||||^|||||",
    "O|1|S2612010051||^^^0401^2202^CRP\\^^^1802^2202^RF\\^^^4015^2202^PBNP\\^^^0207^2202^ALB"
    "|R||||||N|||20261201093000|S^|^^^^||1|1|||20261201101500|||F||||||",
    "C|1|I|G001^XY000120-1|G|",
    "R|1|^^^0401^2202^CRP|3.1|mg/L|0-5|||F||Siemens|20261201101500|20261201100512|VISTA-A|",
    "C|1|I|R001^26117BA|R|",
    "C|2|I|R002^20270315000000|R|",
    "C|3|I|R003^000412|R|",
    "R|2|^^^1802^2202^RF|||0-15|||F||Siemens|20261201101500|20261201100540|VISTA-A|",
    "C|1|I|R001^26083MA|R|",
    "C|2|I|R002^20270131000000|R|",
    "C|3|I|R003^001907|R|",
    "C|4|I|E521^Above Assay Range|E|",
    "R|3|^^^4015^2202^PBNP|212|pg/mL|5-125|||F||Siemens|20261201101500|20261201100633|VISTA-A|",
    "C|1|I|R001^26140AB|R|",
    "C|2|I|R002^20270420000000|R|",
    "C|3|I|R003^000088|R|",
    "C|4|I|E115^Diluted|E|",
    "C|5|I|E511^Above Reference Range|E|",
    "R|4|^^^0207^2202^ALB|41|g/L|35-52|||F||Siemens|20261201101500|20261201100701|VISTA-A|",
    "L|1|N|",
]


def read(lines: list[str]) -> InstrumentMessage:
    decoded = decode_message(lines)
    assert not decoded.errors
    return SiemensDimensionDriver().read(decoded.records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("siemens_dimension"), SiemensDimensionDriver)
    for sender in ("Dimension Vista^3.8^V1500-0412", "  dimension   vista 1500 ", "VISTA",
                   "vista1500", "DIMENSION", "Siemens^Dimension Vista 500"):  # fmt: skip
        found = drivers.identify(header(sender))
        assert found.driver is SiemensDimensionDriver, sender
        assert "names the Siemens Dimension Vista" in found.reason
    # Names that only contain the word, and other families' senders, are not the Vista's.
    for sender in ("AltaVista", "VISTAS", "ADVIA Centaur XP", "VITROS 5600", "LAB-9"):
        assert drivers.identify(header(sender)).driver is not SiemensDimensionDriver, sender


def test_patient_results_read_the_lis2_a2_way() -> None:
    message = read(PATIENT)
    assert message.sender == "Dimension Vista^3.8^V1500-0412" and not message.controls
    assert not message.problems
    (specimen,) = message.specimens
    assert (specimen.specimen_id, specimen.patient_id, specimen.specimen_type) == (
        "S2612010042", "PAT-3391", "Serum",
    )  # fmt: skip
    (order,) = message.orders
    assert order.test_codes == ("GLU", "CREA", "TSH")
    rows = [
        (r.specimen_id, r.test_code, r.value.text, r.units, r.reference_range,
         r.abnormal_flags, r.status, r.completed_at)
        for r in message.results
    ]  # fmt: skip
    assert rows == [
        ("S2612010042", "GLU", "5.4", "mmol/L", "3.9 to 6.1", ("N",), "F",
         datetime(2026, 12, 1, 10, 5, 12)),
        ("S2612010042", "CREA", "142", "umol/L", "62 to 106", ("H",), "F",
         datetime(2026, 12, 1, 10, 5, 33)),
        ("S2612010042", "TSH", ">100.00", "mIU/L", "0.35 to 4.94", (">",), "F",
         datetime(2026, 12, 1, 10, 7, 1)),
    ]  # fmt: skip
    glu, crea, tsh = message.results
    assert str(crea.value.number) == "142" and crea.patient_id == "PAT-3391"
    assert (tsh.value.censor, str(tsh.value.number)) == (">", "100.00")
    assert tsh.instrument_flags == ("Result above assay range",)
    assert glu.instrument_flags == () and crea.instrument_flags == ()
    # Without the Vista's reagent comments (type R) no reagent lot; no dilution either.
    assert all(r.dilution == "" and r.reagents == () for r in message.results)


def test_a_control_is_the_order_with_action_code_q() -> None:
    message = read(CONTROL)
    assert message.results == []
    rows = [(c.control_material, c.lot, c.level, c.result.test_code, c.result.value.text)
            for c in message.controls]  # fmt: skip
    # The material is the sample id the control ran under; the layout gives no lot.
    assert rows == [
        ("QC-CHEM-1", "", "", "GLU", "4.9"),
        ("QC-CHEM-1", "", "", "CREA", "88"),
    ]
    # A site whose controls run under a name of their own says so in its configuration.
    named = SiemensDimensionDriver(drivers.DriverOptions(control_pattern=r"^QC-"))
    unmarked = [line.replace("||||Q||||", "||||N||||") for line in CONTROL]
    assert len(named.read(decode_message(unmarked).records).controls) == 2


def test_a_result_that_cannot_be_read_is_said_not_dropped() -> None:
    lines = [
        HEADER,
        "P|1||PAT-3391",
        "O|1|S2612010043||^^^GLU\\^^^ALB|R",
        "R|1||5.1|mmol/L||N||F||||20261201100512",
        "R|2|^^^ALB|41|g/L||N||F||||2026-12-01 10:06",
        "L|1|N",
    ]
    message = read(lines)
    assert message.problems == [
        "result 1 has no test code",
        "result 2, R.13: '2026-12-01 10:06' is not a date and time; left out",
    ]
    # The readable one is kept, without the time that was not one.
    (alb,) = message.results
    assert (alb.test_code, alb.value.text, alb.completed_at) == ("ALB", "41", None)
    report = decode_capture(capture(lines))
    assert not report.ok
    (decoded,) = report.messages
    assert [e["detail"] for e in decoded["errors"]] == message.problems


def test_decode_chooses_the_driver_by_itself() -> None:
    report = decode_capture(capture(PATIENT + CONTROL))
    assert report.ok, report.as_dict()
    first, second = report.messages
    assert first["driver"] == second["driver"] == "siemens_dimension"
    assert first["driver_reason"] == (
        "sender 'Dimension Vista^3.8^V1500-0412' names the Siemens Dimension Vista 500 and "
        "1500 (chemistry and immunoassay, ASTM)"
    )
    assert [(r["specimen_id"], r["lab_test_code"], r["value"], r["flags"], r["control"])
            for r in first["results"]] == [
        ("S2612010042", "GLU", "5.4", ["N"], False),
        ("S2612010042", "CREA", "142", ["H"], False),
        ("S2612010042", "TSH", ">100.00", [">"], False),
    ]  # fmt: skip
    assert first["results"][2]["instrument_flags"] == ["Result above assay range"]
    assert [(r["control_material"], r["control_lot"]) for r in second["results"]] == [
        ("QC-CHEM-1", ""),
        ("QC-CHEM-1", ""),
    ]


def test_host_query_answered_the_standard_way() -> None:
    driver = SiemensDimensionDriver()
    query = driver.read(
        decode_message([HEADER, "Q|1|^S2612010077||ALL||||||||O", "L|1|N"]).records
    ).queries[0]
    assert (query.specimen_ids, query.all_tests) == (("S2612010077",), True)
    held = [Order("S2612010077", ("GLU", "TSH"), patient_id="PAT-4410")]
    answer = driver.answer_query(query, held, datetime(2026, 12, 1, 11, 0, 0))
    assert [encode_record(r, driver.delimiters) for r in answer] == [
        "H|\\^&|||LIS|||||||P|LIS2-A2|20261201110000",
        "P|1|PAT-4410",
        "O|1|S2612010077||^^^GLU\\^^^TSH|R||||||N||||||||||||||Q",
        "L|1|N",
    ]


def test_reagent_comments_after_a_result_are_its_reagent_lot_not_comments() -> None:
    driver = SiemensDimensionDriver(drivers.DriverOptions(test_map={"0401": "CRP"}))
    message = driver.read(decode_message(VISTA).records)
    # The RF above the assay range came without a value: said, as any such result is.
    assert message.problems == ["result 2, R.4: test 1802 has no value; kept without one"]
    crp, rf, pbnp, alb = message.results
    assert crp.reagents == (
        ReagentUse(
            reagent="Dimension Vista CRP reagent",  # the method's abbreviation, R.3's 6th
            lot="26117BA",
            test_code="CRP",  # the laboratory's code of the result
            expiry=date(2027, 3, 15),
            serial="000412",
        ),
    )
    assert [(u.reagent, u.lot, u.expiry, u.serial, u.test_code) for u in rf.reagents] == [
        ("Dimension Vista RF reagent", "26083MA", date(2027, 1, 31), "001907", "1802"),
    ]
    assert [u.lot for u in pbnp.reagents] == ["26140AB"]
    # Read as the reagent use, not as text for the LIS.
    assert crp.comments == () and crp.instrument_flags == ()
    assert all(not c.text.startswith("R00") for r in message.results for c in r.comments)
    # A result without them is read as before.
    assert (alb.value.text, alb.reagents, alb.instrument_flags, alb.comments) == ("41", (), (), ())
    # The test code is still R.3's fourth component, the standard's place.
    assert [r.instrument_test_code for r in message.results] == ["0401", "1802", "4015", "0207"]


def test_condition_comments_are_instrument_flags_and_hold_the_result() -> None:
    message = read(VISTA)
    _, rf, pbnp, alb = message.results
    assert rf.value.text == "" and rf.instrument_flags == ("E521 Above Assay Range",)
    # Kept as comments too, for the LIS, as the standard's type I comments are.
    assert rf.comments == (Comment("E521 Above Assay Range", "instrument", "E"),)
    # E511 only places the value against the range; the driver holds it all the same
    # (see the module docstring: the capture sends E521 under that text too).
    assert pbnp.instrument_flags == ("E115 Diluted", "E511 Above Reference Range")
    assert [c.text for c in pbnp.comments] == ["E115 Diluted", "E511 Above Reference Range"]
    default = Autoverification()
    assert [f.code for f in flag_findings(pbnp, default)] == ["instrument-flag", "instrument-flag"]
    assert [f.code for f in flag_findings(rf, default)] == ["no-value", "instrument-flag"]
    assert list(flag_findings(alb, default)) == []
    # A laboratory that holds only some conditions names them as the driver writes them.
    only = Autoverification(hold_instrument_flags=["E521 Above Assay Range"])
    assert list(flag_findings(pbnp, only)) == []
    assert [f.code for f in flag_findings(rf, only)] == ["no-value", "instrument-flag"]
    # Both kinds of comment after one result, with a standard type I one.
    lines = [*VISTA[:5], "C|1|I|Sample short|I", "C|2|I|E133^Manually Cancelled Test|E|", "L|1|N"]
    (crp,) = read(lines).results
    assert crp.instrument_flags == ("Sample short", "E133 Manually Cancelled Test")


def test_reagent_information_that_cannot_be_used_is_said_or_kept() -> None:
    lines = [
        *VISTA[:5],
        "C|1|I|R002^20270315000000|R|",  # an expiry with no lot
        "C|2|I|R004^A17|R|",  # a code whose meaning is not known
        "R|2|^^^1802^2202^RF|8|IU/mL|0-15|||F||Siemens|20261201101500|20261201100540|VISTA-A|",
        "C|1|I|R001^26083MA|R|",
        "C|2|I|R002^2027-01-31|R|",
        "L|1|N|",
    ]
    message = read(lines)
    crp, rf = message.results
    assert crp.reagents == ()
    assert crp.comments == (Comment("R004^A17", "instrument", "R"),)
    assert [(u.lot, u.expiry) for u in rf.reagents] == [("26083MA", None)]
    assert message.problems == [
        "comment 1, C.4: 'R002^20270315000000' is of a reagent without a lot (R001); left out",
        "comment 2, C.4: '2027-01-31' is not a date; left out",
    ]


def test_two_reagents_of_one_result_are_each_read() -> None:
    lines = [
        *VISTA[:4],
        "R|1|^^^0401^2202^CRP|3.1|mg/L|0-5|||F||Siemens|20261201101500|20261201100512|VISTA-A|",
        "C|1|I|R001^26117BA|R|",
        "C|2|I|R003^000412|R|",
        "C|3|I|R001^26117BB|R|",
        "C|4|I|R002^20270601000000|R|",
        "L|1|N|",
    ]
    (crp,) = read(lines).results
    assert [(u.lot, u.expiry, u.serial) for u in crp.reagents] == [
        ("26117BA", None, "000412"),
        ("26117BB", date(2027, 6, 1), ""),
    ]


def test_the_layout_names_the_vista_when_its_sender_does_not() -> None:
    found = drivers.identify(decode_message(VISTA).records)
    assert found.driver is SiemensDimensionDriver
    assert found.reason == (
        "sender 'LAB CHEM 3' not known; layout of the Siemens Dimension Vista 500 and 1500 "
        "(chemistry and immunoassay, ASTM): comments after results typed R or E (C.5), coded "
        "R001, E521 (C.4)"
    )
    assert SiemensDimensionDriver.score(decode_message(VISTA).records)[0] == 2
    # Not the standard's comments, nor R or E comments that are not after a result or not
    # coded with their type's letter.
    renamed = [HEADER.replace("Dimension Vista^3.8^V1500-0412", "LAB CHEM 3"), *PATIENT[1:]]
    others = [
        renamed,
        [VISTA_HEADER, VISTA[2], "C|1|I|R001^26117BA|R|", "L|1|N"],
        [VISTA_HEADER, VISTA[2], VISTA[4], "C|1|I|E52^Above|E|", "C|2|I|X001^26117BA|R|"],
        [VISTA_HEADER, VISTA[2], VISTA[4], "C|1|I|R001^26117BA|E|", "L|1|N"],
    ]
    for lines in others:
        records = decode_message(lines).records
        assert SiemensDimensionDriver.score(records) == (0, ""), lines
        assert drivers.identify(records).driver is not SiemensDimensionDriver, lines
    # On a connection, a query after a Vista message is read as that message was.
    query = [VISTA_HEADER, "Q|1|^S2612010077||||||||||O|", "L|1|N|"]
    report = decode_capture(capture(VISTA + query))
    first, second = report.messages
    assert [e["detail"] for m in report.messages for e in m["errors"]] == [
        "result 2, R.4: test 1802 has no value; kept without one"
    ]
    assert first["driver"] == second["driver"] == "siemens_dimension"
    assert second["driver_reason"].endswith("read as the message before by siemens_dimension")
    assert first["results"][0]["reagents"] == [
        {"reagent": "Dimension Vista CRP reagent", "lot": "26117BA", "expiry": "2027-03-15"}
    ]
    assert [r["instrument_flags"] for r in first["results"]] == [
        [],
        ["E521 Above Assay Range"],
        ["E115 Diluted", "E511 Above Reference Range"],
        [],
    ]
