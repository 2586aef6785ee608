"""Siemens Dimension Vista driver. No Vista capture and no Siemens Vista interface document
is public: the messages below are written after CLSI LIS2-A2 (H.5 the sender, O.3 the
sample id, R.3 ``^^^<test abbreviation>``, R.7 the standard's flags, C records of type I
after a result, O.12 = Q for a control, the standard's Q record), which is what the driver
reads; see its module docstring. The sender's version and serial, sample ids, values and
times are made up, as is the instrument flag's text.
"""

from __future__ import annotations

from datetime import datetime

import drivers
from drivers.siemens_dimension import SiemensDimensionDriver
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import InstrumentMessage, Order
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
    # Nothing the public material does not show is invented: no dilution, no reagent lot.
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
