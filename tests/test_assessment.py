"""The engine inside ingest: every stored result gets a decision in the same transaction."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import drivers
from middleware.astm.link import LinkSettings
from middleware.engine.engine import Engine
from middleware.engine.rules import load_rules
from middleware.pipeline import ConnectionPipeline
from middleware.store import Store, reading
from middleware.store.schema import (
    corrective_actions,
    decisions,
    qc_evaluations,
    qc_reviews,
    results,
)
from middleware.transport.tcp import TcpServer
from tests.conftest import ROOT
from tests.messages import patient, qc
from tests.peer import EOT, StreamPeer, frames_for, send_frames, send_message


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def line(
    tmp_path: Path,
) -> AsyncIterator[tuple[Store, StreamPeer, ConnectionPipeline, Clock]]:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    clock = Clock()
    engine = Engine(load_rules(ROOT / "rules"))
    pipeline = ConnectionPipeline(
        "chem-1", drivers.get("generic"), store, engine=engine, clock=clock
    )
    server = TcpServer("127.0.0.1", 0, LinkSettings(), pipeline)
    await server.start()
    peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
    yield store, peer, pipeline, clock
    await peer.close()
    await server.close()
    store.close()


def current(store: Store) -> dict[str, tuple[str, str]]:
    rows = store.read(reading.latest_decisions)
    return {r["specimen_id"]: (r["action"], r["reasons"]) for r in rows}


async def test_held_without_qc_then_released_when_qc_comes(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, patient("S1", "5.0"))
    assert current(store) == {"S1": ("hold", "qc-missing:1,qc-missing:2")}
    clock.now += timedelta(minutes=10)
    await send_message(peer, qc("5.2", "15.6"))
    assert current(store) == {"S1": ("release", "")}
    await send_message(peer, patient("S2", "5.1"))
    assert current(store)["S2"] == ("release", "")
    evaluations = store.read(lambda c: c.execute(select(qc_evaluations)).all())
    assert [(e.level, e.status, e.provisional) for e in evaluations] == [
        ("1", "accept", True),
        ("2", "accept", True),
    ]


async def test_rejected_qc_holds_and_lists_released_results_for_review(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, qc("5.2", "15.6"))
    await send_message(peer, patient("S1", "5.0"))
    clock.now += timedelta(hours=1)
    await send_message(peer, qc("5.7", "15.6"))  # level 1 at z = +3.33
    await send_message(peer, patient("S2", "5.0"))
    decisions = current(store)
    assert decisions["S1"] == ("release", "")  # already out: listed for review
    assert decisions["S2"] == ("hold", "corrective-action-open,qc-rejected:1-3s")
    [action] = store.read(lambda c: c.execute(select(corrective_actions)).all())
    assert action.reason == "qc-rejected:1-3s" and action.closed_at is None
    reviews = store.read(lambda c: c.execute(select(qc_reviews)).all())
    assert [r.corrective_action_id for r in reviews] == [action.id]


async def test_critical_value_is_held_urgent_with_all_findings(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, _ = line
    await send_message(peer, qc("5.2", "15.6"))
    await send_message(peer, patient("S9", "26"))
    [row] = store.read(reading.latest_decisions)
    assert row["action"] == "hold" and row["urgent"]
    codes = [f["code"] for f in json.loads(row["findings"])]
    assert codes == ["critical-high", "above-reference"]


async def test_duplicate_message_is_not_decided_twice(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, pipeline, _ = line
    # The same message twice in one transfer: the analyser did not take our first ACK.
    records = patient("S1", "5.0")
    await send_frames(peer, frames_for(records + records))
    await peer.write(EOT)
    await asyncio.sleep(0.1)
    assert pipeline.last is not None and pipeline.last.duplicate
    assert len(store.read(reading.latest_decisions)) == 1


async def test_reference_range_follows_the_patients_sex_and_age(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, _ = line
    control = qc("5.2", "15.6")
    await send_message(
        peer,
        [r.replace(b"GLU", b"CREA") for r in control[:3]]
        + [
            b"R|1|^^^CREA|88|umol/L||N||F",
            control[4].replace(b"GLU", b"CREA"),
            b"R|1|^^^CREA|480|umol/L||N||F",
            b"L|1|N",
        ],
    )
    for specimen, sex in ((b"W1", b"F"), (b"M1", b"M")):
        await send_message(
            peer,
            [
                b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
                b"P|1||PAT-" + specimen + b"||Doe^Sam||19800101|" + sex,
                b"O|1|" + specimen + b"||^^^CREA|R",
                b"R|1|^^^CREA|90|umol/L||N||F||||20260301075900",
                b"L|1|N",
            ],
        )
    rows = {r["specimen_id"]: r for r in store.read(reading.latest_decisions)}
    woman = [f["code"] for f in json.loads(rows["W1"]["findings"])]
    man = [f["code"] for f in json.loads(rows["M1"]["findings"])]
    assert woman == ["above-reference"] and man == []
    assert rows["W1"]["action"] == rows["M1"]["action"] == "release"


async def test_a_new_engine_decides_with_the_qc_state_the_store_holds(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, pipeline, _ = line
    await send_message(peer, qc("5.2", "15.6"))  # GLU in control
    await send_message(peer, patient("S0", "5.0"))
    urea = [r.replace(b"GLU", b"UREA") for r in qc("5.8", "21.0")]  # both within 2 SD
    await send_message(peer, urea)
    await send_message(
        peer,
        [
            *[r.replace(b"GLU", b"CREA") for r in qc("5.2", "15.6")][:3],
            b"R|1|^^^CREA|99|umol/L||N||F",
            b"L|1|N",
        ],
    )  # CREA 1-3s: rejected
    pipeline.engine = Engine(load_rules(ROOT / "rules"))  # as after a restart
    await send_message(peer, patient("S1", "5.0"))
    await send_message(peer, [r.replace(b"GLU", b"CREA") for r in patient("S2", "80")])
    decisions = current(store)
    assert decisions["S1"] == ("release", "")
    # the rejection and its open corrective action came back from the store
    assert decisions["S2"] == ("hold", "corrective-action-open,qc-rejected:1-3s,qc-missing:2")


async def test_delta_check_against_the_patients_previous_result(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, [r.replace(b"GLU", b"CREA") for r in qc("88", "480")])
    for specimen, value in (("D1", "80"), ("D2", "119"), ("D3", "180")):
        clock.now += timedelta(hours=1)
        await send_message(peer, [r.replace(b"GLU", b"CREA") for r in patient(specimen, value)])
    decisions = current(store)
    assert decisions["D1"] == ("release", "")
    assert decisions["D2"] == ("release", "")  # +49 %: within the 50 % allowed
    assert decisions["D3"] == ("hold", "delta")  # +51 % since 119


async def test_haemolysis_index_reported_by_the_analyser_rejects_potassium(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, _ = line
    for specimen, index in ((b"H1", b"80"), (b"H2", b"20")):
        await send_message(
            peer,
            [
                b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
                b"P|1||PAT-" + specimen,
                b"O|1|" + specimen + b"||^^^K\\^^^SI-H|R",
                b"R|1|^^^K|5.9|mmol/L||N||F",
                b"R|2|^^^SI-H|" + index + b"|||N||F",
                b"L|1|N",
            ],
        )
    rows = {(r["specimen_id"], r["test_code"]): r for r in store.read(reading.latest_decisions)}
    haemolysed = rows[("H1", "K")]
    assert haemolysed["action"] == "reject" and "haemolysed" in haemolysed["reasons"]
    findings = json.loads(haemolysed["findings"])
    assert any("index 80, limit 50" in f["message"] for f in findings)
    assert "haemolysed" not in rows[("H2", "K")]["reasons"]


async def test_a_held_result_whose_qc_wait_ends_names_what_still_holds_it(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, patient("S9", "26"))  # critical, and no QC yet
    assert current(store)["S9"] == ("hold", "qc-missing:1,qc-missing:2,critical-high")
    clock.now += timedelta(minutes=10)
    await send_message(peer, qc("5.2", "15.6"))
    # The QC came: the critical value alone holds it now, and the page says so.
    assert current(store)["S9"] == ("hold", "critical-high")
    decided = store.read(
        lambda c: c.execute(select(decisions.c.reasons).order_by(decisions.c.id)).scalars().all()
    )
    assert len(decided) == 2
    # A QC that changes nothing of why it is held records nothing more.
    clock.now += timedelta(minutes=10)
    await send_message(peer, qc("5.1", "15.5"))
    assert store.read(lambda c: len(c.execute(select(decisions.c.id)).all())) == 2


def _haematology(specimen: bytes, hgb: bytes, patient: bytes = b"") -> list[bytes]:
    return [
        b"H|\\^&|||HAEM-1|||||||P|LIS2-A2",
        patient or b"P|1||PAT-" + specimen,
        b"O|1|" + specimen + b"||^^^HGB|R",
        b"R|1|^^^HGB|" + hgb + b"|g/dL||N||F||||20260301075900",
        b"L|1|N",
    ]


def _haematology_qc(low: bytes, normal: bytes, high: bytes) -> list[bytes]:
    out = [b"H|\\^&|||HAEM-1|||||||Q|LIS2-A2", b"P|1"]
    for n, (lot, value) in enumerate(
        ((b"HC-2411-L", low), (b"HC-2411-N", normal), (b"HC-2411-H", high)), start=1
    ):
        out += [
            b"O|%d|" % n + lot + b"||^^^HGB|R",
            b"R|1|^^^HGB|" + value + b"|g/dL||N||F||||20260301080500",
        ]
    return [*out, b"L|1|N"]


async def test_a_held_result_decided_again_is_judged_with_its_patient_and_its_sample(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    """HGB's ranges are by sex and age: a woman's critical value stays held when its QC
    comes, and the decision names it, as the first one did."""
    store, peer, _, clock = line
    woman = b"P|1||PAT-W1||Doe^Ann||19800101|F"
    await send_message(peer, _haematology(b"W1", b"5.0", woman))
    action, reasons = current(store)["W1"]
    assert action == "hold" and "critical-low" in reasons and "qc-missing" in reasons
    clock.now += timedelta(minutes=10)
    await send_message(peer, _haematology_qc(b"6.1", b"13.2", b"16.9"))
    assert current(store)["W1"] == ("hold", "critical-low")
    [row] = [r for r in store.read(reading.latest_decisions) if r["specimen_id"] == "W1"]
    assert row["urgent"]


def _with_control(records: list[bytes], lot: bytes, value: bytes) -> list[bytes]:
    """A patient message with a glucose control of ``lot`` after its patient (O.12 Q)."""
    return [
        *records[:-1],
        b"P|2",
        b"O|1|" + lot + b"||^^^GLU|R||||||Q",
        b"R|1|^^^GLU|" + value + b"|mmol/L||N||F",
        records[-1],
    ]


async def test_a_patient_sent_before_a_failing_control_of_its_message_is_held(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    """Q2: the controls of a message are judged before any of its patient results
    leaves, wherever the analyser put them in it."""
    store, peer, _, clock = line
    await send_message(peer, qc("5.2", "15.6"))
    clock.now += timedelta(minutes=5)
    await send_message(peer, _with_control(patient("S1", "5.0"), b"CC-45781", b"5.25"))
    assert current(store)["S1"] == ("release", "")  # a control in control lets it go
    clock.now += timedelta(minutes=5)
    await send_message(peer, _with_control(patient("S2", "5.0"), b"CC-45781", b"5.7"))
    assert current(store)["S2"] == ("hold", "corrective-action-open,qc-rejected:1-3s")
    # Held, not released and listed for review: only the result released before is.
    reviewed = select(results.c.specimen_id).join(
        qc_reviews, qc_reviews.c.result_id == results.c.id
    )
    assert store.read(lambda c: c.execute(reviewed).scalars().all()) == ["S1"]


async def test_a_patient_sent_before_a_control_that_cannot_be_evaluated_is_held(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, qc("5.2", "15.6"))
    clock.now += timedelta(minutes=5)
    await send_message(peer, _with_control(patient("S1", "5.0"), b"CC-45781", b"****"))
    assert current(store)["S1"] == ("hold", "qc-unevaluated:1")


async def test_a_control_that_cannot_be_evaluated_holds_its_level_until_one_can(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    store, peer, _, clock = line
    await send_message(peer, qc("5.2", "15.6"))
    await send_message(peer, patient("S1", "5.0"))
    for n, value in enumerate((">20", "****"), start=2):
        clock.now += timedelta(minutes=5)
        await send_message(peer, qc(value, "15.6"))  # the earlier level 1 no longer counts
        await send_message(peer, patient(f"S{n}", "5.0"))
        assert current(store)[f"S{n}"] == ("hold", "qc-unevaluated:1")
    latest = select(decisions.c.findings).order_by(decisions.c.id.desc()).limit(1)
    [finding] = json.loads(store.read(lambda c: c.execute(latest).scalar_one()))
    assert finding["message"] == (
        "QC level 1 could not be evaluated: control value '****' is not a number"
    )
    clock.now += timedelta(minutes=5)
    await send_message(peer, qc("5.2", "15.6"))
    decided = current(store)
    assert decided["S2"] == decided["S3"] == ("release", "")


async def test_a_control_of_an_expired_lot_is_no_valid_qc(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock], tmp_path: Path
) -> None:
    store, peer, pipeline, _ = line
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    qc_file = rules / "qc.yaml"
    text = qc_file.read_text()
    lot_1 = '      - lot: CC-45781\n        level: "1"\n        expiry: 2029-06-30\n'
    assert lot_1 in text
    # The lot's last day is the day before the clock's (2026-03-01).
    qc_file.write_text(text.replace(lot_1, lot_1.replace("2029-06-30", "2026-02-28")))
    pipeline.engine = Engine(load_rules(rules), UTC)
    await send_message(peer, qc("5.2", "15.6"))
    await send_message(peer, patient("S1", "5.0"))
    assert current(store)["S1"] == ("hold", "qc-unevaluated:1")
    evaluations = store.read(lambda c: c.execute(select(qc_evaluations)).all())
    assert [(e.level, e.status, e.warnings) for e in evaluations] == [
        ("1", "unevaluated", "control lot CC-45781 expired on 2026-02-28"),
        ("2", "accept", ""),
    ]


async def test_qc_sent_late_is_as_old_as_the_analyser_says(
    line: tuple[Store, StreamPeer, ConnectionPipeline, Clock],
) -> None:
    """Controls measured more than the validity window ago (the analyser emptying what it
    kept while its link was down) do not validate a patient result received now."""
    store, peer, _, clock = line

    def measured(records: list[bytes], at: bytes) -> list[bytes]:
        return [r + b"||||" + at if r.startswith(b"R|") else r for r in records]

    # Two days before the patients, by the analyser's clock, whatever its error.
    await send_message(peer, measured(qc("5.2", "15.6"), b"20260227120000"))
    await send_message(peer, measured(patient("S1", "5.0"), b"20260301080000"))
    assert current(store)["S1"] == ("hold", "qc-expired")
    # An analyser clock a day behind ours is no reason to hold: QC an hour before it.
    clock.now += timedelta(minutes=10)
    await send_message(peer, measured(qc("5.2", "15.6"), b"20260228070000"))
    await send_message(peer, measured(patient("S2", "5.0"), b"20260228080000"))
    assert current(store)["S2"] == ("release", "")
