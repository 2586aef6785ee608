"""What the control API refuses before any endpoint runs: foreign Host headers, bodies
over the size limit, addresses holding a NUL, JSON that is not JSON (NaN, Infinity), and
forms whose text is not UTF-8.

The API shares its event loop with the analyser connections, whose frames must be
acknowledged within seconds: nothing a client sends may make that loop wait long.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A name or a bracketed IPv6 address, then an optional port (RFC 9110 section 7.2).
_HOST_HEADER = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]*)?")


def _normal(name: str) -> str:
    """A host name compared without regard to case, or an address in its one spelling."""
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name.lower()


class HostCheck:
    """Refuses (400) HTTP requests whose Host header is not one of ``allowed``.

    A page on another site whose name is made to resolve to 127.0.0.1 reaches the API
    with that name in its Host header; that is how DNS rebinding is told apart.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(_normal(name) for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host", "")
            match = _HOST_HEADER.fullmatch(header)
            name = match and (match["ipv6"] or match["name"])
            if not name or _normal(name) not in self.allowed:
                response = JSONResponse({"detail": f"host {header!r} not allowed"}, 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NoNulInAddress:
    """Refuses (400) a request whose path or query holds a NUL, as sent or %00.

    No name the daemon keeps can hold one: PostgreSQL's text refuses it (a fault, not an
    answer) where SQLite would look for it and find nothing. Refused here, both answer
    the same, and no route has to think of it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            query = unquote_to_bytes(scope.get("query_string", b""))
            if "\x00" in path or b"\x00" in query:
                response = JSONResponse({"detail": "the address holds a NUL character"}, 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def path_as_sent(request: Request) -> str:
    """The request's path as it came, its escapes kept (without the query): decoded, an
    escaped ``/`` in a name would read as a separator."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return str(raw.split(b"?", 1)[0].decode("latin-1"))


class ResponseHeaders:
    """Answers of ``/api/`` kept by no cache (``Cache-Control: no-store``), as the pages'
    are: they carry the session's CSRF token, specimen ids, the LIS's error text. Over
    TLS, every answer tells the browser to come back over TLS only (HSTS, a year)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added: list[tuple[bytes, bytes]] = []
        if scope["path"].startswith("/api/"):
            added.append((b"cache-control", b"no-store"))
        if scope.get("scheme") == "https":
            added.append((b"strict-transport-security", b"max-age=31536000"))
        if not added:
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in added}

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in names]
                message = {**message, "headers": [*headers, *added]}
            await send(message)

        await self.app(scope, receive, marked)


class BodyTooLarge(HTTPException):
    """Raised while a body is read, past the limit; the app answers it like any HTTP error.

    The connection stays open: the server discards the rest of the body as it comes, and
    a client that sends it all before reading gets the 413 rather than a reset.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class FormText:
    """Refuses (400) a form whose text is not UTF-8, and (415) a form sent as
    multipart/form-data, which no page sends.

    Left to the framework, bytes that are not UTF-8 (a lone surrogate, an overlong form)
    become replacement characters, or latin-1 in a multipart part: a comment would reach
    the LIS other than as typed, and the page say it was added.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        kind = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            response = PlainTextResponse("the pages' forms are sent url-encoded", 415)
            await response(scope, receive, send)
            return
        if kind != "application/x-www-form-urlencoded":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                more = message.get("more_body", False)
        except BodyTooLarge as refusal:
            # Read here, outside the framework's handlers: answered here too.
            too_large = JSONResponse({"detail": refusal.detail}, refusal.status_code)
            await too_large(scope, receive, send)
            return
        if not _utf8_form(body):
            response = PlainTextResponse(
                "the form's text is not UTF-8: nothing was done; send the form again from the page",
                400,
            )
            await response(scope, receive, send)
            return
        sent = False

        async def again() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, again, send)


def _utf8_form(body: bytes) -> bool:
    """Whether every name and value of a url-encoded body is UTF-8 once unescaped."""
    try:
        for field in body.split(b"&"):
            for part in field.split(b"=", 1):
                unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class BodyLimit:
    """Refuses (413) request bodies over ``limit`` bytes, holding no more than that.

    A declared Content-Length over the limit is refused before the app runs; a body of
    unknown length (chunked) is counted as it arrives and refused once past the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = int(Headers(scope=scope).get("content-length", "0"))
        except ValueError:
            declared = 0  # the server refuses these; counting below still holds
        if declared > self.limit:
            refusal = BodyTooLarge(self.limit)
            response = JSONResponse({"detail": refusal.detail}, refusal.status_code)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 defines it: Python's ``json`` would also take NaN and Infinity
    (and 1e999 as infinity), and half a surrogate pair (``"\\ud800"``), which no field
    here can hold nor any answer echo back."""
    value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        # ``\ud800`` alone is half of a pair: no character, and no answer could echo it.
        raise ValueError(
            f"a lone surrogate \\u{ord(exc.object[exc.start]):04x} is no character"
        ) from None
    return value


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        try:
            return strict_json(await self.body())
        except json.JSONDecodeError:
            raise  # the app reports where the syntax is wrong
        except ValueError as exc:
            raise HTTPException(422, f"request body: {exc}") from None


class StrictJsonRoute(APIRoute):
    """A route whose JSON body is read by :func:`strict_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict
