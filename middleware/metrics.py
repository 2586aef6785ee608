"""The daemon's figures for Prometheus (``/metrics``): counters fed by the links and by
what the store commits, gauges read from the store every few seconds.

Each daemon has a registry of its own (not the library's global one), so that two
daemons in one process, as in tests, never share or clash over a counter.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from middleware.store.figures import QC_STATES, Figures
from middleware.store.ingest import Stored
from middleware.store.notices import (
    CorrectiveActionChanged,
    OutboxChanged,
    QcEvaluated,
    ResultDecided,
)
from middleware.store.writer import Committed

PREFIX = "lis_middleware"
#: The most tests counted apart in the QC evaluations: every label value is a series kept
#: for the life of the process, and the test codes come from the analysers.
MAX_TESTS = 500
OTHER = "other"

#: Seconds: an ACK that waits for a commit takes milliseconds; a lock held elsewhere
#: takes up to the lock timeout (10 s by default).
_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._tests: set[tuple[str, str]] = set()
        self.messages = Counter(
            f"{PREFIX}_messages", "Analyser messages stored, by outcome (message, duplicate, "
            "quarantined)", ["instrument", "outcome"], registry=r,
        )  # fmt: skip
        self.results = Counter(
            f"{PREFIX}_results", "Patient results stored", ["instrument"], registry=r
        )
        self.control_results = Counter(
            f"{PREFIX}_control_results", "Control results stored", ["instrument"], registry=r
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions", "Release decisions, by action (release, hold, reject)",
            ["action"], registry=r,
        )  # fmt: skip
        self.holds = Counter(
            f"{PREFIX}_holds", "Hold decisions, by reason (one count per reason)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.qc_evaluations = Counter(
            f"{PREFIX}_qc_evaluations", "Control results evaluated, by status",
            ["instrument", "test", "status"], registry=r,
        )  # fmt: skip
        self.corrective_actions = Counter(
            f"{PREFIX}_corrective_actions", "Corrective actions opened and closed",
            ["change"], registry=r,
        )  # fmt: skip
        self.lis_answers = Counter(
            f"{PREFIX}_lis_answers", "LIS answers to our messages, by resulting state",
            ["state"], registry=r,
        )  # fmt: skip
        self.link_errors = Counter(
            f"{PREFIX}_link_errors", "Analyser link errors, by kind (frame refusals, "
            "timeouts, store failures)", ["instrument", "kind"], registry=r,
        )  # fmt: skip
        self.ack_latency = Histogram(
            f"{PREFIX}_ack_latency_seconds", "From a message's last frame to its ACK (the "
            "commit of what it carried)", ["instrument"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.commit_latency = Histogram(
            f"{PREFIX}_store_commit_seconds", "Store writer transactions, start to commit",
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.connections = Gauge(
            f"{PREFIX}_connections", "Open analyser connections", ["instrument"], registry=r
        )
        self.outbox = Gauge(
            f"{PREFIX}_outbox_entries", "Messages to the LIS, by state (pending, stopped, "
            "dead: the dead letters)", ["state"], registry=r,
        )  # fmt: skip
        self.outbox_oldest = Gauge(
            f"{PREFIX}_outbox_oldest_pending_seconds",
            "Age of the oldest message waiting for the LIS (0 when none)",
            registry=r,
        )
        self.open_holds = Gauge(f"{PREFIX}_open_holds", "Results held now", registry=r)
        self.qc_states = Gauge(
            f"{PREFIX}_qc_tests", "Instrument tests by QC state", ["state"], registry=r
        )
        self.events = Counter(
            f"{PREFIX}_events", "Events for the broker: published, or dropped (broker away "
            "or queue full)", ["outcome"], registry=r,
        )  # fmt: skip

    def kept(self, instrument: str, stored: Stored) -> None:
        """What one write of an analyser connection's pipeline stored."""
        outcome = (
            "duplicate" if stored.duplicate else "quarantined" if stored.quarantined else "message"
        )
        self.messages.labels(instrument, outcome).inc()
        if stored.results:
            self.results.labels(instrument).inc(stored.results)
        if stored.controls:
            self.control_results.labels(instrument).inc(stored.controls)

    def committed(self, committed: Committed) -> None:
        """A store commit and what it told (store/notices.py)."""
        self.commit_latency.observe(committed.seconds)
        for notice in committed.notices:
            if isinstance(notice, ResultDecided):
                self.decisions.labels(notice.action).inc()
                if notice.action == "hold":
                    for reason in notice.reasons or ("unspecified",):
                        # The kind only: after it come a lot, a flag's text, as analysers
                        # sent them, each of which would be a series of its own.
                        self.holds.labels(reason.split(":", 1)[0]).inc()
            elif isinstance(notice, QcEvaluated):
                test = self._test(notice.instrument, notice.test_code)
                self.qc_evaluations.labels(notice.instrument, test, notice.status).inc()
            elif isinstance(notice, CorrectiveActionChanged):
                self.corrective_actions.labels(notice.change).inc()
            elif isinstance(notice, OutboxChanged) and notice.change == "answered":
                self.lis_answers.labels(notice.state).inc()

    def _test(self, instrument: str, test: str) -> str:
        """The test's code as a label, ``other`` once MAX_TESTS tests are counted apart."""
        key = (instrument, test)
        if key not in self._tests:
            if len(self._tests) >= MAX_TESTS:
                return OTHER
            self._tests.add(key)
        return test

    def figures(self, figures: Figures, now: datetime) -> None:
        """The store's figures as gauges."""
        for state, count in figures.outbox.items():
            self.outbox.labels(state).set(count)
        oldest = figures.oldest_pending_at
        self.outbox_oldest.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        self.open_holds.set(figures.open_holds)
        for state in QC_STATES:
            self.qc_states.labels(state).set(figures.qc.get(state, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
