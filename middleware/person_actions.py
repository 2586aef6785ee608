"""What a person does to held results: release or reject them, comment on a result, ask
for a re-run, send them to the LIS early, release a test's held results once its QC is in
control, recall a reagent lot.

Each act is one unit of work for one transaction, given the time and who acts. It looks
before it writes: what it refuses it returns as a :class:`Refusal` having written
nothing, so that the writes it shares a transaction with (the analysers' messages) are
never rolled back for it.

Q1 is absolute: nobody releases a result while the QC of its test on its instrument does
not let it go. What a validator releases over is everything else the engine holds a
result for: autoverification, a delta, a critical value, an acceptance with comment, a
reagent lot, a re-run asked for. A person's release is theirs (``decided_by``), never the
engine's (Q12).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection

from middleware.assessment import (
    QcBook,
    Redecided,
    decide_again,
    queue_doubts,
    queue_preliminary,
    queue_released,
    redecide_held,
)
from middleware.domain import Result
from middleware.engine.decision import EARLY_RELEASE, Action, Decision, Finding, decide
from middleware.engine.early_release import qc_waits
from middleware.engine.engine import Engine
from middleware.engine.qc import QC_FINDING_CODES
from middleware.engine.reagents import REAGENT_RECALLED
from middleware.engine.rules import EarlyRelease
from middleware.hl7.results import Sender
from middleware.store import comments, recalls, release
from middleware.store.audit import audit
from middleware.store.comments import ResultComment
from middleware.store.ingest import MAX_KEY_BYTES
from middleware.store.recalls import LotResult, RecalledLot

#: The longest text a person may give (a comment, a reason).
MAX_TEXT = 2000
#: The longest name of who acts.
MAX_NAME = 200
#: The most results one act names.
MAX_RESULTS = 500
#: Row ids are the databases' 32-bit integers: a larger one names nothing.
_MAX_ID = 2**31 - 1

RELEASED_BY_PERSON = "released-by-person"
REJECTED_BY_PERSON = "rejected-by-person"
RERUN_REQUESTED = "rerun-requested"

#: The note a result sent early by a person travels with: the rules' own.
EARLY_NOTE: str = EarlyRelease.model_fields["comment"].default

# Bidirectional overrides and isolates reorder what a reader sees of a text.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True, slots=True)
class Refusal:
    """What an act refuses, and why, in words for the person."""

    kind: Literal["not-found", "conflict", "invalid"]
    """``invalid``: what the person gave cannot be taken as it is, whatever the state."""
    message: str


@dataclass(frozen=True, slots=True)
class Acted:
    """The results a person acted on, and the messages queued for the LIS."""

    result_ids: tuple[int, ...]
    queued: tuple[int, ...]
    """Outbox entries; none without a LIS."""


@dataclass(frozen=True, slots=True)
class RunReleased:
    instrument: str
    test: str
    released: tuple[int, ...]
    rejected: tuple[int, ...]
    """Decided again, and refused by the sample acceptance rules."""
    queued: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LotRecalled:
    recall: RecalledLot
    released: tuple[LotResult, ...]
    """Already with the LIS: listed for review."""
    held: tuple[LotResult, ...]
    """Held, and from now on for the recall too."""
    others: tuple[LotResult, ...]
    """Rejected, replaced by a re-run, or never decided."""


# --- what a person gives ---------------------------------------------------------------


def clean_text(value: str, what: str, required: bool, limit: int = MAX_TEXT) -> str | Refusal:
    """The text without surrounding spaces; refused when empty but required, too long, or
    holding control characters (line breaks included: the text travels in HL7 fields and
    log lines)."""
    text = value.strip()
    if required and not text:
        return Refusal("invalid", f"{what} is required")
    if len(text) > limit:
        return Refusal("invalid", f"{what} is {len(text)} characters long; at most {limit}")
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI:
            return Refusal("invalid", f"{what} holds a control character (U+{ord(ch):04X})")
    return text


def clean_key(value: str, what: str) -> str | Refusal:
    """A reagent or lot as analysers report them: required, and short enough to index."""
    text = clean_text(value, what, True)
    if isinstance(text, str) and len(text.encode("utf-8")) > MAX_KEY_BYTES:
        return Refusal("invalid", f"{what} is longer than {MAX_KEY_BYTES} bytes")
    return text


def clean_ids(ids: Iterable[int]) -> tuple[int, ...] | Refusal:
    """Result ids, each once, in order."""
    found = list(ids)
    if not found:
        return Refusal("invalid", "no result named")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i <= _MAX_ID for i in found):
        return Refusal("invalid", f"result ids are whole numbers from 1 to {_MAX_ID}")
    wanted = tuple(sorted(set(found)))
    if len(wanted) > MAX_RESULTS:
        return Refusal("invalid", f"{len(wanted)} results named; at most {MAX_RESULTS} at once")
    return wanted


# --- looking before writing ---------------------------------------------------------------


def _named(ids: Sequence[int]) -> str:
    return ("result " if len(ids) == 1 else "results ") + ", ".join(str(i) for i in ids)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _not_held(result_id: int, found: release.StoredDecision | None) -> str:
    if found is None:
        return f"result {result_id} was never decided"
    if found.action == release.SUPERSEDED:
        return f"result {result_id} was replaced by its re-run ({found.findings[0].code})"
    done = {"release": "released", "reject": "rejected"}.get(found.action, found.action)
    return f"result {result_id} was {done} by {found.decided_by} at {_when(found.decided_at)}"


def _holds(conn: Connection, ids: Sequence[int]) -> list[release.Held] | Refusal:
    """The named results, each held now (and locked to this transaction); refused when
    any is unknown or not held."""
    known = release.existing_results(conn, ids)
    missing = [i for i in ids if i not in known]
    if missing:
        return Refusal("not-found", f"no {_named(missing)}")
    # The QC state of their tests first, then the holds: the order an analyser's QC
    # message takes them in (it decides the held results of its tests again), so that a
    # person acting and a QC message on another daemon never wait on each other in a cycle.
    QcBook.read(
        conn, {(h.result.instrument, h.result.test_code) for h in release.holds_among(conn, ids)}
    )
    held = release.holds_among(conn, ids, lock=True)
    if len(held) < len(ids):
        found = {h.result_id for h in held}
        others = [i for i in ids if i not in found]
        current = release.current_decisions(conn, others)
        why = "; ".join(_not_held(i, current.get(i)) for i in others)
        return Refusal("conflict", f"only held results can be acted on: {why}")
    return held


def _is_qc(finding: Finding) -> bool:
    return finding.code.split(":", 1)[0] in QC_FINDING_CODES


def _qc_refusal(blocked: Sequence[Redecided]) -> Refusal:
    by_test: dict[tuple[str, str], tuple[list[int], list[str]]] = {}
    for found in blocked:
        result = found.held.result
        ids, codes = by_test.setdefault((result.instrument, result.test_code), ([], []))
        ids.append(found.held.result_id)
        codes += [f.code for f in found.qc if f.code not in codes]
    parts = [
        f"the QC of {test} on {instrument} does not let {_named(ids)} go now ({', '.join(codes)})"
        for (instrument, test), (ids, codes) in by_test.items()
    ]
    return Refusal(
        "conflict", "; ".join(parts) + ": no one may release a result before its QC is valid"
    )


def _seen(found: release.StoredDecision) -> list[Finding]:
    """The findings of a held result's latest decision, as the page showed them, less
    the note that sent it early (a preliminary's note never travels with its final)."""
    return [f for f in found.findings if f.code != EARLY_RELEASE]


# --- the acts ---------------------------------------------------------------------------


def release_results(
    conn: Connection,
    engine: Engine,
    lis: Sender | None,
    ids: Sequence[int],
    by: str,
    now: datetime,
) -> Acted | Refusal:
    """A validator releases held results over what the engine holds them for, once the
    engine, deciding them again, finds their QC valid (Q1). Each goes to the LIS as a
    release by the engine goes (a preliminary sent early gets its final)."""
    held = _holds(conn, ids)
    if isinstance(held, Refusal):
        return held
    redecided = decide_again(conn, engine, held, now)
    blocked = [found for found in redecided if found.qc]
    if blocked:
        return _qc_refusal(blocked)
    stored = release.current_decisions(conn, ids)
    decided: list[tuple[int, Result, Decision]] = []
    for found in redecided:
        h = found.held
        # Holds that QC made are over now; what else held it, then or now, is released over.
        over = [f for f in _seen(stored[h.result_id]) if not _is_qc(f)]
        codes = {f.code for f in over}
        over += [
            f for f in found.decision.findings if f.action is Action.HOLD and f.code not in codes
        ]
        reasons = [f.code for f in over if f.action is not Action.RELEASE]
        person = Finding(
            RELEASED_BY_PERSON,
            f"released by {by} over {', '.join(reasons)}" if reasons else f"released by {by}",
            Action.RELEASE,
        )
        decided.append((h.result_id, h.result, Decision(Action.RELEASE, (person, *over))))
    release.record_decisions(conn, decided, now, by)
    queued = _to_lis(conn, lis, decided, now)
    _audit_each(conn, now, by, "results.release", decided, lambda d: {"over": list(d.reasons)})
    return Acted(tuple(ids), tuple(queued))


def reject_results(
    conn: Connection,
    lis: Sender | None,
    ids: Sequence[int],
    reason: str,
    by: str,
    now: datetime,
) -> Acted | Refusal:
    """A validator rejects held results (S1): the LIS gets each as not obtained (OBX-11
    X) with the reason, as it gets the engine's rejections."""
    held = _holds(conn, ids)
    if isinstance(held, Refusal):
        return held
    stored = release.current_decisions(conn, ids)
    refusal = Finding(REJECTED_BY_PERSON, reason, Action.REJECT)
    decided = [
        (h.result_id, h.result, decide([refusal, *_seen(stored[h.result_id])])) for h in held
    ]
    release.record_decisions(conn, decided, now, by)
    queued = _to_lis(conn, lis, decided, now)
    _audit_each(conn, now, by, "results.reject", decided, lambda _: {"reason": reason})
    return Acted(tuple(ids), tuple(queued))


def comment_result(
    conn: Connection, result_id: int, text: str, by: str, now: datetime
) -> ResultComment | Refusal:
    """A comment on a result, held or not: shown with it, and sent with it to the LIS
    (NTE) when it is released after."""
    if not release.existing_results(conn, [result_id]):
        return Refusal("not-found", f"no result {result_id}")
    written = comments.add(conn, result_id, text, by, now)
    audit(conn, now, by, "results.comment", f"result {result_id}", {"text": text})
    return written


def request_rerun(
    conn: Connection,
    lis: Sender | None,
    ids: Sequence[int],
    reason: str,
    by: str,
    now: datetime,
) -> Acted | Refusal:
    """A technician asks for held results to be measured again: they stay held, for the
    re-run too, and the engine no longer releases them; the re-run result of the same
    specimen and test replaces each. One sent early is no longer to be taken as such:
    the LIS is told."""
    held = _holds(conn, ids)
    if isinstance(held, Refusal):
        return held
    asked = [h.result_id for h in held if h.rerun_requested]
    if asked:
        return Refusal("conflict", f"a re-run of {_named(asked)} is asked for already")
    stored = release.current_decisions(conn, ids)
    message = f"re-run requested by {by}" + (f": {reason}" if reason else "")
    decided = [
        (
            h.result_id,
            h.result,
            decide([*_seen(stored[h.result_id]), Finding(RERUN_REQUESTED, message)]),
        )
        for h in held
    ]
    release.record_decisions(conn, decided, now, by)
    release.mark_rerun_requested(conn, ids, now)
    queued = _doubt(conn, lis, held, decided, now)
    _audit_each(conn, now, by, "results.rerun", decided, lambda _: {"reason": reason})
    return Acted(tuple(ids), tuple(queued))


def release_run(
    conn: Connection,
    engine: Engine,
    lis: Sender | None,
    instrument: str,
    test: str,
    by: str,
    now: datetime,
) -> RunReleased | Refusal:
    """Once the QC of a test on an instrument is valid, its held results are decided
    again, as a control in control does it; those waiting for a re-run stay held."""
    state = QcBook.read(conn, [(instrument, test)]).test((instrument, test))
    # The run closing a result is the result's own matter: the engine holds those it
    # has not closed, and releases the others.
    qc = [
        f
        for f in engine.gate.findings(state, instrument, test, now)
        if f.code != "awaiting-closing-qc"
    ]
    if qc:
        codes = ", ".join(f.code for f in qc)
        return Refusal(
            "conflict",
            f"the QC of {test} on {instrument} is not valid now ({codes}): "
            "its held results stay held",
        )
    changed = redecide_held(conn, engine, instrument, {test: state}, now, lis)
    queued = _to_lis(conn, lis, changed, now)
    released = tuple(i for i, _, d in changed if d.action is Action.RELEASE)
    rejected = tuple(i for i, _, d in changed if d.action is Action.REJECT)
    audit(
        conn,
        now,
        by,
        "results.release_run",
        f"{instrument}/{test}",
        {"released": list(released), "rejected": list(rejected)},
    )
    return RunReleased(instrument, test, released, rejected, tuple(queued))


def send_early(
    conn: Connection,
    engine: Engine,
    lis: Sender,
    ids: Sequence[int],
    by: str,
    now: datetime,
) -> Acted | Refusal:
    """Q13, by a biologist: held results that wait for nothing but their QC go to the LIS
    as preliminary now; they stay held, and their final follows when QC releases them
    (or, should their QC fail, a notice that the preliminary is not confirmed)."""
    held = _holds(conn, ids)
    if isinstance(held, Refusal):
        return held
    redecided = decide_again(conn, engine, held, now)
    problems = []
    for found in redecided:
        h = found.held
        if h.sent_early:
            problems.append(f"result {h.result_id} went to the LIS early already")
        elif h.rerun_requested:
            problems.append(f"result {h.result_id} waits for its re-run")
        elif qc_waits(found.decision.findings) is None:
            holds = ", ".join(found.decision.reasons) or "nothing"
            problems.append(
                f"result {h.result_id} is held for {holds}, not only to wait for its QC"
            )
    if problems:
        return Refusal("conflict", "; ".join(problems))
    decided = []
    for found in redecided:
        findings = [f for f in found.decision.findings if f.code != EARLY_RELEASE]
        waits = ", ".join(sorted(qc_waits(findings) or ()))
        early = Finding(
            EARLY_RELEASE,
            f"sent to the LIS as preliminary by {by} ({waits})",
            Action.RELEASE,
            comment=EARLY_NOTE,
        )
        decided.append((found.held.result_id, found.held.result, decide([*findings, early])))
    release.record_decisions(conn, decided, now, by)
    queued = queue_preliminary(conn, lis, decided, now, by=by)
    _audit_each(
        conn, now, by, "results.send_early", decided, lambda d: {"waiting_for": list(d.reasons)}
    )
    return Acted(tuple(ids), tuple(queued))


def recall_lot(
    conn: Connection,
    lis: Sender | None,
    reagent: str,
    lot: str,
    reason: str,
    by: str,
    now: datetime,
) -> LotRecalled | Refusal:
    """R4: a person recalls a reagent lot. Results made with it from now on are held (the
    engine learns of the recall with its other lookups); those made before are listed:
    the released ones for review, the held ones held for the recall too (one sent early
    is no longer to be taken as such, and the LIS is told)."""
    before = recalls.find(conn, reagent, lot)
    if before is not None:
        return Refusal(
            "conflict",
            f"{reagent} lot {lot} was recalled by {before.by} at {_when(before.at)}: "
            f"{before.reason}",
        )
    recall = recalls.add(conn, reagent, lot, reason, by, now)
    listed = recalls.results_of_lot(conn, reagent, lot)
    held = release.holds_among(conn, [r.result_id for r in listed if r.state == "held"], lock=True)
    stored = release.current_decisions(conn, [h.result_id for h in held])
    code = f"{REAGENT_RECALLED}:{lot}"
    recalled = Finding(code, f"{reagent} lot {lot} is recalled: {reason}")
    decided = [
        (
            h.result_id,
            h.result,
            decide([*(f for f in _seen(stored[h.result_id]) if f.code != code), recalled]),
        )
        for h in held
    ]
    release.record_decisions(conn, decided, now, by)
    _doubt(conn, lis, held, decided, now)
    released = tuple(r for r in listed if r.state == "release")
    audit(
        conn,
        now,
        by,
        "reagents.recall",
        f"{reagent}/{lot}",
        {
            "reason": reason,
            "released": [r.result_id for r in released],
            "held": [h.result_id for h in held],
        },
    )
    return LotRecalled(
        recall,
        released,
        tuple(r for r in listed if r.state == "held"),
        tuple(r for r in listed if r.state not in ("held", "release")),
    )


def _doubt(
    conn: Connection,
    lis: Sender | None,
    held: Sequence[release.Held],
    decided: Sequence[tuple[int, Result, Decision]],
    now: datetime,
) -> list[int]:
    """Results sent early and now held for more than a wait for QC: no longer to be taken
    as preliminary, and the LIS, when there is one, is told."""
    early = {h.result_id for h in held if h.sent_early}
    doubted = [d for d in decided if d[0] in early]
    if not doubted:
        return []
    if lis is None:
        release.mark_preliminary(conn, early, None)
        return []
    return queue_doubts(conn, lis, doubted, now)


def _to_lis(
    conn: Connection,
    lis: Sender | None,
    decided: Sequence[tuple[int, Result, Decision]],
    now: datetime,
) -> list[int]:
    """What the decisions release or reject, queued for the LIS (when there is one)."""
    if lis is None:
        return []
    return queue_released(conn, lis, [(r, d) for _, r, d in decided], (), now)


def _audit_each(
    conn: Connection,
    now: datetime,
    by: str,
    action: str,
    decided: Sequence[tuple[int, Result, Decision]],
    detail: Callable[[Decision], dict[str, object]],
) -> None:
    """One audit row per result acted on: which result, where it was measured, and what
    ``detail`` says of the decision."""
    for result_id, result, decision in decided:
        audit(conn, now, by, action, f"result {result_id}", {**_about(result), **detail(decision)})


def _about(result: Result) -> dict[str, str]:
    return {
        "instrument": result.instrument,
        "specimen": result.specimen_id,
        "test": result.test_code,
    }
