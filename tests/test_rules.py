"""Rule files: the shipped set is valid, bad files are refused with file, line and field,
and the daemon keeps the last good rules and audits every accepted change."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.engine.rules import ReagentLot, load_rules, schema_text
from middleware.yamlfile import FileError
from tests.conftest import ROOT
from tests.daemon import DaemonProcess

RULES = ROOT / "rules"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def problems(directory: Path) -> list[str]:
    with pytest.raises(FileError) as caught:
        load_rules(directory)
    return caught.value.problems


def test_shipped_rules_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    assert capsys.readouterr().out.startswith("rules ok: 6 files: 3 control materials")


def test_shipped_schema_is_the_generated_one() -> None:
    assert (RULES / "schema.json").read_text() == schema_text()


def test_sigma_chooses_the_rule_set() -> None:
    rules = load_rules(RULES)
    glucose = next(p for p in rules.qc_policies if "GLU" in p.tests)
    assert glucose.sigma is not None and glucose.sigma.value == Decimal("5.3125")
    assert rules.rule_set_for(glucose).rules == ["1-3s", "2-2s", "R-4s"]


def test_a_sigma_below_every_step_gets_the_strictest_set(rules_dir: Path) -> None:
    qc = rules_dir / "qc.yaml"
    # A bias larger than the allowed total error: sigma -1.25, under the map's lowest step.
    qc.write_text(
        qc.read_text().replace("{tea: 10, bias: 1.5, cv: 1.6}", "{tea: 10, bias: 12, cv: 1.6}")
    )
    westgard = rules_dir / "westgard.yaml"
    westgard.write_text(
        westgard.read_text().replace(
            "{min_sigma: 0, rule_set: sigma-low}", "{min_sigma: 2, rule_set: sigma-low}"
        )
    )
    rules = load_rules(rules_dir)
    glucose = next(p for p in rules.qc_policies if "GLU" in p.tests)
    assert glucose.sigma is not None and glucose.sigma.value < 0
    assert rules.rule_set_for(glucose).rules == ["1-3s", "2-2s", "R-4s", "4-1s", "8x"]


def test_unknown_rule_is_refused_with_file_line_and_field(rules_dir: Path) -> None:
    path = rules_dir / "westgard.yaml"
    path.write_text(path.read_text().replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, R-5s]"))
    [problem] = problems(rules_dir)
    assert problem.startswith(f"{path}:8: westgard.rule_sets.default.rules.1: Input should be")


def test_every_problem_of_every_file_is_listed(rules_dir: Path) -> None:
    (rules_dir / "extra.yaml").write_text(
        "reagent_lots:\n"
        "  - reagent: K reagent\n"
        "    lot: '12'\n"
        "    expiry: not-a-date\n"
        "ranges:\n"
        "  - {test: K, low: 5, high: 3}\n"
        "colour: blue\n"
    )
    (rules_dir / "broken.yaml").write_text("ranges: [\n")
    found = problems(rules_dir)
    extra = rules_dir / "extra.yaml"
    assert f"{extra}:4: reagent_lots.0.expiry: Input should be a valid date" in "\n".join(found)
    assert any(
        p.startswith(f"{extra}:6: ranges.0: Value error, low (5) must be below") for p in found
    )
    assert any(p.startswith(f"{extra}:7: colour: Extra inputs are not permitted") for p in found)
    assert any(p.startswith(f"{rules_dir / 'broken.yaml'}:2: not valid YAML") for p in found)


def test_problems_across_files(rules_dir: Path) -> None:
    (rules_dir / "more.yaml").write_text(
        "qc_policies:\n"
        "  - {tests: [MG], levels: ['1'], rule_set: nope}\n"
        "reagent_lots:\n"
        "  - {reagent: GLU reagent, lot: '2365', expiry: 2027-05-31}\n"
    )
    found = problems(rules_dir)
    more = rules_dir / "more.yaml"
    assert f"{more}:2: qc_policies.0.rule_set: unknown rule set 'nope'" in found
    # the second of the two is named (files are read in name order)
    reagents = rules_dir / "reagents.yaml"
    assert f"{reagents}:7: reagent_lots.0: lot 2365 of GLU reagent is listed twice" in found


def test_check_command_prints_problems_and_fails(
    rules_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (rules_dir / "qc.yaml").write_text("qc_policies:\n  - {tests: [], levels: ['1']}\n")
    assert main(["rules", "check", str(rules_dir)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{rules_dir / 'qc.yaml'}:2: qc_policies.0.tests: List should have at least 1 item" in out
    )
    assert out.rstrip().endswith("rules refused")


def test_effective_expiry_is_the_earlier_of_expiry_and_stability() -> None:
    lot = ReagentLot(reagent="R", lot="1", expiry=date(2027, 5, 31),
                     opened=date(2026, 11, 1), stability_days=60)  # fmt: skip
    assert lot.effective_expiry == date(2026, 12, 31)
    unopened = ReagentLot(reagent="R", lot="1", expiry=date(2027, 5, 31), stability_days=60)
    assert unopened.effective_expiry == date(2027, 5, 31)


def _wait_for(path: Path, text: str, times: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < times:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path}")
        time.sleep(0.05)


def test_daemon_reloads_on_sighup_keeps_good_rules_and_audits(
    tmp_path: Path, rules_dir: Path
) -> None:
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(rules_dir))
    daemon.start()
    try:
        assert daemon.process is not None
        westgard = rules_dir / "westgard.yaml"
        good = westgard.read_text()
        westgard.write_text(good.replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, R-5s]"))
        daemon.process.send_signal(signal.SIGHUP)
        _wait_for(daemon.log, "rules refused; the rules in force stay")
        westgard.write_text(good.replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, 2-2s]"))
        daemon.process.send_signal(signal.SIGHUP)
        _wait_for(daemon.log, '"event": "rules in force"', times=2)
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(daemon.database) as conn:
        entries = conn.execute("SELECT actor, action, subject, detail FROM audit_log").fetchall()
    assert entries[0][:2] == ("daemon start", "rules.load")
    actor, action, subject, detail = entries[-1]
    assert len(entries) == 2  # the refused file changed nothing
    assert actor.startswith("SIGHUP") and action == "rules.load" and subject == str(rules_dir)
    assert '-    \\"4-1s\\",' in detail and '-    \\"10x\\"' in detail


def test_daemon_refuses_to_start_on_bad_rules(tmp_path: Path, rules_dir: Path) -> None:
    (rules_dir / "bad.yaml").write_text("ranges: [{test: K, low: 9, high: 1}]\n")
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(rules_dir))
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start()
    assert daemon.stop() == 2
    assert "low (9) must be below high (1)" in daemon.log.read_text()
