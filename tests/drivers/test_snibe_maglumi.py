"""Snibe MAGLUMI driver against the monitor log in the corpus
(astm/snibe-maglumi_log_no-frame-numbers.txt): 26 transfers, each one frame with no frame
number and no checksum. Values were read off the file with ``cat -v``.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import drivers
from drivers.snibe_maglumi import SnibeMaglumiDriver
from middleware.astm.capture import read_capture
from middleware.astm.frames import FrameTolerances
from middleware.astm.records import decode_message, encode_record
from middleware.decode import decode_capture
from middleware.domain import HostQuery, InstrumentMessage, Order
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
LOG = ASTM / "snibe-maglumi_log_no-frame-numbers.txt"


@pytest.fixture(scope="module")
def data() -> bytes:
    return LOG.read_bytes()


@pytest.fixture(scope="module")
def messages(data: bytes) -> list[InstrumentMessage]:
    capture = read_capture(data, SnibeMaglumiDriver.tolerances)
    assert capture.errors == []
    driver = drivers.get("snibe_maglumi")
    return [driver.read(decode_message(m.lines).records) for m in capture.messages]


def frames(data: bytes) -> list[str]:
    """Each frame's text as the log writes it, with the monitor's line breaks undone."""
    joined = data.decode("latin-1").replace("\n", "")
    return re.findall(r"\[STX\](.*?)\[ETX\]", joined)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("snibe_maglumi"), SnibeMaglumiDriver)
    assert drivers.identify(header("Maglumi User")).driver is SnibeMaglumiDriver
    assert drivers.identify(header("MAGLUMI X8")).driver is SnibeMaglumiDriver


def test_decodes_without_errors_with_the_driver_and_not_without(data: bytes) -> None:
    plain = decode_capture(data, "generic")
    assert not plain.ok
    # each frame is refused for its first fault, the missing frame number...
    assert {e["kind"] for e in plain.errors} == {"frame_number"}
    assert len(plain.errors) == 26
    # ...and, that one forgiven, for the missing checksum
    numberless = decode_capture(data, "generic", "no_frame_numbers")
    assert {e["kind"] for e in numberless.errors} == {"checksum"}
    report = decode_capture(data, "snibe_maglumi")
    assert report.ok, report.errors
    assert report.errors == []
    assert all(m["errors"] == [] for m in report.messages)

    # the same values either way: only the link checks and the lab codes differ
    def values(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [
            (r["specimen_id"], r["test_code"], r["value"]) for m in messages for r in m["results"]
        ]

    assert values(report.messages) == values(plain.messages)
    assert len(values(report.messages)) == 62
    assert len(report.messages) == len(plain.messages) == 26


def test_one_frame_per_message_longer_than_the_standard_allows(data: bytes) -> None:
    texts = frames(data)
    assert len(texts) == 26
    longest = max(len(t.replace("[CR]", "\r")) for t in texts)
    assert longest == 361
    # none begins with a frame number: the H record starts right after STX
    assert all(t.startswith("H|") for t in texts)
    strict = read_capture(data, FrameTolerances(no_frame_numbers=True, no_checksum=True))
    assert {e.kind for e in strict.errors} == {"frame_too_long"}
    assert SnibeMaglumiDriver().link_settings().tolerances == SnibeMaglumiDriver.tolerances


def test_counts_and_first_message(data: bytes, messages: list[InstrumentMessage]) -> None:
    assert len(messages) == 26
    results = [r for m in messages for r in m.results]
    assert len(results) == sum(t.count("[CR]R|") for t in frames(data)) == 62
    assert all(not m.controls and not m.problems for m in messages)
    assert {m.sender for m in messages} == {"Maglumi User"}
    first = messages[0].results
    assert [(r.specimen_id, r.test_code, r.instrument_test_code) for r in first] == [
        ("25059232", "TT3", "TT3 II"),
        ("25059232", "TT4", "TT4 II"),
        ("25059232", "TSH", "TSH II"),
    ]
    tt3 = first[0]
    assert (tt3.value.text, tt3.value.number, tt3.units) == ("1.171", Decimal("1.171"), "ng/mL")
    assert tt3.reference_range == "0.75 to 2.1"
    assert tt3.abnormal_flags == ("N",)
    assert tt3.status == ""
    assert tt3.completed_at == datetime(2025, 6, 30, 15, 11, 57)
    assert messages[0].orders[0].test_codes == ("TT3", "TT4", "TSH")


def test_other_kits(messages: list[InstrumentMessage]) -> None:
    b12 = messages[4].results[0]
    assert (b12.specimen_id, b12.instrument_test_code, b12.test_code) == (
        "25141511",
        "Vit B12 II",
        "B12",
    )
    assert (b12.value.text, b12.units, b12.reference_range) == ("195.6", "pg/mL", "192 to 827")
    # a record the monitor cut over two lines ("...|N||||||" then "20250630185814[CR]")
    tsh = messages[1].results[2]
    assert (tsh.test_code, tsh.value.text) == ("TSH", "3.53")
    assert tsh.completed_at == datetime(2025, 6, 30, 18, 58, 14)
    # kits without a laboratory code keep the analyser's name
    unmapped = {r.test_code for m in messages for r in m.results} - {"TSH", "TT3", "TT4", "B12"}
    assert unmapped == {"PRL II", "25-OH VD II", "AMH II"}
    prl = messages[11].results[0]
    assert (prl.specimen_id, prl.value.text) == ("2025105940", "10.58")


def test_host_query_answer_asks_for_the_kits_the_analyser_runs() -> None:
    driver = SnibeMaglumiDriver()
    held = [Order("25059232", ("TT3", "TT4", "TSH"))]
    records = driver.answer_query(HostQuery(("25059232",)), held, datetime(2025, 7, 1, 12, 0))
    assert [encode_record(r) for r in records[1:]] == [
        "P|1|",
        "O|1|25059232||^^^TT3 II\\^^^TT4 II\\^^^TSH II|R||||||N||||||||||||||Q",
        "L|1|N",
    ]
