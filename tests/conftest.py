"""Shared fixtures: real servers on real unix sockets, started as subprocesses.

The server under test is ``python -m teaching_cri serve``, exactly what a user
runs; tests talk to it over gRPC on its socket with the package's own client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.trace.charts import ChartSet

IS_ROOT = os.geteuid() == 0

# The conformance suite's node fixture (tests/conformance/cri_node.py), for
# every test that asks for a root node with a CNI network.
sys.path.insert(0, str(Path(__file__).parent / "conformance"))
pytest_plugins = ["cri_node"]


@pytest.fixture(scope="session")
def charts() -> ChartSet:
    return ChartSet.load()


@dataclass
class Server:
    """A running ``teaching-cri serve`` and the directories it owns."""

    base: Path
    socket: Path
    root: Path
    state: Path
    process: subprocess.Popen[bytes]
    log: Path
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        c = connect(self.socket)
        self.clients.append(c)
        return c

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the server and wait for it; clients are closed only afterwards,
        so streams they hold end because the server ended them."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for c in self.clients:
            c.close()
        self.clients.clear()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "teaching_cri", "serve", *args]


def start_server(base: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    sock, root, state, log = base / "cri.sock", base / "root", base / "state", base / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(
                "--socket",
                str(sock),
                "--root",
                str(root),
                "--state",
                str(state),
                "--log-level",
                "debug",
                # Any free port for the streaming server: tests run servers side by
                # side, and a real teaching-cri may hold the default 10350.
                *(() if "--stream-address" in extra else ("--stream-address", "127.0.0.1:0")),
                *extra,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(base, sock, root, state, proc, log)
    try:
        wait_for_socket(sock, timeout=30)
    except TimeoutError:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"server did not start:\n{server.output()}") from None
    return server


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short path: unix socket paths are limited to 107 bytes and pytest's
    tmp_path can be longer than that."""
    with tempfile.TemporaryDirectory(prefix="tcri-") as d:
        yield Path(d)


@pytest.fixture
def server(short_tmp: Path) -> Iterator[Server]:
    srv = start_server(short_tmp / "srv")
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Client:
    return server.client()
