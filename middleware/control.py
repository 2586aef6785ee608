"""Operator commands: reload the rules, approve a control lot's own limits, record QC
events, close corrective actions, and act on held results (release, reject, comment,
re-run, send early, recall a reagent lot: middleware/person_actions.py); used by the
control API and the status page.

The daemon owns one :class:`Control`, which holds the rules in force and the engine they
drive. A command refuses what it cannot do with a :class:`ControlError` saying why, in
words for the operator; any other exception it lets through is a fault of the middleware,
never the operator's mistake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, TypeVar

import structlog
from sqlalchemy import Connection, Row, select

from middleware import person_actions
from middleware.assessment import QcBook, convert_history, queue_released, redecide_held
from middleware.engine.decision import Action
from middleware.engine.engine import Engine
from middleware.engine.qc import LimitsProposal, QcGate
from middleware.engine.rules import Rules, as_json, from_json, load_rules
from middleware.engine.rules import diff as rules_diff
from middleware.person_actions import (
    MAX_NAME,
    Acted,
    LotRecalled,
    Refusal,
    RunReleased,
    clean_ids,
    clean_key,
    clean_text,
)
from middleware.settings import Settings
from middleware.store import (
    Store,
    held_view,
    leases,
    outbox,
    qc_state,
    recalls,
    rules_in_force,
)
from middleware.store.audit import audit
from middleware.store.comments import ResultComment
from middleware.store.held_view import Cursor, HeldPage
from middleware.store.qc_records import (
    approve_limits,
    mark_corrective_action_closed,
    record_qc_event,
)
from middleware.store.recalls import LotInUse, LotResult
from middleware.store.schema import corrective_actions
from middleware.store.sql import utcnow
from middleware.yamlfile import SETTLE_SECONDS, FileError

log = structlog.get_logger("middleware.control")

T = TypeVar("T")

QcEventKind = Literal["calibration", "maintenance", "unlock"]


#: The most tests one calibration, maintenance or unlock names (an analyser's menu).
MAX_TESTS = 500


class ControlError(Exception):
    """A command refused on purpose; the message says why."""


class NotFound(ControlError):
    """What the command names does not exist: a corrective action, a proposal, an
    instrument."""


class Conflict(ControlError):
    """The command cannot be done in the present state (QC not in control again, an
    action already closed, limits that cannot be used)."""


class Invalid(ControlError):
    """What the command was given cannot be taken as it is: a text required, too long or
    holding a control character, ids out of range, too many at once."""


class EngineNotRunning(ControlError):
    """The daemon runs without rules (no ``rules_dir``): there is no QC to act on."""


class RulesRefused(ControlError):
    """The rule files were not put in force; the rules in force stay."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("rules refused: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CorrectiveActionClosed:
    action_id: int
    instrument: str
    test: str
    released: list[int]
    """Held results that the closing released."""


def _corrective_action(
    conn: Connection, action_id: int
) -> Row[str, str, datetime | None, str | None] | None:
    """Instrument, test, closed at and by, of a corrective action."""
    return conn.execute(
        select(
            corrective_actions.c.instrument,
            corrective_actions.c.test_code,
            corrective_actions.c.closed_at,
            corrective_actions.c.closed_by,
        ).where(corrective_actions.c.id == action_id)
    ).first()


class Control:
    """The rules in force, the engine they drive, and what operators do to them.

    ``store`` is the daemon's, given once it is open; until then, and for good when no
    ``rules_dir`` is configured, there is no engine and QC commands are refused.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        node: str = "",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.node = node
        """Names this daemon where it puts rules in force."""
        self.clock = clock
        """The time the acts on held results are done at (QC validity is judged at it)."""
        self.rules: Rules | None = None
        self.rules_version: int | None = None
        """The row of ``rules_in_force`` these rules are."""
        self.lis = settings.lis.sender() if settings.lis is not None else None
        """Who sends to whom, when released results are queued for a LIS."""
        self.engine: Engine | None = None
        """Created by the first rules accepted, then kept: pipelines hold on to it, and a
        reload only replaces its rules. It holds no QC state: the store does."""
        # One reload at a time: each audited diff is against what the one before put in force.
        self._reloading = asyncio.Lock()

    async def reload_rules(self, actor: str) -> Rules:
        """Load the rule files again and put them in force. An accepted change is recorded
        in the audit log with who, when and the diff; refused files change nothing."""
        directory = self.settings.rules_dir
        if directory is None:
            raise RulesRefused(["no rules directory is configured (rules_dir)"])
        store = self.store
        if store is None:
            raise EngineNotRunning("the daemon is still starting: its store is not open")
        async with self._reloading:
            try:
                rules = await asyncio.to_thread(load_rules, directory, SETTLE_SECONDS)
            except FileError as exc:
                # Refused before any were in force (at start), the caller says what follows.
                if self.rules is not None:
                    log.error(
                        "rules refused; the rules in force stay",
                        directory=str(directory),
                        problems=exc.problems,
                        by=actor,
                    )
                raise RulesRefused(exc.problems) from None
            change = rules_diff(self.rules, rules)
            text, digest = as_json(rules)

            def put(conn: Connection) -> tuple[rules_in_force.RulesVersion, bool]:
                now = utcnow()
                in_force = rules_in_force.latest(conn)
                # Rules already in force (a daemon started again, or another's) are no
                # change to audit.
                changed = in_force is None or in_force.digest != digest
                if change and changed:
                    detail = {"sources": rules.sources, "diff": change}
                    audit(conn, now, actor, "rules.load", str(directory), detail)
                return rules_in_force.put(conn, digest, text, actor, self.node, now), changed

            version, changed = await store.write(put)
            self.rules_version = version.id
            self.rules = rules
            if self.engine is None:
                engine = self.engine = Engine(rules, self.settings.zone)
                replayed = await store.write(lambda conn: convert_history(conn, engine))
                if replayed is not None:
                    log.info("QC state made once from the history stored", controls=replayed)
            else:
                # Swapped in the writer's thread, between two messages, never during one.
                engine = self.engine
                await store.write(lambda _conn: engine.replace_rules(rules))
        # changed: against the rules in force in the database, not this process's: a
        # restart on the same files changes nothing.
        log.info("rules in force", summary=rules.summary(), changed=changed, by=actor)
        return rules

    async def follow_rules(self) -> bool:
        """Apply the rules another daemon on the same database put in force since these
        were; True when they changed."""
        store, engine = self.store, self.engine
        if store is None or engine is None:
            return False
        async with self._reloading:
            # Read under the lock: a reload of this daemon's files in between is newer.
            found = await store.read_async(rules_in_force.latest)
            if found is None or found.id == self.rules_version:
                return False
            if self.rules is not None and as_json(self.rules)[1] == found.digest:
                self.rules_version = found.id
                return False
            try:
                rules = from_json(found.rules)
            except ValueError as exc:
                # Put there by a daemon of another version, in a form this one cannot read.
                log.error(
                    "rules put in force by another daemon cannot be read; these stay",
                    version=found.id,
                    node=found.node,
                    error=str(exc)[:500],
                )
                self.rules_version = found.id
                return False
            await store.write(lambda _conn: engine.replace_rules(rules))
            self.rules, self.rules_version = rules, found.id
        log.info(
            "rules put in force by another daemon",
            version=found.id,
            node=found.node,
            by=found.put_by,
            summary=rules.summary(),
        )
        return True

    def _running(self) -> tuple[Store, Engine]:
        if self.store is None or self.engine is None:
            raise EngineNotRunning("the rules engine is not running (no rules_dir configured)")
        return self.store, self.engine

    async def known_instrument(self, instrument: str) -> None:
        """Refuse what names an instrument no daemon knows, before recording it: one in
        this daemon's configuration (enabled or not), or one another daemon on the same
        database serves (holds the lease of)."""
        if any(known.name == instrument for known in self.settings.instruments):
            return
        # Text no database takes (a NUL, a lone surrogate) is in no instrument's name.
        store = self.store
        if store is not None and _storable(instrument):
            held = await store.read_async(lambda conn: leases.holder(conn, instrument) is not None)
            if held:
                return
        raise NotFound(
            f"unknown instrument {instrument!r}: not in the configuration, nor served by "
            "another daemon"
        )

    async def _write(self, store: Store, work: Callable[[Connection], T | ControlError]) -> T:
        """Run ``work`` in the writer's thread; a refusal it returns is raised here.

        Raised there, a refusal would roll back the analysers' messages sharing its
        transaction."""
        outcome = await store.write(work)
        if isinstance(outcome, ControlError):
            raise outcome
        return outcome

    async def limits_proposals(self) -> list[LimitsProposal]:
        """Q3: control lots with 20 results in 20 runs whose own limits await approval."""
        store, _ = self._running()
        return await store.read_async(qc_state.proposals)

    async def approve_limits(self, instrument: str, test: str, lot: str, by: str) -> LimitsProposal:
        """Q3: a biologist approves the lab's own mean and SD for a control lot."""
        await self.known_instrument(instrument)
        test, lot = _given(clean_key(test, "the test")), _given(clean_key(lot, "the lot"))
        by = _who(by)
        store, _ = self._running()

        def work(conn: Connection) -> LimitsProposal | ControlError:
            book = QcBook()
            book.read_lots(conn, [(instrument, test, lot)])
            kept = book.lot((instrument, test, lot))
            proposal = QcGate.proposal(instrument, test, lot, kept)
            if proposal is None:
                return NotFound(f"no limits proposed for lot {lot} of {test} on {instrument}")
            if proposal.sd <= 0:
                return Conflict(
                    f"the lab's own SD is 0: the {proposal.results} results of lot {lot} of "
                    f"{test} on {instrument} do not vary, which gives no limits; the "
                    "manufacturer's target stays in use"
                )
            now = utcnow()
            approve_limits(
                conn, instrument, test, lot, proposal.mean, proposal.sd, proposal.results, by, now
            )
            audit(
                conn,
                now,
                by,
                "qc.limits.approve",
                f"{instrument}/{test}/{lot}",
                {"mean": str(proposal.mean), "sd": str(proposal.sd), "results": proposal.results},
            )
            book.change_lots((instrument, test), {lot: QcGate.approve(kept, proposal)})
            book.write(conn, now)
            return proposal

        return await self._write(store, work)

    async def record_qc_event(
        self, instrument: str, tests: list[str], kind: QcEventKind, by: str
    ) -> None:
        """A calibration or maintenance voids the QC of these tests; ``unlock`` lifts a
        method lock once the cause is fixed."""
        await self.known_instrument(instrument)
        if len(tests) > MAX_TESTS:
            raise Invalid(f"at most {MAX_TESTS} tests at once")
        tests = list(dict.fromkeys(_given(clean_key(test, "the test")) for test in tests))
        by = _who(by)
        store, engine = self._running()

        def work(conn: Connection) -> ControlError | None:
            now = utcnow()
            # A test without QC has nothing to void or unlock: a mistyped code would be
            # kept as a test of its own, on the QC page for good. Asked before the state
            # is read, which on PostgreSQL makes the rows it locks.
            unpoliced = [t for t in tests if engine.gate.policy(instrument, t) is None]
            kept = qc_state.kept_tests(conn, instrument, unpoliced)
            unknown = [test for test in unpoliced if test not in kept]
            if unknown:
                return NotFound(
                    f"no QC policy for {', '.join(unknown[:10])} on {instrument} "
                    "and no QC kept for it: nothing to void or unlock"
                )
            book = QcBook.read(conn, [(instrument, test) for test in tests])
            for test in tests:
                key = (instrument, test)
                record_qc_event(conn, instrument, test, kind, now, by)
                if kind == "unlock":
                    book.read_lots_of(conn, key)
                    state, lots = engine.gate.unlock(book.test(key), book.lots(key))
                    book.change(key, state)
                    book.change_lots(key, lots)
                else:
                    book.change(key, engine.gate.void(book.test(key), kind, now))
            audit(conn, now, by, f"qc.{kind}", instrument, {"tests": tests})
            book.write(conn, now)
            return None

        await self._write(store, work)

    async def close_corrective_action(
        self, action_id: int, by: str, action_taken: str
    ) -> CorrectiveActionClosed:
        """Q9: a person closes a QC failure's corrective action, saying what was done; the
        QC re-run that closes it must be in control. Held results of the test are then
        decided again, whichever daemon serves its instrument."""
        action_taken = _given(clean_text(action_taken, "what was done", True))
        by = _who(by)
        store, engine = self._running()

        def work(conn: Connection) -> CorrectiveActionClosed | ControlError:
            action = _corrective_action(conn, action_id)
            if action is None:
                return NotFound(f"no corrective action {action_id}")
            if action.closed_at is not None:
                return Conflict(f"corrective action {action_id} was closed by {action.closed_by}")
            instrument, test = action.instrument, action.test_code
            key = (instrument, test)
            now = utcnow()
            book = QcBook.read(conn, [key])
            try:
                state = engine.gate.close_corrective_action(book.test(key), instrument, test, now)
            except ValueError as refusal:
                # Refused before anything changed: no open action for the test in its QC
                # state, or its QC not in control again since the failure.
                return Conflict(str(refusal))
            book.change(key, state)
            mark_corrective_action_closed(conn, action_id, by, action_taken, now)
            audit(
                conn,
                now,
                by,
                "qc.corrective_action.close",
                f"{instrument}/{test}",
                {"corrective_action": action_id, "action_taken": action_taken},
            )
            released = redecide_held(conn, engine, instrument, {test: state}, now, self.lis)
            book.write(conn, now)
            if self.lis is not None:
                sent = [(r, d) for _, r, d in released if d.action is not Action.HOLD]
                queue_released(conn, self.lis, sent, (), now)
            ids = [result_id for result_id, _, _ in released]
            return CorrectiveActionClosed(action_id, instrument, test, ids)

        return await self._write(store, work)

    # --- the outbox -------------------------------------------------------------------------

    def _store(self) -> Store:
        if self.store is None:
            raise EngineNotRunning("the daemon is still starting: its store is not open")
        return self.store

    async def outbox_entries(self) -> list[outbox.Entry]:
        """Messages to the LIS not delivered: waiting, stopped by an error, set aside."""
        return await self._store().read_async(outbox.entries)

    async def retry_outbox(self, entry_id: int, by: str) -> None:
        """Send a stopped or dead message again (with its control id)."""
        await self._outbox_act(entry_id, by, "retry", outbox.retry)

    async def dismiss_outbox(self, entry_id: int, by: str) -> None:
        """Set a stopped message aside, so that its specimen's later messages go."""
        await self._outbox_act(entry_id, by, "dismiss", outbox.dismiss)

    async def _outbox_act(
        self, entry_id: int, by: str, act: str, change: Callable[[Connection, int, datetime], bool]
    ) -> None:
        def work(conn: Connection) -> ControlError | None:
            now = utcnow()
            found = outbox.entry(conn, entry_id)
            if found is None:
                return NotFound(f"no message {entry_id} in the outbox")
            if act == "retry" and outbox.later_delivered(conn, entry_id):
                return Conflict(
                    f"a later message of specimen {found.specimen_id} reached the LIS: sending "
                    f"message {entry_id} now would put older results over newer ones"
                )
            if not change(conn, entry_id, now):
                return Conflict(f"message {entry_id} is {found.state}: it cannot be {act}ed")
            audit(conn, now, by, f"outbox.{act}", f"{found.specimen_id}/{found.control_id}")
            return None

        await self._write(self._store(), work)

    # --- what a person does to held results --------------------------------------------

    async def _act(self, work: Callable[[Connection], T | Refusal]) -> T:
        """One act on held results in one transaction, its refusal raised here."""
        store, _ = self._running()

        def run(conn: Connection) -> T | ControlError:
            outcome = work(conn)
            return _refused(outcome) if isinstance(outcome, Refusal) else outcome

        return await self._write(store, run)

    async def release_results(self, result_ids: Iterable[int], by: str) -> Acted:
        """A validator releases held results over what holds them (a delta, a critical
        value, a flag, a reagent lot...), never over their QC: a result whose test's QC
        does not let it go now is refused (Q1). Refused as well: results not held (a
        released one is never released twice) and unknown ones (NotFound)."""
        ids, who = _given(clean_ids(result_ids)), _who(by)
        _, engine = self._running()
        return await self._act(
            lambda conn: person_actions.release_results(
                conn, engine, self.lis, ids, who, self.clock()
            )
        )

    async def reject_results(self, result_ids: Iterable[int], reason: str, by: str) -> Acted:
        """A validator rejects held results, saying why; the LIS gets each as not obtained
        (OBX-11 X) with the reason. Refused: no reason, results not held, unknown ones."""
        ids, who = _given(clean_ids(result_ids)), _who(by)
        why = _given(clean_text(reason, "the reason", True))
        self._running()
        return await self._act(
            lambda conn: person_actions.reject_results(conn, self.lis, ids, why, who, self.clock())
        )

    async def comment_result(self, result_id: int, text: str, by: str) -> ResultComment:
        """A comment on a result, held or not (at most 2,000 characters, no control
        characters); it goes to the LIS with the result when that is released after."""
        (one,) = _given(clean_ids([result_id]))
        written, who = _given(clean_text(text, "the comment", True)), _who(by)
        self._running()
        return await self._act(
            lambda conn: person_actions.comment_result(conn, one, written, who, self.clock())
        )

    async def request_rerun(self, result_ids: Iterable[int], by: str, reason: str = "") -> Acted:
        """A technician asks for held results to be measured again: they stay held until
        the re-run result of their specimen and test replaces them. Refused: results not
        held, or whose re-run is asked for already; unknown ones."""
        ids, who = _given(clean_ids(result_ids)), _who(by)
        why = _given(clean_text(reason, "the reason", False))
        self._running()
        return await self._act(
            lambda conn: person_actions.request_rerun(conn, self.lis, ids, why, who, self.clock())
        )

    async def release_run(self, instrument: str, test: str, by: str) -> RunReleased:
        """Once the QC of a test on an instrument is valid, its held results are decided
        again (and those the engine releases go to the LIS). Refused while its QC is not
        valid; an instrument not configured is NotFound."""
        await self.known_instrument(instrument)
        code, who = _given(clean_key(test, "the test")), _who(by)
        _, engine = self._running()
        return await self._act(
            lambda conn: person_actions.release_run(
                conn, engine, self.lis, instrument, code, who, self.clock()
            )
        )

    async def send_early(self, result_ids: Iterable[int], by: str) -> Acted:
        """Q13, by a biologist: held results that wait for nothing but their QC go to the
        LIS as preliminary now and stay held; the final follows. Refused: results held for
        anything else, sent early already, not held or unknown, and any without a LIS."""
        ids, who = _given(clean_ids(result_ids)), _who(by)
        _, engine = self._running()
        lis = self.lis
        if lis is None:
            raise Conflict("no LIS is configured: nothing can be sent to it")
        return await self._act(
            lambda conn: person_actions.send_early(conn, engine, lis, ids, who, self.clock())
        )

    async def recall_reagent_lot(self, reagent: str, lot: str, by: str, reason: str) -> LotRecalled:
        """R4: a reagent lot recalled, with the reason: results made with it are held from
        now on, and every result made with it so far is listed (the released ones for
        review). Refused: a lot recalled already, no reason."""
        name, number = _given(clean_key(reagent, "the reagent")), _given(clean_key(lot, "the lot"))
        why, who = _given(clean_text(reason, "the reason", True)), _who(by)
        self._running()
        return await self._act(
            lambda conn: person_actions.recall_lot(
                conn, self.lis, name, number, why, who, self.clock()
            )
        )

    async def lots_in_use(self, instrument: str) -> list[LotInUse]:
        """The reagent lots the latest results of an instrument's tests were made with;
        of a lot the rule files name, the earlier of their effective expiry and the
        analyser's, and whether they recall it."""
        await self.known_instrument(instrument)
        lots = await self._store().read_async(lambda conn: recalls.lots_in_use(conn, instrument))
        registry = self.engine.lots if self.engine is not None else None
        out = []
        for lot in lots:
            known = registry.find(lot.reagent, lot.lot) if registry is not None else None
            if known is not None:
                expiries = [d for d in (known.expiry, lot.expiry) if d is not None]
                lot = replace(
                    lot,
                    expiry=min(expiries, default=None),
                    recalled_in_rules=known.recalled,
                )
            out.append(lot)
        return out

    async def results_of_lot(
        self, reagent: str, lot: str, after: int = 0, limit: int = 100
    ) -> list[LotResult]:
        """Results made with a reagent lot, by id from ``after`` on, a page of ``limit``."""
        name, number = _given(clean_key(reagent, "the reagent")), _given(clean_key(lot, "the lot"))
        count = max(1, min(limit, held_view.MAX_PAGE))

        def read(conn: Connection) -> list[LotResult]:
            if (
                not recalls.reported(conn, name, number)
                and recalls.find(conn, name, number) is None
            ):
                raise NotFound(f"no analyser reported {name} lot {number}")
            return recalls.results_of_lot(conn, name, number, after, count)

        return await self._store().read_async(read)

    async def held_results(
        self,
        instrument: str | None = None,
        specimen: str | None = None,
        after: Cursor | None = None,
        limit: int = 100,
    ) -> HeldPage:
        """The results held now, by instrument and specimen, a page at a time, each with
        every reason, the comments, its reagent lots, whether it went early, and the
        patient's previous result of the test."""
        return await self._store().read_async(
            lambda conn: held_view.held_page(conn, instrument, specimen, after, limit)
        )

    async def record_raw_view(self, by: str, quarantine_id: int) -> None:
        """D8: ``by`` was shown the bytes of a quarantined message (patients and results
        as the analyser sent them)."""
        who, at = _who(by), self.clock()
        await self._store().write(
            lambda conn: audit(conn, at, who, "quarantine.view", f"quarantine {quarantine_id}")
        )

    async def record_refusal(self, by: str, asked: str, reason: str) -> None:
        """D7: a command ``by`` asked for (``asked``: the method and address) was refused,
        for ``reason``; recorded as the API records its refusals."""
        who, at = _who(by), self.clock()
        await self._store().write(
            lambda conn: audit(conn, at, who, "api.refused", asked, {"reason": reason})
        )

    async def record_view(self, by: str, result_ids: Iterable[int]) -> None:
        """D8: ``by`` was shown these patient results."""
        shown = sorted(set(result_ids))
        if not shown:
            return
        who, at = _who(by), self.clock()
        await self._store().write(
            lambda conn: audit(conn, at, who, "results.view", "", {"results": shown})
        )


def _refused(refusal: Refusal) -> ControlError:
    if refusal.kind == "not-found":
        return NotFound(refusal.message)
    if refusal.kind == "invalid":
        return Invalid(refusal.message)
    return Conflict(refusal.message)


def _given(value: T | Refusal) -> T:
    """What a person gave, once checked; refused here, before any transaction."""
    if isinstance(value, Refusal):
        raise _refused(value)
    return value


def _who(by: str) -> str:
    return _given(clean_text(by, "who acts", True, MAX_NAME))


def _storable(text: str) -> bool:
    """Whether a database can read ``text``: PostgreSQL refuses a NUL, every driver a
    lone surrogate (it is no UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
