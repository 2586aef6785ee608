"""The control API: what lab IT and the QC officer do to a running daemon.

It listens on the loopback address by default; it has no authentication of its own yet,
so it must not be exposed beyond the host until users and roles arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

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


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="lis-middleware control API", version="1")

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
    async def close_corrective_action(action_id: int, closing: Closing) -> dict[str, Any]:
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
        try:
            await daemon.record_qc_event(event.instrument, event.tests, event.kind, event.by)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return {"recorded": event.kind, "tests": event.tests}

    return app
