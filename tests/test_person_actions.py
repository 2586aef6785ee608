"""What a person does to held results, through the control commands, on SQLite and on
PostgreSQL: each act's effect in the store and in the outbox (what the LIS would get),
what each refuses, its audit rows, and a failed act leaving nothing."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

import drivers
from middleware import person_actions
from middleware.assessment import assess_message
from middleware.astm.records import decode_message
from middleware.control import Conflict, Control, Invalid, NotFound
from middleware.engine.decision import EARLY_RELEASE
from middleware.settings import Settings
from middleware.store import Store, outbox, release
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.schema import (
    audit_log,
    decisions,
    open_holds,
    recalled_lots,
    result_comments,
)
from middleware.store.schema import outbox as outbox_table
from tests.conftest import ROOT
from tests.messages import patient, qc
from tests.test_early_release import k_patient, k_qc

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CHEM = {"name": "chem-1", "transport": "tcp-server", "port": 5001, "enabled": False}
LIS = {"host": "127.0.0.1", "port": 2575}
ARCHITECT = drivers.get("abbott_architect", drivers.DriverOptions({"685": "GLU"}), "chem-1")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def control(tmp_path: Path, database_url: str, store: Store, clock: Clock) -> Control:
    """The shipped rules (a copy, free to edit), one analyser, a LIS to queue for."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "database_url": database_url,
            "instruments": [CHEM],
            "rules_dir": rules,
            "lis": LIS,
        }
    )
    control = Control(settings, store, clock=clock)
    await control.reload_rules("daemon start")
    return control


def _store(
    conn: Connection,
    control: Control,
    lines: list[bytes],
    now: datetime,
    driver: drivers.Driver | None = None,
) -> tuple[int, ...]:
    assert control.engine is not None
    records = [line.decode() for line in lines]
    reading = (driver or drivers.get("generic", None, "chem-1")).read(
        decode_message(records).records
    )
    reading = reading.in_timezone(UTC)
    text = "\r".join(records)
    delivery = Delivery("c", "chem-1", text.encode(), now, text, len(records), reading)
    stored = store_delivery(conn, delivery, now)
    assess_message(conn, control.engine, stored, reading, now, control.lis)
    return stored.result_ids


async def send(
    control: Control, lines: list[bytes], now: datetime, driver: drivers.Driver | None = None
) -> tuple[int, ...]:
    """An analyser's message, stored and decided as the daemon does: its result ids."""
    assert control.store is not None
    return await control.store.write(
        partial(_store, control=control, lines=lines, now=now, driver=driver)
    )


def architect(specimen: str, value: str, lot: str = "L42") -> list[bytes]:
    """A glucose result made with a reagent lot the analyser names."""
    return [
        b"H|\\^&|||ARCHITECT^9.45^SCM12345^H1P1O1R1C1Q1L1|||||||P|1",
        b"P|1|||PAT-" + specimen.encode(),
        b"O|1|" + specimen.encode() + b"|" + specimen.encode() + b"^A1^1|^^^685^GLU|R",
        b"R|1|^^^685^GLU^UNDILUTED^F^" + lot.encode() + b"^SER1^^F|" + value.encode()
        + b"|mmol/L||N||F",
        b"L|1",
    ]  # fmt: skip


def sent(store: Store) -> list[tuple[str, str, str, str]]:
    """Each message queued for the LIS: specimen, OBX-5 (the value), OBX-11, its notes."""
    out = []
    for entry in store.read(outbox.entries):
        segments = entry.message.split("\r")
        obx = next(s for s in segments if s.startswith("OBX|")).split("|")
        notes = " / ".join(s.split("|")[3] for s in segments if s.startswith("NTE|"))
        out.append((entry.specimen_id, obx[5], obx[11], notes))
    return out


def latest(store: Store, result_id: int) -> Any:
    def read(conn: Connection) -> Any:
        return conn.execute(
            select(decisions)
            .where(decisions.c.result_id == result_id)
            .order_by(decisions.c.id.desc())
            .limit(1)
        ).one()

    return store.read(read)


def held(store: Store) -> list[int]:
    return store.read(
        lambda c: list(c.execute(select(open_holds.c.result_id).order_by("result_id")).scalars())
    )


def audited(store: Store) -> list[tuple[str, str, str]]:
    rows = store.read(lambda c: c.execute(select(audit_log).order_by(audit_log.c.id)).all())
    return [(r.actor, r.action, r.subject) for r in rows if r.action != "rules.load"]


def counts(store: Store) -> dict[str, int]:
    """Rows of what the acts write."""
    tables = (decisions, open_holds, outbox_table, audit_log, result_comments, recalled_lots)
    return store.read(lambda c: {t.name: len(c.execute(select(t)).all()) for t in tables})


# --- release ------------------------------------------------------------------------------


async def test_a_validator_releases_over_a_critical_value_once(
    control: Control, store: Store, clock: Clock
) -> None:
    await send(control, qc("5.2", "15.6"), T0)
    (critical,) = await send(control, patient("S1", "30.0"), T0 + timedelta(minutes=5))
    assert latest(store, critical).reasons == "critical-high" and sent(store) == []

    clock.now = T0 + timedelta(minutes=10)
    done = await control.release_results([critical], "bob")
    assert done.result_ids == (critical,) and len(done.queued) == 1
    decision = latest(store, critical)
    assert (decision.action, decision.decided_by, decision.reasons) == (
        "release",
        "bob",
        "critical-high",
    )
    assert "released by bob over critical-high" in decision.findings
    assert held(store) == []
    assert sent(store) == [("S1", "30.0", "F", "")]
    assert audited(store) == [("bob", "results.release", f"result {critical}")]

    with pytest.raises(Conflict, match=f"result {critical} was released by bob"):
        await control.release_results([critical], "carol")
    with pytest.raises(NotFound, match="no results 998, 999"):
        await control.release_results([critical, 999, 998], "bob")
    assert len(sent(store)) == 1 and len(audited(store)) == 1


async def test_q1_no_one_releases_a_result_whose_qc_is_not_valid(
    control: Control, store: Store, clock: Clock
) -> None:
    # No QC at all: held for it; a critical value besides.
    (waiting,) = await send(control, patient("S1", "30.0"), T0)
    before = counts(store)
    with pytest.raises(Conflict, match=r"QC of GLU on chem-1 .*qc-missing:1, qc-missing:2"):
        await control.release_results([waiting], "bob")
    assert counts(store) == before  # nothing decided, queued nor audited

    # QC comes in control: the critical value still holds it, which a person releases over;
    # the QC holds of its first decision are over, not released over.
    await send(control, qc("5.2", "15.6"), T0 + timedelta(minutes=5))
    assert held(store) == [waiting]
    (flagged,) = await send(control, patient("S2", "30.0"), T0 + timedelta(minutes=6))

    # QC then fails (1-3s): nobody may release either, whatever else holds them.
    await send(control, qc("5.9", "15.6"), T0 + timedelta(minutes=7))
    clock.now = T0 + timedelta(minutes=8)
    with pytest.raises(Conflict, match="corrective-action-open") as refused:
        await control.release_results([waiting, flagged], "bob")
    assert f"results {waiting}, {flagged}" in str(refused.value)
    assert sent(store) == [] and audited(store) == []


async def test_release_after_qc_came_back_lists_only_what_it_released_over(
    control: Control, store: Store, clock: Clock
) -> None:
    (result_id,) = await send(control, patient("S1", "30.0"), T0)
    await send(control, qc("5.2", "15.6"), T0 + timedelta(minutes=5))
    clock.now = T0 + timedelta(minutes=6)
    await control.release_results([result_id], "bob")
    assert latest(store, result_id).reasons == "critical-high"


async def test_q1_a_bracketed_result_waits_for_the_qc_closing_its_run(
    control: Control, store: Store, clock: Clock
) -> None:
    await send(control, k_qc("4.0", "6.2"), T0)
    (result_id,) = await send(control, k_patient("S1", "4.1", T0 + timedelta(minutes=5), "R"), T0)
    clock.now = T0 + timedelta(minutes=10)
    with pytest.raises(Conflict, match="awaiting-closing-qc"):
        await control.release_results([result_id], "bob")


async def test_a_released_result_goes_as_the_engine_sends_one_with_lots_and_comments(
    control: Control, store: Store, clock: Clock
) -> None:
    """The same outbox path and the same message as a release by the engine: the
    analyser's comments, the reagent lots, and what people wrote about it."""
    await send(control, qc("5.2", "15.6"), T0)
    await send(control, architect("S1", "5.0"), T0, ARCHITECT)  # released by the engine
    (person_released,) = await send(control, architect("S2", "30.0"), T0, ARCHITECT)
    clock.now = T0 + timedelta(minutes=1)
    note = await control.comment_result(person_released, "  repeat on a fresh tube  ", "bob")
    assert (note.text, note.by, note.result_id) == (
        "repeat on a fresh tube",
        "bob",
        person_released,
    )
    await control.release_results([person_released], "bob")
    entries = store.read(outbox.entries)
    by_engine, by_person = (e.message.split("\r") for e in entries)
    # MSH-7 and MSH-10 differ: built at another time, with a control id of its own.
    assert [s.split("|")[0] for s in by_engine] == [s.split("|")[0] for s in by_person][:-1]
    assert by_person[3].split("|")[11] == by_engine[3].split("|")[11] == "F"
    assert by_person[4:] == [
        "NTE|1|L|repeat on a fresh tube",
        "NTE|2|L|reagent ARCHITECT GLU reagent lot L42",
    ]
    assert by_engine[4:] == ["NTE|1|L|reagent ARCHITECT GLU reagent lot L42"]


async def test_a_comment_goes_with_the_result_when_qc_releases_it_later(
    control: Control, store: Store, clock: Clock
) -> None:
    (result_id,) = await send(control, patient("S1", "5.0"), T0)
    await control.comment_result(result_id, "patient on insulin", "bob")
    await send(control, qc("5.2", "15.6"), T0 + timedelta(minutes=5))
    assert sent(store) == [("S1", "5.0", "F", "patient on insulin")]
    assert ("bob", "results.comment", f"result {result_id}") in audited(store)
    # Released already: a comment is kept and shown, nothing more is sent.
    await control.comment_result(result_id, "seen by the ward", "carol")
    assert len(sent(store)) == 1
    rows = store.read(lambda c: c.execute(select(result_comments)).all())
    assert [(r.text, r.written_by) for r in rows] == [
        ("patient on insulin", "bob"),
        ("seen by the ward", "carol"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the comment is required"),
        ("   ", "the comment is required"),
        ("x" * 2001, "at most 2000"),
        ("line one\nline two", "control character"),
        ("evil \u202e txt", "control character"),
        ("bell\x07", "control character"),
    ],
)
async def test_a_comment_is_bounded_and_plain_text(
    control: Control, store: Store, text: str, message: str
) -> None:
    (result_id,) = await send(control, patient("S1", "5.0"), T0)
    with pytest.raises(Invalid, match=message):
        await control.comment_result(result_id, text, "bob")
    with pytest.raises(NotFound, match="no result 999"):
        await control.comment_result(999, "fine", "bob")
    assert store.read(lambda c: c.execute(select(result_comments)).all()) == []


# --- reject -------------------------------------------------------------------------------


async def test_a_validator_rejects_with_the_reason_sent_to_the_lis(
    control: Control, store: Store, clock: Clock
) -> None:
    await send(control, qc("5.2", "15.6"), T0)
    (result_id,) = await send(control, patient("S1", "30.0"), T0)
    with pytest.raises(Invalid, match="the reason is required"):
        await control.reject_results([result_id], " ", "bob")
    clock.now = T0 + timedelta(minutes=3)
    await control.reject_results([result_id], "clotted sample: collect again", "bob")
    decision = latest(store, result_id)
    assert (decision.action, decision.decided_by) == ("reject", "bob")
    assert decision.reasons == "rejected-by-person,critical-high"
    # Not obtained (OBX-11 X), without its value, with the reason (S1).
    assert sent(store) == [("S1", "", "X", "clotted sample: collect again")]
    assert audited(store) == [("bob", "results.reject", f"result {result_id}")]
    with pytest.raises(Conflict, match="was rejected by bob"):
        await control.release_results([result_id], "carol")


# --- re-run -------------------------------------------------------------------------------


async def test_a_rerun_replaces_the_result_it_was_asked_for(
    control: Control, store: Store, clock: Clock
) -> None:
    (first,) = await send(control, patient("S1", "9.9"), T0)  # no QC yet: held
    clock.now = T0 + timedelta(minutes=1)
    done = await control.request_rerun([first], "tech", "bubble in the cuvette")
    assert done.queued == ()
    decision = latest(store, first)
    assert (decision.action, decision.decided_by) == ("hold", "tech")
    assert decision.reasons == "qc-missing:1,qc-missing:2,rerun-requested"
    assert "re-run requested by tech: bubble in the cuvette" in decision.findings
    with pytest.raises(Conflict, match="asked for already"):
        await control.request_rerun([first], "tech")

    # QC in control would release it: it waits for its re-run instead.
    await send(control, qc("5.2", "15.6"), T0 + timedelta(minutes=5))
    assert held(store) == [first] and sent(store) == []

    (rerun,) = await send(control, patient("S1", "5.1"), T0 + timedelta(minutes=10))
    replaced = latest(store, first)
    assert (replaced.action, replaced.reasons) == ("superseded", f"superseded-by:{rerun}")
    assert held(store) == []
    assert sent(store) == [("S1", "5.1", "F", "")]  # the re-run's value, never 9.9
    with pytest.raises(Conflict, match=f"result {first} was replaced by its re-run"):
        await control.release_results([first], "bob")
    assert audited(store) == [("tech", "results.rerun", f"result {first}")]


async def test_a_rerun_of_a_result_sent_early_tells_the_lis_it_is_not_confirmed(
    control: Control, store: Store, clock: Clock
) -> None:
    (result_id,) = await send(control, k_patient("S1", "4.1", T0, "R"), T0)
    await control.send_early([result_id], "dr-bio")
    clock.now = T0 + timedelta(minutes=2)
    await control.request_rerun([result_id], "tech")
    assert [s[2] for s in sent(store)] == ["P", "P"]
    assert sent(store)[1][3] == (
        "under review: qc-missing:1, qc-missing:2, rerun-requested; the preliminary result "
        "sent is not confirmed"
    )


# --- early release by a person (Q13) --------------------------------------------------------


async def test_a_biologist_sends_early_a_result_waiting_only_for_qc(
    control: Control, store: Store, clock: Clock
) -> None:
    """The shipped rules send nothing early; a biologist does, for a result held only
    for its QC; it stays held, stands while it only waits, and its final follows."""
    (result_id,) = await send(control, k_patient("S1", "4.1", T0, "R"), T0)
    (critical,) = await send(control, k_patient("S2", "7.9", T0, "R", "HH"), T0)
    with pytest.raises(Conflict, match=f"result {critical} is held for .*critical-high"):
        await control.send_early([result_id, critical], "dr-bio")
    assert sent(store) == []

    done = await control.send_early([result_id], "dr-bio")
    assert len(done.queued) == 1
    assert sent(store) == [("S1", "4.1", "P", person_actions.EARLY_NOTE)]
    decision = latest(store, result_id)
    assert (decision.action, decision.decided_by) == ("hold", "dr-bio")
    assert EARLY_RELEASE in decision.findings and held(store) == [result_id, critical]
    with pytest.raises(Conflict, match="went to the LIS early already"):
        await control.send_early([result_id], "dr-bio")
    assert audited(store) == [("dr-bio", "results.send_early", f"result {result_id}")]

    # Level 1 comes: still a wait for QC (level 2): the preliminary stands, nothing sent.
    one_level = [*k_qc("4.0", "6.2")[:4], b"L|1|N"]
    await send(control, one_level, T0 + timedelta(minutes=10))
    assert len(sent(store)) == 1
    # What it waits for is now level 2 alone: said so, with the note of who sent it early.
    decision = latest(store, result_id)
    assert (decision.action, decision.reasons, decision.decided_by) == (
        "hold",
        "qc-missing:2",
        "engine",
    )
    assert "sent to the LIS as preliminary by dr-bio" in decision.findings
    await send(control, k_qc("4.0", "6.2"), T0 + timedelta(minutes=20))
    assert sent(store)[1:] == [("S1", "4.1", "F", "")]
    # The critical one is held for its value alone now that its QC is in.
    decision = latest(store, critical)
    assert (decision.action, decision.reasons) == ("hold", "flag:HH,critical-high")
    assert held(store) == [critical]


async def test_without_a_lis_nothing_is_sent_early(
    tmp_path: Path, database_url: str, store: Store
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    settings = Settings.model_validate(
        {"state_dir": tmp_path / "s", "database_url": database_url, "instruments": [CHEM],
         "rules_dir": rules}
    )  # fmt: skip
    control = Control(settings, store)
    await control.reload_rules("daemon start")
    with pytest.raises(Conflict, match="no LIS is configured"):
        await control.send_early([1], "dr-bio")


# --- a test's run ---------------------------------------------------------------------------


async def test_release_run_once_qc_is_valid_again(
    control: Control, store: Store, clock: Clock
) -> None:
    """QC older than its validity holds a result; once the lab's rules accept it (a
    longer validity), the run's held results are decided again on request."""
    await send(control, qc("5.2", "15.6"), T0)
    late = T0 + timedelta(hours=25)
    (result_id,) = await send(control, patient("S1", "5.0"), late)
    assert latest(store, result_id).reasons == "qc-expired"
    clock.now = late
    with pytest.raises(Conflict, match=r"QC of GLU on chem-1 is not valid now \(qc-expired\)"):
        await control.release_run("chem-1", "GLU", "bob")
    with pytest.raises(NotFound, match="unknown instrument"):
        await control.release_run("chem-9", "GLU", "bob")

    assert control.settings.rules_dir is not None
    policies = control.settings.rules_dir / "qc.yaml"
    policies.write_text(
        policies.read_text().replace(
            '  - tests: [GLU, CREA, UREA]\n    levels: ["1", "2"]\n',
            '  - tests: [GLU, CREA, UREA]\n    levels: ["1", "2"]\n    validity_hours: 48\n',
        )
    )
    await control.reload_rules("lab-it")
    run = await control.release_run("chem-1", "GLU", "bob")
    assert (run.released, run.rejected, len(run.queued)) == ((result_id,), (), 1)
    assert latest(store, result_id).decided_by == "engine"
    assert sent(store) == [("S1", "5.0", "F", "")]
    assert ("bob", "results.release_run", "chem-1/GLU") in audited(store)


# --- reagent lots (R4) ----------------------------------------------------------------------


async def test_a_recalled_lot_holds_new_results_and_lists_the_earlier_ones(
    control: Control, store: Store, clock: Clock
) -> None:
    reagent = "ARCHITECT GLU reagent"
    await send(control, qc("5.2", "15.6"), T0)
    (out,) = await send(control, architect("S1", "5.0"), T0, ARCHITECT)
    (waiting,) = await send(control, architect("S2", "30.0"), T0, ARCHITECT)
    (other,) = await send(control, architect("S3", "5.1", lot="L43"), T0, ARCHITECT)
    [in_use] = await control.lots_in_use("chem-1")
    assert (in_use.reagent, in_use.lot, in_use.tests, in_use.recalled) == (
        reagent,
        "L43",
        ("GLU",),
        None,
    )

    clock.now = T0 + timedelta(hours=1)
    with pytest.raises(Invalid, match="the reason is required"):
        await control.recall_reagent_lot(reagent, "L42", "dr-bio", "")
    recalled = await control.recall_reagent_lot(reagent, "L42", "dr-bio", "manufacturer notice")
    assert [r.result_id for r in recalled.released] == [out]
    assert [r.result_id for r in recalled.held] == [waiting] and recalled.others == ()
    decision = latest(store, waiting)
    assert decision.reasons == "critical-high,reagent-recalled:L42"
    assert decision.decided_by == "dr-bio"
    assert ("dr-bio", "reagents.recall", f"{reagent}/L42") in audited(store)
    with pytest.raises(Conflict, match="was recalled by dr-bio"):
        await control.recall_reagent_lot(reagent, "L42", "carol", "again")

    # From now on, a result made with the lot is held, its QC in control or not.
    (later,) = await send(control, architect("S4", "5.2"), clock.now, ARCHITECT)
    assert latest(store, later).reasons == "reagent-lot-changed,reagent-recalled:L42"
    # Another lot: held for the lot change alone (it voided QC), not for the recall.
    assert latest(store, other).reasons == "reagent-lot-changed"
    listed = await control.results_of_lot(reagent, "L42")
    assert [(r.result_id, r.state) for r in listed] == [
        (out, "release"),
        (waiting, "held"),
        (later, "held"),
    ]
    assert [r.result_id for r in await control.results_of_lot(reagent, "L42", out, 1)] == [waiting]
    with pytest.raises(NotFound, match="no analyser reported"):
        await control.results_of_lot(reagent, "L99")
    [in_use] = await control.lots_in_use("chem-1")
    assert in_use.lot == "L42" and in_use.recalled is not None
    assert in_use.recalled.reason == "manufacturer notice"


# --- the page's view ------------------------------------------------------------------------


async def test_the_held_view_pages_by_instrument_and_specimen_with_everything_about_each(
    control: Control, store: Store, clock: Clock
) -> None:
    await send(control, qc("5.2", "15.6"), T0)
    (earlier,) = await send(control, architect("S1", "5.0"), T0, ARCHITECT)
    (critical,) = await send(control, architect("S1", "30.0"), T0, ARCHITECT)
    (b,) = await send(control, patient("S3", "26.0", "PAT9"), T0)
    (a,) = await send(control, patient("S2", "27.0", "PAT8"), T0)
    await control.comment_result(critical, "called the ward", "bob")
    first = await control.held_results(limit=2)
    assert [r.specimen_id for r in first.results] == ["S1", "S2"]
    assert first.next_after == ("chem-1", "S2", a)
    item = first.results[0]
    assert item.result_id == critical and item.reasons == ("critical-high",)
    assert item.urgent and item.findings[0].code == "critical-high"
    assert [(c.text, c.by) for c in item.comments] == [("called the ward", "bob")]
    assert [(lot.reagent, lot.lot) for lot in item.reagent_lots] == [
        ("ARCHITECT GLU reagent", "L42")
    ]
    assert item.previous is not None
    assert (item.previous.result_id, item.previous.value) == (earlier, "5.0")
    assert item.sent_early_at is None and item.rerun_requested_at is None
    rest = await control.held_results(after=first.next_after, limit=2)
    assert [r.result_id for r in rest.results] == [b] and rest.next_after is None
    only = await control.held_results(specimen="S2")
    assert [r.result_id for r in only.results] == [a] and only.results[0].previous is None


# --- refusals before any transaction, and a failed act ---------------------------------------


async def test_what_a_person_gives_is_checked(control: Control) -> None:
    with pytest.raises(Invalid, match="no result named"):
        await control.release_results([], "bob")
    with pytest.raises(Invalid, match="whole numbers from 1"):
        await control.release_results([0], "bob")
    with pytest.raises(Invalid, match="whole numbers from 1"):
        await control.comment_result(2**31, "fine", "bob")
    with pytest.raises(Invalid, match="who acts is required"):
        await control.release_results([1], "")
    with pytest.raises(Invalid, match="at most 500"):
        await control.release_results(range(1, 502), "bob")


async def test_a_failed_act_leaves_nothing(
    control: Control, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await send(control, qc("5.2", "15.6"), T0)
    (result_id,) = await send(control, patient("S1", "30.0"), T0)
    before = counts(store)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(person_actions, "audit", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        await control.release_results([result_id], "bob")
    with pytest.raises(RuntimeError, match="disk gone"):
        await control.recall_reagent_lot("GLU reagent", "2365", "dr-bio", "notice")
    assert counts(store) == before
    assert held(store) == [result_id]
    assert store.read(lambda c: release.current_decisions(c, [result_id]))[result_id].action == (
        "hold"
    )


async def test_a_critical_value_by_the_patients_sex_is_never_sent_early(
    control: Control, store: Store
) -> None:
    """HGB's ranges are by sex and age: looked at again without its message, a woman's
    critical value is still what holds it, not only its QC."""
    (result_id,) = await send(
        control,
        [
            b"H|\\^&|||HAEM-1|||||||P|LIS2-A2",
            b"P|1||PAT-W1||Doe^Ann||19800101|F",
            b"O|1|W1||^^^HGB|R",
            b"R|1|^^^HGB|5.0|g/dL||N||F||||20260301075900",
            b"L|1|N",
        ],
        T0,
    )
    assert "critical-low" in latest(store, result_id).reasons
    with pytest.raises(Conflict, match=f"result {result_id} is held for .*critical-low"):
        await control.send_early([result_id], "dr-bio")
    assert sent(store) == []
