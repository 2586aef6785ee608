"""What the daemon says of its own state: the store's figures read every few seconds
(for the metrics and the events), and whether it is ready to serve (``/readyz``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog

from middleware.events import EventPublisher, figures_event
from middleware.metrics import Metrics
from middleware.store import Store
from middleware.store.figures import Figures, read_figures
from middleware.store.sql import utcnow

log = structlog.get_logger("middleware.monitor")


@dataclass(frozen=True, slots=True)
class InstrumentState:
    """An instrument served, as the status page shows it."""

    name: str
    transport: str
    protocol: str
    state: str
    """listening or connecting while no analyser is connected; connected."""
    connections: int


class Monitor:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        events: EventPublisher | None = None,
        interval: float = 5.0,
        outbox_stuck_after: float = 600.0,
        stuck: Callable[[], str | None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.events = events
        self.interval = interval
        self.outbox_stuck_after = outbox_stuck_after
        """Seconds a message may wait for the LIS before the daemon is not ready."""
        self.stuck = stuck
        """Why the daemon can no longer keep what it receives; None while it can."""
        self.clock = clock
        self.serving = False
        """Set once the store is open and every listener bound."""
        self.figures: Figures | None = None
        self.read_at: datetime | None = None
        """When the figures were last read: the store answered then."""

    async def run(self) -> None:
        while True:
            await self.read()
            await asyncio.sleep(self.interval)

    async def read(self) -> None:
        try:
            figures = await self.store.read_async(read_figures)
        except Exception as exc:
            log.warning("store figures not read", error=repr(exc))
            return
        now = self.clock()
        self.metrics.figures(figures, now)
        if self.events is not None and (self.figures is None or _changed(self.figures, figures)):
            self.events.publish(figures_event(figures, now))
        self.figures, self.read_at = figures, now

    def not_live(self) -> list[str]:
        """Why the daemon should be restarted; empty while it works."""
        reason = self.stuck()
        return [reason] if reason else []

    def not_ready(self) -> list[str]:
        """Why the daemon should not be counted on now; empty when it can."""
        now = self.clock()
        reasons = []
        if not self.serving:
            reasons.append("starting: the store or the listeners are not ready yet")
        if self.read_at is None or (now - self.read_at).total_seconds() > 3 * self.interval + 5:
            reasons.append("the store has not answered a read lately")
        figures = self.figures
        if figures is not None:
            if figures.outbox.get("stopped", 0):
                reasons.append(
                    f"{figures.outbox['stopped']} message(s) to the LIS stopped by an error"
                )
            oldest = figures.oldest_pending_at
            if oldest is not None and (now - oldest).total_seconds() > self.outbox_stuck_after:
                waited = int((now - oldest).total_seconds())
                reasons.append(f"a message has waited {waited} s for the LIS")
        return reasons


def _changed(before: Figures, after: Figures) -> bool:
    return before.outbox != after.outbox or before.oldest_pending_at != after.oldest_pending_at
