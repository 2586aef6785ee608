"""The systemd unit: it verifies, it is hardened, it agrees with the daemon, and the daemon
runs under what it forbids."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from middleware.daemon import stop_seconds
from middleware.settings import Settings
from tests.daemon import DaemonProcess, free_port, query
from tests.peer import StreamPeer, send_message

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "lis-middleware.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
#: Where the unit expects the installed entry point (docs/operations.md).
INSTALLED = "/opt/lis-middleware/.venv/bin/lis-middleware"


def service_section(text: str) -> dict[str, list[str]]:
    """The [Service] assignments, each key with all its values in order."""
    section, found = "", dict[str, list[str]]()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


def here(tmp_path: Path, text: str) -> Path:
    """The unit with its ExecStart on this checkout's entry point (verify checks that the
    program exists), everything else as shipped."""
    local = Path(sys.executable).with_name("lis-middleware")
    assert local.exists(), local
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={local} "))
    return copy


@needs_analyze
def test_the_unit_verifies_without_a_word(tmp_path: Path) -> None:
    result = analyze("verify", str(here(tmp_path, UNIT.read_text())))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""
    # The same check speaks up about a unit that is wrong.
    broken = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSec=soon\nProtectSytem=strict")
    result = analyze("verify", str(here(tmp_path, broken)))
    assert "WatchdogSec" in result.stderr or "sec value" in result.stderr, result.stderr
    assert "ProtectSytem" in result.stderr


@needs_analyze
def test_the_unit_is_hardened() -> None:
    # The threshold is in tenths of systemd's 0-10 exposure scale.
    result = analyze("security", "--offline=true", "--threshold=20", str(UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found is not None, result.stdout
    assert float(found[1]) <= 2.0


def test_the_unit_agrees_with_the_daemon() -> None:
    service = service_section(UNIT.read_text())
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    # systemd kills what is still running after TimeoutStopSec: the daemon's longest stop
    # (connections' grace, leases, last commits) must fit, with room for Python to exit.
    assert float(service["TimeoutStopSec"][0]) >= stop_seconds(Settings()) + 10
    assert service["User"] == ["lis-middleware"]
    assert "dialout" in service["SupplementaryGroups"][0].split()
    # Serial ports stay reachable: a device list, not PrivateDevices (which hides them).
    assert "PrivateDevices" not in service
    assert service["DevicePolicy"] == ["closed"]
    assert sorted(service["DeviceAllow"]) == [
        "char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"
    ]  # fmt: skip
    assert service["CapabilityBoundingSet"] == [""]
    assert service["StateDirectory"] == ["lis-middleware"]
    assert service["ConfigurationDirectory"] == ["lis-middleware"]
    # The unit names the database's place as the installed file does (the commands run
    # from a shell read only the file); installs of earlier versions had it from here.
    assert "MIDDLEWARE_STATE_DIR=%S/lis-middleware" in service["Environment"]
    assert service["WorkingDirectory"] == ["%S/lis-middleware"]
    assert service["ExecStart"][0].endswith(" run --config /etc/lis-middleware/middleware.yaml")


def test_the_installed_configuration_names_the_units_directories(tmp_path: Path) -> None:
    """docs/operations.md installs config/example.yaml and edits it with one sed: the file
    then names the unit's state directory and the rules the install copies, whatever
    directory the command that reads it runs from."""
    from middleware.settings import load_settings

    docs = (ROOT / "docs" / "operations.md").read_text()
    install = re.search(r"^(sed -i .*?) /etc/lis-middleware/middleware.yaml$", docs, re.M | re.S)
    assert install is not None
    config = tmp_path / "middleware.yaml"
    shutil.copyfile(ROOT / "config" / "example.yaml", config)
    subprocess.run(["sh", "-c", f"{install[1]} {config}"], check=True)
    settings = load_settings(config)
    service = service_section(UNIT.read_text())
    assert service["StateDirectory"] == ["lis-middleware"]
    assert settings.state_dir == Path("/var/lib/lis-middleware")  # %S/lis-middleware
    assert settings.rules_dir == Path("/etc/lis-middleware/rules")
    assert "cp -r rules /etc/lis-middleware/rules" in docs


# --- MemoryDenyWriteExecute= -------------------------------------------------------------------

#: prctl(2) options of Linux 6.3: what MemoryDenyWriteExecute= asks of the kernel.
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

SITECUSTOMIZE = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0)
with open(os.environ["MDWE_REPORT"], "w") as report:
    report.write(str(libc.prctl({PR_GET_MDWE}, 0, 0, 0, 0)))
"""


def _mdwe_supported() -> bool:
    probe = "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() == "0"


def test_the_daemon_runs_where_memory_cannot_be_writable_and_executable(
    tmp_path: Path, database_url: str
) -> None:
    """The unit sets MemoryDenyWriteExecute=: CPython without a JIT, libpq (psycopg's
    binary), OpenSSL, uvicorn and pydantic-core must never map writable code. The kernel's
    own switch (PR_SET_MDWE, what systemd uses where the kernel has it) is turned on
    before anything of the daemon is imported, then a message is stored and the API asked."""
    if not _mdwe_supported():
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3)")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    report = tmp_path / "mdwe"
    port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}],
        database_url=database_url,
        api={"host": "127.0.0.1", "port": api_port},
    )
    daemon.start(env={"PYTHONPATH": str(hooks), "MDWE_REPORT": str(report)})
    try:
        assert report.read_text() == str(PR_MDWE_REFUSE_EXEC_GAIN)

        async def analyser() -> None:
            peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", port))
            await send_message(peer, [b"H|\\^&", b"P|1||PAT1", b"O|1|S0001||^^^GLU|R",
                                      b"R|1|^^^GLU|5.1|mmol/L||N||F", b"L|1|N"])  # fmt: skip
            await peer.close()

        asyncio.run(analyser())
        with socket.create_connection(("127.0.0.1", api_port), timeout=5) as api:
            api.settimeout(5)
            api.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert api.recv(12) == b"HTTP/1.1 200"
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(stop_seconds(Settings())) == 0
    finally:
        daemon.stop()
    assert query(database_url, "SELECT specimen_id FROM results") == [("S0001",)]
    assert "Permission denied" not in daemon.log.read_text()
