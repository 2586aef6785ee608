"""Bio-Rad IH-Com driver against the two captures in the corpus
(astm/biorad-ihcom_records_reagent-lots*.astm): an ABD confirmation profile (MO10), its
three reactions and its conclusion, each reaction with the diluent and the gel card it
used; values read with ``cat -v``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import drivers
from drivers.biorad_ih import BioRadIHDriver
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import InstrumentMessage, ReagentUse
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
ONE = ASTM / "biorad-ihcom_records_reagent-lots.astm"


def _read(path: Path) -> InstrumentMessage:
    (message,) = read_capture(path.read_bytes()).messages
    return BioRadIHDriver().read(decode_message(message.lines).records)


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("biorad_ih"), BioRadIHDriver)
    assert drivers.identify(header("Bio-Rad|IH v5.2")).driver is BioRadIHDriver
    assert drivers.identify(header("BIORAD")).driver is BioRadIHDriver


def test_each_reaction_is_a_test_of_its_profile_and_the_conclusion_too() -> None:
    message = _read(ONE)
    assert not message.problems
    assert [(r.specimen_id, r.test_code, r.value.text) for r in message.results] == [
        ("1122206642", "MO10/AntiA", "40"),
        ("1122206642", "MO10/AntiB", "0"),
        ("1122206642", "MO10/AntiD", "0"),
        ("1122206642", "MO10/Result", "A^NEG^NEG^ccee^K-^NEG"),
    ]
    assert {r.module for r in message.results} == {"IH-1000"}
    assert all(r.comments == () for r in message.results)  # its C records are reagents


def test_each_reaction_names_its_diluent_and_its_card() -> None:
    anti_a = _read(ONE).results[0]
    assert anti_a.reagents == (
        ReagentUse("ID-Diluent 2", "05761.03.12", "MO10/AntiA", date(2024, 1, 31),
                   kind="diluent"),
        ReagentUse("CAS card", "50053.52.06", "MO10/AntiA", date(2022, 12, 31),
                   serial="5005352062212117030"),
    )  # fmt: skip
    assert _read(ONE).results[3].reagents == ()  # the conclusion used none of its own


def test_decode_finds_it_by_its_sender() -> None:
    report = decode_capture(ONE.read_bytes()).as_dict()
    (message,) = report["messages"]
    assert message["driver"] == "biorad_ih"
    assert [r["lab_test_code"] for r in message["results"]][:2] == ["MO10/AntiA", "MO10/AntiB"]
