"""Siemens Atellica Solution (CH 930, IM 1300/1600), Atellica CI Analyzer, ASTM mode.

No Atellica capture is public: these messages are our own (values, ids, control names),
written after the layout the driver's docstring gives. The test ids (``^^^<assay>^^^1``,
the Atellica's assay names ``GluH_3``, ``Na``), H.13 ``LIS2-A2`` and O.16 the specimen type
follow another public project's Atellica CI order download, checked there against a host's
wire log (read, not copied); the result aspects (``DOSE``, ``RLU``, ``INDX``, ``INTR``,
``COFF``) and the control's M record follow the ADVIA Centaur's interface layout
(tests/drivers/test_siemens_centaur.py), which the Atellica IM is taken to share.
"""

from __future__ import annotations

from datetime import datetime

import drivers
from drivers.siemens_atellica import SiemensAtellicaDriver
from drivers.siemens_centaur import SiemensCentaurDriver
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, Order
from tests.drivers import capture, header

CHEMISTRY = [
    "H|\\^&|||Atellica^1.27|||||LIS||P|LIS2-A2|20261201101500",
    "P|1||MRN40213||||19650412|F",
    "O|1|S26120101^R0042^3||^^^GluH_3^^^1\\^^^Na^^^1\\^^^K^^^1\\^^^Crea_2^^^1|R|"
    "20261201091000|||||||||Serum||||||||||F",
    "R|1|^^^GluH_3^^^1^DOSE|142|mg/dL||H||F||||20261201100712",
    "R|2|^^^Na^^^1^DOSE|139|mmol/L||N||F||||20261201100530",
    "R|3|^^^K^^^1^DOSE|3.2|mmol/L||L||F||||20261201100530",
    "R|4|^^^Crea_2^^^1|0.91|mg/dL||N||F\\R||||20261201100845",
    "L|1|N",
]
IMMUNOASSAY = [
    "H|\\^&|||ATELLICA IM^1.27|||||LIS||P|LIS2-A2|20261201113000",
    "P|1||MRN40877",
    "O|1|S26120177^R0051^1||^^^TSH3UL^^^1\\^^^HBsII^^^1\\^^^hCG^^^1|R||||||||||Serum||||||||||F",
    "R|1|^^^TSH3UL^^^1^DOSE|2.184|\xb5IU/mL||N||F||||20261201112205",
    "R|2|^^^TSH3UL^^^1^RLU|51877|||||F||||20261201112205",
    "R|3|^^^HBsII^^^1^INDX|0.32|Index||||F||||20261201112730",
    "R|4|^^^HBsII^^^1^INTR|Non-Reactive|||||F||||20261201112730",
    "R|5|^^^HBsII^^^1^COFF|1.00|Index||||F||||20261201112730",
    "R|6|^^^hCG^^10^1^DOSE|8412|mIU/mL||||F||||20261201113712",
    "L|1|N",
]
CONTROL = [
    "H|\\^&|||Atellica^1.27|||||LIS||P|LIS2-A2|20261201070500",
    "P|1",
    "O|1|QC0412^R0003^2||^^^TSH3UL^^^1|R||||||Q||||||||||||||F",
    "M|1|CCD|IA PLUS 1|40412",
    "R|1|^^^TSH3UL^^^1^DOSE|0.54|\xb5IU/mL||||F||||20261201070210",
    "R|2|^^^TSH3UL^^^1^RLU|14230|||||F||||20261201070210",
    "L|1|N",
]
DAMAGED = [
    "H|\\^&|||Atellica^1.27|||||LIS||P|LIS2-A2|20261201120000",
    "P|1",
    "O|1|S26120190^R0060^4||^^^FT4^^^1|R||||||||||Serum||||||||||F",
    "R|1|^^^FT4^^^1^DOSE|1.21|ng/dL||N||F||||20261341112205",
    "R|2||0.93|ng/dL||||F||||20261201112205",
    "L|1|N",
]


def test_registered_under_its_name() -> None:
    driver = drivers.get("siemens_atellica")
    assert isinstance(driver, SiemensAtellicaDriver)
    assert driver.name == "siemens_atellica"
    assert "siemens_atellica" in drivers.names()


def test_recognised_by_the_sender_alone_whatever_its_case_and_padding() -> None:
    for sender in ("Atellica^1.27", "ATELLICA IM", "  atellica   solution ", "Atellica CI",
                   "atellica ch 930", "Atellica Data Manager"):  # fmt: skip
        found = drivers.identify(header(sender))
        assert found.driver is SiemensAtellicaDriver, sender
        assert "names the Siemens Healthineers Atellica" in found.reason


def test_other_atellica_instruments_and_other_families_are_not_taken() -> None:
    for sender in ("Atellica UAS 800", "ATELLICA 1500", "Atellica COAG 360", "Atellica NEPH 630",
                   "Satellica", "NG_LIS"):  # fmt: skip
        assert drivers.identify(header(sender)).driver.name == "generic", sender
    assert drivers.identify(header("ADVIA Centaur XP")).driver is SiemensCentaurDriver
    assert drivers.identify(header("CS-2500^01-70")).driver.name == "sysmex_ca"


def test_the_centaur_keeps_its_messages_and_a_renamed_atellica_goes_to_it() -> None:
    centaur = [
        "H|\\^&|||NG_LIS|||||LIS_ID||P|1",
        "P|1",
        "O|1|7712045^0031^C||^^^TSH|R||||||||||||||||||||F",
        "R|1|^^^TSH^^^1^DOSE|2.31|\xb5IU/mL||||F||||20261201094510",
        "L|1|N",
    ]
    assert drivers.identify(decode_message(centaur).records).driver is SiemensCentaurDriver
    # No layout score of its own: the Centaur's layout is its.
    assert SiemensAtellicaDriver.score(decode_message(IMMUNOASSAY).records) == (0, "")
    renamed = ["H|\\^&|||LAB IMMUNO 2|||||LIS||P|LIS2-A2|20261201113000", *IMMUNOASSAY[1:]]
    found = drivers.identify(decode_message(renamed).records)
    assert found.driver is SiemensCentaurDriver and "aspect" in found.reason


def test_a_chemistry_message_is_read_exactly() -> None:
    report = decode_capture(capture(CHEMISTRY))
    assert report.ok, report.as_dict()
    (message,) = report.messages
    assert message["driver"] == "siemens_atellica"
    assert message["sender"] == "Atellica^1.27"
    keys = ("specimen_id", "test_code", "value", "units", "flags", "status", "completed_at",
            "patient_id", "control")  # fmt: skip
    rows = [tuple(r[k] for k in keys) for r in message["results"]]
    assert rows == [
        ("S26120101", "GluH_3", "142", "mg/dL", ["H"], "F", "2026-12-01T10:07:12", "MRN40213",
         False),
        ("S26120101", "Na", "139", "mmol/L", ["N"], "F", "2026-12-01T10:05:30", "MRN40213", False),
        ("S26120101", "K", "3.2", "mmol/L", ["L"], "F", "2026-12-01T10:05:30", "MRN40213", False),
        ("S26120101", "Crea_2", "0.91", "mg/dL", ["N"], "F", "2026-12-01T10:08:45", "MRN40213",
         False),
    ]  # fmt: skip
    read = SiemensAtellicaDriver().read(decode_message(CHEMISTRY).records)
    (specimen,) = read.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position, specimen.specimen_type) == (
        "S26120101", "R0042", "3", "Serum"
    )  # fmt: skip
    assert read.orders[0].test_codes == ("GluH_3", "Na", "K", "Crea_2")
    assert all(r.dilution == "" for r in read.results)


def test_an_immunoassay_message_is_read_exactly() -> None:
    report = decode_capture(capture(IMMUNOASSAY))
    assert report.ok, report.as_dict()
    (message,) = report.messages
    assert message["driver"] == "siemens_atellica"
    rows = [(r["specimen_id"], r["test_code"], r["value"], r["units"], r["flags"],
             r["completed_at"]) for r in message["results"]]  # fmt: skip
    assert rows == [
        ("S26120177", "TSH3UL", "2.184", "\xb5IU/mL", ["N"], "2026-12-01T11:22:05"),
        ("S26120177", "HBsII/INDX", "0.32", "Index", [], "2026-12-01T11:27:30"),
        ("S26120177", "HBsII/INTR", "Non-Reactive", "", [], "2026-12-01T11:27:30"),
        ("S26120177", "hCG", "8412", "mIU/mL", [], "2026-12-01T11:37:12"),
    ]
    read = SiemensAtellicaDriver().read(decode_message(IMMUNOASSAY).records)
    tsh, index, _, hcg = read.results
    # The light units and the cut-off say how a result was obtained: they go with it.
    assert [c.text for c in tsh.comments] == ["RLU 51877"]
    assert [c.text for c in index.comments] == ["cut-off 1.00 Index"]
    assert str(tsh.value.number) == "2.184"
    assert (hcg.dilution, tsh.dilution) == ("10", "")
    assert read.problems == []


def test_a_control_is_read_as_one_with_its_material_and_lot() -> None:
    report = decode_capture(capture(CONTROL))
    assert report.ok, report.as_dict()
    (row,) = report.messages[0]["results"]
    assert row["control"] is True
    assert (row["control_material"], row["control_lot"]) == ("IA PLUS 1", "40412")
    assert (row["specimen_id"], row["test_code"], row["value"]) == ("QC0412", "TSH3UL", "0.54")
    read = SiemensAtellicaDriver().read(decode_message(CONTROL).records)
    assert read.results == []
    (control,) = read.controls
    assert [c.text for c in control.result.comments] == ["RLU 14230"]
    assert control.result.completed_at == datetime(2026, 12, 1, 7, 2, 10)


def test_what_cannot_be_read_is_said_not_dropped() -> None:
    read = SiemensAtellicaDriver().read(decode_message(DAMAGED).records)
    (ft4,) = read.results
    assert (ft4.test_code, ft4.value.text, ft4.completed_at) == ("FT4", "1.21", None)
    assert read.problems == [
        "result 1, R.13: '20261341112205' is not a date and time; left out",
        "result 2 has no test code",
    ]
    report = decode_capture(capture(DAMAGED))
    assert not report.ok
    (message,) = report.messages
    assert message["driver"] == "siemens_atellica"
    assert [e["detail"] for e in message["errors"]] == read.problems


def test_query_answers_and_downloads_name_tests_as_the_atellica_takes_them() -> None:
    driver = SiemensAtellicaDriver()
    now = datetime(2026, 12, 1, 9, 30)
    held = [Order("S26120101", ("GluH_3", "Na"), specimen_type="Serum", patient_id="MRN40213")]
    query = HostQuery(("S26120101", "S99"), all_tests=True)
    lines = [encode_record(r) for r in driver.answer_query(query, held, now)]
    assert lines[1:] == [
        "P|1|MRN40213",
        "O|1|S26120101||^^^GluH_3^^^1\\^^^Na^^^1|R||||||N||||Serum||||||||||Q",
        "P|2|",
        "O|1|S99||^^^|R||||||||||||||||||||Y",
        "L|1|N",
    ]
    (order,) = [encode_record(r) for r in driver.download(held[0], False, now) if r.type == "O"]
    assert order == "O|1|S26120101||^^^GluH_3^^^1\\^^^Na^^^1|R||||||N||||Serum||||||||||O"
