"""driver: auto: the driver a message's sender, or else its layout, names."""

from __future__ import annotations

from datetime import datetime

import pytest

import drivers
from drivers.detect import AutoDriver
from middleware.astm.records import decode_record
from middleware.domain import Order
from simulators.profiles import profile
from simulators.scenarios import plan
from tests.drivers import header

NOW = datetime(2026, 11, 30, 12, 0)


def _message(name: str, sender: str | None = None) -> list[str]:
    """A patient's message as the simulated analyser ``name`` writes it, with its H.5
    replaced when ``sender`` is given."""
    chosen = profile(name)
    sample = next(s.sample for s in plan(chosen, "normal", 1, 3, NOW) if not s.sample.is_control)
    lines = [r.decode() for r in chosen.message(sample, NOW)]
    if sender is not None:
        fields = lines[0].split("|")
        fields[4] = sender
        lines[0] = "|".join(fields)
    return lines


def test_the_sender_names_the_family_whatever_its_case_and_padding() -> None:
    for sender in ("XN-550^00-22^11001", "  xn-1000^00-18", "XN-L   550"):
        found = drivers.identify(header(sender))
        assert found.driver.name == "sysmex_xn", sender
        assert "names the Sysmex XN" in found.reason


def test_sibling_models_are_known_by_their_family() -> None:
    for sender in ("XS-1000i^00-13^^^^A1234", "XT-4000i^00-12", "xe-2100", "XP-300^00-09"):
        assert drivers.identify(header(sender)).driver.name == "sysmex_xn", sender
    assert drivers.identify(header("XL-640")).driver.name == "erba_xl"


def test_a_renamed_analyser_is_known_by_its_layout() -> None:
    for name, driver in (("sysmex-xn", "sysmex_xn"), ("cobas-c", "roche_cobas"),
                         ("architect-i", "abbott_architect")):  # fmt: skip
        records = [decode_record(line) for line in _message(name, "HAEM LAB 2")]
        found = drivers.identify(records)
        assert found.driver.name == driver, name
        assert found.reason.startswith("sender 'HAEM LAB 2' not known; layout of the")


def test_a_cobas_model_without_a_pattern_is_known_by_its_message_type() -> None:
    records = [decode_record(line) for line in _message("cobas-c", "c501^1")]
    found = drivers.identify(records)
    assert found.driver.name == "roche_cobas" and "H.11 (RSUPL)" in found.reason


def test_nothing_known_is_the_generic_reading() -> None:
    found = drivers.identify([decode_record("H|\\^&|||LAB-9"), decode_record("L|1|N")])
    assert found.driver.name == "generic"
    assert found.reason == "sender 'LAB-9' not known and no layout recognised: generic reading"


def test_auto_keeps_one_driver_per_family_and_reads_a_headerless_message_as_before() -> None:
    auto = drivers.get("auto", instrument="bench-1")
    assert isinstance(auto, AutoDriver)
    xn = [decode_record(line) for line in _message("sysmex-xn")]
    first = auto.choose(xn)
    assert auto.choose(xn) is first and first.name == "sysmex_xn"
    reading = first.read(xn)
    assert reading.driver == "sysmex_xn" and reading.instrument == "bench-1"
    cobas = [decode_record(line) for line in _message("cobas-c")]
    assert auto.choose(cobas).name == "roche_cobas"
    headerless = [decode_record("O|1|S1||^^^GLU"), decode_record("L|1|N")]
    assert auto.choose(headerless).name == "roche_cobas"
    assert auto.detection is not None
    assert auto.detection.reason == (
        "no H record and no layout recognised: read as the message before by roche_cobas"
    )


def test_auto_answers_and_writes_orders_as_the_analysers_latest_driver() -> None:
    auto = drivers.get("auto", instrument="bench-1")
    cobas = [decode_record(line) for line in _message("cobas-c")]
    chosen = auto.choose(cobas)
    order = Order("S1", ("GLU", "CRPÉ"), patient_id="PATÉ")
    assert auto.writable([order], "ascii") == chosen.writable([order], "ascii")
    assert auto.writable([order], "ascii")[0] == [Order("S1", ("GLU",), patient_id="")]


def test_a_named_driver_reads_whatever_the_sender_says() -> None:
    named = drivers.get("generic")
    xn = [decode_record(line) for line in _message("sysmex-xn")]
    assert named.choose(xn) is named


def test_a_garbled_sender_on_a_connection_keeps_the_analyser_s_driver() -> None:
    auto = drivers.get("auto")
    assert auto.choose(header("ACCESS^575707")).name == "beckman_access"
    assert auto.choose(header("ASS^CCE1707")).name == "beckman_access"
    assert isinstance(auto, AutoDriver) and auto.detection is not None
    assert auto.detection.reason == (
        "sender 'ASS^CCE1707' not known and no layout recognised: read as the message "
        "before by beckman_access"
    )


def test_the_drivers_made_name_the_instrument_not_auto() -> None:
    xn = [decode_record(line) for line in _message("sysmex-xn")]
    assert drivers.get("auto", instrument="xn-1").read(xn).instrument == "xn-1"
    # with no instrument named (decode), as a named driver would: by its own name
    assert drivers.get("auto").read(xn).instrument == "sysmex_xn"


@pytest.mark.parametrize("name", ["sysmex-xn", "cobas-c", "architect-i"])
def test_a_layout_score_fires_on_its_own_family_only(name: str) -> None:
    chosen = profile(name)
    for step in plan(chosen, "normal", 2, 5, NOW):
        lines = [r.decode() for r in chosen.message(step.sample, NOW)]
        fields = lines[0].split("|")
        fields[4] = ""  # no sender: the layout alone decides
        records = [decode_record(line) for line in ["|".join(fields), *lines[1:]]]
        scored = {cls.name for cls in drivers.families() if cls.score(records)[0] > 0}
        assert scored == {chosen.driver}, (name, step.sample.label)
