"""Operator commands without HTTP, on SQLite and PostgreSQL; and how the control API
answers what they refuse, and what fails inside them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, select

import drivers
from middleware.astm.link import LinkSettings
from middleware.control import (
    MAX_TESTS,
    Conflict,
    Control,
    EngineNotRunning,
    Invalid,
    NotFound,
    RulesRefused,
)
from middleware.pipeline import ConnectionPipeline
from middleware.settings import Settings
from middleware.store import Store, outbox, qc_state
from middleware.store.schema import (
    audit_log,
    control_limits,
    corrective_actions,
    qc_events,
    qc_tests,
)
from middleware.transport.tcp import TcpServer
from middleware.web.api import create_app
from middleware.web.roles import Role
from tests import credentials
from tests.conftest import ROOT
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message

CHEM = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
WESTGARD = "[1-3s, 2-2s, R-4s, 4-1s, 10x]"
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def settings(tmp_path: Path, database_url: str, **more: Any) -> Settings:
    return Settings.model_validate(
        {"state_dir": tmp_path / "state", "database_url": database_url,
         "instruments": [CHEM], **more}
    )  # fmt: skip


@pytest.fixture
async def control(tmp_path: Path, database_url: str, store: Store) -> Control:
    """Rules in force (a copy of the default ones, free to edit) and one configured analyser."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    control = Control(settings(tmp_path, database_url, rules_dir=rules), store)
    await control.reload_rules("daemon start")
    return control


@pytest.fixture
def without_rules(tmp_path: Path, database_url: str, store: Store) -> Control:
    return Control(settings(tmp_path, database_url), store)


@contextlib.asynccontextmanager
async def analyser(control: Control) -> AsyncIterator[StreamPeer]:
    """chem-1 connected, its results decided by the control's engine."""
    assert control.store is not None
    pipeline = ConnectionPipeline(
        "chem-1", drivers.get("generic", instrument="chem-1"), control.store, engine=control.engine
    )
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    await server.start()
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
    try:
        yield peer
    finally:
        await peer.close()
        await server.close()


async def send(control: Control, *messages: list[bytes]) -> None:
    async with analyser(control) as peer:
        for message in messages:
            await send_message(peer, message)


def audited(store: Store) -> list[tuple[str, str]]:
    rows = store.read(lambda c: c.execute(select(audit_log).order_by(audit_log.c.id)).all())
    return [(row.actor, row.action) for row in rows]


def api(control: Control, name: str = "bob") -> httpx.AsyncClient:
    """A client of the API over ``control`` with a biologist's token named ``name``."""
    assert control.store is not None
    app = create_app(control, lambda: ["chem-1"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = credentials.bearer(control.store, Role.BIOLOGIST, name)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers)


# --- rules ---------------------------------------------------------------------------------


async def test_refused_rules_leave_the_rules_in_force_and_accepted_ones_are_audited(
    control: Control, store: Store
) -> None:
    assert control.settings.rules_dir is not None and control.engine is not None
    westgard = control.settings.rules_dir / "westgard.yaml"
    in_force = control.rules
    assert audited(store) == [("daemon start", "rules.load")]

    westgard.write_text(westgard.read_text().replace(WESTGARD, "[1-3s, R-5s]"))
    with pytest.raises(RulesRefused) as refused:
        await control.reload_rules("alice")
    assert "westgard.rule_sets.default.rules.1" in refused.value.problems[0]
    assert control.rules is in_force and control.engine.rules is in_force
    assert audited(store) == [("daemon start", "rules.load")]

    westgard.write_text(westgard.read_text().replace("[1-3s, R-5s]", "[1-3s, 2-2s, R-4s]"))
    accepted = await control.reload_rules("alice")
    assert control.rules is accepted and control.engine.rules is accepted
    assert audited(store) == [("daemon start", "rules.load"), ("alice", "rules.load")]
    detail = store.read(lambda c: c.execute(select(audit_log.c.detail)).all())[-1].detail
    assert '-    "10x"' in json.loads(detail)["diff"]

    await control.reload_rules("alice")  # nothing changed: nothing to audit
    assert len(audited(store)) == 2
    # A daemon started again (or another) on the rules in force puts nothing new.
    again = Control(control.settings, store)
    await again.reload_rules("daemon start")
    assert len(audited(store)) == 2


async def test_without_a_rules_directory_reload_is_refused_and_qc_commands_too(
    without_rules: Control,
) -> None:
    with pytest.raises(RulesRefused) as refused:
        await without_rules.reload_rules("alice")
    assert refused.value.problems == ["no rules directory is configured (rules_dir)"]
    assert without_rules.rules is None
    with pytest.raises(EngineNotRunning):
        await without_rules.limits_proposals()
    with pytest.raises(EngineNotRunning):
        await without_rules.approve_limits("chem-1", "GLU", "CC-45781", "dr-lab")
    with pytest.raises(EngineNotRunning):
        await without_rules.record_qc_event("chem-1", ["GLU"], "calibration", "tech")
    with pytest.raises(EngineNotRunning):
        await without_rules.close_corrective_action(1, "bob", "new calibration")


# --- corrective actions --------------------------------------------------------------------


async def test_a_corrective_action_closes_once_qc_is_in_control_again(
    control: Control, store: Store
) -> None:
    with pytest.raises(NotFound, match="no corrective action 999"):
        await control.close_corrective_action(999, "bob", "new calibration")

    await send(control, qc("5.2", "15.6"), qc("5.7", "15.6"), patient("S1", "5.0"))
    [action_id] = store.read(lambda c: c.execute(select(corrective_actions.c.id)).scalars().all())
    with pytest.raises(Conflict, match="not in control again"):
        await control.close_corrective_action(action_id, "bob", "new calibration")

    await send(control, qc("5.25", "15.5"))  # the re-run, in control
    closed = await control.close_corrective_action(action_id, "bob", "new calibration")
    assert (closed.instrument, closed.test, len(closed.released)) == ("chem-1", "GLU", 1)
    assert ("bob", "qc.corrective_action.close") in audited(store)

    with pytest.raises(Conflict, match=f"corrective action {action_id} was closed by bob"):
        await control.close_corrective_action(action_id, "carol", "again")


async def test_a_method_lock_kept_in_the_store_is_lifted_by_unlock(
    control: Control, store: Store
) -> None:
    # TP level 1 targets 52 (SD 1.5); 55 is a bias of 5.8 %, over the 5 % limit: two
    # cycles of 20 results lock the method.
    biased = [b"H|\\^&|||CHEM-1|||||||Q|LIS2-A2", b"P|1"]
    for n in range(1, 41):
        biased += [b"O|%d|CC-45781||^^^TP|R" % n, b"R|1|^^^TP|55.0|g/L||N||F"]
    await send(control, [*biased, b"L|1|N"])

    def kept(conn: Connection) -> tuple[str, int]:
        [state] = qc_state.load_tests(conn, [("chem-1", "TP")]).values()
        [lot] = qc_state.lots_of(conn, "chem-1", "TP").values()
        return state.locked, lot.over_limit_cycles

    locked, cycles = store.read(kept)
    assert locked.startswith("CV ") and "two consecutive cycles" in locked and cycles == 2
    await control.record_qc_event("chem-1", ["TP"], "unlock", "bob")
    assert store.read(kept) == ("", 0)
    assert ("bob", "qc.unlock") in audited(store)


# --- the lab's own limits and QC events ----------------------------------------------------


async def test_limits_are_approved_only_when_proposed(control: Control, store: Store) -> None:
    assert await control.limits_proposals() == []
    with pytest.raises(NotFound, match="no limits proposed for lot CC-45781 of GLU on chem-1"):
        await control.approve_limits("chem-1", "GLU", "CC-45781", "dr-lab")
    assert store.read(lambda c: c.execute(select(control_limits)).all()) == []


async def test_an_sd_of_zero_is_refused_and_other_limits_are_approved(
    control: Control, store: Store
) -> None:
    runs: list[list[bytes]] = []
    for i in range(20):  # level 1 the same every run; level 2 varies
        runs += [qc("5.2", f"15.{50 + i % 20}"), patient(f"R{i}", "5.0")]
    await send(control, *runs)
    proposed = {p.lot: p for p in await control.limits_proposals()}
    assert proposed["CC-45781"].sd == 0 and proposed["CC-45782"].sd > 0

    with pytest.raises(Conflict, match="the lab's own SD is 0: the 20 results of lot CC-45781"):
        await control.approve_limits("chem-1", "GLU", "CC-45781", "dr-lab")
    assert store.read(lambda c: c.execute(select(control_limits)).all()) == []

    approved = await control.approve_limits("chem-1", "GLU", "CC-45782", "dr-lab")
    assert approved == proposed["CC-45782"]
    [limits] = store.read(lambda c: c.execute(select(control_limits)).all())
    assert (limits.lot, limits.approved_by) == ("CC-45782", "dr-lab")
    assert [p.lot for p in await control.limits_proposals()] == ["CC-45781"]


async def test_an_instrument_not_configured_is_not_found_and_nothing_is_recorded(
    control: Control, store: Store
) -> None:
    unknown = "unknown instrument 'ghost': not in the configuration"
    with pytest.raises(NotFound, match=unknown):
        await control.record_qc_event("ghost", ["GLU"], "calibration", "tech")
    with pytest.raises(NotFound, match=unknown):
        await control.approve_limits("ghost", "GLU", "CC-45781", "dr-lab")
    # A NUL, which PostgreSQL refuses in any text: no instrument's name, not a fault.
    with pytest.raises(NotFound, match="unknown instrument 'gh\\\\x00ost'"):
        await control.record_qc_event("gh\x00ost", ["GLU"], "calibration", "tech")
    with pytest.raises(NotFound, match="unknown instrument 'gh\\\\ud800ost'"):
        await control.record_qc_event("gh\ud800ost", ["GLU"], "calibration", "tech")
    assert store.read(lambda c: c.execute(select(qc_events)).all()) == []
    await control.record_qc_event("chem-1", ["GLU"], "calibration", "tech")  # configured
    [event] = store.read(lambda c: c.execute(select(qc_events)).all())
    assert (event.instrument, event.kind, event.recorded_by) == ("chem-1", "calibration", "tech")
    assert audited(store)[-1] == ("tech", "qc.calibration")


async def test_a_test_without_qc_is_refused_and_leaves_no_qc_test_behind(
    control: Control, store: Store, tmp_path: Path
) -> None:
    """A mistyped code (GLUC) is not made a QC test of its own; a test whose policy left
    the rules but whose QC is kept may still be unlocked."""
    with pytest.raises(NotFound, match="no QC policy for GLUC on chem-1"):
        await control.record_qc_event("chem-1", ["GLU", "GLUC"], "calibration", "tech")
    with pytest.raises(Invalid, match=f"at most {MAX_TESTS} tests"):
        await control.record_qc_event("chem-1", ["GLU"] * (MAX_TESTS + 1), "maintenance", "tech")
    assert store.read(lambda c: c.execute(select(qc_events)).all()) == []
    assert store.read(lambda c: c.execute(select(qc_tests)).all()) == []
    await send(control, qc("5.2", "15.6"))
    policies = tmp_path / "rules" / "qc.yaml"
    policies.write_text(policies.read_text().replace("[GLU, CREA, UREA]", "[CREA, UREA]"))
    await control.reload_rules("GLU's policy withdrawn")
    assert control.engine is not None and control.engine.gate.policy("chem-1", "GLU") is None
    await control.record_qc_event("chem-1", ["GLU", "GLU"], "unlock", "tech")
    [event] = store.read(lambda c: c.execute(select(qc_events)).all())
    assert (event.test_code, event.kind) == ("GLU", "unlock")


async def test_what_a_person_gives_is_checked_before_the_store_sees_it(
    control: Control, store: Store
) -> None:
    # PostgreSQL refuses a NUL that SQLite would store: each is a refusal on both, before
    # any transaction, and nothing is recorded.
    await send(control, qc("5.2", "15.6"), qc("5.7", "15.6"))
    [action_id] = store.read(lambda c: c.execute(select(corrective_actions.c.id)).scalars().all())
    with pytest.raises(Invalid, match=r"the test holds a control character \(U\+0000\)"):
        await control.approve_limits("chem-1", "GL\x00U", "CC-45781", "dr-lab")
    with pytest.raises(Invalid, match=r"the lot holds a control character \(U\+0000\)"):
        await control.approve_limits("chem-1", "GLU", "CC\x00", "dr-lab")
    with pytest.raises(Invalid, match="who acts is required"):
        await control.approve_limits("chem-1", "GLU", "CC-45781", " ")
    with pytest.raises(Invalid, match=r"the test holds a control character \(U\+0000\)"):
        await control.record_qc_event("chem-1", ["GLU", "\x00"], "calibration", "tech")
    with pytest.raises(Invalid, match="what was done is required"):
        await control.close_corrective_action(action_id, "bob", "  ")
    with pytest.raises(Invalid, match=r"what was done holds a control character \(U\+0000\)"):
        await control.close_corrective_action(action_id, "bob", "re\x00calibrated")
    assert store.read(lambda c: c.execute(select(qc_events)).all()) == []
    assert store.read(lambda c: c.execute(select(control_limits)).all()) == []


# --- over the API --------------------------------------------------------------------------


async def test_refusals_have_their_status_over_the_api(
    control: Control, without_rules: Control
) -> None:
    closing = {"action_taken": "new calibration"}
    approval = {"instrument": "chem-1", "test": "GLU", "lot": "CC-45781"}
    async with api(control) as running:
        health = (await running.get("/api/health")).json()
        assert health["instruments"] == ["chem-1"] and health["rules"]
        missing = await running.post("/api/corrective-actions/999/close", json=closing)
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no corrective action 999"}
        unproposed = await running.post("/api/qc/proposals/approve", json=approval)
        assert unproposed.status_code == 404
    async with api(without_rules, "alice") as idle:
        refused = await idle.post("/api/rules/reload")
        assert refused.status_code == 422
        assert refused.json() == {
            "detail": {
                "accepted": False,
                "problems": ["no rules directory is configured (rules_dir)"],
            }
        }
        stopped = await idle.get("/api/qc/proposals")
        assert stopped.status_code == 409
        assert "the rules engine is not running" in stopped.json()["detail"]


@pytest.mark.parametrize("fault", [KeyError("test_code"), ValueError("bad value")])
@pytest.mark.parametrize(
    ("broken", "path", "body"),
    [
        (
            "middleware.control.record_qc_event",
            "/api/qc/events",
            {"instrument": "chem-1", "tests": ["GLU"], "kind": "calibration"},
        ),
        (
            "middleware.control._corrective_action",
            "/api/corrective-actions/1/close",
            {"action_taken": "new calibration"},
        ),
    ],
)
async def test_a_fault_inside_a_command_is_a_500_not_the_operators_mistake(
    control: Control,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    fault: Exception,
    broken: str,
    path: str,
    body: dict[str, Any],
) -> None:
    def fails(*_args: object) -> None:
        raise fault

    monkeypatch.setattr(broken, fails)
    async with api(control) as client:
        before = audited(store)
        answer = await client.post(path, json=body)
    assert answer.status_code == 500
    assert audited(store) == before  # rolled back


async def test_the_outbox_over_the_api(without_rules: Control, store: Store) -> None:
    def stopped(conn: Connection) -> int:
        entry_id = outbox.enqueue(conn, "S1", "chem-1", "C1", "message", NOW)
        outbox.claim(conn, "t", NOW, timedelta(seconds=30))
        outbox.answered(conn, entry_id, "t", outbox.STOPPED, "MSA|AE|C1", "AE: no", NOW)
        return entry_id

    entry_id = await store.write(stopped)
    async with api(without_rules) as client:  # the outbox needs no rules
        [listed] = (await client.get("/api/outbox")).json()
        assert (listed["id"], listed["state"], listed["detail"]) == (entry_id, "stopped", "AE: no")
        assert (await client.post("/api/outbox/999/retry")).status_code == 404
        assert (await client.post(f"/api/outbox/{entry_id}/retry")).status_code == 200
        again = await client.post(f"/api/outbox/{entry_id}/dismiss")
        assert again.status_code == 409 and "cannot be dismissed" in again.json()["detail"]
