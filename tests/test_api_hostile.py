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
from sqlalchemy import select

from middleware.daemon import Daemon
from middleware.settings import Settings, load_settings
from middleware.store import Store
from middleware.store.schema import audit_log
from middleware.web.api import bind_api_socket, create_app, server_config
from middleware.web.roles import Role
from tests import credentials
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
def users(tmp_path: Path) -> Iterator[Store]:
    """The store the API of an idle daemon finds its users in (:func:`with_users`)."""
    store = Store(f"sqlite:///{tmp_path / 'users.db'}")
    yield store
    store.close()


@pytest.fixture
def token(users: Store) -> dict[str, str]:
    return credentials.bearer(users, Role.BIOLOGIST, "alice")


def with_users(daemon: Daemon, store: Store) -> Daemon:
    daemon.control.store = store
    return daemon


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A started daemon with the rules engine and one configured (idle) analyser."""
    chem = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
    daemon = idle(state_dir=tmp_path / "state", rules_dir=ROOT / "rules", instruments=[chem])
    await daemon.start()
    yield daemon
    await daemon.stop()


def bearer(daemon: Daemon, role: Role, name: str) -> dict[str, str]:
    assert daemon.store is not None
    return credentials.bearer(daemon.store, role, name)


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn on 127.0.0.1, in this event loop (as in the daemon)."""
    sock = bind_api_socket("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app))
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


async def test_a_large_body_is_refused_at_once_and_the_loop_keeps_turning(
    users: Store, token: dict[str, str]
) -> None:
    async with serving(api_of(with_users(idle(), users))) as base:
        url = f"{base}/api/qc/events"  # a route that reads its body
        headers = {"content-type": "application/json", **token}
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
        event = {"instrument": "chem-1", "tests": ["GLU"], "kind": "unlock"}
        answered = await asyncio.to_thread(httpx.post, url, json=event, headers=token)
        assert answered.status_code == 404  # read and answered: no such instrument here
        assert "unknown instrument" in answered.text


async def test_a_chunked_form_over_the_limit_is_refused_413_not_500(
    users: Store, token: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"text=" + b"x" * (64 * 1024)

    async with client(api_of(with_users(idle(api={"max_body_bytes": MiB}), users))) as api:
        headers = {"content-type": "application/x-www-form-urlencoded"}
        refused = await api.post("/held/1/comment", content=chunks(), headers=headers)
        assert refused.status_code == 413, refused.text


async def test_a_chunked_body_is_read_no_further_than_the_limit(
    users: Store, token: dict[str, str]
) -> None:
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b" " * (64 * 1024)

    async with client(api_of(with_users(idle(api={"max_body_bytes": MiB}), users))) as api:
        headers = {"content-type": "application/json", **token}
        refused = await api.post("/api/qc/events", content=chunks(), headers=headers)
        assert refused.status_code == 413
        assert pulled == 17  # 16 chunks make the limit, the 17th goes past it

        pulled = 0
        declared = {**headers, "content-length": str(100 * 64 * 1024)}
        refused = await api.post("/api/qc/events", content=chunks(), headers=declared)
        assert refused.status_code == 413
        assert pulled == 0  # refused on its Content-Length, before anything is read

        event = b'{"instrument": "chem-1", "tests": ["GLU"], "kind": "unlock"}'
        answered = await api.post("/api/qc/events", content=event.ljust(MiB), headers=headers)
        assert answered.status_code == 404 and "unknown instrument" in answered.text


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
async def test_host_header_must_name_the_api(
    host: str, status: int, users: Store, token: dict[str, str]
) -> None:
    async with client(api_of(with_users(idle(api={"host": "127.0.0.2"}), users))) as api:
        answer = await api.get("/api/health", headers={"host": host, **token})
    assert answer.status_code == status
    if status == 400:
        assert answer.json() == {"detail": f"host {host!r} not allowed"}


async def test_allowed_hosts_replace_the_defaults(users: Store, token: dict[str, str]) -> None:
    app = api_of(with_users(idle(api={"allowed_hosts": ["lab-pc"]}), users))
    async with client(app) as api:
        lab_pc = {"host": "lab-pc:8470", **token}
        assert (await api.get("/api/health", headers=lab_pc)).status_code == 200
        localhost = {"host": "localhost", **token}
        assert (await api.get("/api/health", headers=localhost)).status_code == 400
        # 127.0.0.1, its own host
        assert (await api.get("/api/health", headers=token)).status_code == 200


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"kind": NaN}', "NaN is not a JSON value"),
        (b'{"kind": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"kind": "unlock", "extra": Infinity}', "Infinity is not a JSON value"),
        (b'{"kind": 1e999}', "1e999 is too large a number"),
        (b'{"kind": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
        (b'{"instrument": "chem\\ud800-1"}', "a lone surrogate \\ud800 is no character"),
        (b'{"tests": ["\\udfff"]}', "a lone surrogate \\udfff is no character"),
    ],
)
async def test_json_that_is_not_json_is_refused(
    body: bytes, problem: str, users: Store, token: dict[str, str]
) -> None:
    async with client(api_of(with_users(idle(), users))) as api:
        headers = {"content-type": "application/json", **token}
        answer = await api.post("/api/qc/events", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert problem in answer.json()["detail"]


async def test_ids_beyond_the_database_range_are_refused(running: Daemon) -> None:
    closing = {"action_taken": "new calibration"}
    bob = bearer(running, Role.TECHNICIAN, "bob")
    async with client(api_of(running)) as api:
        for action_id in ("99999999999999999999999", str(2**31), "0", "-1"):
            url = f"/api/corrective-actions/{action_id}/close"
            answer = await api.post(url, json=closing, headers=bob)
            assert answer.status_code == 422, (action_id, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["path", "action_id"]
        url = f"/api/corrective-actions/{2**31 - 1}/close"
        largest = await api.post(url, json=closing, headers=bob)
        assert largest.status_code == 404


async def test_text_that_cannot_be_taken_is_refused_422_not_409(running: Daemon) -> None:
    """Malformed input is no state the request could succeed in later: 422, where 409
    says "not possible now"."""
    bob = bearer(running, Role.TECHNICIAN, "bob")
    async with client(api_of(running)) as api:
        for body in ({"action_taken": "nul\x00here"}, {"action_taken": "x" * 2001}):
            answer = await api.post("/api/corrective-actions/1/close", json=body, headers=bob)
            assert answer.status_code == 422, answer.text
        event = {"instrument": "chem-1", "tests": [""], "kind": "calibration"}
        answer = await api.post("/api/qc/events", json=event, headers=bob)
        assert answer.status_code == 422 and "the test is required" in answer.json()["detail"]


async def test_qc_for_an_instrument_not_configured_is_refused_unrecorded(
    running: Daemon, tmp_path: Path
) -> None:
    event = {"instrument": "ghost", "tests": ["GLU"], "kind": "calibration"}
    approval = {"instrument": "ghost", "test": "GLU", "lot": "CC-45781"}
    tech = bearer(running, Role.TECHNICIAN, "tech")
    dr = bearer(running, Role.BIOLOGIST, "dr-lab")
    async with client(api_of(running)) as api:
        refused = await api.post("/api/qc/events", json=event, headers=tech)
        assert refused.status_code == 404
        assert refused.json()["detail"] == (
            "unknown instrument 'ghost': not in the configuration, nor served by another daemon"
        )
        refused = await api.post("/api/qc/proposals/approve", json=approval, headers=dr)
        assert refused.status_code == 404
        assert "unknown instrument 'ghost'" in refused.json()["detail"]
        # an instrument that is configured but not enabled is still the lab's
        chem = {**event, "instrument": "chem-1"}
        known = await api.post("/api/qc/events", json=chem, headers=tech)
        assert known.status_code == 200, known.text
    with sqlite3.connect(tmp_path / "state" / "middleware.db") as conn:
        events = conn.execute("SELECT instrument FROM qc_events").fetchall()
        audited = conn.execute("SELECT subject FROM audit_log WHERE action LIKE 'qc.%'").fetchall()
    assert events == [("chem-1",)] and audited == [("chem-1",)]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost", "0.0.0.0"])
def test_the_api_listens_where_configured(tmp_path: Path, host: str) -> None:
    """Anywhere, now that every request is authenticated (tests/test_auth.py)."""
    path = tmp_path / "middleware.yaml"
    path.write_text(f"api:\n  host: '{host}'\n")
    settings = load_settings(path)
    assert settings.api is not None and settings.api.host == host


def test_the_environment_can_open_the_api_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDDLEWARE_API__HOST", "0.0.0.0")
    settings = load_settings(None)
    assert settings.api is not None and settings.api.host == "0.0.0.0"


async def test_the_address_audited_is_the_one_that_connected(running: Daemon) -> None:
    """A peer's X-Forwarded-For would let it write any address in the audit log and slip
    past the login limit per address."""
    assert running.store is not None
    credentials.user(running.store, "alice", Role.VALIDATOR)
    forged = {"X-Forwarded-For": "10.66.66.67", "X-Real-IP": "10.66.66.67"}
    async with (
        serving(api_of(running)) as url,
        httpx.AsyncClient(base_url=url, headers=forged) as api,
    ):
        form = (await api.get("/login")).text
        token = form.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        said = {"username": "alice", "password": "not hers", "csrf_token": token}
        assert (await api.post("/login", data=said)).status_code == 401
    failed = audit_log.c.action == "auth.login.failed"
    query = select(audit_log.c.actor, audit_log.c.subject).where(failed)
    assert running.store.read(lambda c: c.execute(query).all()) == [("alice", "127.0.0.1")]
