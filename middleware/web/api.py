"""The control API: what lab IT and the QC officer do to a running daemon.

It listens on the loopback address by default; it has no authentication of its own yet,
so it must not be exposed beyond the host until users and roles arrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from middleware.daemon import Daemon


class Who(BaseModel):
    by: str = Field(min_length=1, description="who asks (recorded in the audit log)")


class Closing(Who):
    action_taken: str = Field(min_length=1, description="what was done about the failure")


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

    return app
