"""Who is asking, and whether they may (D6, D7): the login page, sessions, API tokens, and
the dependency every route of the status page and the control API declares.

    @app.post("/api/outbox/{entry_id}/retry")
    async def retry(entry_id: int, user: Annotated[User, Depends(require(Action.OUTBOX_RETRY))]):
        ...  # user.name is who did it, for the audit log

A person logs in at ``/login`` and gets a session cookie (web/sessions.py); a machine
sends ``Authorization: Bearer <token>`` (``lis-middleware tokens add``). No credentials:
401 for ``/api/*``, a redirect to the login page for pages; a role without the action:
403. A state-changing request made with a session cookie must carry the session's CSRF
token (form field ``csrf_token`` or header ``X-CSRF-Token``); one made with a token needs
none, as no browser sends that header of itself. A token may not post the status page's
forms (403): they answer people, with a redirect whose message only a session can read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from middleware import accounts
from middleware.settings import ApiConfig
from middleware.store import Store
from middleware.store import users as stored_users
from middleware.store.audit import audit
from middleware.store.sql import utcnow
from middleware.web.guards import path_as_sent
from middleware.web.roles import Action, Role, allowed
from middleware.web.sessions import LoginThrottle, Session, SessionCodec, load_key, same

log = structlog.get_logger("middleware.web")

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
#: The requests that change nothing: no CSRF token is asked of them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_ACTOR = "token:"
"""Before a token's name in the audit log: no user name has a colon."""
_LOGIN_COOKIE = "lis_login"
_STATE_COOKIE = "lis_set_cookie"


@dataclass(frozen=True, slots=True)
class User:
    """Who a request is from."""

    name: str
    """As the audit log records it: the user's name, or ``token:`` and the token's."""
    role: Role
    csrf_token: str | None = None
    """The session's, for the forms of the pages; None for a request made with a token."""


class NotAuthenticated(Exception):
    """No credentials, or none that count any more."""


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Auth:
    """Users, sessions and tokens over the daemon's store, for one app.

    ``store`` gives the store (None while the daemon starts); ``clock`` the time, which
    tests set.
    """

    def __init__(
        self,
        store: Callable[[], Store | None],
        config: ApiConfig,
        state_dir: Path,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self.config = config
        self.key_file = config.session_key_file or state_dir / "session.key"
        self.clock = clock
        self.secure = config.tls is not None
        # The __Host- prefix makes browsers refuse the cookie from anything but this
        # host over HTTPS: no other site of the domain can set it.
        self.cookie = "__Host-lis_session" if self.secure else "lis_session"
        self.throttle = LoginThrottle()
        self._codec: SessionCodec | None = None
        # argon2 takes a core for tens of milliseconds: one check at a time leaves the
        # other to the analysers' connections, whatever a crowd of logins does.
        self._hashing = asyncio.Semaphore(1)

    @property
    def codec(self) -> SessionCodec:
        """Made at the first use: the key file is created then, not by merely building
        the app."""
        if self._codec is None:
            idle = int(self.config.session_idle_minutes * 60_000)
            lifetime = int(self.config.session_hours * 3_600_000)
            self._codec = SessionCodec(load_key(self.key_file), idle, lifetime)
        return self._codec

    def store(self) -> Store:
        found = self._store()
        if found is None:
            raise HTTPException(503, "the daemon is starting: its store is not open yet")
        return found

    async def record(self, actor: str, action: str, subject: str = "", detail: object = "") -> None:
        """An entry in the audit log, at the clock's time."""
        at = self.clock()
        await self.store().write(lambda conn: audit(conn, at, actor, action, subject, detail))

    # --- who asks ------------------------------------------------------------------------

    async def identify(self, request: Request) -> User | None:
        """The user of a request, from its bearer token or its session cookie (a token
        wins: a machine has no cookie); None when neither counts. Each request looks its
        user or token up once: disabled now is refused now."""
        state = _state(request)
        if "user" in state:
            found: User | None = state["user"]
            return found
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            user = None
            if scheme.lower() == "bearer" and credentials.strip():
                user = await self._token_user(credentials.strip())
        else:
            user = await self._session_user(request)
        state["user"] = user
        return user

    async def _token_user(self, token: str) -> User | None:
        digest = accounts.token_digest(token)
        found = await self.store().read_async(
            lambda conn: stored_users.token_by_digest(conn, digest)
        )
        if found is None or found.disabled:
            return None
        return User(TOKEN_ACTOR + found.name, found.role)

    async def _session_user(self, request: Request) -> User | None:
        value = request.cookies.get(self.cookie)
        if not value:
            return None
        now = _ms(self.clock())
        session = self.codec.load(value, now)
        if session is None:
            return None
        name = session.user
        row = await self.store().read_async(lambda conn: stored_users.user(conn, name))
        if row is None or row.disabled or session.issued < _ms(row.password_changed_at):
            return None
        if row.sessions_revoked_at is not None and session.issued < _ms(row.sessions_revoked_at):
            return None
        # Slides the idle timeout: the cookie goes back with this request's time. Not for a
        # page refreshing itself (static/live.js): a screen left open is not a person.
        if request.headers.get("x-fragment") != "1":
            _state(request)[_STATE_COOKIE] = self._cookie_header(session)
        return User(row.name, row.role, session.csrf)

    def _cookie_header(self, session: Session | None) -> str:
        """The Set-Cookie of a session, or (None) the one that deletes it. A session's has
        no Max-Age: the browser forgets it when it closes, and the server ends it after
        the idle time or its lifetime anyway."""
        value = "" if session is None else self.codec.dump(session)
        parts = [f"{self.cookie}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if session is None:
            parts.append("Max-Age=0")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    # --- logging in and out --------------------------------------------------------------

    async def check_password(self, name: str, password: str) -> tuple[Role | None, str]:
        """The user's role when ``password`` is theirs, else None; and why not, for the
        audit log only (the page says the same whatever the reason)."""
        store = self.store()
        row = await store.read_async(lambda conn: stored_users.user(conn, name))
        async with self._hashing:
            good = await asyncio.to_thread(
                accounts.verify_password, row.password_hash if row else None, password
            )
        if row is None:
            return None, "unknown user"
        if not good:
            return None, "wrong password"
        if row.disabled:
            return None, "user disabled"
        if accounts.needs_rehash(row.password_hash):
            rehashed = await asyncio.to_thread(accounts.hash_password, password)
            await store.write(lambda conn: stored_users.rehash_password(conn, name, rehashed))
        return row.role, ""

    def start_session(self, response: Response, name: str) -> None:
        session = self.codec.new(name, _ms(self.clock()))
        response.headers.append("set-cookie", self._cookie_header(session))

    def end_session(self, response: Response) -> None:
        response.headers.append("set-cookie", self._cookie_header(None))


def _state(request: Request) -> dict[str, Any]:
    """What a request carries from the dependency to the response: the same dict as
    ``request.state``, which middleware sees too."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def auth_of(request: Request) -> Auth:
    found: Auth = request.app.state.auth
    return found


class Require:
    """The dependency :func:`require` gives; a route that declares none is refused by
    :func:`check_guarded`."""

    def __init__(self, action: Action | None) -> None:
        self.action = action

    async def __call__(self, request: Request) -> User:
        auth = auth_of(request)
        user = await auth.identify(request)
        if user is None:
            raise NotAuthenticated()
        if request.method not in SAFE_METHODS and user.csrf_token is not None:
            sent = request.headers.get("x-csrf-token") or await _form_field(request, "csrf_token")
            if not sent or not same(sent, user.csrf_token):
                log.warning("request refused: no CSRF token", path=request.url.path, user=user.name)
                raise HTTPException(403, "missing or wrong CSRF token")
        form = not request.url.path.startswith("/api/")  # the status page's
        if request.method not in SAFE_METHODS and user.csrf_token is None and form:
            # A form answers with a redirect whose message is sealed with a session's
            # secret: a token would never be told whether anything was done.
            await auth.record(
                user.name,
                "auth.denied",
                f"{request.method} {request.url.path}",
                {"action": self.action.value if self.action else None, "form": True},
            )
            raise HTTPException(
                403,
                "a token may not post the status page's forms, which are for people logged "
                "in: use the calls under /api/",
            )
        if self.action is not None and not allowed(user.role, self.action):
            await auth.record(
                user.name,
                "auth.denied",
                f"{request.method} {request.url.path}",
                {"action": self.action.value, "role": user.role.value},
            )
            raise HTTPException(
                403, f"the role {user.role.value} may not {self.action.value.replace('-', ' ')}"
            )
        return user


def require(action: Action) -> Require:
    """The FastAPI dependency of a route that serves ``action``: the :class:`User` asking."""
    return Require(action)


def authenticated() -> Require:
    """Any user logged in, whatever their role (to log out)."""
    return Require(None)


async def _form_field(request: Request, name: str) -> str | None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    value = (await request.form()).get(name)
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------------- the app


class SessionCookies:
    """Sends back the cookie of a session used by the request, with its new last-seen
    time, whatever response the route made."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = state.get(_STATE_COOKIE)
                if cookie is not None:
                    MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, with_cookie)


async def _not_authenticated(request: Request, _exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse(
            {"detail": "not authenticated: log in, or send Authorization: Bearer <token>"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in ("GET", "HEAD"):
        # A form posted once the session had ended: the login leads home, not to an
        # address that only takes a POST (and would answer 405).
        return RedirectResponse("/login", 303)
    # The address as it came: the pages read names from it as sent.
    query = request.url.query
    target = path_as_sent(request) + (f"?{query}" if query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)


def _next(app: FastAPI, wanted: str | None) -> str:
    """Where a login goes: a path of this site only, never another's."""
    if wanted and wanted.startswith("/") and not wanted.startswith(("//", "/\\")):
        return wanted
    has_home = any(getattr(route, "path", None) == "/" for route in app.routes)
    return "/" if has_home else "/api/session"


def install(app: FastAPI, auth: Auth) -> None:
    """The login and logout routes and what refuses a request without credentials."""
    app.state.auth = auth
    app.add_middleware(SessionCookies)
    app.add_exception_handler(NotAuthenticated, _not_authenticated)

    def form(request: Request, status: int, error: str = "", nxt: str = "") -> Response:
        token, cookie = auth.codec.login_token()
        page = TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"csrf_token": token, "error": error, "next": nxt},
            status_code=status,
        )
        parts = [f"{_LOGIN_COOKIE}={cookie}", "Path=/login", "HttpOnly", "SameSite=Strict"]
        page.headers.append("set-cookie", "; ".join(parts + (["Secure"] if auth.secure else [])))
        page.headers["Cache-Control"] = "no-store"
        # No other site may show the form in a frame and have people type into it.
        page.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
        page.headers["X-Frame-Options"] = "DENY"
        return page

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        return form(request, 200, nxt=request.query_params.get("next", ""))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await request.form()
        name, password, token, nxt = (
            str(fields.get(k) or "") for k in ("username", "password", "csrf_token", "next")
        )
        if not auth.codec.login_token_matches(request.cookies.get(_LOGIN_COOKIE, ""), token):
            return form(request, 403, "The login form had expired: please log in again.", nxt)
        address = request.client.host if request.client else ""
        keys = [f"name:{name.lower()[:100]}", f"address:{address}"]
        now = auth.clock().timestamp()
        wait = auth.throttle.wait(keys, now)
        if wait > 0:
            minutes = max(1, round(wait / 60))
            page = form(
                request,
                429,
                f"Too many failed logins: try again in {minutes} minute(s).",
                nxt,
            )
            page.headers["Retry-After"] = str(math.ceil(wait))
            return page
        # Counted as failed before the password is checked (which waits for a hashing
        # turn): attempts sent together cannot all pass the check above.
        locked = auth.throttle.failed(keys, now)
        role, why = await auth.check_password(name, password)
        if role is None:
            detail = {"reason": why} | ({"locked": True} if locked else {})
            await auth.record(name[:100], "auth.login.failed", address, detail)
            log.info("login refused", address=address, reason=why, locked=locked)
            return form(request, 401, "Wrong user name or password.", nxt)
        auth.throttle.succeeded(keys[0])
        auth.throttle.forgive(keys[1:])
        await auth.record(name, "auth.login", address, {"role": role.value})
        response = RedirectResponse(_next(app, nxt), 303)
        auth.start_session(response, name)
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request, user: Annotated[User, Depends(authenticated())]) -> Response:
        if user.csrf_token is not None:  # a session's, not a token's
            at = auth.clock()
            name = user.name

            def end(conn: Any) -> None:
                stored_users.revoke_sessions(conn, name, at)
                audit(conn, at, name, "auth.logout")

            await auth.store().write(end)
            # The cookie refreshed by this very request must not be sent back.
            _state(request).pop(_STATE_COOKIE, None)
        response = RedirectResponse("/login", 303)
        auth.end_session(response)
        return response


#: Routes anyone may call: the login page, the probes and metrics (which show no patient
#: data), and the API's description.
OPEN_PATHS = frozenset({"/login", "/metrics", "/healthz", "/readyz", "/openapi.json"})


def check_guarded(app: FastAPI) -> None:
    """Every route but the open ones and static files declares :func:`require`: a route
    added without it stops the app from being built, rather than serving anyone."""
    for route in app.routes:
        path = getattr(route, "path", "")
        if path in OPEN_PATHS or (isinstance(route, Mount) and isinstance(route.app, StaticFiles)):
            continue
        if not isinstance(route, APIRoute) or not any(
            isinstance(dependency.call, Require) for dependency in route.dependant.dependencies
        ):
            raise RuntimeError(f"route {path} declares no require(Action): who may call it?")


__all__ = [
    "OPEN_PATHS",
    "Auth",
    "NotAuthenticated",
    "Require",
    "User",
    "authenticated",
    "check_guarded",
    "install",
    "require",
]
