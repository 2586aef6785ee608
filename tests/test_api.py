"""The control API of a running daemon: rules reload and closing corrective actions, by
the users whose tokens the store holds."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg

from middleware.web.roles import Role
from tests import credentials
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message
from tests.test_ingest_integrity import write_lock

PATIENT = patient("S1", "5.0")


def wait_until_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_rules_reload_and_corrective_action_over_the_api(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    analyser_port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1", "port": analyser_port}],
        rules_dir=str(rules),
        api={"host": "127.0.0.1", "port": api_port},
    )
    daemon.start()
    api = f"http://127.0.0.1:{api_port}/api"
    try:
        wait_until_listening(api_port)
        database = f"sqlite:///{daemon.database}"
        alice = credentials.bearer(database, Role.BIOLOGIST, "alice")
        bob = credentials.bearer(database, Role.TECHNICIAN, "bob")
        assert httpx.get(f"{api}/health").status_code == 401  # who asks must be known
        assert httpx.get(f"{api}/health", headers=bob).json()["instruments"] == ["chem-1"]

        # A refused reload says why and changes nothing.
        westgard = rules / "westgard.yaml"
        good = westgard.read_text()
        westgard.write_text(good.replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, R-5s]"))
        refused = httpx.post(f"{api}/rules/reload", headers=alice)
        assert refused.status_code == 422
        assert "westgard.rule_sets.default.rules.1" in refused.json()["detail"]["problems"][0]
        westgard.write_text(good)
        assert httpx.post(f"{api}/rules/reload", headers=bob).status_code == 403  # a biologist's
        assert httpx.post(f"{api}/rules/reload", headers=alice).json()["accepted"]

        async def analyser(*messages: list[bytes]) -> None:
            peer = StreamPeer(*await connect(analyser_port))
            for message in messages:
                await send_message(peer, message)
            await peer.close()

        asyncio.run(analyser(qc("5.2", "15.6"), qc("5.7", "15.6"), PATIENT))
        with sqlite3.connect(daemon.database) as conn:
            [(action_id,)] = conn.execute("SELECT id FROM corrective_actions").fetchall()
        close = f"{api}/corrective-actions/{action_id}/close"
        body = {"action_taken": "new calibration"}
        early = httpx.post(close, json=body, headers=bob)
        assert early.status_code == 409 and "not in control again" in early.json()["detail"]
        asyncio.run(analyser(qc("5.25", "15.5")))  # the re-run, in control
        closed = httpx.post(close, json=body, headers=bob)
        assert closed.status_code == 200, closed.text
        assert closed.json()["test"] == "GLU" and len(closed.json()["released"]) == 1
        assert httpx.post(close, json=body, headers=bob).status_code == 409  # already closed
        missing = httpx.post(f"{api}/corrective-actions/999/close", json=body, headers=bob)
        assert missing.status_code == 404
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(daemon.database) as conn:
        row = conn.execute(
            "SELECT closed_by, action_taken, closing_evaluation_id FROM corrective_actions"
        ).fetchone()
        assert row[:2] == ("token:bob", "new calibration") and row[2] is not None
        actions = conn.execute("SELECT action, reasons FROM decisions ORDER BY id").fetchall()
        # held for the failure, then (its QC in control again) for the open action alone,
        # released when that is closed
        assert [a for a, _ in actions] == ["hold", "hold", "release"]
        assert actions[1][1] == "corrective-action-open"
        audit = conn.execute("SELECT actor, action FROM audit_log ORDER BY id").fetchall()
        assert ("token:bob", "qc.corrective_action.close") in audit
        assert ("token:bob", "api.refused") in audit  # the early close, refused
        assert audit[0] == ("daemon start", "rules.load")


def test_own_limits_approval_and_calibration_survive_a_restart(tmp_path: Path) -> None:
    analyser_port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1", "port": analyser_port}],
        rules_dir=str(ROOT / "rules"),
        api={"host": "127.0.0.1", "port": api_port},
    )
    api = f"http://127.0.0.1:{api_port}/api"

    async def analyser(*messages: list[bytes]) -> None:
        peer = StreamPeer(*await connect(analyser_port))
        for message in messages:
            await send_message(peer, message)
        await peer.close()

    daemon.start()
    try:
        wait_until_listening(api_port)
        database = f"sqlite:///{daemon.database}"
        dr = credentials.bearer(database, Role.BIOLOGIST, "dr-lab")
        tech = credentials.bearer(database, Role.TECHNICIAN, "tech")
        runs = []
        for i in range(20):  # 20 runs of both levels, a patient between runs
            runs += [qc(f"5.{15 + i % 10}", f"15.{50 + i % 20}"), patient(f"R{i}", "5.0")]
        asyncio.run(analyser(*runs))
        proposals = httpx.get(f"{api}/qc/proposals", headers=tech).json()
        assert sorted(p["lot"] for p in proposals) == ["CC-45781", "CC-45782"]
        assert all(p["results"] == 20 for p in proposals)
        approve = {"instrument": "chem-1", "test": "GLU", "lot": "CC-45781"}
        url = f"{api}/qc/proposals/approve"
        assert httpx.post(url, json=approve, headers=tech).status_code == 403  # a biologist's
        assert httpx.post(url, json=approve, headers=dr).status_code == 200
        assert [p["lot"] for p in httpx.get(f"{api}/qc/proposals", headers=dr).json()] == [
            "CC-45782"
        ]
        assert httpx.post(url, json=approve, headers=dr).status_code == 404
        event = {"instrument": "chem-1", "tests": ["GLU"], "kind": "calibration"}
        assert httpx.post(f"{api}/qc/events", json=event, headers=tech).status_code == 200
        asyncio.run(analyser(patient("AFTER-CAL", "5.0")))
    finally:
        assert daemon.stop() == 0
    daemon.start()  # everything above must come back from the store
    try:
        wait_until_listening(api_port)
        proposals = httpx.get(f"{api}/qc/proposals", headers=dr).json()  # the token is kept
        assert [p["lot"] for p in proposals] == ["CC-45782"]
        asyncio.run(
            analyser(patient("AFTER-RESTART", "5.0"), qc("5.2", "15.6"), patient("AFTER-QC", "5.0"))
        )
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(daemon.database) as conn:
        history: dict[str, list[str]] = {}
        for specimen, action, reasons in conn.execute(
            "SELECT specimen_id, action, reasons FROM decisions ORDER BY id"
        ):
            history.setdefault(specimen, []).append(f"{action}:{reasons}")
        evaluations = conn.execute(
            "SELECT level, provisional FROM qc_evaluations ORDER BY id DESC LIMIT 2"
        ).fetchall()
    # held by the calibration, even after the restart, until the QC after it came
    assert history["AFTER-CAL"] == ["hold:calibration", "release:"]
    assert history["AFTER-RESTART"] == ["hold:calibration", "release:"]
    assert history["AFTER-QC"] == ["release:"]
    assert sorted(evaluations) == [("1", 0), ("2", 1)]  # level 1 now on the lab's own limits


@contextlib.contextmanager
def locked(url: str) -> Iterator[None]:
    """The tables a person's act writes locked by another process's transaction (all of
    the database on SQLite), until the block ends."""
    if url.startswith("sqlite"):
        with write_lock(url):
            yield
        return
    with psycopg.connect(url) as pg:
        pg.execute("LOCK TABLE result_comments, qc_events, audit_log IN EXCLUSIVE MODE")
        yield
        pg.rollback()


def session(base: str, name: str) -> tuple[httpx.Client, str]:
    """A client logged in as ``name``, and its session's CSRF token."""
    client = httpx.Client(base_url=base)
    form = client.get("/login").text
    token = form.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    login = {"username": name, "password": credentials.PASSWORD, "csrf_token": token}
    assert client.post("/login", data=login).status_code == 303
    return client, client.get("/api/session").json()["csrf_token"]


def test_a_person_acting_on_a_locked_database_is_told_nothing_was_done(
    tmp_path: Path, database_url: str
) -> None:
    analyser_port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1", "port": analyser_port}],
        rules_dir=str(ROOT / "rules"),
        api={"host": "127.0.0.1", "port": api_port},
        database_url=database_url,
        database_lock_timeout=0.5,
    )
    daemon.start()
    try:
        wait_until_listening(api_port)
        credentials.user(database_url, "tess", Role.TECHNICIAN)
        client, csrf = session(f"http://127.0.0.1:{api_port}", "tess")

        async def analyser() -> None:
            peer = StreamPeer(*await connect(analyser_port))
            await send_message(peer, PATIENT)
            await peer.close()

        asyncio.run(analyser())
        [(result_id,)] = query(database_url, "SELECT id FROM results")
        comment = {"csrf_token": csrf, "text": "haemolysed"}
        event = {"instrument": "chem-1", "tests": ["GLU"], "kind": "maintenance"}
        with locked(database_url):
            began = time.monotonic()
            form = client.post(f"/held/{result_id}/comment", data=comment)
            refused = client.post("/api/qc/events", json=event, headers={"X-CSRF-Token": csrf})
            took = time.monotonic() - began
        assert form.status_code == 303
        said = parse_qs(urlsplit(form.headers["location"]).query)
        assert said["error"] == ["the database is busy: nothing was done; try again"]
        assert client.get(form.headers["location"]).text.count("the database is busy") == 1
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"detail": "the database is busy: nothing was done; try again"}
        assert int(refused.headers["retry-after"]) >= 1
        assert took < 8, took  # each waited the lock timeout, not the one of each job again
        assert query(database_url, "SELECT count(*) FROM result_comments") == [(0,)]
        assert query(database_url, "SELECT count(*) FROM qc_events") == [(0,)]
        # The same acts, the lock gone, are done.
        again = client.post(f"/held/{result_id}/comment", data=comment)
        assert parse_qs(urlsplit(again.headers["location"]).query)["done"] == [
            f"comment added to result {result_id}"
        ]
        done = client.post("/api/qc/events", json=event, headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200, done.text
    finally:
        assert daemon.stop() == 0
