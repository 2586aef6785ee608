"""The bundled simulators against the real daemon: every scenario does what it claims,
every fault is survived with nothing lost, on SQLite and on PostgreSQL.

One daemon per database serves one instrument per scenario, all run at once (each
instrument has its own QC state, so the scenarios do not disturb one another); the LIS
simulator runs as its own process and records what the daemon delivers. The tests then
read the outcome of their scenario from the store and from that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

import drivers
from drivers.base import DriverOptions
from middleware.astm.records import decode_message
from middleware.domain import InstrumentMessage
from middleware.web.roles import Role
from simulators.analyser import (
    Analyser,
    FaultSettings,
    PseudoTerminal,
    Tally,
    TcpListener,
    tcp_client,
)
from simulators.lis import OrderToSend, send_orders
from simulators.profiles import PROFILES, Profile, Sample, profile
from simulators.scenarios import SCENARIOS, Step, plan
from tests import credentials
from tests.conftest import ROOT, fresh_postgres_database
from tests.daemon import DaemonProcess, free_port, query

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


# --- the profiles speak their drivers' dialects ------------------------------------------


def _read(reader: drivers.Driver, chosen: Profile, sample: Sample) -> InstrumentMessage:
    records = decode_message([r.decode() for r in chosen.message(sample, NOW)]).records
    return reader.read(records)


@pytest.mark.parametrize("name", list(PROFILES))
def test_each_profile_is_read_exactly_by_its_driver(name: str) -> None:
    chosen = PROFILES[name]
    reader = drivers.get(chosen.driver, DriverOptions(test_map=dict(chosen.test_map)))
    steps = plan(chosen, "normal", 2, 7, NOW)
    patient = next(s.sample for s in steps if not s.sample.is_control)
    message = _read(reader, chosen, patient)
    assert not message.problems and not message.controls
    assert [(r.specimen_id, r.test_code, r.value.text, r.units) for r in message.results] == [
        (patient.specimen_id, m.analyte.lab_code, m.value, m.analyte.units)
        for m in patient.measured
    ]
    assert {r.patient_id for r in message.results} == {patient.patient_id}
    assert all(r.completed_at is not None for r in message.results)
    for control in (s.sample for s in steps if s.sample.is_control):
        read = _read(reader, chosen, control)
        assert not read.results and len(read.controls) == len(control.measured)
        assert control.control is not None
        # by its lot (Sysmex, ARCHITECT) or by the sample id that is the lot (cobas)
        assert {c.lot or c.control_material for c in read.controls} == {control.control.lot}


def test_the_immunoassay_profile_reports_its_reagent_lot() -> None:
    chosen = profile("immunoassay")
    reader = drivers.get(chosen.driver)
    steps = plan(chosen, "lot-change", 4, 3, NOW)
    lots = []
    for step in steps:
        read = _read(reader, chosen, step.sample)
        lots += [u.lot for r in read.results for u in r.reagents]
    assert lots[0] == chosen.reagent_lots[0] and lots[-1] == chosen.reagent_lots[1]


def test_a_plan_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    for scenario in SCENARIOS:
        for chosen in PROFILES.values():
            try:
                first = plan(chosen, scenario, 5, 11, NOW)
            except ValueError:
                continue
            assert first == plan(chosen, scenario, 5, 11, NOW)
            other = plan(chosen, scenario, 5, 12, NOW)
            assert [m.value for s in first for m in s.sample.measured] != [
                m.value for s in other for m in s.sample.measured
            ]


def test_scenarios_a_profile_cannot_show_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="does not report reagent lots"):
        plan(profile("haematology"), "lot-change", 5, 1, NOW)
    with pytest.raises(ValueError, match="does not report serum indices"):
        plan(profile("immunoassay"), "sample-indices", 5, 1, NOW)
    with pytest.raises(ValueError, match="unknown scenario"):
        plan(profile("chemistry"), "nonsense", 5, 1, NOW)


def test_the_command_line_refuses_an_impossible_scenario_before_connecting() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "simulators", "analyser", "--profile", "sysmex-xn",
         "--scenario", "lot-change", "--connect", "127.0.0.1:9"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "does not report reagent lots" in done.stderr


# --- every scenario against the real daemon ----------------------------------------------


@dataclass
class Run:
    """One scenario on one instrument of the daemon."""

    instrument: str
    profile: str
    scenario: str
    samples: int
    config: dict[str, Any] = field(default_factory=dict)
    faults: FaultSettings = field(default_factory=FaultSettings)
    reply_timeout: float = 15.0
    transport: str = "tcp-server"
    """tcp-server: the analyser connects; tcp-client: it listens; serial: a pty pair."""
    port: int = 0
    pty: PseudoTerminal | None = None
    listener: TcpListener | None = None
    in_process: bool = True
    """False: the instrument waits for the command line's load mode (its test runs it)."""
    steps: list[Step] = field(default_factory=list)
    tally: Tally | None = None
    sent: list[Sample] = field(default_factory=list)


def _runs() -> list[Run]:
    quick = FaultSettings(slow_seconds=2.5, oversize_bytes=100_000, contention_wait=10)
    return [
        Run("xn-normal", "sysmex-xn", "normal", 3),
        Run("chem-normal", "cobas-c", "normal", 3),
        Run("ia-normal", "architect-i", "normal", 3),
        Run("xn-serial", "sysmex-xn", "normal", 2, transport="serial"),
        Run("chem-listening", "cobas-c", "normal", 2, transport="tcp-client"),
        Run("chem-load", "cobas-c", "normal", 2, {"connections": "all"}, in_process=False),
        Run("xn-auto", "sysmex-xn", "normal", 2, {"driver": "auto"}),
        Run("chem-auto", "cobas-c", "normal", 2, {"driver": "auto"}),
        Run("ia-auto", "architect-i", "normal", 2, {"driver": "auto"}),
        Run("chem-shift", "cobas-c", "qc-shift", 6),
        Run("xn-shift", "sysmex-xn", "qc-shift", 6),
        Run("xn-random", "sysmex-xn", "random-error", 3),
        Run("ia-trend", "architect-i", "trend", 7),
        Run("ia-lot", "architect-i", "lot-change", 4),
        Run("ia-expired", "architect-i", "expired-lot", 4),
        Run("chem-indices", "cobas-c", "sample-indices", 4),
        Run("xn-stability", "sysmex-xn", "stability", 3),
        Run("chem-critical", "cobas-c", "critical", 2),
        Run("chem-query", "cobas-c", "host-query", 3),
        Run("chem-checksum", "cobas-c", "bad-checksum", 6),
        Run("chem-lost-ack", "cobas-c", "lost-ack", 6),
        Run("xn-slow", "sysmex-xn", "slow-peer", 3, {"frame_timeout": 1.0}, quick,
            reply_timeout=2.0),
        Run("chem-drop", "cobas-c", "drop-mid-message", 6),
        # The host's back-off after contention shortened from E1381's 20 s (configurable).
        Run("chem-contention", "cobas-c", "enq-contention", 2, {"contention_backoff": 2.0}),
        Run("xn-oversize", "sysmex-xn", "oversize-frame", 3, {"max_frame_bytes": 65536}, quick),
    ]  # fmt: skip


@dataclass
class Campaign:
    url: str
    runs: dict[str, Run]
    record: Path
    api: int
    daemon: DaemonProcess
    ordered: dict[str, tuple[str, ...]]
    token: str = ""

    def delivered(self) -> list[dict[str, Any]]:
        """The messages the LIS simulator has recorded so far: complete lines only, since
        it may be writing the next one while this reads."""
        text = self.record.read_text() if self.record.exists() else ""
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def rows(self, sql: str, **params: Any) -> list[Any]:
        return query(self.url, sql, **params)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Posts as a biologist, with a token made at the first call."""
        if not self.token:
            self.token = credentials.token(self.url, Role.BIOLOGIST, "biologist")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api}{path}", json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.load(answer))


def _rules_for_today(into: Path) -> Path:
    """The bundled rules with 7T added to the three-level rule set (the trend scenario runs
    on an immunoassay; the bundled sets do not have 7T), and every lot that has not expired
    yet valid for a year from today, so the scenarios hold nothing for an expired lot but
    the one meant to be."""
    rules = into / "rules"
    shutil.copytree(ROOT / "rules", rules)
    westgard = yaml.safe_load((rules / "westgard.yaml").read_text())
    westgard["westgard"]["rule_sets"]["three-levels"]["rules"].append("7T")
    (rules / "westgard.yaml").write_text(yaml.safe_dump(westgard))
    today = date.today()
    qc = yaml.safe_load((rules / "qc.yaml").read_text())
    for material in qc["control_materials"]:
        for lot in material["lots"]:
            lot["expiry"] = today + timedelta(days=365)
    (rules / "qc.yaml").write_text(yaml.safe_dump(qc))
    reagents = yaml.safe_load((rules / "reagents.yaml").read_text())
    for lot in reagents["reagent_lots"]:
        if lot["expiry"] >= today:
            lot["expiry"] = today + timedelta(days=365)
    (rules / "reagents.yaml").write_text(yaml.safe_dump(reagents))
    return rules


def _ordered_tests(runs: dict[str, Run]) -> dict[str, tuple[str, ...]]:
    """Orders the LIS places for the host-query samples: all but the last of the host
    query scenario's (the analyser runs nothing on that one)."""
    ordered: dict[str, tuple[str, ...]] = {}
    for run in runs.values():
        asked = [s.sample for s in run.steps if s.query]
        if run.scenario == "host-query":
            asked = asked[:-1]
        for sample in asked:
            ordered[sample.specimen_id] = ("GLU", "K", "NA")
    return ordered


async def _run_all(campaign: Campaign, orders_port: int) -> None:
    orders = [OrderToSend(specimen_id=s, tests=t, patient_id="PT0000001")
              for s, t in campaign.ordered.items()]  # fmt: skip
    answers = await send_orders("127.0.0.1", orders_port, orders)
    assert set(answers) == {"AA"}
    analysers = []
    listeners = []
    for run in campaign.runs.values():
        if not run.in_process:
            continue
        chosen = profile(run.profile)
        if run.pty is not None:
            opener = run.pty.open_connection
        elif run.listener is not None:
            listeners.append(run.listener)
            opener = run.listener.open_connection
        else:
            opener = tcp_client("127.0.0.1", run.port)
        analyser = Analyser(chosen, run.steps, opener, reply_timeout=run.reply_timeout,
                            faults=run.faults)  # fmt: skip
        analysers.append((run, analyser))
    try:
        tallies = await asyncio.gather(*(a.run() for _, a in analysers))
    finally:
        for listener in listeners:
            await listener.close()
    for (run, analyser), tally in zip(analysers, tallies, strict=True):
        run.tally, run.sent = tally, analyser.sent


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def campaign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Campaign]:  # fmt: skip
    workdir = tmp_path_factory.mktemp(f"simulators-{request.param}")
    with _database(request.param, workdir) as url, contextlib.ExitStack() as cleanup:
        runs = {run.instrument: run for run in _runs()}
        instruments = []
        for run in runs.values():
            chosen = profile(run.profile)
            run.port = free_port()
            now = datetime.now()  # the analysers' clock: local time
            run.steps = plan(chosen, run.scenario, run.samples, len(instruments) + 1, now)
            where: dict[str, Any] = {"host": "127.0.0.1", "port": run.port}
            if run.transport == "tcp-client":
                run.listener = TcpListener("127.0.0.1", 0)
                where["port"] = run.listener.port
            elif run.transport == "serial":
                run.pty = PseudoTerminal()
                cleanup.callback(run.pty.close)
                where = {"serial": {"port": run.pty.path}}
            instruments.append({"name": run.instrument, "driver": chosen.driver,
                                "transport": run.transport, **where,
                                "test_map": dict(chosen.test_map), **run.config})  # fmt: skip
        lis_port, orders_port, api_port = free_port(), free_port(), free_port()
        record = workdir / "lis.jsonl"
        lis = subprocess.Popen(
            [sys.executable, "-m", "simulators", "lis", "--listen", f"127.0.0.1:{lis_port}",
             "--record", str(record)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        cleanup.callback(lis.wait, 10)
        cleanup.callback(lis.terminate)
        assert lis.stdout is not None and "listening on" in lis.stdout.readline()
        daemon = DaemonProcess(
            workdir, instruments, database_url=url, rules_dir=str(_rules_for_today(workdir)),
            api={"host": "127.0.0.1", "port": api_port},
            lis={"host": "127.0.0.1", "port": lis_port, "ack_timeout": 5,
                 "orders_host": "127.0.0.1", "orders_port": orders_port,
                 "backoff": {"base": 0.2, "ceiling": 1}},
        )  # fmt: skip
        cleanup.callback(daemon.stop)
        daemon.start()
        found = Campaign(url, runs, record, api_port, daemon, _ordered_tests(runs))
        # A regression that stops the daemon taking messages fails here, not hangs.
        asyncio.run(asyncio.wait_for(_run_all(found, orders_port), 300))
        yield found


def _database(backend: str, workdir: Path) -> contextlib.AbstractContextManager[str]:
    """The daemon's database: a SQLite file, or a fresh PostgreSQL database."""
    if backend == "postgresql":
        return fresh_postgres_database()
    return contextlib.nullcontext(f"sqlite:///{workdir / 'state' / 'middleware.db'}")


def _latest(campaign: Campaign, instrument: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(specimen, test) -> (action, reasons) of the latest decision of each result."""
    rows = campaign.rows(
        "SELECT specimen_id, test_code, action, reasons FROM decisions "
        "WHERE instrument = :i ORDER BY id", i=instrument,
    )  # fmt: skip
    return {(s, t): (a, r) for s, t, a, r in rows}


def _findings(campaign: Campaign, instrument: str, action: str = "") -> set[tuple[str, str]]:
    """(test, finding code) of every decision of the instrument (of that action)."""
    rows = campaign.rows(
        "SELECT test_code, findings FROM decisions WHERE instrument = :i "
        "AND (:a = '' OR action = :a)", i=instrument, a=action,
    )  # fmt: skip
    return {(test, f["code"]) for test, text in rows for f in json.loads(text)}


def _tripped(campaign: Campaign, instrument: str) -> set[tuple[str, str]]:
    """(test, Westgard rule) of every rejection that held a result (one finding names
    every rule a QC result tripped: ``qc-rejected:3-1s,6x``)."""
    return {
        (test, rule)
        for test, code in _findings(campaign, instrument, "hold")
        if code.startswith("qc-rejected:")
        for rule in code.removeprefix("qc-rejected:").split(",")
    }


def _sent_results(run: Run) -> set[tuple[str, str]]:
    return {(s.specimen_id, m.analyte.lab_code) for s in run.sent if not s.is_control
            for m in s.measured}  # fmt: skip


def _stored_results(campaign: Campaign, instrument: str) -> list[tuple[str, str]]:
    return [
        (s, t) for s, t in campaign.rows(
            "SELECT r.specimen_id, r.test_code FROM results r JOIN messages m "
            "ON m.id = r.message_id WHERE m.instrument = :i", i=instrument)
    ]  # fmt: skip


def _delivered(campaign: Campaign, instrument: str) -> set[tuple[str, str]]:
    sent = _sent_results(campaign.runs[instrument])
    specimens = {s for s, _ in sent}
    return {
        (specimen, result["test"])
        for message in campaign.delivered()
        for specimen in message["specimen_ids"]
        if specimen in specimens
        for result in message["results"]
    }


def _wait_delivered(campaign: Campaign, instrument: str, wanted: set[tuple[str, str]]) -> None:
    deadline = time.monotonic() + 20
    while not wanted <= _delivered(campaign, instrument):
        assert time.monotonic() < deadline, wanted - _delivered(campaign, instrument)
        time.sleep(0.1)


@pytest.mark.parametrize(
    "instrument",
    ["xn-normal", "chem-normal", "ia-normal", "xn-serial", "chem-listening", "xn-auto",
     "chem-auto", "ia-auto"],
)  # fmt: skip
def test_a_normal_run_is_released_and_delivered(campaign: Campaign, instrument: str) -> None:
    run = campaign.runs[instrument]
    sent = _sent_results(run)
    assert sorted(_stored_results(campaign, instrument)) == sorted(sent)
    # over the transport the run names: a server's connections carry the peer's address
    connections = {
        c
        for (c,) in campaign.rows(
            "SELECT DISTINCT connection FROM messages WHERE instrument = :i", i=instrument
        )
    }
    if run.transport == "tcp-server":
        assert all(c.startswith(f"{instrument}/127.0.0.1:") for c in connections)
    else:
        assert connections == {instrument}
    latest = _latest(campaign, instrument)
    assert {key: latest[key][0] for key in sent} == dict.fromkeys(sent, "release")
    _wait_delivered(campaign, instrument, sent)


@pytest.mark.parametrize(("instrument", "rules"), [
    ("chem-shift", {"ALB": "2-2s", "AST": "4-1s", "ALT": "10x"}),
    ("xn-shift", {"HGB": "2of3-2s", "PLT": "3-1s", "WBC": "6x"}),
])  # fmt: skip
def test_a_qc_shift_holds_results_until_corrective_qc_and_a_person(
    campaign: Campaign, instrument: str, rules: dict[str, str]
) -> None:
    tripped = _tripped(campaign, instrument)
    assert set(rules.items()) <= tripped
    latest = _latest(campaign, instrument)
    held = {key for key, (action, _) in latest.items() if action == "hold"}
    assert {test for _, test in held} == set(rules)
    # A person closes each corrective action: the corrective QC was in control.
    actions = campaign.rows(
        "SELECT id, test_code FROM corrective_actions WHERE instrument = :i "
        "AND closed_at IS NULL", i=instrument)  # fmt: skip
    assert {test for _, test in actions} == set(rules)
    for action_id, _ in actions:
        campaign.post(f"/api/corrective-actions/{action_id}/close",
                      {"action_taken": "recalibrated"})  # fmt: skip
    latest = _latest(campaign, instrument)
    assert {latest[key][0] for key in held} == {"release"}
    _wait_delivered(campaign, instrument, held)


def test_random_error_trips_1_3s_and_r_4s(campaign: Campaign) -> None:
    assert {"1-3s", "R-4s"} <= {rule for _, rule in _tripped(campaign, "xn-random")}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_random_error_is_beyond_its_limits_whatever_the_seed(name: str) -> None:
    """The shifted controls, as the analyser writes them (ALB in whole g/L): beyond 3 SD
    for 1-3s, beyond +2 and -2 SD in one run for R-4s, for every seed."""
    now = datetime(2026, 3, 1, 8, tzinfo=UTC)
    for seed in range(30):
        steps = plan(profile(name), "random-error", 6, seed, now)
        z: dict[str, list[Decimal]] = {}
        for step in steps:
            sample = step.sample
            if sample.control is None or "random error" not in sample.label:
                continue
            for measured in sample.measured:
                mean, sd = sample.control.targets[measured.analyte.lab_code]
                z.setdefault(sample.label, []).append((Decimal(measured.value) - mean) / sd)
        assert max(abs(v) for v in z["QC random error (1-3s)"]) > 3, (name, seed)
        spread = z["QC random error (R-4s)"]
        assert max(spread) > 2 and min(spread) < -2, (name, seed)


def test_a_trend_trips_7t(campaign: Campaign) -> None:
    assert ("TSH", "7T") in _tripped(campaign, "ia-trend")


def test_a_lot_change_holds_until_qc_on_the_new_lot(campaign: Campaign) -> None:
    run = campaign.runs["ia-lot"]
    changed = {(s.specimen_id, m.analyte.lab_code) for s in run.sent
               if s.label == "patient on a new reagent lot" for m in s.measured}  # fmt: skip
    assert changed
    first = {}
    for specimen, test, action, reasons in campaign.rows(
        "SELECT specimen_id, test_code, action, reasons FROM decisions "
        "WHERE instrument = 'ia-lot' ORDER BY id"):  # fmt: skip
        first.setdefault((specimen, test), (action, reasons))
    assert all(first[key][0] == "hold" and "reagent-lot-changed" in first[key][1]
               for key in changed)  # fmt: skip
    latest = _latest(campaign, "ia-lot")
    assert {latest[key][0] for key in _sent_results(run)} == {"release"}
    assert campaign.rows(
        "SELECT count(*) FROM reagent_uses u JOIN reagent_lots l ON l.id = u.reagent_lot_id "
        "WHERE u.instrument = 'ia-lot' AND l.lot = '82517LI00'")[0][0] > 0  # fmt: skip


def test_an_expired_reagent_lot_holds_its_results(campaign: Campaign) -> None:
    run = campaign.runs["ia-expired"]
    latest = _latest(campaign, "ia-expired")
    for sample in (s for s in run.sent if not s.is_control):
        for measured in sample.measured:
            action, reasons = latest[(sample.specimen_id, measured.analyte.lab_code)]
            if sample.label == "patient on an expired reagent lot":
                assert action == "hold" and "reagent-expired:79950LI00" in reasons
            else:
                assert action == "release"


def test_haemolysed_icteric_and_lipaemic_samples(campaign: Campaign) -> None:
    run = campaign.runs["chem-indices"]
    by_what = {s.label: s.specimen_id for s in run.sent}
    latest = _latest(campaign, "chem-indices")
    assert latest[(by_what["haemolysed"], "K")][0] == "reject"
    assert "haemolysed" in latest[(by_what["haemolysed"], "K")][1]
    assert latest[(by_what["haemolysed"], "AST")][0] == "reject"
    assert latest[(by_what["haemolysed"], "GLU")][0] == "release"
    for label in ("icteric", "lipaemic"):
        action, _ = latest[(by_what[label], "TBIL")]
        (comment,) = campaign.rows(
            "SELECT comments FROM decisions WHERE instrument = 'chem-indices' "
            "AND test_code = 'TBIL' AND specimen_id = :s ORDER BY id DESC", s=by_what[label],
        )[0]  # fmt: skip
        assert action == "release" and "icteric or lipaemic" in comment, label
    # The rejection's reason reaches the LIS.
    rejected = [m for m in campaign.delivered() if by_what["haemolysed"] in m["specimen_ids"]]
    deadline = time.monotonic() + 20
    while not any(r["status"] == "X" for m in rejected for r in m["results"]):
        assert time.monotonic() < deadline, rejected
        time.sleep(0.1)
        rejected = [m for m in campaign.delivered() if by_what["haemolysed"] in m["specimen_ids"]]


def test_samples_past_their_stability_are_refused(campaign: Campaign) -> None:
    run = campaign.runs["xn-stability"]
    late = {s.specimen_id for s in run.sent if s.label == "sample past its stability"}
    assert late
    latest = _latest(campaign, "xn-stability")
    for (specimen, _test), (action, reasons) in latest.items():
        if specimen in late:
            assert action == "reject" and "delay-exceeded" in reasons
        else:
            assert action == "release"


def test_critical_values_are_held(campaign: Campaign) -> None:
    run = campaign.runs["chem-critical"]
    latest = _latest(campaign, "chem-critical")
    critical = [s for s in run.sent if s.label.startswith("critical ")]
    # every test of the menu with a critical limit in rules/ranges.yaml
    assert {s.label.removeprefix("critical ") for s in critical} == {"GLU", "K", "NA", "CA"}
    for sample in critical:
        action, reasons = latest[(sample.specimen_id, sample.label.removeprefix("critical "))]
        assert action == "hold" and "critical" in reasons


def test_host_query_runs_only_the_ordered_tests(campaign: Campaign) -> None:
    run = campaign.runs["chem-query"]
    assert run.tally is not None and run.tally.queries == 3 and run.tally.not_ordered == 1
    patients = [s for s in run.sent if not s.is_control]
    asked = [s.sample.specimen_id for s in run.steps if s.query]
    assert [s.specimen_id for s in patients] == asked[:-1]
    for sample in patients:
        assert sorted(m.analyte.lab_code for m in sample.measured) == sorted(
            campaign.ordered[sample.specimen_id]
        )


#: What the daemon keeps of each fault: the proof it happened and was handled.
_FAULT_TRACES = {
    "chem-lost-ack": "SELECT count(*) FROM raw_transmissions WHERE instrument = :i "
                     "AND outcome = 'repeat'",
    "xn-slow": "SELECT count(*) FROM quarantine WHERE instrument = :i "
               "AND reason LIKE '%timed out%'",
    "chem-drop": "SELECT count(*) FROM quarantine WHERE instrument = :i "
                 "AND reason LIKE '%connection ended%'",
}  # fmt: skip
#: Frames the daemon refused (NAK) and says so in its log; the repeat completed them.
_REFUSED = {"chem-checksum": "checksum", "xn-oversize": "frame_too_long"}


@pytest.mark.parametrize("instrument", [
    "chem-checksum", "chem-lost-ack", "xn-slow", "chem-drop", "chem-contention", "xn-oversize",
])  # fmt: skip
def test_a_fault_loses_nothing_and_stores_nothing_twice(campaign: Campaign, instrument: str
                                                        ) -> None:  # fmt: skip
    run = campaign.runs[instrument]
    assert run.tally is not None and run.tally.faults >= 1  # committed, not only planned
    if instrument == "chem-contention":
        assert run.tally.contentions >= 1
    if instrument in _REFUSED:
        log = [json.loads(line) for line in campaign.daemon.log.read_text().splitlines()
               if line.startswith("{")]  # fmt: skip
        assert any(e.get("event") == "frame refused" and e.get("instrument") == instrument
                   and e.get("kind") == _REFUSED[instrument] for e in log)  # fmt: skip
    trace = _FAULT_TRACES.get(instrument)
    if trace is not None:
        assert campaign.rows(trace, i=instrument)[0][0] >= 1, campaign.rows(
            "SELECT outcome, count(*) FROM raw_transmissions WHERE instrument = :i "
            "GROUP BY outcome", i=instrument)  # fmt: skip
    planned = {s.sample.specimen_id for s in run.steps} | {
        s.alongside.specimen_id for s in run.steps if s.alongside
    }
    assert {s.specimen_id for s in run.sent} == planned
    stored = _stored_results(campaign, instrument)
    assert len(stored) == len(set(stored))  # nothing twice
    assert sorted(stored) == sorted(_sent_results(run))  # nothing lost
    latest = _latest(campaign, instrument)
    assert {latest[key][0] for key in _sent_results(run)} == {"release"}


def test_held_lists_what_is_held_with_its_reasons(campaign: Campaign) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    done = subprocess.run(
        [sys.executable, "-m", "middleware", "held", "--config", str(campaign.daemon.config),
         "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    open_holds = campaign.rows("SELECT count(*) FROM open_holds")[0][0]
    assert len(listed) == open_holds and f"{open_holds} result(s) held" in done.stderr
    critical = [r for r in listed if r["instrument"] == "chem-critical"]
    assert critical and all(
        any(f["code"].startswith("critical") for f in r["findings"]) for r in critical
    )


def test_load_mode_runs_many_analysers_at_once(campaign: Campaign) -> None:
    run = campaign.runs["chem-load"]
    done = subprocess.run(
        [sys.executable, "-m", "simulators", "load", "--profile", "chemistry", "--connect",
         f"127.0.0.1:{run.port}", "--analysers", "3", "--samples", "2", "--seed", "500",
         "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 analysers: sent 18 messages: 84 patient results" in done.stdout
    stored = _stored_results(campaign, "chem-load")
    assert len(stored) == 84 == len(set(stored))
    assert {s[:4] for s, _ in stored} == {"C500", "C501", "C502"}


def _started(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    """A simulator started from the command line, and the first line it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators", *command],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_the_command_line_serves_a_serial_line_and_waits_for_the_host(
    tmp_path: Path, database_url: str
) -> None:
    # The analyser's ENQ before the daemon opened the line goes unanswered: it tries
    # again after its reply timeout, short here.
    serial, ready = _started(["analyser", "--profile", "haematology", "--serial", "pty",
                              "--samples", "2", "--seed", "31", "--quiet",
                              "--reply-timeout", "1"])  # fmt: skip
    listening, bound = _started(["analyser", "--profile", "chemistry", "--listen", "127.0.0.1:0",
                                 "--samples", "2", "--seed", "32", "--quiet"])  # fmt: skip
    daemon = None
    try:
        assert ready.startswith("serial line ready: /dev/")
        assert bound.startswith("listening on 127.0.0.1:")
        chemistry = profile("chemistry")
        daemon = DaemonProcess(
            tmp_path,
            [{"name": "xn-pty", "driver": "sysmex_xn", "transport": "serial",
              "serial": {"port": ready.removeprefix("serial line ready: ")}},
             {"name": "chem-out", "driver": "roche_cobas", "transport": "tcp-client",
              "host": "127.0.0.1", "port": int(bound.rpartition(":")[2]),
              "test_map": dict(chemistry.test_map)}],
            database_url=database_url, rules_dir=str(ROOT / "rules"),
        )  # fmt: skip
        daemon.start()
        for process, sent in ((serial, "sent 8 messages: 28 patient results"),
                              (listening, "sent 6 messages: 28 patient results")):  # fmt: skip
            out, _ = process.communicate(timeout=60)
            assert process.returncode == 0 and sent in out, out
        stored = query(
            database_url,
            "SELECT m.instrument, count(*) FROM results r JOIN messages m "
            "ON m.id = r.message_id GROUP BY m.instrument",
        )  # fmt: skip
        assert sorted(stored) == [("chem-out", 28), ("xn-pty", 28)]
    finally:
        for process in (serial, listening):
            if process.poll() is None:
                process.kill()
        if daemon is not None:
            daemon.stop()


@pytest.mark.parametrize(("instrument", "driver"), [
    ("xn-auto", "sysmex_xn"), ("chem-auto", "roche_cobas"), ("ia-auto", "abbott_architect"),
])  # fmt: skip
def test_an_auto_instrument_reads_with_the_driver_its_analyser_names(
    campaign: Campaign, instrument: str, driver: str
) -> None:
    kept = campaign.rows(
        "SELECT DISTINCT driver FROM messages WHERE instrument = :i", i=instrument
    )  # fmt: skip
    assert kept == [(driver,)]
    log = [json.loads(line) for line in campaign.daemon.log.read_text().splitlines()
           if line.startswith("{")]  # fmt: skip
    chosen = [e for e in log if e.get("event") == "driver chosen"
              and e.get("instrument") == instrument]  # fmt: skip
    # once per connection, with the reason
    assert len(chosen) == 1 and chosen[0]["driver"] == driver
    assert "names the" in chosen[0]["reason"]
    configured = [e for e in log if e.get("event") == "driver chosen"
                  and e.get("instrument") == "chem-normal"]  # fmt: skip
    assert configured and all(e["reason"] == "configured" for e in configured)
