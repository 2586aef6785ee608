"""`make demo` from a fresh clone: it starts, results reach the LIS simulator, Ctrl-C
stops everything."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from tests.conftest import ROOT


def _clone(into: Path) -> Path:
    """A clone of this repository with the working tree's changes on top (what CI's clean
    clone is, once they are committed)."""
    clone = into / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    changed = subprocess.run(
        ["git", "ls-files", "-mo", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in changed:
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


def _venv(clone: Path) -> None:
    """The clone's .venv, made without downloading anything: an empty environment that
    sees this one's installed libraries (the project itself comes from the clone), marked
    installed so that make does not install again. CI's own `make test` proves the
    install from nothing."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(clone / ".venv")],
                   check=True)  # fmt: skip
    lib = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    (lib / "outer-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (clone / ".venv" / ".installed").touch()


def test_make_demo_runs_from_a_fresh_clone_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    _venv(clone)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    demo = subprocess.Popen(
        ["make", "demo"], cwd=clone, env={**env, "DEMO_STATE_DIR": str(state)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    assert demo.stdout is not None
    reading = threading.Thread(target=lambda: output.extend(demo.stdout or ()), daemon=True)
    reading.start()
    record = state / "lis-received.jsonl"
    try:
        deadline = time.monotonic() + 120
        # Results reach the LIS as they are released; then the analysers finish their runs.
        while "The analysers have sent their runs" not in "".join(output):
            assert demo.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        try:
            demo.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)
        reading.join(10)
    text = "".join(output)
    assert "lis-middleware demo" in text and "held --config" in text
    assert f"Stopped. The state directory stays for a look: {state}" in text
    assert "Traceback" not in text
    # What the guide says the demo shows, it showed.
    received = [json.loads(line) for line in record.read_text().splitlines()]
    results = [r for message in received for r in message["results"]]
    assert sum(r["status"] == "F" for r in results) > 100  # QC passing: released, delivered
    assert any(r["status"] == "X" for r in results)  # the haemolysed sample's rejection
    assert "qc-rejected:2of3-2s" in text  # the QC shift's holds, in the summary
    assert "#1 xn-1 HGB" in text  # its corrective action, with the command that closes it
    assert "patient on a new reagent lot" in text
    # The daemon stopped with the demo, cleanly.
    assert "daemon stopped" in (state / "daemon.log").read_text()
    leftover = subprocess.run(["pgrep", "-f", str(state / "middleware.yaml")],
                              capture_output=True, text=True)  # fmt: skip
    assert leftover.stdout == ""
