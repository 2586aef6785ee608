"""The status page: server-rendered HTML (Jinja2) over the control layer.

Every page and form names the action it serves (web/roles.py); the dependency that
checks it (the session, the role and, for a form, its CSRF token) is given by the
application, so this module knows nothing of how people log in. A page's live block
is served alone when asked with ``X-Fragment: 1`` (static/live.js polls it), so a page
stays current without reloading and without a script build. Forms answer with a
redirect to the page they came from (303, with what was done or refused), so that a
reload never posts twice and every page's address can be bookmarked.
"""

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from html import escape
from pathlib import Path as FilePath
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlencode

from fastapi import Depends, FastAPI, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from middleware.control import Control, ControlError, NotFound
from middleware.monitor import InstrumentState
from middleware.store import qc_records, views
from middleware.store.sql import utcnow
from middleware.store.writer import StoreBusy
from middleware.web.charts import ChartPoint, levey_jennings
from middleware.web.guards import path_as_sent
from middleware.web.rawbytes import caret, hexdump
from middleware.web.roles import Action, Role, allowed
from middleware.web.sessions import mac, same
from middleware.zones import zone_or_host

HERE = FilePath(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


#: Before a name written so that no browser takes it for ``.`` or ``..`` (which it takes
#: out of an address, escaped as ``%2E`` or not); a name beginning with it gets it too.
_MARK = "~"


def segment(name: str) -> str:
    """A name as one segment of an address (:func:`_named` reads it back): every reserved
    character escaped (Jinja's ``urlencode`` keeps ``/``), and ``.``, ``..`` or a name
    beginning with ``~`` after a ``~``."""
    quoted = quote(name, safe="")
    return _MARK + quoted if name in (".", "..") or name.startswith(_MARK) else quoted


def _name_of(part: str) -> str:
    name = unquote(part)
    return name[len(_MARK) :] if name.startswith(_MARK) else name


templates.env.filters["segment"] = segment


def _named(request: Request, shape: str) -> tuple[str, ...] | None:
    """The names in an address of ``shape`` (``/qc/*/*``, each ``*`` a name as
    :func:`segment` writes it), read from the address as it came: decoded first, a
    name's escaped ``/`` would pass for a separator, and a lot named ``A/lots/B`` would
    name another lot. None when the address has not that shape."""
    parts = path_as_sent(request).split("/")
    expected = shape.split("/")
    if len(parts) != len(expected) or any(
        want not in ("*", part) for want, part in zip(expected, parts, strict=True)
    ):
        return None
    return tuple(_name_of(part) for want, part in zip(expected, parts, strict=True) if want == "*")


def _qc_page(instrument: str, test: str) -> str:
    return f"/qc/{segment(instrument)}/{segment(test)}"


def _not_found(what: str) -> HTMLResponse:
    return _guarded(HTMLResponse(escape(what), 404))


#: The menu: each page with the action that may see it, so no role is shown a page it
#: would be refused.
NAV = (
    ("/held", "Held results", Action.VIEW_PATIENT_RESULTS),
    ("/qc", "QC", Action.VIEW),
    ("/instruments", "Instruments", Action.VIEW),
    ("/reagents", "Reagent lots", Action.VIEW),
    ("/lis", "LIS link", Action.VIEW),
)


class Person(Protocol):
    """Who is asking, as the application's login gives it."""

    name: str
    role: Role
    csrf_token: str | None
    """The session's secret; None for a request made with a token."""


#: What a person is told when the database stayed locked past the lock timeout.
BUSY = "the database is busy: nothing was done; try again"

#: Row ids are 32-bit in the schema: a larger one is refused (422), never a fault.
MAX_ID = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]

Require = Callable[[Action], Any]
"""An action's dependency: ``Depends(require(action))`` gives the person, or refuses."""


def _fragment(request: Request) -> bool:
    return request.headers.get("x-fragment") == "1"


def add_pages(
    app: FastAPI,
    control: Control,
    *,
    require: Require,
    instruments: Callable[[], Iterable[InstrumentState]],
    clock: Callable[[], datetime] = utcnow,
) -> None:
    """The status pages and their forms, on ``app``."""
    zone = zone_or_host(control.settings.zone)

    def today() -> date:
        """On the laboratory's calendar."""
        return clock().astimezone(zone).date()

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(
        request: Request, name: str, person: Person, title: str, section: str, **context: Any
    ) -> HTMLResponse:
        live = name.removesuffix(".html") + "_live.html"
        if _fragment(request) and (HERE / "templates" / live).exists():
            name = live
        page = templates.TemplateResponse(
            request,
            name,
            {
                "title": title,
                "section": section,
                "nav": [(href, label) for href, label, may in NAV if allowed(person.role, may)],
                "user": person,
                # Empty for a request made with a token: it posts no form.
                "csrf_token": person.csrf_token or "",
                "zone": zone,
                **_notice(request.query_params, person.csrf_token),
                **context,
            },
        )
        return _guarded(page)

    def store() -> Any:
        if control.store is None:
            raise NotFound("the store is not open yet")
        return control.store

    @app.get("/", include_in_schema=False)
    async def home(person: Annotated[Person, Depends(require(Action.VIEW))]) -> Response:
        start = "/held" if allowed(person.role, Action.VIEW_PATIENT_RESULTS) else "/qc"
        return RedirectResponse(start, 303)

    viewed = _Viewed()

    @app.get("/held", response_class=HTMLResponse, include_in_schema=False)
    async def held_page(
        request: Request,
        person: Annotated[Person, Depends(require(Action.VIEW_PATIENT_RESULTS))],
        instrument: str | None = None,
        specimen: str | None = None,
        after_instrument: str | None = None,
        after_specimen: str | None = None,
        after_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    ) -> Any:
        after = None
        if after_instrument is not None and after_specimen is not None and after_id is not None:
            after = (after_instrument, after_specimen, after_id)
        page = await control.held_results(instrument or None, specimen or None, after)
        shown = [r.result_id for r in page.results]
        new = viewed.new(person.name, shown)
        if new:
            # D8: who saw which patient result; a page polled again records only what
            # this person had not seen yet (marked so once the record is written).
            await control.record_view(person.name, new)
            viewed.seen(person.name, new)
        next_query = ""
        if page.next_after is not None:
            next_instrument, next_specimen, next_id = page.next_after
            next_query = urlencode(
                {
                    "instrument": instrument or "",
                    "specimen": specimen or "",
                    "after_instrument": next_instrument,
                    "after_specimen": next_specimen,
                    "after_id": next_id,
                }
            )
        role = person.role
        can = {
            "release": allowed(role, Action.RELEASE),
            "reject": allowed(role, Action.REJECT),
            "early": allowed(role, Action.EARLY_RELEASE),
            "rerun": allowed(role, Action.REQUEST_RERUN),
            "comment": allowed(role, Action.COMMENT),
        }
        return render(
            request, "held.html", person, "Held results", "/held", page=page, can=can,
            instrument=instrument, specimen=specimen, next_query=next_query,
            instrument_names=sorted(i.name for i in instruments()),
        )  # fmt: skip

    async def refused(
        request: Request, person: Person, back: str, refusal: ControlError | StoreBusy
    ) -> Response:
        """Back to the form's page saying why nothing was done. A command's refusal is
        audited as the API's are; a busy database is not: the audit log waits behind the
        same lock."""
        if isinstance(refusal, ControlError):
            asked = f"{request.method} {request.url.path}"
            await control.record_refusal(person.name, asked, str(refusal))
        return _back(person, back, error=_why(refusal))

    async def act(
        request: Request, person: Person, back: str, done: str, work: Awaitable[Any]
    ) -> Response:
        try:
            await work
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, back, refusal)
        return _back(person, back, done=done)

    @app.post("/held/{result_id}/release", include_in_schema=False)
    async def release(
        request: Request,
        result_id: RowId,
        person: Annotated[Person, Depends(require(Action.RELEASE))],
    ) -> Response:
        work = control.release_results([result_id], person.name)
        return await act(request, person, "/held", f"result {result_id} released", work)

    @app.post("/held/{result_id}/reject", include_in_schema=False)
    async def reject(
        request: Request,
        result_id: RowId,
        person: Annotated[Person, Depends(require(Action.REJECT))],
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        work = control.reject_results([result_id], reason, person.name)
        return await act(request, person, "/held", f"result {result_id} rejected", work)

    @app.post("/held/{result_id}/send-early", include_in_schema=False)
    async def send_early(
        request: Request,
        result_id: RowId,
        person: Annotated[Person, Depends(require(Action.EARLY_RELEASE))],
    ) -> Response:
        work = control.send_early([result_id], person.name)
        return await act(request, person, "/held", f"result {result_id} sent as preliminary", work)

    @app.post("/held/{result_id}/rerun", include_in_schema=False)
    async def rerun(
        request: Request,
        result_id: RowId,
        person: Annotated[Person, Depends(require(Action.REQUEST_RERUN))],
    ) -> Response:
        work = control.request_rerun([result_id], person.name)
        return await act(request, person, "/held", f"re-run of result {result_id} asked for", work)

    @app.post("/held/{result_id}/comment", include_in_schema=False)
    async def comment(
        request: Request,
        result_id: RowId,
        person: Annotated[Person, Depends(require(Action.COMMENT))],
        text: Annotated[str, Form()] = "",
    ) -> Response:
        work = control.comment_result(result_id, text, person.name)
        return await act(request, person, "/held", f"comment added to result {result_id}", work)

    @app.post("/qc/{instrument}/{test:path}/release-run", include_in_schema=False)
    async def release_run(
        request: Request, person: Annotated[Person, Depends(require(Action.RELEASE))]
    ) -> Response:
        named = _named(request, "/qc/*/*/release-run")
        if named is None:
            return _back(person, "/qc", error="no such test")
        instrument, test = named
        back = _qc_page(instrument, test)
        try:
            run = await control.release_run(instrument, test, person.name)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, back, refusal)
        return _back(person, back, done=f"{len(run.released)} held result(s) released")

    @app.get("/reagents", response_class=HTMLResponse, include_in_schema=False)
    async def reagents_page(
        request: Request, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        names = sorted(i.name for i in instruments())
        by_instrument = [(name, await control.lots_in_use(name)) for name in names]
        return render(
            request, "reagents.html", person, "Reagent lots", "/reagents",
            by_instrument=by_instrument, today=today(),
            can_recall=allowed(person.role, Action.RECALL_REAGENT_LOT),
            can_see_results=allowed(person.role, Action.VIEW_PATIENT_RESULTS),
        )  # fmt: skip

    @app.get(
        "/reagents/{reagent:path}/lots/{lot:path}",
        response_class=HTMLResponse,
        include_in_schema=False,
    )
    async def reagent_lot_page(
        request: Request,
        person: Annotated[Person, Depends(require(Action.VIEW_PATIENT_RESULTS))],
        after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> Any:
        named = _named(request, "/reagents/*/lots/*")
        if named is None:
            return _not_found("no such reagent lot")
        reagent, lot = named
        try:
            found = await control.results_of_lot(reagent, lot, after)
        except ControlError as missing:  # unknown, or a name no analyser could report
            return _not_found(str(missing))
        new = viewed.new(person.name, [r.result_id for r in found])
        if new:
            await control.record_view(person.name, new)
            viewed.seen(person.name, new)
        return render(
            request, "reagent_lot.html", person, f"Results made with {reagent} lot {lot}",
            "/reagents", results=found,
            next_after=found[-1].result_id if len(found) >= 100 else None,
        )  # fmt: skip

    @app.post("/reagents/{reagent:path}/lots/{lot:path}/recall", include_in_schema=False)
    async def recall(
        request: Request,
        person: Annotated[Person, Depends(require(Action.RECALL_REAGENT_LOT))],
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        named = _named(request, "/reagents/*/lots/*/recall")
        if named is None:
            return _back(person, "/reagents", error="no such reagent lot")
        reagent, lot = named
        try:
            recalled = await control.recall_reagent_lot(reagent, lot, person.name, reason)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, "/reagents", refusal)
        held, released = len(recalled.held), len(recalled.released)
        done = f"{reagent} lot {lot} recalled: {held} result(s) held, {released} to review"
        return _back(person, "/reagents", done=done)

    def judged(test: views.QcTest) -> views.QcTest:
        """The stored state, with what the rules in force add to it: QC past its validity,
        no QC in control yet, judged on the manufacturer's limits (Q3)."""
        engine = control.engine
        if test.state != "in-control" or engine is None:
            return test
        policy = engine.gate.policy(test.instrument, test.test_code)
        if policy is None:
            return replace(test, state="no-policy", detail="no QC policy for this test")
        if test.last_in_control_at is None:
            return replace(test, state="not-established", detail="no QC in control yet")
        validity = timedelta(hours=float(policy.validity_hours))
        if clock() - test.last_in_control_at > validity:
            return replace(
                test, state="expired", detail=f"valid {policy.validity_hours} h after its QC"
            )
        # As the gate reads them (qc-unevaluated): a required level whose latest control
        # could not be evaluated has no valid QC.
        unusable = [f"level {name}: {why}" for name, why in test.unusable if name in policy.levels]
        if unusable:
            return replace(test, state="unevaluated", detail="; ".join(unusable))
        if test.recent and test.recent[-1].provisional:
            return replace(test, detail="on the manufacturer's limits until the lab's own")
        return test

    @app.get("/qc", response_class=HTMLResponse, include_in_schema=False)
    async def qc_page(
        request: Request, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        tests = [judged(t) for t in await store().read_async(views.qc_tests_view)]
        return render(request, "qc.html", person, "Quality control", "/qc", tests=tests)

    @app.get("/qc/{instrument}/{test:path}", response_class=HTMLResponse, include_in_schema=False)
    async def qc_test_page(
        request: Request, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        named = _named(request, "/qc/*/*")
        if named is None:
            return _not_found("no such test")
        instrument, test = named

        def read(conn: Any) -> tuple[Any, ...]:
            found = views.qc_tests_view(conn, recent=0, only=(instrument, test))
            state = judged(found[0]) if found else None
            lots = views.control_lots(conn, instrument, test)
            points = {
                lot.lot: views.evaluations(
                    conn, instrument, test, lot=lot.lot, material=lot.material
                )
                for lot in lots
            }
            actions = [
                a
                for a in qc_records.open_corrective_actions(conn)
                if a.instrument == instrument and a.test_code == test
            ]
            return state, lots, points, actions

        state, lots, points, actions = await store().read_async(read)
        proposals = [
            p
            for p in (await control.limits_proposals() if control.engine else [])
            if p.instrument == instrument and p.test == test
        ]
        charts = {
            lot.lot: _chart(f"{instrument} {test} control lot {lot.lot}", points[lot.lot])
            for lot in lots
        }
        return render(
            request, "qc_test.html", person, f"QC of {test} on {instrument}", "/qc",
            instrument=instrument, test_code=test, test=state, lots=lots, charts=charts,
            corrective_actions=actions, proposals=proposals,
            can_close=allowed(person.role, Action.RECORD_CORRECTIVE_ACTION),
            can_approve=allowed(person.role, Action.APPROVE_LIMITS),
            can_release_run=allowed(person.role, Action.RELEASE),
        )  # fmt: skip

    @app.post("/qc/corrective-actions/{action_id}/close", include_in_schema=False)
    async def close_corrective_action(
        request: Request,
        action_id: RowId,
        person: Annotated[Person, Depends(require(Action.RECORD_CORRECTIVE_ACTION))],
        action_taken: Annotated[str, Form()] = "",
    ) -> Response:
        back = "/qc"
        if not action_taken.strip():
            return _back(person, back, error="say what was done to correct the failure")
        try:
            closed = await control.close_corrective_action(action_id, person.name, action_taken)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, back, refusal)
        back = _qc_page(closed.instrument, closed.test)
        return _back(
            person, back, done=f"corrective action closed; {len(closed.released)} released"
        )

    @app.post("/qc/{instrument}/{test:path}/lots/{lot:path}/approve", include_in_schema=False)
    async def approve_limits(
        request: Request, person: Annotated[Person, Depends(require(Action.APPROVE_LIMITS))]
    ) -> Response:
        named = _named(request, "/qc/*/*/lots/*/approve")
        if named is None:
            return _back(person, "/qc", error="no such control lot")
        instrument, test, lot = named
        back = _qc_page(instrument, test)
        try:
            approved = await control.approve_limits(instrument, test, lot, person.name)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, back, refusal)
        return _back(
            person, back, done=f"limits of {lot} approved: mean {approved.mean}, SD {approved.sd}"
        )

    @app.get("/instruments", response_class=HTMLResponse, include_in_schema=False)
    async def instruments_page(
        request: Request, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        start_of_day = datetime.combine(today(), time(), zone).astimezone(UTC)
        days = await store().read_async(lambda c: views.instruments_today(c, start_of_day))
        return render(
            request, "instruments.html", person, "Instruments", "/instruments",
            instruments=sorted(instruments(), key=lambda i: i.name), days=days,
        )  # fmt: skip

    @app.get("/instruments/{name}/quarantine", response_class=HTMLResponse, include_in_schema=False)
    async def quarantine_page(
        request: Request, name: str, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        entries = await store().read_async(lambda c: views.quarantined(c, name))
        if not entries:
            # What the API answers for it too; one no longer configured keeps its page
            # while anything of it is kept.
            try:
                await control.known_instrument(name)
            except NotFound as missing:
                return _not_found(str(missing))
        return render(
            request, "quarantine.html", person, f"Quarantined messages of {name}",
            "/instruments", entries=entries,
            can_read=allowed(person.role, Action.VIEW_PATIENT_RESULTS),
        )  # fmt: skip

    @app.get("/quarantine/{entry_id}", response_class=HTMLResponse, include_in_schema=False)
    async def quarantine_entry(
        request: Request,
        entry_id: RowId,
        person: Annotated[Person, Depends(require(Action.VIEW_PATIENT_RESULTS))],
    ) -> Any:
        entry = await store().read_async(lambda c: views.quarantined_entry(c, entry_id))
        if entry is None:
            return _guarded(HTMLResponse("no such quarantined message", 404))
        # The bytes an analyser sent hold patients and their results (D8).
        await control.record_raw_view(person.name, entry_id)
        return render(
            request, "quarantine_entry.html", person, f"Quarantined message {entry_id}",
            "/instruments", entry=entry, caret=caret(entry.data), hex=hexdump(entry.data),
        )  # fmt: skip

    @app.get("/lis", response_class=HTMLResponse, include_in_schema=False)
    async def lis_page(
        request: Request, person: Annotated[Person, Depends(require(Action.VIEW))]
    ) -> Any:
        link = await store().read_async(views.lis_link)
        oldest = link.figures.oldest_pending_at
        return render(
            request, "lis.html", person, "LIS link", "/lis", link=link,
            oldest=int((clock() - oldest).total_seconds()) if oldest else None,
            can_retry=allowed(person.role, Action.OUTBOX_RETRY),
            can_read=allowed(person.role, Action.VIEW_PATIENT_RESULTS),
            can_dismiss=allowed(person.role, Action.OUTBOX_DISMISS),
        )  # fmt: skip

    @app.post("/lis/outbox/{entry_id}/retry", include_in_schema=False)
    async def retry(
        request: Request,
        entry_id: RowId,
        person: Annotated[Person, Depends(require(Action.OUTBOX_RETRY))],
    ) -> Response:
        try:
            await control.retry_outbox(entry_id, person.name)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, "/lis", refusal)
        return _back(person, "/lis", done=f"message {entry_id} will be sent again")

    @app.post("/lis/outbox/{entry_id}/dismiss", include_in_schema=False)
    async def dismiss(
        request: Request,
        entry_id: RowId,
        person: Annotated[Person, Depends(require(Action.OUTBOX_DISMISS))],
    ) -> Response:
        try:
            await control.dismiss_outbox(entry_id, person.name)
        except (ControlError, StoreBusy) as refusal:
            return await refused(request, person, "/lis", refusal)
        return _back(person, "/lis", done=f"message {entry_id} set aside")


R = TypeVar("R", bound=Response)

#: Pages show patient results: never cached, never framed by another page, no script but
#: the page's own file.
_HEADERS = {
    "Cache-Control": "no-store",
    "Vary": "X-Fragment, Cookie",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _guarded(response: R) -> R:
    response.headers.update(_HEADERS)
    return response


def _seal(secret: str, kind: str, text: str) -> str:
    return mac(secret.encode("utf-8"), b"lis-notice/1.", f"{kind}\0{text}")


def _back(person: Person, path: str, **message: str) -> RedirectResponse:
    """To the page a form came from, with what was done or refused, sealed with the
    session's secret: the page shows only a notice it wrote for that session, so a link
    made elsewhere cannot put its own words on our page."""
    if not message or not person.csrf_token:
        return RedirectResponse(path, 303)
    [(kind, text)] = message.items()
    query = urlencode({kind: text, "seal": _seal(person.csrf_token, kind, text)})
    return RedirectResponse(f"{path}?{query}", 303)


def _why(refusal: Exception) -> str:
    """What a person is told of a command not done."""
    return BUSY if isinstance(refusal, StoreBusy) else str(refusal)


def _notice(query: Mapping[str, str], secret: str | None) -> dict[str, str]:
    """``done`` and ``error`` for the page: the one sent back by :func:`_back` for this
    session, or nothing."""
    out = {"done": "", "error": ""}
    for kind in out:
        text = query.get(kind)
        if text is not None and secret and same(query.get("seal", ""), _seal(secret, kind, text)):
            out[kind] = text
    return out


def _chart(title: str, evaluations: list[views.Evaluation]) -> str:
    latest = evaluations[-1] if evaluations else None
    points = [
        ChartPoint(
            e.at,
            e.value,
            float(e.z) if e.z is not None else None,
            e.status,
            e.violations,
            e.warnings,
        )
        for e in evaluations
    ]
    return levey_jennings(
        points,
        latest.target_mean if latest else None,
        latest.target_sd if latest else None,
        title,
        latest.units if latest else "",
    )


class _Viewed:
    """Which patient results each person was last shown, so that a page polled every few
    seconds records a view (D8) only for what is new to them. Bounded: the least recent
    person is forgotten first, and then the next view of theirs is recorded again."""

    def __init__(self, people: int = 200, per_person: int = 2000) -> None:
        self._seen: OrderedDict[str, set[int]] = OrderedDict()
        self._people = people
        self._per_person = per_person

    def new(self, person: str, shown: Iterable[int]) -> list[int]:
        """What of ``shown`` this person has not been recorded seeing."""
        seen = self._seen.get(person, set())
        return [i for i in shown if i not in seen]

    def seen(self, person: str, ids: Iterable[int]) -> None:
        """Recorded: ``ids`` need not be again for this person."""
        seen = self._seen.pop(person, set())
        fresh = set(ids)
        seen |= fresh
        if len(seen) > self._per_person:
            seen = fresh
        self._seen[person] = seen
        while len(self._seen) > self._people:
            self._seen.popitem(last=False)
