"""EUROIMMUN Analyzer I driver against the capture in the corpus
(astm/euroimmun-analyzer1_records_decimal-comma.astm): 20 samples of one ELISA, each a P
record naming the sample in P.4, an O without ids and its R; values read with ``cat -v``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import drivers
from drivers.euroimmun_analyzer import EuroimmunAnalyzerDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import Record, decode_message
from middleware.decode import decode_capture
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
CAPTURE = ASTM / "euroimmun-analyzer1_records_decimal-comma.astm"


def _records() -> list[Record]:
    (message,) = read_capture(CAPTURE.read_bytes()).messages
    return list(decode_message(message.lines).records)


def test_registered_and_recognised_by_its_sender_or_its_layout() -> None:
    assert isinstance(drivers.get("euroimmun_analyzer"), EuroimmunAnalyzerDriver)
    assert drivers.identify(header("EUROIMMUN Analyzer I")).driver is EuroimmunAnalyzerDriver
    # the captured analyser leaves H.5 empty: its layout gives it away
    found = drivers.identify(_records())
    assert found.driver is EuroimmunAnalyzerDriver and "named in P.4" in found.reason


def test_each_sample_is_named_in_p4_and_no_patient_is_invented() -> None:
    message = EuroimmunAnalyzerDriver().read(_records())
    assert not message.problems and message.patients == []
    assert len(message.results) == 20
    first, second = message.results[:2]
    assert (first.specimen_id, first.test_code, first.value.text, first.units) == (
        "TEST-27-079-5-1", "SARSCOV2IGA", ">8", "Ratio",
    )  # fmt: skip
    assert (first.value.censor, first.value.number) == (">", Decimal(8))
    assert (second.specimen_id, second.value.number) == ("TEST-27-077-5-1", Decimal("7.41"))
    assert {r.patient_id for r in message.results} == {""}
    assert len({r.specimen_id for r in message.results}) == 20


def test_decode_finds_it_and_reads_every_sample() -> None:
    report = decode_capture(CAPTURE.read_bytes()).as_dict()
    (message,) = report["messages"]
    assert message["driver"] == "euroimmun_analyzer"
    rows = message["results"]
    assert [r["specimen_id"] for r in rows][-1] == "TEST-27-031-5-1"
    assert rows[-1]["numeric_value"] == "5.64"
