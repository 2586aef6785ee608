"""The control API against its own OpenAPI schema: schemathesis generates requests for
every operation (paths, queries and bodies, valid and not), sent over real HTTP to the API
of a started daemon, as a role that may act and as one that may only look. None gets a
server error; every JSON answer is JSON. ``MIDDLEWARE_API_FUZZ_EXAMPLES`` raises the
number of requests per operation (``make fuzz``)."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from middleware.store import Store
from middleware.web.roles import Role
from tests import credentials
from tests.conftest import ROOT
from tests.test_api_hostile import api_of, bearer, idle, serving, with_users

EXAMPLES = int(os.environ.get("MIDDLEWARE_API_FUZZ_EXAMPLES", "25"))


def _fuzz(
    schema: schemathesis.BaseSchema, base: str, headers: dict[str, str], examples: int = EXAMPLES
) -> list[str]:
    """Every operation's generated requests (``examples`` each); what went wrong, one line
    each."""
    found: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=base, headers=headers, timeout=30)
            asked = f"{case.method} {case.formatted_path} {case.query!r} {case.body!r}"[:300]
            if response.status_code >= 500:
                found.append(f"{asked}: {response.status_code} {response.text[:200]}")
            elif "application/json" in str(response.headers.get("content-type")):
                try:
                    json.loads(response.text)
                except ValueError:
                    found.append(f"{asked}: not JSON: {response.text[:200]}")

        check()
    return found


@pytest.mark.parametrize("role", [Role.BIOLOGIST, Role.VIEWER])
async def test_no_generated_request_gets_a_server_error(
    tmp_path: Path, database_url: str, role: Role
) -> None:
    chem = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
    daemon = idle(state_dir=tmp_path / "state", database_url=database_url,
                  rules_dir=ROOT / "rules", instruments=[chem])  # fmt: skip
    await daemon.start()
    try:
        app = api_of(daemon)
        schema = schemathesis.openapi.from_dict(app.openapi())
        assert len(list(schema.get_all_operations())) >= 10
        headers = bearer(daemon, role, "fuzzer")
        async with serving(app) as base:
            # The requests are sent from a thread; the API answers in this event loop, as
            # it does in the daemon beside the analyser connections.
            found = await asyncio.to_thread(_fuzz, schema, base, headers)
            async with httpx.AsyncClient(base_url=base, headers=headers) as client:
                alive = await client.get("/api/health")
    finally:
        await daemon.stop()
    assert found == []
    assert alive.status_code == 200


async def test_a_route_that_fails_on_some_input_is_found(tmp_path: Path) -> None:
    users = Store(f"sqlite:///{tmp_path / 'users.db'}")
    app = api_of(with_users(idle(), users))

    @app.get("/api/root/{n}")
    async def root(n: int) -> dict[str, float]:
        return {"root": math.sqrt(n)}  # a negative n is a server error

    app.openapi_schema = None  # built with the app: again, with this route
    document = app.openapi()
    document["paths"] = {"/api/root/{n}": document["paths"]["/api/root/{n}"]}
    schema = schemathesis.openapi.from_dict(document)
    try:
        async with serving(app) as base:
            token = credentials.bearer(users, Role.BIOLOGIST, "fuzzer")
            # This route alone, asked enough that a negative number is among the requests
            # whatever the draw (at 25, one run in many drew none).
            found = await asyncio.to_thread(_fuzz, schema, base, token, 200)
    finally:
        users.close()
    assert any(line.startswith("GET /api/root/-") and ": 500 " in line for line in found), found
