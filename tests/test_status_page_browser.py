"""The status page in a real browser (Debian's Chromium driven by Playwright) against the
daemon as its own process, fed by an analyser peer and delivering to the bundled LIS
simulator: each role
logs in and sees what it may; a held result shows its reasons, a technician cannot
release it, a validator does and the LIS gets it; a Levey-Jennings chart marks a
violation with its rule. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.lis import LisSimulator
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a long enough passphrase"
ROLES = {
    "tess": "technician",
    "val": "validator",
    "bea": "biologist",
    "ian": "lab-it",
    "vic": "viewer",
}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` installs Debian's"
)

playwright_api = pytest.importorskip("playwright.async_api")


def _add_users(daemon: DaemonProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    for name, role in ROLES.items():
        subprocess.run(
            [sys.executable, "-m", "middleware", "users", "add", name, "--role", role,
             "--password-stdin", "--config", str(daemon.config)],
            input=PASSWORD.encode(), cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip


async def _analyser(port: int, *messages: list[bytes]) -> None:
    peer = StreamPeer(*await connect(port))
    for message in messages:
        await send_message(peer, message)
    await peer.close()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as p:
        # As root (in CI) Chromium's sandbox cannot start; the pages are our own.
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        await launched.close()


async def test_roles_held_results_release_and_a_levey_jennings_chart(
    tmp_path: Path, database_url: str, browser: object
) -> None:
    shots = ROOT / "artifacts" / "screenshots" / database_url.split(":", 1)[0]
    shots.mkdir(parents=True, exist_ok=True)
    lis = LisSimulator()
    lis_port = await lis.start()
    analyser_port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": analyser_port}],
        database_url=database_url, rules_dir=str(ROOT / "rules"),
        api={"host": "127.0.0.1", "port": api_port},
        lis={"host": "127.0.0.1", "port": lis_port, "ack_timeout": 2.0},
    )  # fmt: skip
    await asyncio.to_thread(daemon.start)
    base = f"http://127.0.0.1:{api_port}"
    try:
        await asyncio.to_thread(_add_users, daemon)
        await _analyser(
            analyser_port,
            qc("5.20", "15.60"),
            qc("88", "480", test="CREA"),
            patient("S-1", "31.0"),  # a critical glucose: held for a person
            qc("100", "480", test="CREA"),  # level 1 at +3.4 SD: 1-3s
        )
        context = await browser.new_context(  # type: ignore[attr-defined]
            base_url=base, viewport={"width": 1280, "height": 800}
        )
        page = await context.new_page()

        async def log_in(name: str) -> None:
            await context.clear_cookies()
            await page.goto("/login")
            await page.fill("input[name=username]", name)
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_load_state()

        # Nobody gets a page without logging in.
        await page.goto("/held")
        assert "/login" in page.url

        # Every role logs in and lands where it may look.
        for name, role in ROLES.items():
            await log_in(name)
            assert f"{name} ({role})" in await page.inner_text("header")
            await page.screenshot(path=str(shots / f"home-{role}.png"))

        # Lab IT sees no patient result; the QC page is theirs.
        await log_in("ian")
        refused = await page.goto("/held")
        assert refused is not None and refused.status == 403
        await page.goto("/qc")
        assert "CREA" in await page.inner_text("main")

        # The technician sees the held result and why, and cannot release it.
        await log_in("tess")
        await page.goto("/held?specimen=S-1")
        row = page.locator("tr[data-result]").filter(has_text="S-1")
        assert await row.count() == 1
        assert "critical" in (await row.inner_text()).lower()
        assert await row.locator("button", has_text="Release").count() == 0
        await page.screenshot(path=str(shots / "held-technician.png"), full_page=True)
        result_id = await row.get_attribute("data-result")
        token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
        forged = await page.request.post(
            f"/held/{result_id}/release", form={"csrf_token": token or ""}, max_redirects=0
        )
        assert forged.status == 403
        assert lis.received == []

        # The validator releases it, and the LIS gets it.
        await log_in("val")
        await page.goto("/held?specimen=S-1")
        row = page.locator("tr[data-result]").filter(has_text="S-1")
        await page.screenshot(path=str(shots / "held-validator.png"), full_page=True)
        await row.locator("button", has_text="Release").click()
        await page.wait_for_load_state()
        assert "released" in await page.inner_text(".message.done")
        await lis.wait_for(1)
        (sent,) = lis.received
        assert sent.specimen_ids == ("S-1",) and sent.answer == "AA"
        assert [(r.test, r.value, r.status) for r in sent.results] == [("GLU", "31.0", "F")]
        assert await page.locator("tr[data-result]").filter(has_text="S-1").count() == 0

        # The biologist sees the CREA chart with the violation marked and named.
        await log_in("bea")
        await page.goto("/qc/chem-1/CREA")
        await page.screenshot(path=str(shots / "qc-chart-biologist.png"), full_page=True)
        violation = page.locator("svg.lj-chart circle.reject").first
        assert await violation.get_attribute("data-rules") == "1-3s"
        assert "1-3s" in (
            await page.locator("svg.lj-chart .violation-label").first.text_content() or ""
        )
        await violation.hover()
        await page.screenshot(path=str(shots / "qc-chart-biologist.png"), full_page=True)
        await context.close()
    except BaseException:
        print(daemon.log.read_text()[-4000:])
        raise
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
