"""The status pages over HTTP, on a real store: what each page shows, the live block
served alone, a view of patient results recorded once per person (D8), text from
analysers escaped, quarantined bytes shown, and each form's refusals."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape as html_escape
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select, text

from middleware.assessment import Assessment, assess_message
from middleware.control import Control
from middleware.domain import InstrumentMessage, Measurement, ReagentUse, Result
from middleware.engine.decision import Decision
from middleware.settings import Settings
from middleware.store import Store
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.schema import audit_log, result_comments
from middleware.web.api import create_app
from middleware.web.roles import Role
from tests import credentials
from tests.conftest import ROOT
from tests.messages import patient, qc
from tests.test_outbox import T0, _store
from tests.test_status_views import _quarantine

CHEM = {"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1", "port": 0}


@dataclass
class Pages:
    store: Store
    client: httpx.AsyncClient

    def audited(self, action: str) -> list[tuple[str, str]]:
        rows = self.store.read(
            lambda c: c.execute(
                select(audit_log.c.actor, audit_log.c.subject)
                .where(audit_log.c.action == action)
                .order_by(audit_log.c.id)
            ).all()
        )
        return [(r.actor, r.subject) for r in rows]

    def views(self) -> list[str]:
        rows = self.store.read(
            lambda c: c.execute(
                select(audit_log.c.actor, audit_log.c.detail)
                .where(audit_log.c.action == "results.view")
                .order_by(audit_log.c.id)
            ).all()
        )
        return [f"{r.actor} {r.detail}" for r in rows]


async def in_force(
    tmp_path: Path, database_url: str, rules: Path, now: datetime, timezone: str = "UTC"
) -> tuple[Store, Control]:
    """A store and the control of a daemon serving chem-1 under ``rules``, its clock
    stopped at ``now``, in a laboratory in ``timezone``."""
    settings = Settings.model_validate(
        {"state_dir": tmp_path / "state", "database_url": database_url,
         "instruments": [CHEM], "rules_dir": rules, "timezone": timezone}
    )  # fmt: skip
    store = Store(database_url)
    control = Control(settings, store, clock=lambda: now)
    await control.reload_rules("daemon start")
    return store, control


@pytest.fixture
async def pages(tmp_path: Path, database_url: str) -> AsyncIterator[Pages]:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    store, control = await in_force(tmp_path, database_url, rules, T0 + timedelta(minutes=5))
    with store.engine.begin() as conn:
        _store(conn, qc("5.20", "15.60"), T0)
        _store(conn, patient("S-<b>1</b>", "31.0"), T0)  # critical: held
        _quarantine(conn, T0)
    app = create_app(control, lambda: ["chem-1"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield Pages(store, client)
    store.close()


async def log_in(client: httpx.AsyncClient, store: Store, name: str, role: Role) -> str:
    """Logs ``client`` in as a new user of ``role``; the session's CSRF token."""
    credentials.user(store, name, role)
    client.cookies.clear()
    form = await client.get("/login")
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    done = await client.post(
        "/login",
        data={"username": name, "password": credentials.PASSWORD, "csrf_token": token},
    )
    assert done.status_code == 303, done.text
    session = await client.get("/api/session")
    csrf: str = session.json()["csrf_token"]
    return csrf


async def _as(pages: Pages, name: str, role: Role) -> str:
    return await log_in(pages.client, pages.store, name, role)


async def test_each_page_shows_its_part_and_escapes_what_analysers_sent(pages: Pages) -> None:
    await _as(pages, "vic", Role.VIEWER)
    for path, title in (
        ("/qc", "Quality control"),
        ("/qc/chem-1/GLU", "QC of GLU on chem-1"),
        ("/instruments", "Instruments"),
        ("/lis", "LIS link"),
        ("/reagents", "Reagent lots"),
        ("/held", "Held results"),
    ):
        page = await pages.client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert f"<h1>{title}</h1>" in page.text
    held = (await pages.client.get("/held")).text
    assert "S-&lt;b&gt;1&lt;/b&gt;" in held and "<b>1</b>" not in held
    assert "critical-high" in held
    # A viewer is shown no button to act.
    assert "Release</button>" not in held and "Comment</button>" not in held
    chart = (await pages.client.get("/qc/chem-1/GLU")).text
    assert 'class="lj-chart"' in chart and "point accept" in chart


async def test_the_live_block_alone_when_asked(pages: Pages) -> None:
    await _as(pages, "vic", Role.VIEWER)
    whole = await pages.client.get("/lis")
    block = await pages.client.get("/lis", headers={"X-Fragment": "1"})
    assert "<html" in whole.text and 'id="live"' in whole.text
    assert "<html" not in block.text and "Waiting:" in block.text


async def test_a_view_of_patient_results_is_recorded_once_per_person(pages: Pages) -> None:
    await _as(pages, "vic", Role.VIEWER)
    await pages.client.get("/held")
    await pages.client.get("/held", headers={"X-Fragment": "1"})  # polled: nothing new
    assert len(pages.views()) == 1 and pages.views()[0].startswith("vic ")
    await _as(pages, "tess", Role.TECHNICIAN)
    await pages.client.get("/held")
    assert [v.split()[0] for v in pages.views()] == ["vic", "tess"]
    # Lab IT is refused patient results, and nothing is recorded for it.
    await _as(pages, "ian", Role.LAB_IT)
    assert (await pages.client.get("/held")).status_code == 403
    assert len(pages.views()) == 2


async def test_quarantined_bytes_in_caret_notation_and_hex(pages: Pages) -> None:
    await _as(pages, "vic", Role.VIEWER)
    listing = (await pages.client.get("/instruments/chem-1/quarantine")).text
    entry_id = listing.split('href="/quarantine/', 1)[1].split('"', 1)[0]
    entry = (await pages.client.get(f"/quarantine/{entry_id}")).text
    assert "^B1H|\\^&amp;^M" in entry and "00000000  02 31 48 7C" in entry
    assert (await pages.client.get("/quarantine/999999")).status_code == 404
    # The bytes hold patients and results: who saw them is recorded (D8), and lab IT,
    # which sees no patient data, gets the list without them.
    assert pages.audited("quarantine.view") == [("vic", f"quarantine {entry_id}")]
    await _as(pages, "ian", Role.LAB_IT)
    listing = (await pages.client.get("/instruments/chem-1/quarantine")).text
    assert "no record could be read" in listing and 'href="/quarantine/' not in listing
    assert (await pages.client.get(f"/quarantine/{entry_id}")).status_code == 403


async def test_pages_escape_what_the_address_holds_and_are_not_cached_or_framed(
    pages: Pages,
) -> None:
    await _as(pages, "vic", Role.VIEWER)
    missing = await pages.client.get("/reagents/%3Cimg%20src=x%20onerror=alert(1)%3E/lots/LOT1")
    assert missing.status_code == 404
    assert "<img" not in missing.text and "&lt;img src=x onerror=alert(1)&gt;" in missing.text
    page = await pages.client.get("/held")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    unknown = await pages.client.get("/instruments/nope/quarantine")
    assert unknown.status_code == 404 and "unknown instrument" in unknown.text
    for path in ("/quarantine/99999999999999999999", "/held?after_instrument=a&"
                 "after_specimen=b&after_id=99999999999999999999"):  # fmt: skip
        assert (await pages.client.get(path)).status_code == 422, path


async def test_forms_act_as_the_person_and_say_what_they_refused(pages: Pages) -> None:
    held = await _act_on_held(pages, "tess", Role.TECHNICIAN, "release", {})
    assert held.status_code == 403
    comment = await _act_on_held(pages, "tess", Role.TECHNICIAN, "comment", {"text": "haemolysed"})
    assert comment.status_code == 303 and "done=" in comment.headers["location"]
    refused = await _act_on_held(pages, "val", Role.VALIDATOR, "reject", {"reason": ""})
    assert refused.status_code == 303 and "error=" in refused.headers["location"]
    released = await _act_on_held(pages, "val", Role.VALIDATOR, "release", {})
    assert released.status_code == 303 and "released" in released.headers["location"]
    again = await _act_on_held(pages, "val2", Role.VALIDATOR, "release", {}, result_id=None)
    assert again is None  # nothing held any more
    note = (await pages.client.get("/held")).text
    assert "No result held." in note


@pytest.mark.parametrize(
    "text",
    [b"lone%ED%A0%80surrogate", b"raw \xff\xfe bytes", b"overlong %C0%AF"],
    ids=["surrogate", "not-utf8", "overlong"],
)
async def test_a_form_whose_text_is_not_utf8_is_refused_and_nothing_done(
    pages: Pages, text: bytes
) -> None:
    token = await _as(pages, "tess", Role.TECHNICIAN)
    page = (await pages.client.get("/held")).text
    found = int(page.split('data-result="', 1)[1].split('"', 1)[0])
    refused = await pages.client.post(
        f"/held/{found}/comment",
        content=b"csrf_token=" + token.encode() + b"&text=" + text,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert refused.status_code == 400 and "not UTF-8: nothing was done" in refused.text
    assert pages.store.read(lambda c: c.execute(select(result_comments)).all()) == []
    multipart = await pages.client.post(
        f"/held/{found}/comment", data={"csrf_token": token}, files={"text": b"haemolysed"}
    )
    assert multipart.status_code == 415
    taken = await pages.client.post(
        f"/held/{found}/comment", data={"csrf_token": token, "text": "hémolysé µ"}
    )
    assert taken.status_code == 303 and "done=" in taken.headers["location"]
    [(said,)] = pages.store.read(lambda c: c.execute(select(result_comments.c.text)).all())
    assert said == "hémolysé µ"


async def test_a_form_refused_is_audited_as_the_apis_refusals_are(pages: Pages) -> None:
    token = await _as(pages, "val", Role.VALIDATOR)
    for path, fields in (
        ("/held/99999999/release", {}),
        ("/lis/outbox/99999999/retry", {}),
        ("/qc/corrective-actions/99999999/close", {"action_taken": "recalibrated"}),
    ):
        refused = await pages.client.post(path, data={"csrf_token": token, **fields})
        assert "error=" in refused.headers["location"], path
    assert pages.audited("api.refused") == [
        ("val", "POST /held/99999999/release"),
        ("val", "POST /lis/outbox/99999999/retry"),
        ("val", "POST /qc/corrective-actions/99999999/close"),
    ]


async def test_a_page_shows_only_the_notice_its_form_wrote_for_that_session(
    pages: Pages,
) -> None:
    comment = await _act_on_held(pages, "tess", Role.TECHNICIAN, "comment", {"text": "lipaemic"})
    assert comment is not None and comment.status_code == 303
    back = comment.headers["location"]
    assert "seal=" in back
    said = '<div class="message done" role="status">comment added to result'
    assert said in (await pages.client.get(back)).text
    # A link made elsewhere puts no words on the page: unsealed, its seal altered, or
    # sealed for another session.
    spoofed = "Session expired: log in again at https://elsewhere.example"
    for link in (
        f"/held?error={quote(spoofed)}",
        f"/held?done={quote(spoofed)}&{back.split('&', 1)[1]}",
        back.replace("seal=", "seal=0"),
    ):
        page = (await pages.client.get(link)).text
        assert "elsewhere.example" not in page and 'class="message' not in page, link
    await _as(pages, "tom", Role.TECHNICIAN)
    assert 'class="message' not in (await pages.client.get(back)).text


async def _act_on_held(
    pages: Pages,
    name: str,
    role: Role,
    action: str,
    fields: dict[str, Any],
    result_id: int | None = 0,
) -> httpx.Response | None:
    token = await _as(pages, name, role)
    page = (await pages.client.get("/held")).text
    if 'data-result="' not in page:
        return None
    found = int(page.split('data-result="', 1)[1].split('"', 1)[0])
    return await pages.client.post(
        f"/held/{found if result_id == 0 else result_id}/{action}",
        data={"csrf_token": token, **fields},
    )


async def test_qc_past_its_validity_is_shown_expired(pages: Pages) -> None:
    await _as(pages, "vic", Role.VIEWER)
    # The control results are from T0; the page judges them at the time it is now.
    qc_page = (await pages.client.get("/qc")).text
    glu = qc_page.split(">GLU</a>", 1)[1].split("</tr>", 1)[0]
    assert 'class="state expired"' in glu and "valid 24 h after its QC" in glu


async def test_a_level_whose_control_could_not_be_evaluated_is_shown_so(pages: Pages) -> None:
    """The page says what the gate holds results for: QC in control ten minutes ago, then
    a level 1 control with no number."""
    now = datetime.now(UTC)
    with pages.store.engine.begin() as conn:
        _store(conn, qc("5.21", "15.61"), now - timedelta(minutes=10))
        _store(conn, qc("****", "15.60"), now - timedelta(minutes=5))
    await _as(pages, "vic", Role.VIEWER)
    qc_page = (await pages.client.get("/qc")).text
    glu = qc_page.split(">GLU</a>", 1)[1].split("</tr>", 1)[0]
    assert 'class="state unevaluated"' in glu
    assert "level 1: control value &#39;****&#39; is not a number" in glu


async def made_with(
    store: Store, control: Control, uses: list[ReagentUse], now: datetime, came: datetime
) -> list[Decision]:
    """A GLU result made with each of ``uses``, in a message that came at ``came``, decided
    by the control's engine at ``now``."""
    made = [
        Result(f"S-{n}", use.test_code, use.test_code, Measurement.parse("5.0"), status="F",
               instrument="chem-1", patient_id=f"PAT{n}", completed_at=came, reagents=(use,))
        for n, use in enumerate(uses)
    ]  # fmt: skip
    reading = InstrumentMessage("chem-1", results=made)

    def receive(conn: Any) -> Assessment:
        assert control.engine is not None
        delivery = Delivery("chem-1/c", "chem-1", b"R|1", came, "R|1", 1, reading)
        stored = store_delivery(conn, delivery, now)
        return assess_message(conn, control.engine, stored, reading, now)

    return [decision for _, decision in (await store.write(receive)).decisions]


async def viewed(
    store: Store, control: Control, now: datetime, path: str, role: Role = Role.VIEWER
) -> str:
    app = create_app(control, lambda: ["chem-1"], clock=lambda: now)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await log_in(client, store, f"{role.value}-{path.strip('/')}", role)
        return (await client.get(path)).text


def row_of(page: str, cell: str) -> list[str]:
    """The cells of the table row from the one holding ``cell`` on."""
    return page.split(f">{cell}<", 1)[1].split("</tr>", 1)[0].split("<td>")


@pytest.mark.parametrize(("timezone", "expired"), [("Pacific/Auckland", True), ("UTC", False)])
async def test_a_reagent_lot_expires_at_midnight_in_the_laboratory(
    tmp_path: Path, database_url: str, timezone: str, expired: bool
) -> None:
    """1 March 12:00 UTC is 2 March in Auckland: a lot that expires on 1 March has
    expired there, and not yet in a laboratory on UTC. A message that came at 10:30 UTC
    came yesterday in Auckland."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    store, control = await in_force(tmp_path, database_url, ROOT / "rules", now, timezone)
    try:
        use = ReagentUse("GLU reagent", "A1", "GLU", date(2026, 3, 1))
        (decision,) = await made_with(store, control, [use], now, now - timedelta(minutes=90))
        assert ("reagent-expired:A1" in decision.reasons) is expired
        lots = await viewed(store, control, now, "/reagents")
        assert "2026-03-01" in row_of(lots, "A1")[1]
        assert ("expired" in row_of(lots, "A1")[1]) is expired
        listing = await viewed(store, control, now, "/instruments")
        last, today = row_of(listing, "chem-1")[3:5]
        assert today.startswith("0<" if expired else "1<")
        # Only today's messages are counted: one that came yesterday is not "never".
        assert ("none today" in last) is expired and "never" not in last
        # Times shown on the laboratory's clock, its zone named: the result made at
        # 10:30 UTC was made at 23:30 in Auckland (held there, its lot expired).
        if expired:
            held = await viewed(store, control, now, "/held", Role.BIOLOGIST)
            assert ">2026-03-01 23:30:00 NZDT</time>" in held
        else:
            assert ">2026-03-01 10:30:00 UTC</time>" in listing
    finally:
        store.close()


async def test_the_reagent_page_says_what_the_rule_files_say_of_a_lot(
    tmp_path: Path, database_url: str
) -> None:
    """Lot 2365 of the shipped rules was opened on 1 November 2026 with 60 days'
    stability: it expired at the end of 31 December, though printed to May 2027, and the
    analyser says nothing of it. A lot the rule files recall is shown recalled, with no
    button to recall it again."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    with (rules / "reagents.yaml").open("a") as more:
        more.write("  - {reagent: CREA reagent, lot: R9, expiry: 2029-01-31, recalled: true}\n")
    now = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    store, control = await in_force(tmp_path, database_url, rules, now)
    try:
        uses = [ReagentUse("GLU reagent", "2365", "GLU"), ReagentUse("CREA reagent", "R9", "CREA")]
        glu, crea = await made_with(store, control, uses, now, now)
        assert "reagent-expired:2365" in glu.reasons and "reagent-recalled:R9" in crea.reasons
        lots = await viewed(store, control, now, "/reagents", Role.BIOLOGIST)
        expiry, _, action = row_of(lots, "2365")[1:4]
        assert expiry.startswith("2026-12-31 ") and "expired" in expiry and "Recall" in action
        expiry, _, action = row_of(lots, "R9")[1:4]
        assert expiry.startswith("2029-01-31<") and "recalled" in action
        assert "in the rule files" in action and "Recall" not in action
    finally:
        store.close()


async def test_lab_it_sees_the_lis_link_without_the_messages_it_carries(pages: Pages) -> None:
    def stop_the_first(conn: Any) -> None:
        _store(conn, patient("S-2", "5.0"), T0)  # released: queued for the LIS
        conn.execute(text("UPDATE outbox SET state = 'stopped', detail = 'AE: no patient'"))

    await pages.store.write(stop_the_first)
    await _as(pages, "ian", Role.LAB_IT)
    link = (await pages.client.get("/lis")).text
    assert "AE: no patient" in link and "Send again" in link
    assert "PID|" not in link and "<summary>Message</summary>" not in link
    await _as(pages, "val", Role.VALIDATOR)
    assert "PID|" in (await pages.client.get("/lis")).text


async def test_a_lot_is_recalled_and_shown_by_its_own_row_whatever_its_name_holds(
    tmp_path: Path, database_url: str
) -> None:
    """A reagent's or a lot's name may hold ``/lots/`` or ``../``: each row's link and
    Recall button still name that lot, not another nor one that never was."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    store, control = await in_force(tmp_path, database_url, ROOT / "rules", now)
    hostile = "x/../../../../reagents/DILUENT/lots/D-2411"
    uses = [
        ReagentUse("BUFFER", "B7/lots/2", "GLU"),
        ReagentUse("CLEANER", hostile, "CREA"),
        ReagentUse("DILUENT", "D-2411", "NA"),
        ReagentUse("A/lots/B", "..", "K"),
    ]
    try:
        await made_with(store, control, uses, now, now)
        app = create_app(control, lambda: ["chem-1"], clock=lambda: now)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            csrf = await log_in(client, store, "bea", Role.BIOLOGIST)
            lots = (await client.get("/reagents")).text
            for use in uses:
                row = row_of(lots, use.reagent)
                link = unescape(row[1].split('href="', 1)[1].split('"', 1)[0])
                page = await client.get(link)
                assert f"<h1>Results made with {html_escape(use.reagent)} lot " in page.text
                assert f" lot {html_escape(use.lot)}</h1>" in page.text, (link, page.text[:300])
            row = row_of(lots, "CLEANER")
            action = unescape(row[4].split('action="', 1)[1].split('"', 1)[0])
            done = await client.post(
                action, data={"csrf_token": csrf, "reason": "leaking"}, follow_redirects=True
            )
            assert f"CLEANER lot {html_escape(hostile)} recalled" in done.text
            lots = (await client.get("/reagents")).text
        assert "leaking" in row_of(lots, "CLEANER")[4]
        for other in ("BUFFER", "DILUENT", "A/lots/B"):
            assert "Recall</button>" in row_of(lots, other)[4], other
    finally:
        store.close()
