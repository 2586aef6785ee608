"""Siemens ADVIA Centaur, on messages written after the layout of its interface
specification (values our own): found by its layout since sites name the system
themselves; each aspect of a result read for what it is; a control named by the
manufacturer record after its order."""

from __future__ import annotations

import drivers
from drivers.siemens_centaur import SiemensCentaurDriver
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from tests.drivers import capture, header

PATIENTS = [
    "H|\\^&|||NG_LIS|||||LIS_ID||P|1",
    "P|1",
    "O|1|7712045^0031^C||^^^TSH|R||||||||||||||||||||F",
    "R|1|^^^TSH^^^1^DOSE|2.31|\xb5IU/mL||||F||||20261201094510",
    "R|2|^^^TSH^^^1^RLU|190211|||||F||||20261201094510",
    "O|2|7712046^0031^D||^^^HBs|R||||||||||||||||||||F",
    "R|1|^^^HBs^^^1^INDX|0.12|Index||||F\\R||||20261201094812",
    "R|2|^^^HBs^^^1^INTR|NR|||<||F\\R||||20261201094812",
    "R|3|^^^HBs^^^1^COFF|1.00|Index||||F\\R||||20261201094812",
    "O|3|7712047||^^^CEA|R||||||||||||||||||||F",
    "R|1|^^^CEA^^^1^DOSE|> 100.0|ng/mL||>||F||||20261201095001",
    "L|1",
]
CONTROL = [
    "H|\\^&|||NG_LIS|||||LIS_ID||P|1",
    "P|1",
    "O|1|Q55120^0007^B||^^^TSH|R||||||Q||||||||||||||F",
    "M|1|CCD^ACS:NG^V1^O|TSH CTL 1|55120",
    "R|1|^^^TSH^^^1^DOSE|0.52|\xb5IU/mL||||F||||20261201095012",
    "R|2|^^^TSH^^^1^RLU|60211|||||F||||20261201095012",
    "L|1",
]


def test_found_by_its_layout_whatever_the_site_named_it() -> None:
    found = drivers.identify(decode_message(PATIENTS).records)
    assert found.driver is SiemensCentaurDriver and "aspect" in found.reason
    assert drivers.identify(header("ADVIA Centaur XP")).driver is SiemensCentaurDriver


def test_each_aspect_is_read_for_what_it_is() -> None:
    report = decode_capture(capture(PATIENTS))
    assert report.ok, report.as_dict()
    (message,) = report.messages
    assert message["driver"] == "siemens_centaur"
    rows = [(r["specimen_id"], r["test_code"], r["value"], r["units"])
            for r in message["results"]]  # fmt: skip
    assert rows == [
        ("7712045", "TSH", "2.31", "\xb5IU/mL"),
        ("7712046", "HBs/INDX", "0.12", "Index"),
        ("7712046", "HBs/INTR", "NR", ""),
        ("7712047", "CEA", "> 100.0", "ng/mL"),
    ]
    read = SiemensCentaurDriver().read(decode_message(PATIENTS).records)
    tsh, index, interpretation, cea = read.results
    # The light units and the cut-off say how a result was obtained: they go with it.
    assert [c.text for c in tsh.comments] == ["RLU 190211"]
    assert [c.text for c in index.comments] == ["cut-off 1.00 Index"]
    assert (interpretation.status, interpretation.abnormal_flags) == ("F", ("<",))
    assert (cea.value.censor, str(cea.value.number)) == (">", "100.0")
    assert (read.specimens[0].rack, read.specimens[0].position) == ("0031", "C")


def test_a_control_is_named_by_the_manufacturer_record_after_its_order() -> None:
    read = SiemensCentaurDriver().read(decode_message(CONTROL).records)
    assert read.results == []
    (control,) = read.controls
    assert (control.control_material, control.lot) == ("TSH CTL 1", "55120")
    assert (control.result.test_code, control.result.value.text) == ("TSH", "0.52")
    assert [c.text for c in control.result.comments] == ["RLU 60211"]


def test_a_technical_aspect_without_its_result_is_kept_and_said() -> None:
    alone = [PATIENTS[0], PATIENTS[1], PATIENTS[2], PATIENTS[4], "L|1"]
    read = SiemensCentaurDriver().read(decode_message(alone).records)
    assert [r.test_code for r in read.results] == ["TSH/RLU"]
    assert read.problems == ["sample 7712045: TSH RLU without a result of TSH"]
