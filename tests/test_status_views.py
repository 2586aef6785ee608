"""What the status page reads and draws: QC states and evaluations, control lots, the
instruments' day, quarantine with its bytes, the LIS link; Levey-Jennings charts as SVG;
raw bytes in caret notation and hex."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection

from middleware.store import Store, qc_state
from middleware.store.figures import read_figures
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.views import (
    control_lots,
    evaluations,
    instruments_today,
    lis_link,
    qc_tests_view,
    quarantined,
    quarantined_entry,
)
from middleware.web.charts import ChartPoint, levey_jennings
from middleware.web.rawbytes import caret, hexdump
from tests.messages import patient, qc
from tests.test_outbox import _store

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_has_its_limits_and_marks_what_broke_a_rule() -> None:
    points = [
        ChartPoint(T0, "5.20", 0.1, "accept"),
        ChartPoint(T0 + timedelta(hours=1), "5.70", 2.3, "warning", warnings=("1-2s",)),
        ChartPoint(T0 + timedelta(hours=2), "6.10", 3.4, "reject", violations=("1-3s",)),
        ChartPoint(T0 + timedelta(hours=3), "9.90", 7.0, "reject", violations=("1-3s",)),
        ChartPoint(T0 + timedelta(hours=4), "n/a", None, "unevaluated"),
    ]
    svg = levey_jennings(points, Decimal("5.2"), Decimal("0.25"), "GLU <lot> & level 1", "mmol/L")
    root = ET.fromstring(svg)  # well-formed: the title's < and & escaped
    assert root.find(f"{SVG}title").text == "GLU <lot> & level 1"  # type: ignore[union-attr]
    lines = root.findall(f"{SVG}line")
    assert len(lines) == 7  # the mean and +-1, 2, 3 SD
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert "+3 SD (5.95)" in labels and "-2 SD (4.7)" in labels and "mean 5.2 mmol/L" in labels
    circles = root.findall(f"{SVG}circle")
    assert [c.get("class") for c in circles] == ["point accept", "point warning", "point reject"]
    rejected = circles[2]
    assert rejected.get("data-rules") == "1-3s"
    assert "1-3s" in (rejected.find(f"{SVG}title").text or "")  # type: ignore[union-attr]
    (off_scale,) = root.findall(f"{SVG}polygon")  # beyond 4 SD: on the edge, as a triangle
    assert "off-scale" in (off_scale.get("class") or "")
    assert "violation-label" in svg


def test_an_empty_chart_says_so() -> None:
    root = ET.fromstring(levey_jennings([], None, None, "no data"))
    assert "no result yet" in [t.text for t in root.findall(f"{SVG}text")]


def test_raw_bytes_in_caret_notation_and_hex() -> None:
    data = b"\x05\x021H|\\^&\r\x03A7\r\n\x7f\xe9"
    assert caret(data) == "^E^B1H|\\^&^M\n^CA7^M\n^J^?\\xE9"
    dump = hexdump(data).splitlines()
    assert dump[0].startswith("00000000  05 02 31 48 7C 5C 5E 26 0D 03 41 37 0D 0A 7F E9")
    assert dump[0].endswith("..1H|\\^&..A7....")


def _quarantine(conn: Connection, at: datetime) -> None:
    raw = b"\x021H|\\^&\rgarbage\x03"
    store_delivery(
        conn,
        Delivery("c", "chem-1", raw, at, "garbage", 0, None, problems=["no record could be read"]),
        at,
    )


def test_views_of_qc_instruments_quarantine_and_the_lis(database_url: str) -> None:
    store = Store(database_url)
    try:
        with store.engine.begin() as conn:
            _store(conn, qc("5.20", "15.60"), T0)
            _store(conn, patient("S1", "5.0"), T0 + timedelta(minutes=1))
            _store(conn, qc("7.00", "15.60"), T0 + timedelta(minutes=2))  # level 1 beyond 3 SD
            _quarantine(conn, T0 + timedelta(minutes=3))
        with store.engine.begin() as conn:
            # A lot mistyped by a person approving limits, a test read and left as it was:
            # PostgreSQL makes their state rows empty to lock them; neither is shown.
            qc_state.load_lots(conn, [("chem-1", "GLU", "CC-TYPO")])
            qc_state.load_tests(conn, [("chem-1", "NEVER")])
        tests = store.read(qc_tests_view)
        assert [(t.instrument, t.test_code) for t in tests] == [("chem-1", "GLU")]
        assert sum(store.read(read_figures).qc.values()) == 1
        glu = next(t for t in tests if t.test_code == "GLU")
        assert glu.instrument == "chem-1" and glu.state == "corrective-action"
        assert glu.recent[-1].lot in ("CC-45781", "CC-45782")
        level_1 = store.read(lambda c: evaluations(c, "chem-1", "GLU", lot="CC-45781"))
        assert [e.value for e in level_1] == ["5.20", "7.00"]
        assert level_1[0].status == "accept" and level_1[1].status == "reject"
        assert "1-3s" in level_1[1].violations and level_1[1].z is not None
        lots = store.read(lambda c: control_lots(c, "chem-1", "GLU"))
        assert {lot.lot for lot in lots} == {"CC-45781", "CC-45782"}
        day = store.read(lambda c: instruments_today(c, T0 - timedelta(hours=1)))
        assert day["chem-1"].messages_today == 3 and day["chem-1"].quarantined_today == 1
        assert store.read(lambda c: instruments_today(c, T0 + timedelta(days=1))) == {}
        (kept,) = store.read(lambda c: quarantined(c, "chem-1"))
        assert kept.reason == "no record could be read" and kept.data == b""
        entry = store.read(lambda c: quarantined_entry(c, kept.id))
        assert entry is not None and entry.data == b"\x021H|\\^&\rgarbage\x03"
        assert store.read(lambda c: quarantined_entry(c, kept.id + 1000)) is None
        link = store.read(lis_link)
        assert link.figures.outbox["pending"] >= 1 and link.last_answer_at is None
        assert link.waiting == []
    finally:
        store.close()
