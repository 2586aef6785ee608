"""The limit on open files: every analyser takes a listening socket and its connections,
and a daemon serving hundreds of them outgrows the soft limit most systems start a
process with (1,024), failing to accept an analyser long after it started. At start the
soft limit is raised to the hard one, and a limit still too small for the configuration
is said at once."""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("middleware.open_files")

#: Files the daemon opens besides its instruments: the store's connections, the LIS
#: link, the broker, the API's listener and its clients, logs, the Python runtime's own.
BESIDES_INSTRUMENTS = 128


def needed(instruments: int) -> int:
    """What a configuration may open: each instrument's listening socket or connection,
    and one more for an analyser reconnecting before its old connection is closed."""
    return 2 * instruments + BESIDES_INSTRUMENTS


def raise_limit(instruments: int) -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit then. A limit
    the daemon may not change (a sandbox refusing the call) is kept and said."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as refused:
            log.info("open files limit kept", limit=soft, hard=hard, reason=str(refused))
    need = needed(instruments)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "open files limit too low",
            limit=soft,
            needed=need,
            instruments=instruments,
            fix="raise the hard limit (LimitNOFILE= in the systemd unit, nofile in limits.conf)",
        )
    return soft
