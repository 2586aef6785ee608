"""What text from outside does on the status pages: every field an analyser, the LIS, the
rule files or a person can fill holds markup and slashes, and every page reached from the
menu, link by link, shows it as text, with links that lead somewhere and forms that post
to a route; then the pages' forms take generated text over real HTTP without a server
error, and what they stored is shown as text too."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

import drivers
from middleware.engine.engine import Engine
from middleware.engine.rules import load_rules
from middleware.store import Store
from middleware.store.ingest import Delivery, store_delivery
from middleware.web.api import create_app
from middleware.web.pages import segment
from middleware.web.roles import Role
from tests.conftest import ROOT
from tests.messages import patient, qc
from tests.test_api_hostile import serving
from tests.test_outbox import T0, _store
from tests.test_status_pages import in_force, log_in

#: Markup that, shown unescaped, makes an element or an attribute of its own, whether it
#: lands between tags or inside a quoted attribute. No ASTM delimiter: it travels in a field.
MARKUP = "<inj-tag>\" inj-dq=\"1' inj-sq='1"
#: A test code with a slash, as real analysers send (A/G, AST/ALT), and markup.
TEST = 'G/<inj-test>" inj-test="1'
LOT = "L/<inj-lot>'1"
REAGENT = 'R/<inj-reagent>" inj-reagent="1'


@dataclass
class Site:
    store: Store
    base: str


def _hostile_rules(where: Path) -> Path:
    """The default rules with glucose's code replaced by :data:`TEST` and a reagent lot
    of markup for it: lab IT's files hold them as analysers send them."""
    rules = where / "rules"
    shutil.copytree(ROOT / "rules", rules)
    for path in rules.glob("*.yaml"):
        path.write_text(re.sub(r"\bGLU\b", TEST, path.read_text()))
    with (rules / "reagents.yaml").open("a") as out:
        out.write(
            f"  - reagent: '{REAGENT}'\n    lot: \"{LOT}\"\n    manufacturer: example\n"
            f"    expiry: 2029-05-31\n    tests: ['{TEST}']\n"
        )
    return rules


def _architect(specimen: str) -> list[bytes]:
    """An ARCHITECT's result, its reagent's name and lot in R.3."""
    r3 = f"^^^244^{REAGENT}^UNDILUTED^F^{LOT}^0123^^F"
    return [
        b"H|\\^&|||ARCHITECT^9.45^i1SR01234^1.00|||||||P|1",
        f"O|1|{specimen}||^^^244|R".encode(),
        f"R|1|{r3}|1.2|uIU/mL||N||F".encode(),
        b"L|1",
    ]


def _with_markup(lines: list[bytes]) -> list[bytes]:
    return [line.replace(b"^^^GLU", b"^^^" + TEST.encode()) for line in lines]


@pytest.fixture
async def site(tmp_path: Path, database_url: str) -> AsyncIterator[Site]:
    rules = _hostile_rules(tmp_path)
    store, control = await in_force(tmp_path, database_url, rules, T0 + timedelta(minutes=30))
    engine = Engine(load_rules(rules))
    at = [T0 + timedelta(minutes=n) for n in range(6)]
    with store.engine.begin() as conn:
        _store(conn, _with_markup(qc("5.20", "15.60")), at[0], engine=engine)
        # A released result, whose message the LIS refused with markup in its answer.
        _store(conn, _with_markup(patient("S-2", "5.0")), at[1], engine=engine)
        conn.execute(text("UPDATE outbox SET state = 'stopped', detail = :d"), {"d": MARKUP})
        # Held as critical: specimen and patient ids of markup.
        _store(conn, _with_markup(patient(f"S/{MARKUP}", "31.0", f"P{MARKUP}")), at[2],
               engine=engine)  # fmt: skip
        # Level 1 beyond 3 SD: the run is rejected, a corrective action opened.
        _store(conn, _with_markup(qc("7.00", "15.60")), at[3], engine=engine)
        # Made with a reagent lot the analyser names, in markup and slashes.
        architect = drivers.get("abbott_architect", None, "chem-1")
        _store(conn, _architect(f"S-3{MARKUP}"), at[4], driver=architect, engine=engine)
        raw = f"\x021H|\\^&\r{MARKUP}\x03".encode()
        store_delivery(
            conn, Delivery("c", "chem-1", raw, at[4], MARKUP, 0, None, problems=[MARKUP]), at[4]
        )
    app = create_app(control, lambda: ["chem-1"])
    async with serving(app) as base:
        yield Site(store, base)
    store.close()


class _Reading(HTMLParser):
    """A page's links and forms, and any element or attribute the markup made."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.forms: list[tuple[str, str]] = []
        self.made: list[str] = []
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.made += [tag] if tag.startswith("inj") else []
        self.made += [f"{tag}[{name}]" for name, _ in attrs if name.startswith("inj")]
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if tag == "form":
            self.forms.append((str(found.get("method", "get")).lower(), str(found["action"])))


def _read(html: str) -> _Reading:
    reading = _Reading()
    reading.feed(html)
    reading.close()
    return reading


async def _crawl(client: httpx.AsyncClient, start: list[str]) -> dict[str, _Reading]:
    """Every page reached from ``start`` by its links, each asserted shown (200)."""
    pages: dict[str, _Reading] = {}
    waiting = list(start)
    while waiting and len(pages) < 200:
        address = waiting.pop(0)
        if address in pages:
            continue
        page = await client.get(address, follow_redirects=True)
        assert page.status_code == 200, (address, page.status_code, page.text[:300])
        pages[address] = _read(page.text)
        for href in pages[address].links:
            target = urlsplit(urljoin(address, href))
            if not target.netloc and not target.path.startswith("/static"):
                waiting.append(target.path + (f"?{target.query}" if target.query else ""))
    return pages


def _shown(pages: dict[str, _Reading], start: str) -> str:
    """The text (markup undone) of the first page whose address starts with ``start``."""
    return next("".join(p.text) for address, p in pages.items() if address.startswith(start))


@pytest.mark.parametrize("role", [Role.BIOLOGIST, Role.LAB_IT, Role.VIEWER])
async def test_every_page_shows_outside_text_as_text_with_links_that_lead_somewhere(
    site: Site, role: Role
) -> None:
    async with httpx.AsyncClient(base_url=site.base) as client:
        await log_in(client, site.store, "pat", role)
        pages = await _crawl(client, ["/"])
        made = {address: p.made for address, p in pages.items() if p.made}
        assert made == {}
        # Each form posts to a route: without its CSRF token it is refused (403), not
        # missing (404) or of another method (405).
        actions = {urljoin(a, f[1]) for a, p in pages.items() for f in p.forms if f[0] == "post"}
        for action in sorted(actions - {"/logout"}):
            refused = await client.post(action, data={})
            assert refused.status_code == 403, (action, refused.status_code)
    # What came with markup is there, as text; a test code and a reagent lot with slashes
    # have pages of their own.
    assert MARKUP in _shown(pages, "/lis")
    assert f"QC of {TEST} on chem-1" in _shown(pages, f"/qc/chem-1/{segment(TEST)}")
    assert LOT in _shown(pages, "/reagents") and REAGENT in _shown(pages, "/reagents")
    if role is Role.LAB_IT:
        assert not any(address.startswith(("/held", "/quarantine/")) for address in pages)
        return
    held = _shown(pages, "/held")
    assert f"S/{MARKUP}" in held and f"P{MARKUP}" in held and TEST in held
    assert MARKUP in _shown(pages, "/instruments/chem-1/quarantine")
    assert MARKUP in _shown(pages, "/quarantine/")
    lot_page = next(a for a in pages if a.startswith("/reagents/"))
    assert f"S-3{MARKUP}" in _shown(pages, lot_page)


#: What a person may type, and what a hand-made request may carry: any character but the
#: halves of a surrogate pair (which no form can encode), now and then much too long.
TYPED = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.sampled_from([MARKUP, "\x00", "a\r\nSet-Cookie: x=1", "{{ 7 * 7 }}", "x" * 2001, " "]),
)


def _post_forms(
    base: str, cookies: httpx.Cookies, csrf: str, held: int
) -> tuple[list[str], Counter[str]]:
    """Each page form posted with generated text, from a thread: what went wrong, and how
    often the page said done and error."""
    found: list[str] = []
    said: Counter[str] = Counter()
    with httpx.Client(base_url=base, cookies=cookies, timeout=30) as client:

        @settings(max_examples=FORM_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(form=st.sampled_from(FORMS), typed=TYPED, named=TYPED)
        def post(form: tuple[str, str], typed: str, named: str) -> None:
            path, field_ = form
            address = path.format(held=held, named=segment(named) or "x")
            answer = client.post(address, data={"csrf_token": csrf, field_: typed})
            asked = f"POST {address} {field_}={typed!r}"[:300]
            if {404: "\n" in named, 400: "\x00" in named}.get(answer.status_code):
                return  # no name holds a line break (no route matches) or a NUL (refused)
            if answer.status_code != 303:
                found.append(f"{asked}: {answer.status_code} {answer.text[:200]}")
                return
            back = urlsplit(answer.headers["location"])
            if back.netloc or not back.path.startswith("/"):
                found.append(f"{asked}: sent to {answer.headers['location']}")
            said.update(parse_qs(back.query).keys())

        post()
    return found, said


#: Requests per test; ``make fuzz`` sends more (as for the API's schema).
FORM_EXAMPLES = int(os.environ.get("MIDDLEWARE_API_FUZZ_EXAMPLES", "150"))
#: The pages' forms with their text field; ``{named}`` a generated test, reagent or lot.
FORMS = [
    ("/held/{held}/comment", "text"),
    ("/held/{held}/reject", "reason"),
    ("/qc/chem-1/{named}/release-run", "unused"),
    ("/qc/chem-1/{named}/lots/{named}/approve", "unused"),
    ("/qc/corrective-actions/1/close", "action_taken"),
    ("/reagents/{named}/lots/{named}/recall", "reason"),
    ("/lis/outbox/1/retry", "unused"),
]


async def test_the_forms_take_any_text_and_show_what_they_stored_as_text(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base) as client:
        csrf = await log_in(client, site.store, "bea", Role.BIOLOGIST)
        held = (await client.get("/held")).text
        result = int(held.split('data-result="', 1)[1].split('"', 1)[0])
        comment = await client.post(
            f"/held/{result}/comment", data={"csrf_token": csrf, "text": MARKUP}
        )
        assert comment.status_code == 303
        assert f"bea: {MARKUP}" in _shown(await _crawl(client, ["/held"]), "/held")
        # The requests are sent from a thread; the pages answer in this event loop.
        found, said = await asyncio.to_thread(_post_forms, site.base, client.cookies, csrf, result)
        pages = await _crawl(client, ["/"])
    assert not found, "\n".join(found)
    assert said["done"] > 0 and said["error"] > 0, said
    assert {address: p.made for address, p in pages.items() if p.made} == {}


#: The pages' addresses with ``{named}`` a generated instrument, test, specimen, reagent or lot.
ADDRESSES = [
    "/held?specimen={named}",
    "/held?instrument={named}",
    "/held?after_instrument={named}&after_specimen={named}&after_id=1",
    "/qc/chem-1/{named}",
    "/qc/{named}/GLU",
    "/reagents/{named}/lots/{named}",
    "/reagents/{named}/lots/x?after=1",
    "/instruments/{named}/quarantine",
]


def _get_pages(base: str, cookies: httpx.Cookies) -> list[str]:
    """Each page asked for with generated names in its address, from a thread; what went
    wrong."""
    found: list[str] = []
    with httpx.Client(base_url=base, cookies=cookies, timeout=30) as client:

        @settings(max_examples=FORM_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(address=st.sampled_from(ADDRESSES), named=TYPED)
        @example(address="/qc/{named}/GLU", named=".")
        @example(address="/reagents/{named}/lots/{named}", named="..")
        def get(address: str, named: str) -> None:
            # A path's segment as the pages write their links: ``.`` and ``..`` marked,
            # since a client takes those segments out of an address before it asks.
            asked = address.format(
                named=segment(named) if "?" not in address else quote(named, safe="")
            )
            answer = client.get(asked)
            if answer.status_code not in (200, 400, 404, 422):
                found.append(f"GET {asked}: {answer.status_code} {answer.text[:200]}"[:400])
            elif answer.status_code == 200 and _read(answer.text).made:
                found.append(f"GET {asked}: made {_read(answer.text).made}")

        get()
    return found


async def test_addresses_naming_anything_are_shown_or_refused(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.base) as client:
        await log_in(client, site.store, "bea", Role.BIOLOGIST)
        found = await asyncio.to_thread(_get_pages, site.base, client.cookies)
    assert not found, "\n".join(found)


def test_a_name_is_one_segment_of_an_address_whatever_it_holds() -> None:
    assert segment("GLU") == "GLU"
    assert segment("A/B ?#") == "A%2FB%20%3F%23"
    # A browser removes these segments, escaped (%2E) or not: the link would lead elsewhere.
    assert segment(".") == "~." and segment("..") == "~.."
    assert segment("~x") == "~~x" and segment("...") == "..."
