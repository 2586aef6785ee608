"""The control API refuses what it cannot take, with a 4xx, without holding up the event
loop the analyser connections share with it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from middleware.daemon import Daemon
from middleware.settings import ConfigError, Settings, load_settings
from middleware.web.api import bind_api_socket, create_app
from tests.conftest import ROOT

MiB = 1024 * 1024
#: Parsing this takes seconds (millions of list items); refused, it costs nothing.
HEAVY = b'{"by": "x", "pad": [' + b"0," * (20 * MiB) + b"0]}"


def client(app: FastAPI, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


def api_of(daemon: Daemon) -> FastAPI:
    return create_app(daemon.control, lambda: daemon.connections)


def idle(**settings: Any) -> Daemon:
    """A daemon that is not started: enough for what the API refuses before calling it."""
    return Daemon(Settings.model_validate(settings))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A started daemon with the rules engine and one configured (idle) analyser."""
    chem = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
    daemon = idle(state_dir=tmp_path / "state", rules_dir=ROOT / "rules", instruments=[chem])
    await daemon.start()
    yield daemon
    await daemon.stop()


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn on 127.0.0.1, in this event loop (as in the daemon)."""
    sock = bind_api_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def longest_stall() -> AsyncIterator[list[float]]:
    """The longest time the event loop went without running a 5 ms ticker (in a list,
    filled when the block ends)."""
    stalls: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    result: list[float] = []
    try:
        yield result
    finally:
        done.set()
        await ticker
        result.append(max(stalls))


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length: sent chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_large_body_is_refused_at_once_and_the_loop_keeps_turning() -> None:
    async with serving(api_of(idle())) as base:
        url = f"{base}/api/rules/reload"
        headers = {"content-type": "application/json"}
        # The client runs in a thread: only the server's work is on this loop.
        for body in (HEAVY, pieces(HEAVY)):
            async with longest_stall() as stall:
                started = time.monotonic()
                refused = await asyncio.to_thread(
                    httpx.post, url, content=body, headers=headers, timeout=30
                )
                took = time.monotonic() - started
            assert refused.status_code == 413, refused.text
            assert refused.json() == {"detail": f"request body over {MiB} bytes"}
            assert took < 3
            assert stall[0] < 0.5, f"event loop stalled {stall[0]:.2f} s"
        answered = await asyncio.to_thread(httpx.post, url, json={"by": "alice"})
        assert answered.status_code == 422  # read and answered: no rules directory here
        assert "no rules directory" in answered.text


async def test_a_chunked_body_is_read_no_further_than_the_limit() -> None:
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b" " * (64 * 1024)

    async with client(api_of(idle(api={"max_body_bytes": MiB}))) as api:
        headers = {"content-type": "application/json"}
        refused = await api.post("/api/rules/reload", content=chunks(), headers=headers)
        assert refused.status_code == 413
        assert pulled == 17  # 16 chunks make the limit, the 17th goes past it

        pulled = 0
        declared = {**headers, "content-length": str(100 * 64 * 1024)}
        refused = await api.post("/api/rules/reload", content=chunks(), headers=declared)
        assert refused.status_code == 413
        assert pulled == 0  # refused on its Content-Length, before anything is read

        at_limit = b'{"by": "alice"}'.ljust(MiB)
        answered = await api.post("/api/rules/reload", content=at_limit, headers=headers)
        assert answered.status_code == 422 and "no rules directory" in answered.text


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8470", 200),
        ("localhost", 200),
        ("LocalHost:8470", 200),
        ("[::1]:8470", 200),
        ("[0:0::1]", 200),
        ("127.0.0.2:8470", 200),  # the configured host
        ("attacker.example", 400),  # DNS rebinding: a foreign name for 127.0.0.1
        ("attacker.example:8470", 400),
        ("127.0.0.1.attacker.example", 400),
        ("::1", 400),  # an IPv6 address without brackets is no Host header
        ("localhost:http", 400),
        ("", 400),
    ],
)
async def test_host_header_must_name_the_api(host: str, status: int) -> None:
    async with client(api_of(idle(api={"host": "127.0.0.2"}))) as api:
        answer = await api.get("/api/health", headers={"host": host})
    assert answer.status_code == status
    if status == 400:
        assert answer.json() == {"detail": f"host {host!r} not allowed"}


async def test_allowed_hosts_replace_the_defaults() -> None:
    app = api_of(idle(api={"allowed_hosts": ["lab-pc"]}))
    async with client(app) as api:
        assert (await api.get("/api/health", headers={"host": "lab-pc:8470"})).status_code == 200
        assert (await api.get("/api/health", headers={"host": "localhost"})).status_code == 400
        assert (await api.get("/api/health")).status_code == 200  # 127.0.0.1, its own host


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"by": NaN}', "NaN is not a JSON value"),
        (b'{"by": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"by": "alice", "extra": Infinity}', "Infinity is not a JSON value"),
        (b'{"by": 1e999}', "1e999 is too large a number"),
        (b'{"by": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
    ],
)
async def test_json_that_is_not_json_is_refused(body: bytes, problem: str) -> None:
    async with client(api_of(idle())) as api:
        headers = {"content-type": "application/json"}
        answer = await api.post("/api/rules/reload", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert problem in answer.json()["detail"]


async def test_ids_beyond_the_database_range_are_refused(running: Daemon) -> None:
    closing = {"by": "bob", "action_taken": "new calibration"}
    async with client(api_of(running)) as api:
        for action_id in ("99999999999999999999999", str(2**31), "0", "-1"):
            answer = await api.post(f"/api/corrective-actions/{action_id}/close", json=closing)
            assert answer.status_code == 422, (action_id, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["path", "action_id"]
        largest = await api.post(f"/api/corrective-actions/{2**31 - 1}/close", json=closing)
        assert largest.status_code == 404


async def test_qc_for_an_instrument_not_configured_is_refused_unrecorded(
    running: Daemon, tmp_path: Path
) -> None:
    event = {"instrument": "ghost", "tests": ["GLU"], "kind": "calibration", "by": "tech"}
    approval = {"instrument": "ghost", "test": "GLU", "lot": "CC-45781", "by": "dr-lab"}
    async with client(api_of(running)) as api:
        refused = await api.post("/api/qc/events", json=event)
        assert refused.status_code == 404
        assert refused.json()["detail"] == "unknown instrument 'ghost': not in the configuration"
        refused = await api.post("/api/qc/proposals/approve", json=approval)
        assert refused.status_code == 404
        assert "unknown instrument 'ghost'" in refused.json()["detail"]
        # an instrument that is configured but not enabled is still the lab's
        known = await api.post("/api/qc/events", json={**event, "instrument": "chem-1"})
        assert known.status_code == 200, known.text
    with sqlite3.connect(tmp_path / "state" / "middleware.db") as conn:
        events = conn.execute("SELECT instrument FROM qc_events").fetchall()
        audited = conn.execute("SELECT subject FROM audit_log WHERE action LIKE 'qc.%'").fetchall()
    assert events == [("chem-1",)] and audited == [("chem-1",)]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "lab-pc.example", "[::1]"])
def test_the_api_listens_on_loopback_only(tmp_path: Path, host: str) -> None:
    path = tmp_path / "middleware.yaml"
    path.write_text(f"api:\n  port: 8470\n  host: '{host}'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert f"{path}:3: api.host: Value error, {host!r} is not a loopback address" in str(
        caught.value
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_addresses_are_accepted(tmp_path: Path, host: str) -> None:
    path = tmp_path / "middleware.yaml"
    path.write_text(f"api:\n  host: '{host}'\n")
    settings = load_settings(path)
    assert settings.api is not None and settings.api.host == host


def test_the_environment_cannot_open_the_api_either(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDDLEWARE_API__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match=r"environment: api.host: .* not a loopback address"):
        load_settings(None)
