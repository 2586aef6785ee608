"""The control API: what lab IT and the QC officer do to a running daemon.

It has no authentication of its own yet, so it listens on a loopback address only (the
configuration refuses any other) until users and roles arrive.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from middleware.control import (
    Conflict,
    Control,
    ControlError,
    EngineNotRunning,
    NotFound,
    QcEventKind,
    RulesRefused,
)
from middleware.monitor import Monitor
from middleware.settings import ApiConfig
from middleware.transport.tcp import ListenError
from middleware.web.guards import BodyLimit, HostCheck, StrictJsonRoute

#: How the API answers each refusal of a command. Any other exception is a fault of the
#: middleware: a 500, logged by the server, never passed off as the operator's mistake.
REFUSALS: dict[type[ControlError], int] = {
    NotFound: 404,
    Conflict: 409,
    # A daemon run without rules is configured so, not failing: a 5xx would say try later.
    EngineNotRunning: 409,
    RulesRefused: 422,
}


class Who(BaseModel):
    by: str = Field(min_length=1, description="who asks (recorded in the audit log)")


class Closing(Who):
    action_taken: str = Field(min_length=1, description="what was done about the failure")


class Approval(Who):
    instrument: str = Field(min_length=1)
    test: str = Field(min_length=1)
    lot: str = Field(min_length=1)


class QcEvent(Who):
    instrument: str = Field(min_length=1)
    tests: list[str] = Field(min_length=1)
    kind: QcEventKind


#: Row ids are 32-bit in the schema; a larger one would be an error of the database.
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, to hand to uvicorn (``Server.serve(sockets=[...])``);
    a port in use raises a :class:`ListenError` that names the API. ``localhost`` is
    bound on IPv4."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ListenError("control API", host, port, exc) from exc


async def _refused(_request: Request, refusal: Exception) -> JSONResponse:
    status = next(code for kind, code in REFUSALS.items() if isinstance(refusal, kind))
    if isinstance(refusal, RulesRefused):
        return JSONResponse({"detail": {"accepted": False, "problems": refusal.problems}}, status)
    return JSONResponse({"detail": str(refusal)}, status)


def create_app(
    control: Control,
    instruments: Callable[[], Iterable[str]],
    monitor: Monitor | None = None,
) -> FastAPI:
    """The API over ``control``; ``instruments`` gives the names of the instruments
    the daemon serves now; ``monitor`` its metrics and readiness."""
    config = control.settings.api or ApiConfig()
    app = FastAPI(title="lis-middleware control API", version="1")
    app.router.route_class = StrictJsonRoute
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(HostCheck, allowed=[*config.allowed_hosts, config.host])
    for kind in REFUSALS:
        app.add_exception_handler(kind, _refused)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "instruments": sorted(instruments()),
            "rules": control.rules.summary() if control.rules else None,
        }

    if monitor is not None:
        _probes(app, monitor)

    @app.post("/api/rules/reload")
    async def reload_rules(who: Who) -> dict[str, Any]:
        """Read the rule files again; refused files change nothing (422 with every problem)."""
        rules = await control.reload_rules(who.by)
        return {"accepted": True, "summary": rules.summary()}

    @app.post("/api/corrective-actions/{action_id}/close")
    async def close_corrective_action(action_id: RowId, closing: Closing) -> dict[str, Any]:
        """Close a QC failure's corrective action (409 while QC is not in control again)."""
        closed = await control.close_corrective_action(action_id, closing.by, closing.action_taken)
        return {
            "closed": closed.action_id,
            "instrument": closed.instrument,
            "test": closed.test,
            "released": closed.released,
        }

    @app.get("/api/qc/proposals")
    async def proposals() -> list[dict[str, Any]]:
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
    async def approve(approval: Approval) -> dict[str, Any]:
        approved = await control.approve_limits(
            approval.instrument, approval.test, approval.lot, approval.by
        )
        return {"approved": approval.lot, "mean": str(approved.mean), "sd": str(approved.sd)}

    @app.post("/api/qc/events")
    async def qc_event(event: QcEvent) -> dict[str, Any]:
        """Calibration or maintenance (voids the tests' QC), or unlock (lifts a method lock)."""
        await control.record_qc_event(event.instrument, event.tests, event.kind, event.by)
        return {"recorded": event.kind, "tests": event.tests}

    @app.get("/api/outbox")
    async def outbox_entries() -> list[dict[str, Any]]:
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
    async def retry(entry_id: RowId, who: Who) -> dict[str, Any]:
        """Send a stopped or dead message again (409 when it is neither)."""
        await control.retry_outbox(entry_id, who.by)
        return {"retried": entry_id}

    @app.post("/api/outbox/{entry_id}/dismiss")
    async def dismiss(entry_id: RowId, who: Who) -> dict[str, Any]:
        """Set a stopped message aside; its specimen's later messages go on."""
        await control.dismiss_outbox(entry_id, who.by)
        return {"dismissed": entry_id}

    return app


def _probes(app: FastAPI, monitor: Monitor) -> None:
    """Prometheus's scrape and the liveness and readiness probes."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(monitor.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Live: the event loop answers and the store writer is not stuck."""
        problems = monitor.not_live()
        return JSONResponse(
            {"status": "fail" if problems else "ok", "problems": problems},
            503 if problems else 200,
        )

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: the store answers, the listeners are bound, the LIS outbox is moving."""
        problems = monitor.not_ready()
        return JSONResponse(
            {"status": "fail" if problems else "ok", "problems": problems},
            503 if problems else 200,
        )
