"""Shared fixtures: real servers on real unix sockets, started as subprocesses.

The server under test is ``python -m teaching_cri serve``, exactly what a user
runs; tests talk to it over gRPC on its socket with the package's own client.

Every server :func:`start_server` starts writes its trace as JSONL into one
directory per pytest run (``$TEACHING_CRI_TRACE_DIR``, by default
``<basetemp>/traces``), and :meth:`Server.stop` checks every span in it against
its chart: a trace that leaves its chart fails the test that owned the server,
whatever that test asserted. When the whole suite ran, the fidelity report
(``teaching-cri fidelity``) is printed over those traces at the end, and as
root a figure under :data:`FIDELITY_THRESHOLD` fails the run.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import path_lines
from teaching_cri.trace.events import EventKind
from teaching_cri.trace.fidelity import (
    ENV_TRACE_DIR,
    check_events,
    format_text,
    report_from_files,
    trace_files,
)
from teaching_cri.trace.sinks import read_jsonl, rotated_files

IS_ROOT = os.geteuid() == 0
# The share of the seed charts' original nodes the suite must visit honestly
# (or find absent with a reason), as root; without root the runc paths cannot run.
FIDELITY_THRESHOLD = 95.0

# The conformance suite's node fixture (tests/conformance/cri_node.py), for
# every test that asks for a root node with a CNI network.
sys.path.insert(0, str(Path(__file__).parent / "conformance"))
pytest_plugins = ["cri_node"]


@pytest.fixture(scope="session")
def charts() -> ChartSet:
    return ChartSet.load()


# --- traces of every server, checked ---------------------------------------------

_trace_dir: Path | None = None
_server_numbers = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's servers write their traces: one directory per run."""
    global _trace_dir
    env = os.environ.get(ENV_TRACE_DIR)
    _trace_dir = Path(env) if env else tmp_path_factory.getbasetemp() / "traces"
    _trace_dir.mkdir(parents=True, exist_ok=True)
    return _trace_dir


def trace_file_args(extra: tuple[str, ...]) -> tuple[tuple[str, ...], Path | None]:
    """The arguments to add for a server's JSONL trace, and the file it will write.
    A test that chose its trace file (a flag, or a config file's key) keeps it.
    A test that runs ``serve_command`` itself adds these and, once its server
    has exited, asserts :func:`check_trace_file` finds nothing."""
    if "--trace-file" in extra:
        return (), Path(extra[extra.index("--trace-file") + 1])
    if "--trace" in extra and extra[extra.index("--trace") + 1] == "off":
        return (), None
    if "--config" in extra:
        config = Path(extra[extra.index("--config") + 1])
        named = tomllib.loads(config.read_text()).get("trace-file")
        if named:
            return (), Path(named)
    if _trace_dir is None:  # start_server used outside pytest
        return (), None
    test = os.environ.get("PYTEST_CURRENT_TEST", "no-test").split(" ")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test.removeprefix("tests/"))[-120:]
    path = _trace_dir / f"{next(_server_numbers):04d}-{os.getpid()}-{name}.jsonl"
    return ("--trace-file", str(path)), path


def check_trace_file(path: Path, charts: ChartSet, *, complete: bool) -> list[str]:
    """Every way the spans in ``path`` leave their charts, one paragraph each:
    the span, its chart, the offending step and the path it took. With
    ``complete``, a span that never ended is one of them."""
    trace = read_jsonl(path)
    problems: list[str] = []
    for span in check_events(trace.events, charts):
        first = span.events[0]
        if trace.may_have_lost_oldest and first.kind is not EventKind.BEGIN:
            continue  # its beginning was rotated away
        found = list(span.problems)
        if complete and span.events[-1].kind not in (EventKind.END, EventKind.ERROR):
            last = span.events[-1]
            found.append(
                f"{span.chart}: the span never ended (last: {last.kind.value} {last.node!r})"
            )
        if not found:
            continue
        about = ", ".join(
            f"{k}={v}"
            for k, v in sorted(first.attributes.items())
            if k in ("rpc", "callback", "method", "part", "container_id", "sandbox_id")
        )
        problems.append(
            f"span {first.span_id} of chart {span.chart}"
            + (f" ({about})" if about else "")
            + ":\n    "
            + "\n    ".join(found)
            + "\n    path taken:\n      "
            + "\n      ".join(path_lines(span.events))
        )
    return problems


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
    trace_file: Path | None = None
    trace_checked: bool = False

    def client(self) -> Client:
        c = connect(self.socket)
        self.clients.append(c)
        return c

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the server and wait for it; clients are closed only afterwards,
        so streams they hold end because the server ended them. Then check its
        trace: every span must follow its chart, and after a clean exit every
        span must have ended (a killed server leaves spans open, rightly)."""
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
        self.check_trace(complete=self.process.returncode == 0)
        return self.process.returncode

    def check_trace(self, *, complete: bool) -> None:
        """Check the trace file once, when the server has stopped; a file of the
        test's own choosing is copied into the run's trace directory first."""
        if self.trace_checked or self.trace_file is None or not self.trace_file.exists():
            return
        self.trace_checked = True
        if _trace_dir is not None and self.trace_file.parent != _trace_dir:
            number = next(_server_numbers)
            for i, part in enumerate(rotated_files(self.trace_file)):
                suffix = part.name.removeprefix(self.trace_file.name)
                shutil.copyfile(part, _trace_dir / f"{number:04d}-{i}-copied.jsonl{suffix}")
        problems = check_trace_file(self.trace_file, ChartSet.load(), complete=complete)
        if problems:
            raise AssertionError(
                f"the server in {self.base} left {len(problems)} span(s) that do not "
                f"follow their chart (trace {self.trace_file}):\n  - " + "\n  - ".join(problems)
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "teaching_cri", "serve", *args]


def start_server(base: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    base.mkdir(parents=True, exist_ok=True)
    sock, root, state, log = base / "cri.sock", base / "root", base / "state", base / "server.log"
    trace_args, trace_file = trace_file_args(extra)
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
                *trace_args,
                *extra,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(base, sock, root, state, proc, log, trace_file=trace_file)
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


# --- the fidelity report, when the whole suite ran -------------------------------


def _whole_suite(config: pytest.Config) -> bool:
    """No file, node or keyword selection: only then does a low figure mean
    the suite misses nodes, rather than that few tests were asked for."""
    if config.option.keyword or config.option.markexpr or config.option.deselect:
        return False
    tests_dir = Path(__file__).parent.resolve()
    return all(Path(arg).resolve() == tests_dir for arg in config.args)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _trace_dir is None or not _whole_suite(session.config):
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop:
        return  # a run cut short (-x, Ctrl-C) visits less than it would
    files = trace_files([_trace_dir])
    if not files:
        return
    report = report_from_files(files, ChartSet.load())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    percent = report.percent()
    verdict = (
        f"the fidelity threshold is {FIDELITY_THRESHOLD:.0f} % as root"
        if IS_ROOT
        else "not root: the runc paths cannot run, so no threshold (report only)"
    )
    text = f"{format_text(report)}\n({verdict}; traces in {_trace_dir})"
    if reporter is not None:
        reporter.write_sep("=", "chart fidelity (teaching-cri fidelity)")
        reporter.write_line(text)
    if IS_ROOT and percent < FIDELITY_THRESHOLD:
        if reporter is not None:
            reporter.write_line(
                f"FAILED: {percent:.1f} % of the seed charts' original nodes honestly visited "
                f"or absent, under {FIDELITY_THRESHOLD:.0f} %",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
