"""What one unary gRPC call costs here when the server does no work, by server.

From our Python sync client, ``Version`` against a few kinds of server side by
side: ``grpc.aio`` as ``_floor.py`` runs it, ``grpc.aio`` handing back raw bytes
(no protobuf), the sync ``grpc.server`` on 4 threads, the same with raw bytes,
and a Go server (grpc-go from Debian, fixed bytes through a pass-through codec).

Why: ``vs_containerd.py`` shows our unary CRI calls at 1.6–1.9× containerd's.
The Go row is about what the client and the socket cost by themselves, since a
Go server answering fixed bytes adds little; a Python row's excess over it is
what that server costs at the least, so no Python server comes nearer to Go's.

Every server is a subprocess of its own on a unix socket of its own, in a temp
dir removed at the end; the Go one is built into it at the start (``go`` and
``golang-google-grpc-dev`` needed: without them its row says why, the others
run). All answer ``Version`` with the same VersionResponse. The rounds alternate
between the servers, in an order rotated each round, so that the machine's
noise falls on all of them alike. If a server cannot start or a call fails, the
script says which and why, stops the others and exits with status 1.
``--smoke`` is one short round, for CI: it shows the script runs, not how fast.

    python benchmarks/grpc_floor.py [--calls 2000] [--rounds 5] [--warmup 200] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

import grpc
from _grpc_floor_server import RESPONSE

from teaching_cri.api import api_pb2, api_pb2_grpc

HERE = Path(__file__).resolve().parent
GOPATH = Path("/usr/share/gocode")
GO_GRPC = "golang-google-grpc-dev"
KINDS = {
    "go": "Go grpc-go, raw codec",
    "aio": "grpc.aio (_floor.py)",
    "aio-raw": "grpc.aio, raw bytes",
    "sync": "sync, 4 threads",
    "sync-raw": "sync, 4 threads, raw bytes",
}
REQUEST = api_pb2.VersionRequest(version="v1")
START_TIMEOUT = 30.0  # s
REWARM = 50  # untimed calls each time the client turns to another server

T = TypeVar("T")


class ServerFailed(RuntimeError):
    pass


class Signals:
    """Ctrl-C and SIGTERM as KeyboardInterrupt, except while ``held``: then at its
    end, so that no process is started without being recorded to be stopped."""

    def __init__(self) -> None:
        self.holding = self.pending = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise KeyboardInterrupt


def build_go(tmp: Path, signals: Signals) -> Path | str:
    """The Go server built into ``tmp``, or why it was not (no Go, or no grpc-go
    from Debian: a row left empty). A build that fails with both there fails
    the run: ``grpc_floor/main.go`` itself is broken."""
    go = shutil.which("go")
    if go is None:
        return "not built: no go (apt install golang-go)"
    if not (GOPATH / "src/google.golang.org/grpc").is_dir():
        return f"not built: {GO_GRPC} is not installed (apt install {GO_GRPC})"
    binary = tmp / "goserver"
    cache, work = str(tmp / "gocache"), str(tmp)
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOCACHE=cache, GOTMPDIR=work)
    argv = [go, "build", "-o", str(binary), str(HERE / "grpc_floor" / "main.go")]
    with signals.held():
        build = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        said, _ = build.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        said = "go build took over 600 s"
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)  # go and the compilers it started
            build.wait()
    if build.returncode != 0:  # its packages are there: our code no longer builds
        errors = [line for line in said.splitlines() if line[:1] not in ("", "#", " ", "\t")]
        raise ServerFailed(f"the Go server did not build: {(errors or [said.strip()])[0]}")
    return binary


class Server:
    """One kind of server as a subprocess on a socket of its own, and our client of it."""

    def __init__(self, kind: str, tmp: Path, goserver: Path | None) -> None:
        self.label = KINDS[kind]
        self.socket, self.log = tmp / f"{kind}.sock", tmp / f"{kind}.log"
        if kind == "go":
            argv = [str(goserver), str(self.socket), RESPONSE.SerializeToString().hex()]
        elif kind == "aio":
            argv = [sys.executable, str(HERE / "_floor.py"), str(self.socket)]
        else:
            argv = [sys.executable, str(HERE / "_grpc_floor_server.py"), kind, str(self.socket)]
        self.channel: grpc.Channel | None = None
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C on the terminal is for this script to handle.
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerFailed(f'the "{self.label}" server did not start: {self.why()}')
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.version = api_pb2_grpc.RuntimeServiceStub(self.channel).Version
        left = max(1.0, deadline - time.monotonic())
        answer = self.call(lambda: self.version(REQUEST, wait_for_ready=True, timeout=left))
        if answer != RESPONSE:
            raise ServerFailed(f'the "{self.label}" server answered {answer}, not {RESPONSE}')

    def why(self) -> str:
        """The server's last words: gRPC core's errors and its log's last line."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        core = [line.split("] ", 1)[-1] for line in lines if re.match(r"E\d{4} ", line)]
        return "; ".join(core + lines[-1:]) or f"exit status {self.process.poll()}"

    def call(self, rpc: Callable[[], T]) -> T:
        try:
            return rpc()
        except grpc.RpcError as e:
            said = f"{e.code().name}: {e.details()}"
            if self.process.poll() is not None:
                said += f"; it exited: {self.why()}"
            raise ServerFailed(f'a call to the "{self.label}" server failed: {said}') from None

    def timed(self, calls: int, untimed: int = REWARM) -> list[int]:
        """``calls`` Versions after ``untimed`` ones: ns each."""
        times = [0] * calls
        clock, version = time.perf_counter_ns, self.version

        def run() -> None:
            for _ in range(untimed):
                version(REQUEST)
            for i in range(calls):
                start = clock()
                version(REQUEST)
                times[i] = clock() - start

        self.call(run)
        return times

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(servers: list[Server], calls: int, rounds: int, warmup: int) -> dict[str, list[int]]:
    """Every server's call times, in rounds whose order is rotated each time."""
    for server in servers:
        server.timed(0, warmup)
    samples: dict[str, list[int]] = {server.label: [] for server in servers}
    for r in range(rounds):
        turn = r % len(servers)
        for server in servers[turn:] + servers[:turn]:
            samples[server.label] += server.timed(calls)
    return samples


def run(tmp: Path, args: argparse.Namespace, signals: Signals) -> tuple[dict[str, list[int]], str]:
    """Build, start, measure, stop: the samples, and why the Go row is empty if it is."""
    servers: list[Server] = []
    try:
        goserver = build_go(tmp, signals)
        kinds = [kind for kind in KINDS if kind != "go" or isinstance(goserver, Path)]
        for kind in kinds:
            with signals.held():
                servers.append(Server(kind, tmp, goserver if isinstance(goserver, Path) else None))
            servers[-1].wait_ready()
        samples = measure(servers, args.calls, args.rounds, args.warmup)
    finally:
        signals.holding = True  # the cleanup is not to be cut short
        for server in servers:
            if server.channel is not None:
                server.channel.close()
        for server in servers:
            server.stop()
    return samples, "" if isinstance(goserver, Path) else goserver


def report(samples: dict[str, list[int]], go_missing: str, args: argparse.Namespace) -> None:
    go = KINDS["go"]
    base = statistics.median(samples[go]) if go in samples else None
    print("== One unary gRPC call, no work in the server ==")
    print(
        f"Version from our Python sync client, {args.rounds} × {args.calls} calls to each, "
        f"alternating; grpcio {grpc.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"{'server':<28} {'median':>8} {'p95':>8} {'over Go':>8}   (ms)")
    for label in KINDS.values():
        if label not in samples:
            print(f"{label:<28} {go_missing}")
            continue
        median = statistics.median(samples[label])
        p95 = statistics.quantiles(samples[label], n=20, method="inclusive")[-1]
        over = "" if base is None else "—" if label == go else f"{(median - base) / 1e6:+.3f}"
        print(f"{label:<28} {median / 1e6:8.3f} {p95 / 1e6:8.3f} {over:>8}".rstrip())
    print(
        "The Go row is about what our client and the socket cost: grpc-go answering fixed\n"
        "bytes adds little. The rest of a row (over Go) is its server's own: grpcio hands each\n"
        "call from its C core to Python objects and back. That is paid per call whatever the\n"
        "handler does: no Python gRPC server reaches Go's total."
    )


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls to each first")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )
    parser.add_argument("--smoke", action="store_true", help="one short round, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.rounds, args.warmup = 50, 1, 5
    return args


def main() -> None:
    args = options()
    signals = Signals()
    try:
        with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
            samples, go_missing = run(Path(d), args, signals)
    except ServerFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; the servers stopped, their temp dir removed", file=sys.stderr)
        sys.exit(130)
    report(samples, go_missing, args)


if __name__ == "__main__":
    main()
