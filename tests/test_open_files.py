"""The limit on open files: raised at start to what the system allows, and said when it is
still too low for the instruments configured, or when the daemon may not change it."""

from __future__ import annotations

import ctypes.util
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, free_port

ROOT = Path(__file__).resolve().parents[1]

#: The process's changes of its limits refused (EPERM) by a seccomp filter, as systemd's
#: SystemCallFilter=~@resources refuses them in the shipped unit; reading them is let
#: through (prlimit64 with no new limit, which glibc's getrlimit uses).
REFUSE_SETRLIMIT = """
import ctypes
class Compare(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]
seccomp = ctypes.CDLL({library!r})
seccomp.seccomp_init.restype = ctypes.c_void_p
context = ctypes.c_void_p(seccomp.seccomp_init(0x7FFF0000))  # allow the rest
refuse = 0x00050000 | 1  # EPERM
setrlimit = seccomp.seccomp_syscall_resolve_name(b"setrlimit")
assert seccomp.seccomp_rule_add_array(context, refuse, setrlimit, 0, None) == 0
prlimit = seccomp.seccomp_syscall_resolve_name(b"prlimit64")
new_limit_given = Compare(2, 1, 0, 0)  # argument 2 != NULL
assert seccomp.seccomp_rule_add_array(
    context, refuse, prlimit, 1, ctypes.byref(new_limit_given)) == 0
assert seccomp.seccomp_load(context) == 0
"""

SCRIPT = """
import json, resource
from structlog.testing import capture_logs
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
{prelude}
from middleware import open_files
with capture_logs() as logs:
    soft = open_files.raise_limit({instruments})
now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps({{"soft": soft, "now": now, "logs": logs}}))
"""


def _raise(soft: int, hard: int, instruments: int, prelude: str = "") -> dict[str, Any]:
    script = SCRIPT.format(soft=soft, hard=hard, instruments=instruments, prelude=prelude)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    said: dict[str, Any] = json.loads(done.stdout)
    return said


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    said = _raise(256, 4096, instruments=10)
    assert (said["soft"], said["now"]) == (4096, 4096)
    assert said["logs"] == []


def test_a_hard_limit_too_low_for_the_instruments_is_said_at_start() -> None:
    said = _raise(256, 400, instruments=200)
    assert (said["soft"], said["now"]) == (400, 400)
    [warning] = said["logs"]
    assert warning["event"] == "open files limit too low"
    assert (warning["log_level"], warning["limit"], warning["needed"]) == ("warning", 400, 528)
    assert "LimitNOFILE=" in warning["fix"]


def test_a_limit_the_daemon_may_not_change_is_kept_and_said() -> None:
    library = ctypes.util.find_library("seccomp")
    if library is None:
        pytest.skip("libseccomp is not installed")
    said = _raise(256, 4096, instruments=200, prelude=REFUSE_SETRLIMIT.format(library=library))
    assert (said["soft"], said["now"]) == (256, 256)
    kept, low = said["logs"]
    assert kept["event"] == "open files limit kept" and kept["hard"] == 4096
    assert kept["reason"]
    assert (low["event"], low["limit"], low["needed"]) == ("open files limit too low", 256, 528)


@contextmanager
def _soft_limit(soft: int) -> Iterator[None]:
    """This process's soft limit lowered while a child is started (children inherit it)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _max_open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit in /proc")


def test_the_daemon_started_with_a_low_soft_limit_serves_with_the_hard_one(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    instrument = {"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}
    daemon = DaemonProcess(tmp_path, [instrument], database_url=database_url)
    with _soft_limit(256):
        daemon.start(wait=False)
    try:
        assert daemon.process is not None
        daemon._wait_for_log('"daemon running"', time.monotonic() + 20)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert _max_open_files(daemon.process.pid) == (hard, hard)
        assert "open files limit" not in daemon.log.read_text()
    finally:
        daemon.stop()
