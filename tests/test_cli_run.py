"""``lis-middleware run`` refuses to start, in one clear line, when it cannot do its work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from middleware.transport.tcp import ListenError, TcpServer


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    return subprocess.run(
        [sys.executable, "-m", "middleware", "run", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def config(tmp_path: Path, **settings: Any) -> str:
    path = tmp_path / "middleware.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **settings}))
    return str(path)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as occupant:
        yield occupant.getsockname()[1]


def test_run_without_configuration_says_what_is_missing(tmp_path: Path) -> None:
    done = run(tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "lis-middleware run: no configuration: give --config FILE "
        "(or the instruments as JSON in MIDDLEWARE_INSTRUMENTS)\n"
    )
    assert not (tmp_path / "state").exists()  # nothing was started


def test_an_analyser_port_in_use_is_named(tmp_path: Path, taken: int) -> None:
    h500 = {"name": "h500", "transport": "tcp-server", "host": "127.0.0.1", "port": taken}
    done = run(tmp_path, "--config", config(tmp_path, instruments=[h500]))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last == f"lis-middleware run: h500: cannot listen on 127.0.0.1:{taken}: " + (
        "Address already in use"
    )


def test_the_api_port_in_use_is_named(tmp_path: Path, taken: int) -> None:
    done = run(tmp_path, "--config", config(tmp_path, api={"port": taken}))
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"lis-middleware run: control API: cannot listen on 127.0.0.1:{taken}: "
        "Address already in use\n"
    )


async def test_a_server_that_cannot_listen_says_which_and_where(taken: int) -> None:
    with pytest.raises(ListenError) as caught:
        await TcpServer("127.0.0.1", taken, name="chem-1").start()
    assert (
        str(caught.value) == f"chem-1: cannot listen on 127.0.0.1:{taken}: Address already in use"
    )
    assert caught.value.port == taken and isinstance(caught.value, OSError)
