"""Several daemons on one database: each serves the instruments of its configuration, no
instrument is served by two, and one that dies has its instruments taken over."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from middleware.web.roles import Role
from tests import credentials
from tests.daemon import ROOT, DaemonProcess, connect, free_port, query
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message
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
