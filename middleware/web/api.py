"""The control API: what lab IT and the QC officer do to a running daemon.

Every route names the action it serves (web/roles.py) and is refused to whoever may not
take it (web/auth.py); what a command does is audited under the name of who asked. Only
the probes, the metrics (neither shows patient data) and the API's description are open.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from middleware.control import (
    MAX_TESTS,
    Conflict,
    Control,
    ControlError,
    EngineNotRunning,
    Invalid,
    NotFound,
    QcEventKind,
    RulesRefused,
)
from middleware.monitor import InstrumentState, Monitor
from middleware.settings import ApiConfig
from middleware.store.sql import utcnow
from middleware.store.writer import StoreBusy
from middleware.transport.tcp import ListenError
from middleware.web.auth import (
    SAFE_METHODS,
    Auth,
    User,
    auth_of,
    authenticated,
    check_guarded,
    install,
    require,
)
from middleware.web.guards import (
    BodyLimit,
    FormText,
    HostCheck,
    NoNulInAddress,
    ResponseHeaders,
    StrictJsonRoute,
)
from middleware.web.pages import BUSY, add_pages
from middleware.web.roles import Action, allowed

#: How the API answers each refusal of a command. Any other exception is a fault of the
#: middleware: a 500, logged by the server, never passed off as the operator's mistake.
REFUSALS: dict[type[ControlError], int] = {
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    # A daemon run without rules is configured so, not failing: a 5xx would say try later.
    EngineNotRunning: 409,
    RulesRefused: 422,
}


# Who asks is the user logged in or the token's name, never what a body says: a ``by``
# that older clients send is ignored like any other field a model does not have.


class Closing(BaseModel):
    action_taken: str = Field(min_length=1, description="what was done about the failure")


class Approval(BaseModel):
    instrument: str = Field(min_length=1)
    test: str = Field(min_length=1)
    lot: str = Field(min_length=1)


class QcEvent(BaseModel):
    instrument: str = Field(min_length=1)
    tests: list[str] = Field(min_length=1, max_length=MAX_TESTS)
    kind: QcEventKind


#: Row ids are 32-bit in the schema; a larger one would be an error of the database.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def server_config(app: FastAPI) -> uvicorn.Config:
    """How uvicorn serves the API: in the daemon's loop (no lifespan), quiet but for
    warnings, and believing no peer's ``X-Forwarded-For``: the audit log and the login
    limit per address count the address that connected."""
    # log_config None: uvicorn's lines go through the daemon's log handler, in its form.
    return uvicorn.Config(
        app, log_level="warning", log_config=None, lifespan="off", proxy_headers=False
    )


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, to hand to uvicorn (``Server.serve(sockets=[...])``);
    a port in use raises a :class:`ListenError` that names the API. ``localhost`` is
    bound on IPv4."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ListenError("control API", host, port, exc) from exc


async def _refused(request: Request, refusal: Exception) -> JSONResponse:
    status = next(code for kind, code in REFUSALS.items() if isinstance(refusal, kind))
    user = request.scope.get("state", {}).get("user")
    if request.method not in SAFE_METHODS and isinstance(user, User):
        # What was asked and refused is audited too: the command itself records only
        # what it did.
        reason = refusal.problems if isinstance(refusal, RulesRefused) else str(refusal)
        await auth_of(request).record(
            user.name,
            "api.refused",
            f"{request.method} {request.url.path}",
            {"status": status, "reason": reason},
        )
    if isinstance(refusal, RulesRefused):
        return JSONResponse({"detail": {"accepted": False, "problems": refusal.problems}}, status)
    return JSONResponse({"detail": str(refusal)}, status)


def _busy(retry_after: float) -> Callable[[Request, Exception], Any]:
    """How a request is answered whose write found the database locked past the lock
    timeout (a backup, another daemon): nothing was done, and the same request may be
    sent again. Not audited: the audit log is behind the same lock."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after))), "Cache-Control": "no-store"}

    async def busy(request: Request, _exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": BUSY}, 503, headers)
        return PlainTextResponse(BUSY, 503, headers)

    return busy


def _host_names(config: ApiConfig) -> list[str]:
    """The names a Host header may give: an address listening on every interface
    (0.0.0.0, ::) is no name a client uses."""
    import ipaddress

    try:
        unspecified = ipaddress.ip_address(config.host).is_unspecified
    except ValueError:
        unspecified = False
    return [*config.allowed_hosts, *([] if unspecified else [config.host])]


def create_app(
    control: Control,
    instruments: Callable[[], Iterable[str]],
    monitor: Monitor | None = None,
    *,
    clock: Callable[[], datetime] = utcnow,
    live: Callable[[], Iterable[InstrumentState]] | None = None,
) -> FastAPI:
    """The API over ``control``; ``instruments`` gives the names of the instruments
    the daemon serves now; ``monitor`` its metrics and readiness. Users and tokens are
    those of ``control``'s store; ``clock`` times sessions and logins. ``live`` gives
    the instruments' connection states for the status page."""
    config = control.settings.api or ApiConfig()
    # No /docs nor /redoc: FastAPI's load their scripts from a CDN, which would then run
    # with the status page's rights. The description stays at /openapi.json.
    app = FastAPI(title="lis-middleware control API", version="1", docs_url=None, redoc_url=None)
    app.router.route_class = StrictJsonRoute
    install(app, Auth(lambda: control.store, config, control.settings.state_dir, clock))
    # Inside the size limit: the form it reads whole is no larger than that.
    app.add_middleware(FormText)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(NoNulInAddress)
    app.add_middleware(ResponseHeaders)
    app.add_middleware(HostCheck, allowed=_host_names(config))
    for kind in REFUSALS:
        app.add_exception_handler(kind, _refused)
    app.add_exception_handler(StoreBusy, _busy(control.settings.database_lock_timeout))

    @app.get("/api/health")
    async def health(_user: Annotated[User, Depends(require(Action.VIEW))]) -> dict[str, Any]:
        return {
            "status": "ok",
            "instruments": sorted(instruments()),
            "rules": control.rules.summary() if control.rules else None,
        }

    @app.get("/api/session")
    async def session(user: Annotated[User, Depends(authenticated())]) -> dict[str, Any]:
        """Who is asking, what their role may do, and (for a session) the CSRF token its
        POSTs must send as ``X-CSRF-Token``."""
        return {
            "user": user.name,
            "role": user.role.value,
            "may": [action.value for action in Action if allowed(user.role, action)],
            "csrf_token": user.csrf_token,
        }

    if monitor is not None:
        _probes(app, monitor)

    @app.post("/api/rules/reload")
    async def reload_rules(
        request: Request, user: Annotated[User, Depends(require(Action.RELOAD_RULES))]
    ) -> dict[str, Any]:
        """Read the rule files again; refused files change nothing (422 with every problem)."""
        before = control.rules_version
        rules = await control.reload_rules(user.name)
        if control.rules_version == before:
            # The command audits a change only; the request is audited all the same.
            await auth_of(request).record(
                user.name, "rules.reload", str(control.settings.rules_dir), {"changed": False}
            )
        return {"accepted": True, "summary": rules.summary()}

    @app.post("/api/corrective-actions/{action_id}/close")
    async def close_corrective_action(
        action_id: RowId,
        closing: Closing,
        user: Annotated[User, Depends(require(Action.RECORD_CORRECTIVE_ACTION))],
    ) -> dict[str, Any]:
        """Close a QC failure's corrective action (409 while QC is not in control again)."""
        closed = await control.close_corrective_action(action_id, user.name, closing.action_taken)
        return {
            "closed": closed.action_id,
            "instrument": closed.instrument,
            "test": closed.test,
            "released": closed.released,
        }

    @app.get("/api/qc/proposals")
    async def proposals(
        _user: Annotated[User, Depends(require(Action.VIEW))],
    ) -> list[dict[str, Any]]:
        """Q3: control lots with 20 results in 20 runs whose own limits await approval."""
        return [
            {
                "instrument": p.instrument,
                "test": p.test,
                "lot": p.lot,
                "mean": str(p.mean),
                "sd": str(p.sd),
                "results": p.results,
            }
            for p in await control.limits_proposals()
        ]

    @app.post("/api/qc/proposals/approve")
    async def approve(
        approval: Approval, user: Annotated[User, Depends(require(Action.APPROVE_LIMITS))]
    ) -> dict[str, Any]:
        approved = await control.approve_limits(
            approval.instrument, approval.test, approval.lot, user.name
        )
        return {"approved": approval.lot, "mean": str(approved.mean), "sd": str(approved.sd)}

    @app.post("/api/qc/events")
    async def qc_event(
        event: QcEvent, user: Annotated[User, Depends(require(Action.RECORD_QC_EVENT))]
    ) -> dict[str, Any]:
        """Calibration or maintenance (voids the tests' QC), or unlock (lifts a method lock)."""
        await control.record_qc_event(event.instrument, event.tests, event.kind, user.name)
        return {"recorded": event.kind, "tests": event.tests}

    @app.get("/api/outbox")
    async def outbox_entries(
        _user: Annotated[User, Depends(require(Action.VIEW))],
    ) -> list[dict[str, Any]]:
        """Messages to the LIS not delivered yet: pending, stopped by an error, dead."""
        return [
            {
                "id": e.id,
                "specimen": e.specimen_id,
                "instrument": e.instrument,
                "control_id": e.control_id,
                "state": e.state,
                "attempts": e.attempts,
                "detail": e.detail,
                "created_at": e.created_at.isoformat() if e.created_at else None,
            }
            for e in await control.outbox_entries()
        ]

    @app.post("/api/outbox/{entry_id}/retry")
    async def retry(
        entry_id: RowId, user: Annotated[User, Depends(require(Action.OUTBOX_RETRY))]
    ) -> dict[str, Any]:
        """Send a stopped or dead message again (409 when it is neither)."""
        await control.retry_outbox(entry_id, user.name)
        return {"retried": entry_id}

    @app.post("/api/outbox/{entry_id}/dismiss")
    async def dismiss(
        entry_id: RowId, user: Annotated[User, Depends(require(Action.OUTBOX_DISMISS))]
    ) -> dict[str, Any]:
        """Set a stopped message aside; its specimen's later messages go on."""
        await control.dismiss_outbox(entry_id, user.name)
        return {"dismissed": entry_id}

    def unknown_states() -> list[InstrumentState]:
        return [InstrumentState(name, "", "", "unknown", 0) for name in instruments()]

    add_pages(app, control, require=require, instruments=live or unknown_states, clock=clock)
    check_guarded(app)
    return app


def _probes(app: FastAPI, monitor: Monitor) -> None:
    """Prometheus's scrape and the liveness and readiness probes."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(monitor.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Live: the event loop answers and the store writer is not stuck."""
        return _probe(monitor.not_live())

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: the store answers, the listeners are bound, the LIS outbox is moving."""
        return _probe(monitor.not_ready())


def _probe(problems: list[str]) -> JSONResponse:
    """A probe's answer: 200 when nothing is wrong, else 503 with every reason."""
    return JSONResponse(
        {"status": "fail" if problems else "ok", "problems": problems},
        503 if problems else 200,
    )
