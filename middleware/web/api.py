"""The control API: what lab IT and the QC officer do to a running daemon.

It has no authentication of its own yet, so it listens on a loopback address only (the
configuration refuses any other) until users and roles arrive.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path
from pydantic import BaseModel, Field

from middleware.settings import ApiConfig
from middleware.transport.tcp import ListenError
from middleware.web.guards import BodyLimit, HostCheck, StrictJsonRoute

if TYPE_CHECKING:
    from middleware.daemon import Daemon


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
    kind: Literal["calibration", "maintenance", "unlock"]


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


def create_app(daemon: Daemon) -> FastAPI:
    config = daemon.settings.api or ApiConfig()
    app = FastAPI(title="lis-middleware control API", version="1")
    app.router.route_class = StrictJsonRoute
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(HostCheck, allowed=[*config.allowed_hosts, config.host])

    def configured(instrument: str) -> None:
        """Refuse what names an instrument this daemon does not know, before recording it."""
        if all(known.name != instrument for known in daemon.settings.instruments):
            raise HTTPException(404, f"unknown instrument {instrument!r}: not in the configuration")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "instruments": sorted(daemon.pipelines),
            "rules": daemon.rules.summary() if daemon.rules else None,
        }

    @app.post("/api/rules/reload")
    async def reload_rules(who: Who) -> dict[str, Any]:
        """Read the rule files again; refused files change nothing (422 with every problem)."""
        problems = await daemon.reload_rules(who.by)
        if problems:
            raise HTTPException(status_code=422, detail={"accepted": False, "problems": problems})
        assert daemon.rules is not None
        return {"accepted": True, "summary": daemon.rules.summary()}

    @app.post("/api/corrective-actions/{action_id}/close")
    async def close_corrective_action(action_id: RowId, closing: Closing) -> dict[str, Any]:
        """Close a QC failure's corrective action (409 while QC is not in control again)."""
        try:
            closed = await daemon.close_corrective_action(
                action_id, closing.by, closing.action_taken
            )
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return {
            "closed": closed.action_id,
            "instrument": closed.instrument,
            "test": closed.test,
            "released": closed.released,
        }

    @app.get("/api/qc/proposals")
    async def proposals() -> list[dict[str, Any]]:
        """Q3: control lots with 20 results in 20 runs whose own limits await approval."""
        try:
            found = await daemon.limits_proposals()
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return [
            {
                "instrument": p.instrument,
                "test": p.test,
                "lot": p.lot,
                "mean": str(p.mean),
                "sd": str(p.sd),
                "results": p.results,
            }
            for p in found
        ]

    @app.post("/api/qc/proposals/approve")
    async def approve(approval: Approval) -> dict[str, Any]:
        configured(approval.instrument)
        try:
            approved = await daemon.approve_limits(
                approval.instrument, approval.test, approval.lot, approval.by
            )
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return {"approved": approval.lot, "mean": str(approved.mean), "sd": str(approved.sd)}

    @app.post("/api/qc/events")
    async def qc_event(event: QcEvent) -> dict[str, Any]:
        """Calibration or maintenance (voids the tests' QC), or unlock (lifts a method lock)."""
        configured(event.instrument)
        try:
            await daemon.record_qc_event(event.instrument, event.tests, event.kind, event.by)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return {"recorded": event.kind, "tests": event.tests}

    return app
