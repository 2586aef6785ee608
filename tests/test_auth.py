"""Who may use the control API (D6, D7): no route without credentials, each role exactly
the actions web/roles.py gives it, CSRF tokens on what a session changes, sessions that
end, logins that are limited and audited. Over HTTP against the app, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import select

from middleware.control import Control
from middleware.daemon import Daemon, api_context, serve_api
from middleware.settings import ApiConfig, ConfigError, Settings, load_settings
from middleware.store import Store
from middleware.store import users as stored_users
from middleware.store.schema import audit_log
from middleware.transport.tls import TlsError
from middleware.web.api import bind_api_socket, create_app
from middleware.web.auth import OPEN_PATHS, Require, User, check_guarded, require
from middleware.web.roles import PERMISSIONS, Action, Role
from middleware.web.sessions import LoginThrottle
from tests import credentials
from tests.conftest import ROOT, issue_certificates

CHEM = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

#: What each route of the API serves; a route added must be added here.
ROUTE_ACTIONS = {
    ("GET", "/api/health"): Action.VIEW,
    ("POST", "/api/rules/reload"): Action.RELOAD_RULES,
    ("POST", "/api/corrective-actions/{action_id}/close"): Action.RECORD_CORRECTIVE_ACTION,
    ("GET", "/api/qc/proposals"): Action.VIEW,
    ("POST", "/api/qc/proposals/approve"): Action.APPROVE_LIMITS,
    ("POST", "/api/qc/events"): Action.RECORD_QC_EVENT,
    ("GET", "/api/outbox"): Action.VIEW,
    ("POST", "/api/outbox/{entry_id}/retry"): Action.OUTBOX_RETRY,
    ("POST", "/api/outbox/{entry_id}/dismiss"): Action.OUTBOX_DISMISS,
    ("GET", "/api/session"): None,  # anyone logged in: who am I
    ("POST", "/logout"): None,
    # The status pages and their forms.
    ("GET", "/"): Action.VIEW,
    ("GET", "/held"): Action.VIEW_PATIENT_RESULTS,
    ("POST", "/held/{result_id}/release"): Action.RELEASE,
    ("POST", "/held/{result_id}/reject"): Action.REJECT,
    ("POST", "/held/{result_id}/send-early"): Action.EARLY_RELEASE,
    ("POST", "/held/{result_id}/rerun"): Action.REQUEST_RERUN,
    ("POST", "/held/{result_id}/comment"): Action.COMMENT,
    ("GET", "/qc"): Action.VIEW,
    ("GET", "/qc/{instrument}/{test:path}"): Action.VIEW,
    ("POST", "/qc/{instrument}/{test:path}/release-run"): Action.RELEASE,
    ("POST", "/qc/corrective-actions/{action_id}/close"): Action.RECORD_CORRECTIVE_ACTION,
    ("POST", "/qc/{instrument}/{test:path}/lots/{lot:path}/approve"): Action.APPROVE_LIMITS,
    ("GET", "/instruments"): Action.VIEW,
    ("GET", "/instruments/{name}/quarantine"): Action.VIEW,
    ("GET", "/quarantine/{entry_id}"): Action.VIEW_PATIENT_RESULTS,
    ("GET", "/reagents"): Action.VIEW,
    ("GET", "/reagents/{reagent:path}/lots/{lot:path}"): Action.VIEW_PATIENT_RESULTS,
    ("POST", "/reagents/{reagent:path}/lots/{lot:path}/recall"): Action.RECALL_REAGENT_LOT,
    ("GET", "/lis"): Action.VIEW,
    ("POST", "/lis/outbox/{entry_id}/retry"): Action.OUTBOX_RETRY,
    ("POST", "/lis/outbox/{entry_id}/dismiss"): Action.OUTBOX_DISMISS,
}
BODIES: dict[str, dict[str, Any]] = {
    "/api/corrective-actions/{action_id}/close": {"action_taken": "recalibrated"},
    "/api/qc/proposals/approve": {"instrument": "chem-1", "test": "GLU", "lot": "CC-45781"},
    "/api/qc/events": {"instrument": "chem-1", "tests": ["GLU"], "kind": "maintenance"},
}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Api:
    app: FastAPI
    store: Store
    clock: Clock

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=self.app, raise_app_exceptions=False, client=(address, 40000)
        )
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")

    def audited(self, action: str) -> list[tuple[str, str, str]]:
        rows = self.store.read(
            lambda c: c.execute(
                select(audit_log.c.actor, audit_log.c.subject, audit_log.c.detail)
                .where(audit_log.c.action == action)
                .order_by(audit_log.c.id)
            ).all()
        )
        return [(r.actor, r.subject, r.detail) for r in rows]


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    settings = Settings.model_validate(
        {"state_dir": tmp_path / "state", "database_url": database_url,
         "instruments": [CHEM], "rules_dir": rules}
    )  # fmt: skip
    store = Store(database_url)
    control = Control(settings, store)
    await control.reload_rules("daemon start")
    clock = Clock()
    app = create_app(control, lambda: ["chem-1"], clock=clock)
    for action in Action:  # an action no route of the API serves yet is still checked
        app.post(f"/api/probe/{action.value}")(_probe(action))
    yield Api(app, store, clock)
    store.close()


def _probe(action: Action) -> Any:
    # The dependency as a default: the annotations of this module are strings, which
    # FastAPI reads in the module's names, where ``action`` is not.
    async def probe(user: User = Depends(require(action))) -> dict[str, str]:  # noqa: B008
        return {"user": user.name}

    return probe


def _path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "999", template)


def _login_form(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def login(
    client: httpx.AsyncClient,
    name: str,
    password: str = credentials.PASSWORD,
    nxt: str = "",
) -> httpx.Response:
    page = await client.get("/login", params={"next": nxt} if nxt else None)
    assert page.status_code == 200
    form = {"username": name, "password": password, "csrf_token": _login_form(page), "next": nxt}
    return await client.post("/login", data=form)


@contextlib.asynccontextmanager
async def logged_in(
    api: Api, name: str, role: Role
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client with a session of a new user of ``role``, and the session's CSRF token."""
    credentials.user(api.store, name, role)
    async with api.client() as client:
        answer = await login(client, name)
        assert answer.status_code == 303, answer.text
        session = await client.get("/api/session")
        assert session.status_code == 200, session.text
        yield client, session.json()["csrf_token"]


def _guarded_routes(app: FastAPI) -> Iterator[tuple[str, str, Require]]:
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path not in OPEN_PATHS:
            [guard] = [d.call for d in route.dependant.dependencies if isinstance(d.call, Require)]
            for method in route.methods or ():
                yield method, route.path, guard


# --- no credentials ----------------------------------------------------------------------------


async def test_every_route_but_the_open_ones_is_refused_without_credentials(api: Api) -> None:
    unguarded = {
        getattr(route, "path", "")
        for route in api.app.routes
        if not isinstance(route, APIRoute)
        or not any(isinstance(d.call, Require) for d in route.dependant.dependencies)
    }
    # Probes and metrics show no patient data; /login must be reachable to log in.
    assert unguarded <= {
        "/login",
        "/openapi.json",
        "/static",
    }
    routes = list(_guarded_routes(api.app))
    assert len(routes) >= len(ROUTE_ACTIONS) + len(Action)
    async with api.client() as client:
        for method, path, _ in routes:
            answer = await client.request(method, _path(path), json={})
            if path.startswith("/api/"):
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
            else:
                assert answer.status_code == 303, (method, path)
                # A form's POST leads to the login alone: after it, no address that
                # takes only a POST (405).
                login_page = "/login?next=" if method == "GET" else "/login"
                assert answer.headers["location"].startswith(login_page), (method, path)
                if method != "GET":
                    assert answer.headers["location"] == "/login"
            # A token that is not one, or a scheme that is not Bearer, is no credential.
            for header in ("Bearer lmw_not-a-token", "Basic YWxpY2U6cGFzc3dvcmQ="):
                answer = await client.request(
                    method, _path(path), json={}, headers={"Authorization": header}
                )
                assert answer.status_code in (401, 303), (method, path, header)


def test_a_route_without_require_stops_the_app_being_built(api: Api) -> None:
    @api.app.get("/api/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="route /api/forgotten declares no require"):
        check_guarded(api.app)


def test_each_route_serves_the_action_it_names(api: Api) -> None:
    served = {
        (method, path): guard.action
        for method, path, guard in _guarded_routes(api.app)
        if not path.startswith("/api/probe/")
    }
    assert served == ROUTE_ACTIONS


# --- roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
async def test_each_role_may_take_exactly_the_actions_of_the_matrix(api: Api, role: Role) -> None:
    headers = credentials.bearer(api.store, role, f"as-{role.value}")
    async with api.client() as client:
        for action in Action:
            answer = await client.post(f"/api/probe/{action.value}", headers=headers)
            if action in PERMISSIONS[role]:
                assert answer.status_code == 200, (role, action, answer.text)
                assert answer.json() == {"user": f"token:as-{role.value}"}
            else:
                assert answer.status_code == 403, (role, action, answer.text)
                assert role.value in answer.json()["detail"]
        for (method, path), served in ROUTE_ACTIONS.items():
            if path == "/logout":
                continue
            body = BODIES.get(path)
            answer = await client.request(method, _path(path), json=body, headers=headers)
            if method == "POST" and not path.startswith("/api/"):
                # A page's form is for people: a token is never told what it did.
                assert answer.status_code == 403, (role, path, answer.text)
                assert "/api/" in answer.json()["detail"]
            elif served is None or served in PERMISSIONS[role]:
                # Done, or refused by the command itself (nothing numbered 999 exists).
                assert answer.status_code in (200, 303, 404, 409, 422), (role, path, answer.text)
            else:
                assert answer.status_code == 403, (role, path, answer.text)
    denied = api.audited("auth.denied")
    posted = [r for r in ROUTE_ACTIONS if r[0] == "POST" and r[1] != "/logout"]  # not posted
    forms = [r for r in posted if not r[1].startswith("/api/")]
    refused = [a for a in Action if a not in PERMISSIONS[role]] + [
        a for r, a in ROUTE_ACTIONS.items() if a and r not in forms and a not in PERMISSIONS[role]
    ]
    assert len(denied) == len(forms) + len(refused)
    assert all(actor == f"token:as-{role.value}" for actor, _, _ in denied)


async def test_what_a_token_does_is_audited_under_its_name(api: Api) -> None:
    headers = credentials.bearer(api.store, Role.TECHNICIAN, "bench-pc")
    event = BODIES["/api/qc/events"] | {"by": "someone else"}  # ignored: the token says who
    async with api.client() as client:
        assert (await client.post("/api/qc/events", json=event, headers=headers)).status_code == 200
        missing = await client.post("/api/corrective-actions/999/close", json={}, headers=headers)
        assert missing.status_code == 422  # what was done must be said
        refused = await client.post(
            "/api/corrective-actions/999/close", json=BODIES[_close()], headers=headers
        )
        assert refused.status_code == 404
    assert api.audited("qc.maintenance") == [("token:bench-pc", "chem-1", '{"tests": ["GLU"]}')]
    [(actor, subject, detail)] = api.audited("api.refused")
    assert (actor, subject) == ("token:bench-pc", "POST /api/corrective-actions/999/close")
    assert '"status": 404' in detail


async def test_a_token_may_not_post_the_pages_forms(api: Api) -> None:
    headers = credentials.bearer(api.store, Role.VALIDATOR, "script")
    async with api.client() as client:
        answer = await client.post("/held/99999999/release", headers=headers)
        assert answer.status_code == 403
        assert "use the calls under /api/" in answer.json()["detail"]
        assert (await client.get("/held", headers=headers)).status_code == 200  # a page is shown
    [(actor, subject, _)] = api.audited("auth.denied")
    assert (actor, subject) == ("token:script", "POST /held/99999999/release")


def _close() -> str:
    return "/api/corrective-actions/{action_id}/close"


async def test_a_disabled_token_is_refused_at_its_next_request(api: Api) -> None:
    headers = credentials.bearer(api.store, Role.LAB_IT, "lis-bridge")
    async with api.client() as client:
        assert (await client.get("/api/health", headers=headers)).status_code == 200
        await api.store.write(lambda c: stored_users.disable_token(c, "lis-bridge", "admin", START))
        assert (await client.get("/api/health", headers=headers)).status_code == 401


# --- sessions ----------------------------------------------------------------------------------


async def test_a_login_opens_a_session_with_a_cookie_no_script_can_read(api: Api) -> None:
    credentials.user(api.store, "alice", Role.VALIDATOR)
    async with api.client() as client:
        answer = await login(client, "alice", nxt="/api/outbox")
        assert answer.status_code == 303 and answer.headers["location"] == "/api/outbox"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("lis_session=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # no TLS here
        outbox = await client.get("/api/outbox")
        assert outbox.status_code == 200
        session = await client.get("/api/session")
        me = session.json()
        assert (me["user"], me["role"]) == ("alice", "validator")
        # The CSRF token, specimen ids: kept by no cache, refusals included.
        refused = await client.post("/api/qc/events", json={})
        for answer in (outbox, session, refused):
            assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert "release" in me["may"] and "approve-limits" not in me["may"]
    assert api.audited("auth.login") == [("alice", "127.0.0.1", '{"role": "validator"}')]


@pytest.mark.parametrize("nxt", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
async def test_a_login_goes_to_this_site_only(api: Api, nxt: str) -> None:
    credentials.user(api.store, "alice", Role.VIEWER)
    async with api.client() as client:
        answer = await login(client, "alice", nxt=nxt)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


async def test_a_page_without_a_session_sends_to_the_login_page(api: Api) -> None:
    @api.app.get("/page")
    async def page(user: Annotated[User, Depends(require(Action.VIEW))]) -> dict[str, str]:
        return {"user": user.name}

    credentials.user(api.store, "alice", Role.VIEWER)
    async with api.client() as client:
        sent = await client.get("/page", params={"x": "1"})
        assert sent.status_code == 303
        assert sent.headers["location"] == "/login?next=%2Fpage%3Fx%3D1"
        answer = await login(client, "alice", nxt="/page?x=1")
        assert answer.headers["location"] == "/page?x=1"
        assert (await client.get("/page")).json() == {"user": "alice"}
        # A name in the address, its "/" escaped, comes back escaped after the login.
        client.cookies.clear()
        sent = await client.get("/qc/chem-1/A%2FG")
        assert sent.headers["location"] == "/login?next=%2Fqc%2Fchem-1%2FA%252FG"
        answer = await login(client, "alice", nxt="/qc/chem-1/A%2FG")
        assert answer.headers["location"] == "/qc/chem-1/A%2FG"


async def test_the_login_form_must_come_from_this_site(api: Api) -> None:
    credentials.user(api.store, "alice", Role.VIEWER)
    async with api.client() as client:
        form = {"username": "alice", "password": credentials.PASSWORD, "csrf_token": "forged"}
        refused = await client.post("/login", data=form)
        assert refused.status_code == 403 and "expired" in refused.text
        assert "lis_session" not in refused.headers.get("set-cookie", "")


async def test_state_changing_requests_of_a_session_need_its_csrf_token(api: Api) -> None:
    async with logged_in(api, "dr-lab", Role.BIOLOGIST) as (client, token):
        posts = [(m, p) for m, p, _ in _guarded_routes(api.app) if m != "GET" and p != "/logout"]
        assert len(posts) >= 6 + len(Action)
        for method, path in posts:
            body = BODIES.get(path, {})
            refused = await client.request(method, _path(path), json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json() == {"detail": "missing or wrong CSRF token"}
            wrong = await client.request(
                method, _path(path), json=body, headers={"X-CSRF-Token": token[:-1] + "x"}
            )
            assert wrong.status_code == 403, path
            done = await client.request(
                method, _path(path), json=body, headers={"X-CSRF-Token": token}
            )
            # A page's form answers with a redirect to its page, saying what was refused.
            assert done.status_code in (200, 303, 404, 409, 422), (path, done.text)
        # A form sends it as a field.
        form = await client.post("/api/probe/view", data={"csrf_token": token})
        assert form.status_code == 200
        assert (await client.post("/logout", data={"csrf_token": "nope"})).status_code == 403
        assert (await client.get("/api/health")).status_code == 200  # still logged in


async def test_a_session_ends_when_idle_and_at_the_end_of_its_lifetime(api: Api) -> None:
    async with logged_in(api, "alice", Role.VIEWER) as (client, _):
        for _ in range(3):  # each request slides the idle timeout
            api.clock.advance(minutes=14)
            assert (await client.get("/api/health")).status_code == 200
        api.clock.advance(minutes=15, seconds=1)
        assert (await client.get("/api/health")).status_code == 401

        assert (await login(client, "alice")).status_code == 303
        for _ in range(12 * 6 - 1):  # used every 10 minutes, all day long
            api.clock.advance(minutes=10)
            assert (await client.get("/api/health")).status_code == 200
        api.clock.advance(minutes=10, seconds=1)  # 12 hours after the login
        assert (await client.get("/api/health")).status_code == 401


async def test_a_disabled_users_session_is_refused_at_its_next_request(api: Api) -> None:
    async with logged_in(api, "bob", Role.TECHNICIAN) as (client, _):
        assert (await client.get("/api/health")).status_code == 200
        api.clock.advance(seconds=1)
        off = api.clock.now
        await api.store.write(lambda c: stored_users.set_disabled(c, "bob", True, "admin", off))
        assert (await client.get("/api/health")).status_code == 401
        await api.store.write(lambda c: stored_users.set_disabled(c, "bob", False, "admin", off))
        # Enabled again, the user logs in again: the session taken away stays ended.
        assert (await client.get("/api/health")).status_code == 401
        api.clock.advance(seconds=1)
        assert (await login(client, "bob")).status_code == 303
        assert (await client.get("/api/health")).status_code == 200
        # A new password ends the sessions opened with the old one.
        api.clock.advance(seconds=1)
        changed = api.clock.now
        await api.store.write(lambda c: stored_users.set_password(c, "bob", "x", "bob", changed))
        assert (await client.get("/api/health")).status_code == 401
        assert (await login(client, "bob")).status_code == 401  # "x" is no argon2 hash


async def test_a_role_changed_counts_from_the_next_request(api: Api) -> None:
    async with logged_in(api, "carol", Role.TECHNICIAN) as (client, token):
        headers = {"X-CSRF-Token": token}
        assert (await client.post("/api/probe/release", headers=headers)).status_code == 403
        await api.store.write(
            lambda c: stored_users.set_role(c, "carol", Role.VALIDATOR, "dr-lab", START)
        )
        assert (await client.post("/api/probe/release", headers=headers)).status_code == 200


async def test_a_logout_ends_the_session_even_for_a_copy_of_its_cookie(api: Api) -> None:
    async with logged_in(api, "alice", Role.VIEWER) as (client, token):
        stolen = dict(client.cookies)
        api.clock.advance(seconds=1)
        out = await client.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert (await client.get("/api/health")).status_code == 401
    async with api.client() as thief:
        thief.cookies.update(stolen)
        assert (await thief.get("/api/health")).status_code == 401
    assert [actor for actor, _, _ in api.audited("auth.logout")] == ["alice"]


async def test_a_forged_or_altered_cookie_is_no_session(api: Api) -> None:
    async with logged_in(api, "alice", Role.VIEWER) as (client, _):
        [value] = [v for k, v in client.cookies.items() if k == "lis_session"]
        body, mac = value.split(".")
        # Altered for sure (a signature may end in AA already, one time in 4,096).
        other_mac = mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")
        other_body = body[:-2] + ("xy" if body[-2:] != "xy" else "yz")
        for forged in (f"{body}.{other_mac}", f"{other_body}.{mac}", "x", ""):
            client.cookies.set("lis_session", forged)
            assert (await client.get("/api/health")).status_code == 401, forged


# --- logins refused ----------------------------------------------------------------------------


async def test_failed_logins_are_audited_then_limited(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials.user(api.store, "alice", Role.VIEWER)
    async with api.client("10.0.0.7") as client:
        for _ in range(5):
            refused = await login(client, "alice", "not her password")
            assert refused.status_code == 401 and "Wrong user name or password" in refused.text
        # The right password, now: too late for a while.
        limited = await login(client, "alice")
        assert limited.status_code == 429 and "Too many failed logins" in limited.text
        assert 0 < int(limited.headers["retry-after"]) <= 300
        api.clock.advance(minutes=5, seconds=1)
        assert (await login(client, "alice")).status_code == 303
    failed = api.audited("auth.login.failed")
    assert len(failed) == 5
    assert all(actor == "alice" and subject == "10.0.0.7" for actor, subject, _ in failed)
    assert '"reason": "wrong password"' in failed[0][2] and '"locked": true' in failed[-1][2]
    output = capsys.readouterr()
    assert "not her password" not in output.out + output.err
    assert credentials.PASSWORD not in output.out + output.err


async def test_one_address_trying_many_names_is_limited_too(api: Api) -> None:
    async with api.client("10.0.0.8") as client:
        for i in range(5):
            assert (await login(client, f"guess-{i}", "password1234")).status_code == 401
        assert (await login(client, "another")).status_code == 429
    async with api.client("10.0.0.9") as other:  # another bench is not held up
        assert (await login(other, "another")).status_code == 401
    first = api.audited("auth.login.failed")[0]
    assert first[2] == '{"reason": "unknown user"}'


def test_the_login_limit_remembers_a_bounded_number_of_names() -> None:
    throttle = LoginThrottle(limit=5, window=300, max_keys=100)
    for i in range(10_000):
        throttle.failed([f"name:{i}", "address:10.0.0.1"], float(i) / 100)
    assert len(throttle) <= 100
    assert throttle.wait(["address:10.0.0.1"], 100.0) > 0  # the busy one is kept


async def test_a_disabled_user_cannot_log_in(api: Api) -> None:
    credentials.user(api.store, "dave", Role.VIEWER)
    await api.store.write(lambda c: stored_users.set_disabled(c, "dave", True, "admin", START))
    async with api.client() as client:
        assert (await login(client, "dave")).status_code == 401
    assert api.audited("auth.login.failed")[0][2] == '{"reason": "user disabled"}'


# --- binding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "lab-pc.example"])
def test_the_api_may_listen_beyond_the_loopback(tmp_path: Path, host: str) -> None:
    path = tmp_path / "middleware.yaml"
    path.write_text(f"api:\n  host: '{host}'\n  session_key_file: keys/session.key\n")
    settings = load_settings(path)
    assert settings.api is not None and settings.api.host == host
    assert settings.api.session_key_file == tmp_path / "keys" / "session.key"


@pytest.mark.parametrize("host", ["[::1]", "lab pc", "http://lab-pc"])
def test_a_host_that_is_no_address_is_refused(tmp_path: Path, host: str) -> None:
    path = tmp_path / "middleware.yaml"
    path.write_text(f"api:\n  host: '{host}'\n")
    with pytest.raises(ConfigError, match="neither an IP address nor a host name"):
        load_settings(path)


async def test_listening_on_every_interface_takes_only_the_names_configured(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings.model_validate(
        {"state_dir": tmp_path, "database_url": database_url,
         "api": {"host": "0.0.0.0", "allowed_hosts": ["lab-pc.example"]}}
    )  # fmt: skip
    store = Store(database_url)
    try:
        headers = credentials.bearer(store, Role.VIEWER)
        app = create_app(Control(settings, store), list)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lab-pc.example") as c:
            assert (await c.get("/api/health", headers=headers)).status_code == 200
            for host in ("0.0.0.0", "127.0.0.1"):
                answer = await c.get("/api/health", headers=headers | {"host": host})
                assert answer.status_code == 400
    finally:
        store.close()


async def test_over_tls_the_cookies_are_for_https_only(tmp_path: Path) -> None:
    files = issue_certificates(tmp_path, ["api"])
    tls = {"cert_file": str(files["api_cert"]), "key_file": str(files["api_key"])}
    daemon = Daemon(Settings.model_validate({"state_dir": tmp_path / "state", "api": {"tls": tls}}))
    daemon.control.store = store = Store(f"sqlite:///{tmp_path / 'middleware.db'}")
    credentials.user(store, "alice", Role.VIEWER)
    context = api_context(daemon.settings.api)
    assert context is not None
    sock = bind_api_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    serving = asyncio.Event()
    task = asyncio.create_task(serve_api(daemon, sock, serving, context))
    try:
        await asyncio.wait_for(serving.wait(), 10)
        trust = ssl.create_default_context(cafile=str(files["ca"]))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trust) as c:
            answer = await login(c, "alice")
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"]
            assert cookie.startswith("__Host-lis_session=") and "; Secure" in cookie
            session = await c.get("/api/session")
            assert session.json()["user"] == "alice"
            # The browser comes back over TLS only, whatever page it asks for.
            for answer in (session, await c.get("/login")):
                assert answer.headers["strict-transport-security"] == "max-age=31536000"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get("/login")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sock.close()
        store.close()
    assert (tmp_path / "state" / "session.key").stat().st_mode & 0o777 == 0o600


def test_a_certificate_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    config = ApiConfig.model_validate(
        {"tls": {"cert_file": tmp_path / "cert.pem", "key_file": tmp_path / "cert.pem"}}
    )
    with pytest.raises(TlsError, match="TLS on the control API"):
        api_context(config)
    with pytest.raises(ValueError, match=r"api\.tls needs cert_file and key_file"):
        ApiConfig.model_validate({"tls": {"ca_file": tmp_path / "cert.pem"}})


async def test_wrong_passwords_sent_together_are_limited_all_the_same(api: Api) -> None:
    credentials.user(api.store, "alice", Role.VIEWER)
    async with api.client("10.0.0.10") as client:
        page = await client.get("/login")
    form = {"username": "alice", "password": "guess", "csrf_token": _login_form(page)}

    async def attempt() -> int:
        # Each with the same login form, as a script sending them at once would.
        async with api.client("10.0.0.10") as one:
            one.cookies = httpx.Cookies(client.cookies)
            return (await one.post("/login", data=form)).status_code

    codes = sorted(await asyncio.gather(*(attempt() for _ in range(20))))
    assert codes.count(401) == 5 and codes.count(429) == 15


async def test_a_page_refreshing_itself_does_not_keep_its_session_alive(api: Api) -> None:
    async with logged_in(api, "alice", Role.VIEWER) as (client, _):
        api.clock.advance(minutes=10)  # a screen left open: only its own refreshes
        polled = await client.get("/lis", headers={"X-Fragment": "1"})
        assert polled.status_code == 200 and "set-cookie" not in polled.headers
        api.clock.advance(minutes=6)  # 16 minutes since the person last did anything
        assert (await client.get("/lis", headers={"X-Fragment": "1"})).status_code == 303


async def test_secrets_beyond_ascii_are_wrong_not_faults(api: Api) -> None:
    async with logged_in(api, "dr-lab", Role.BIOLOGIST) as (client, _):
        refused = await client.post("/api/rules/reload", headers={"X-CSRF-Token": "é".encode()})
        assert refused.status_code == 403
    async with api.client() as stranger:
        cookie = {"cookie": "lis_session=a.é".encode()}
        assert (await stranger.get("/qc", headers=cookie)).status_code == 303
        form = {"username": "x", "password": "y", "csrf_token": "é"}
        assert (await stranger.post("/login", data=form)).status_code == 403
