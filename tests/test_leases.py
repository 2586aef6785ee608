"""Several daemons on one database: each serves the instruments of its configuration, no
instrument is served by two, and one that dies has its instruments taken over."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from middleware.store import Store, leases
from middleware.store.sql import utcnow
from middleware.web.roles import Role
from tests import credentials
from tests.daemon import ROOT, DaemonProcess, connect, free_port, query
from tests.messages import patient, qc
from tests.peer import ACK, StreamPeer, frames_for, send_frames, send_message
from tests.test_api import wait_until_listening


def instrument(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "transport": "tcp-server", "host": "127.0.0.1", "port": port}


def record(specimen: str) -> list[bytes]:
    return [
        b"H|\\^&|||LEASE-TEST",
        b"P|1||PAT-" + specimen.encode(),
        b"O|1|" + specimen.encode() + b"||^^^GLU|R",
        b"R|1|^^^GLU|5.5|mmol/L||N||F",
        b"L|1|N",
    ]


def _send(port: int, specimen: str) -> None:
    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        await send_message(peer, record(specimen))
        await peer.close()

    asyncio.run(analyser())


def _run_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "middleware", "run", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_daemons_with_disjoint_instruments_share_a_database_and_refuse_to_share_one(
    tmp_path: Path, database_url: str
) -> None:
    ports = free_port(), free_port(), free_port()
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    first = DaemonProcess(
        tmp_path / "a", [instrument("chem-1", ports[0])], database_url=database_url,
        node_name="node-a", lease_seconds=2,
    )  # fmt: skip
    second = DaemonProcess(
        tmp_path / "b", [instrument("haem-1", ports[1])], database_url=database_url,
        node_name="node-b", lease_seconds=2,
    )  # fmt: skip
    first.start()
    second.start()
    try:
        _send(ports[0], "S-A")
        _send(ports[1], "S-B")
        # A third daemon naming an instrument the first serves is refused, saying who has it.
        third = DaemonProcess(
            tmp_path / "c", [instrument("chem-1", ports[2])], database_url=database_url,
            node_name="node-c", lease_seconds=2,
        )  # fmt: skip
        refused = _run_once(third.config)
        assert refused.returncode == 2, refused.stderr
        assert "instrument chem-1 is served by daemon node-a/" in refused.stderr
        time.sleep(2.5)  # longer than a lease: renewals keep the first daemon's
        assert _run_once(third.config).returncode == 2
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    rows = query(database_url, "SELECT instrument, specimen_id FROM results ORDER BY 1")
    assert rows == [("chem-1", "S-A"), ("haem-1", "S-B")]
    # A clean stop gives the instruments back at once.
    assert query(database_url, "SELECT count(*) FROM instrument_leases") == [(0,)]


def test_a_dead_daemons_instruments_are_taken_over_once_its_lease_runs_out(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = DaemonProcess(
        tmp_path / "a", [instrument("chem-1", port)], database_url=database_url,
        node_name="node-a", lease_seconds=5,
    )  # fmt: skip
    first.start()
    _send(port, "S-1")
    first.kill()
    # Another node cannot know the first is dead: it waits for the lease to run out.
    other = DaemonProcess(
        tmp_path / "b", [instrument("chem-1", port)], database_url=database_url,
        node_name="node-b", lease_seconds=5,
    )  # fmt: skip
    # A lease long enough that a loaded machine still starts the other daemon within it.
    killed_at = time.monotonic()
    refusals = 0
    while True:
        try:
            other.start()
            break
        except RuntimeError as exc:
            assert "served by daemon node-a/" in str(exc)
            assert time.monotonic() - killed_at < 15, "the dead daemon's lease never ran out"
            refusals += 1
            time.sleep(0.3)
    try:
        assert refusals >= 1  # refused while the lease still ran
        _send(port, "S-2")
    finally:
        other.stop()
    assert query(database_url, "SELECT specimen_id FROM results ORDER BY 1") == [("S-1",), ("S-2",)]


def test_a_daemon_restarted_on_its_own_host_takes_its_instruments_back_at_once(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    daemon = DaemonProcess(
        tmp_path, [instrument("chem-1", port)], database_url=database_url, lease_seconds=60
    )
    daemon.start()
    daemon.kill()
    started = time.monotonic()
    daemon.start()  # same host, its former process is gone: no minute to wait
    try:
        assert time.monotonic() - started < 20
        _send(port, "S-BACK")
    finally:
        daemon.stop()


def test_rules_put_in_force_through_one_daemon_apply_on_the_other(
    tmp_path: Path, database_url: str
) -> None:
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    daemons = {}
    for name, served in (("a", "chem-1"), ("b", "chem-2")):
        rules = tmp_path / name / "rules"
        shutil.copytree(ROOT / "rules", rules)
        daemons[name] = DaemonProcess(
            tmp_path / name, [instrument(served, ports[name][0])], database_url=database_url,
            node_name=f"node-{name}", lease_seconds=1.5, rules_dir=str(rules),
            api={"host": "127.0.0.1", "port": ports[name][1]},
        )  # fmt: skip
    for daemon in daemons.values():
        daemon.start()
    try:
        health = f"http://127.0.0.1:{ports['a'][1]}/api/health"
        wait_until_listening(ports["a"][1])
        wait_until_listening(ports["b"][1])
        alice = credentials.bearer(database_url, Role.BIOLOGIST, "alice")
        assert "3 delta checks" in httpx.get(health, headers=alice).json()["rules"]
        # Glucose gets a delta check, in daemon b's rule files only, put in force through b.
        (tmp_path / "b" / "rules" / "delta-glu.yaml").write_text(
            "delta_checks:\n  - {test: GLU, percent: 10}\n"
        )
        reload = f"http://127.0.0.1:{ports['b'][1]}/api/rules/reload"
        assert httpx.post(reload, headers=alice, timeout=10).json()["accepted"]
        deadline = time.monotonic() + 10
        while "4 delta checks" not in httpx.get(health, headers=alice).json()["rules"]:
            assert time.monotonic() < deadline, "daemon a never applied the new rules"
            time.sleep(0.2)
        # A daemon refused chem-1 (a serves it) puts none of its older rules in force.
        (tmp_path / "c").mkdir()
        refused = DaemonProcess(
            tmp_path / "c", [instrument("chem-1", free_port())], database_url=database_url,
            node_name="node-c", lease_seconds=1.5, rules_dir=str(ROOT / "rules"),
        )  # fmt: skip
        assert _run_once(refused.config).returncode == 2
        # A calibration of chem-1, which a serves, recorded through b.
        tech = credentials.bearer(database_url, Role.TECHNICIAN, "tess")
        event = {"instrument": "chem-1", "tests": ["GLU"], "kind": "calibration"}
        events = f"http://127.0.0.1:{ports['b'][1]}/api/qc/events"
        assert httpx.post(events, json=event, headers=tech, timeout=10).status_code == 200

        async def analyser() -> None:
            peer = StreamPeer(*await connect(ports["a"][0]))
            for message in (qc("5.2", "15.6"), patient("S1", "5.0"), patient("S2", "6.0")):
                await send_message(peer, message)
            await peer.close()

        asyncio.run(analyser())
    finally:
        for daemon in daemons.values():
            assert daemon.stop() == 0
    decided = query(
        database_url,
        "SELECT r.specimen_id, d.action, d.reasons FROM decisions d "
        "JOIN results r ON r.id = d.result_id ORDER BY d.id",
    )
    assert decided == [("S1", "release", ""), ("S2", "hold", "delta")]
    [(by, node)] = query(
        database_url, "SELECT put_by, node FROM rules_in_force ORDER BY id DESC LIMIT 1"
    )
    assert by == "token:alice" and node.startswith("node-b/")
    assert query(database_url, "SELECT instrument, kind FROM qc_events") == [
        ("chem-1", "calibration")
    ]


def _take_over(daemon: DaemonProcess, within: float = 20.0) -> None:
    """Start ``daemon`` as its supervisor would: again while another holds its lease."""
    deadline = time.monotonic() + within
    while True:
        try:
            daemon.start()
            return
        except RuntimeError as exc:
            assert "served by daemon" in str(exc), str(exc)
            assert time.monotonic() < deadline, "the frozen daemon's lease never ran out"
            time.sleep(0.2)


def test_a_daemon_woken_after_another_took_its_instrument_keeps_nothing_more(
    tmp_path: Path, database_url: str
) -> None:
    """Frozen (SIGSTOP) past its lease while an analyser was sending, the first daemon
    wakes after the second took the instrument: the message's last frame, already in its
    socket, is not acknowledged, and nothing of it is kept; the analyser sends it again to
    the daemon that serves the instrument now."""
    ports = free_port(), free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = (
        DaemonProcess(
            tmp_path / name,
            [instrument("chem-1", port)],
            database_url=database_url,
            node_name=f"node-{name}",
            lease_seconds=1,
        )
        for name, port in zip("ab", ports, strict=True)
    )
    first.start()
    assert first.process is not None
    frames = frames_for(record("S-LATE"))

    async def scenario() -> bytes:
        peer = StreamPeer(*await connect(ports[0]))
        await send_frames(peer, frames[:-1])
        first.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            await asyncio.to_thread(_take_over, second)
            await peer.write(frames[-1])
        finally:
            first.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        try:
            reply = await peer.read(1, timeout=10)
        except (asyncio.IncompleteReadError, ConnectionError):
            reply = b""  # the daemon stopping closed the connection
        await peer.close()
        again = StreamPeer(*await connect(ports[1]))
        await send_message(again, record("S-LATE"))
        await again.close()
        return reply

    try:
        reply = asyncio.run(scenario())
        assert first.process.wait(20) == 1  # its leases taken: it stops
    finally:
        first.stop()
        assert second.stop() == 0
    assert reply != ACK
    assert "instruments taken over by another daemon" in first.log.read_text()
    rows = query(database_url, "SELECT specimen_id, instrument FROM results")
    assert rows == [("S-LATE", "chem-1")]


def test_on_postgresql_leases_run_out_by_the_databases_clock(database_url: str) -> None:
    """A node whose clock is 30 s ahead must not take a lease renewed a moment ago, nor
    one 30 s behind see a dead node's lease live on: PostgreSQL, shared by nodes, judges
    by its own clock. SQLite is shared by the daemons of one host, on one clock."""
    store = Store(database_url)
    try:
        now = utcnow()
        with store.engine.begin() as conn:
            assert leases.claim(conn, "node-a/1/x", ["chem-1"], now, 15) == []
        ahead = now + timedelta(seconds=30)
        with store.engine.begin() as conn:
            held = leases.claim(conn, "node-b/2/y", ["chem-1"], ahead, 15)
        postgresql = store.engine.dialect.name == "postgresql"
        assert [h.owner for h in held] == (["node-a/1/x"] if postgresql else [])
    finally:
        store.close()


def test_a_holder_is_known_dead_only_by_its_own_node_in_this_boot() -> None:
    """Two machines given one host name (a cloned VM) must not take each other's leases
    at once: a holder's process is looked for here only when its boot is this one's."""
    from middleware.daemon import BOOT, _process_gone

    ended = subprocess.Popen(["true"])
    ended.wait()
    assert BOOT and _process_gone(f"lab-pc/{ended.pid}/{BOOT}abcd1234", node="lab-pc")
    assert not _process_gone(f"lab-pc/{os.getpid()}/{BOOT}abcd1234", node="lab-pc")
    other = "0" * 8 if BOOT != "0" * 8 else "1" * 8
    assert not _process_gone(f"lab-pc/{ended.pid}/{other}abcd1234", node="lab-pc")
    assert not _process_gone(f"lab-pc-2/{ended.pid}/{BOOT}abcd1234", node="lab-pc")
