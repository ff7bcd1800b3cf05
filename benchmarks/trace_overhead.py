"""What does tracing cost? Prints figures; asserts nothing.

1. One trace event: a span with steps, emitted into the sinks a server has
   (ring buffer, Follow fan-out with no subscriber, JSONL file), against the
   same code with the tracer disabled.
2. One Version RPC over the real unix socket: a server with tracing on against
   one with ``--trace off``, measured in alternating rounds so drift in the
   machine's load hits both alike. The target: tracing adds at most 5 %.

The three servers run side by side, each on a socket of its own and with its
streaming server on a free port (``--stream-address 127.0.0.1:0``: the default
10350 can be had by one of them only). If one of them cannot start, the script
says which and why, stops the others and exits with status 1. ``--smoke`` is one
short round of everything, for CI: it shows the script still runs, not how fast.

    python benchmarks/trace_overhead.py [--calls 2000] [--rounds 5] [--dir /tmp] [--smoke]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from teaching_cri.api import api_pb2
from teaching_cri.client import Client, connect, wait_for_socket
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.sinks import FanOutSink, JsonlFileSink, RingBufferSink
from teaching_cri.trace.tracer import Tracer, step


@step("m_cb_container_version")
def _version() -> None:
    pass


@step("version_response_to_grpc")
def _to_grpc() -> None:
    pass


def _span_ns(tracer: Tracer, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        with tracer.span("Version", rpc="Version"):
            _version()
            _to_grpc()
    return (time.perf_counter_ns() - start) / n


def event_cost(n: int, tmp: Path) -> None:
    charts = ChartSet.load()
    ring = RingBufferSink()
    on = Tracer(charts, [ring, FanOutSink()])
    off = Tracer(charts, [], enabled=False)
    _span_ns(on, 1000), _span_ns(off, 1000)  # warm up
    traced = statistics.median(_span_ns(on, n) for _ in range(5))
    untraced = statistics.median(_span_ns(off, n) for _ in range(5))
    per_event = (traced - untraced) / 4  # begin, two steps, end
    print(f"span of 4 events, traced:     {traced / 1000:8.2f} µs")
    print(f"same code, tracer disabled:   {untraced / 1000:8.2f} µs")
    print(
        f"one event on the RPC's path:  {per_event / 1000:8.2f} µs  (ring buffer + Follow fan-out)"
    )

    # The JSONL file is written by a thread of its own, off the RPC's path; what
    # it costs is CPU beside the RPCs: process CPU time per event written.
    sink = JsonlFileSink(tmp / "bench.jsonl", queue_size=n * 4 + 1)
    events = ring.snapshot()[-4:]  # one Version span
    cpu = time.process_time_ns()
    for _ in range(n):
        for event in events:
            sink.publish(event)
    sink.close()
    written = (time.process_time_ns() - cpu) / (n * 4)
    print(f"one event into the JSONL file: {written / 1000:7.2f} µs CPU  (background thread)")


SETUPS = {
    "off": ["--trace", "off"],
    "on": ["--trace", "on"],
    "on+file": ["--trace", "on", "--trace-file", "{base}/trace.jsonl"],
}


class ServerFailed(RuntimeError):
    pass


def _server(base: Path, setup: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = base / f"{setup}.sock"
    flags = [f.format(base=base) for f in SETUPS[setup]]
    root, state, log = base / f"root-{setup}", base / f"state-{setup}", base / f"{setup}.log"
    cmd = [sys.executable, "-m", "teaching_cri", "serve", "--socket", str(sock)]
    cmd += ["--root", str(root), "--state", str(state), "--stream-address", "127.0.0.1:0"]
    cmd += ["--log-level", "error", *flags]
    with log.open("wb") as out:
        # Its own session: a Ctrl-C on the terminal is for this script to handle.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_socket(sock, timeout=30)
    except TimeoutError:
        _stop(proc)
        said = log.read_text(errors="replace").strip() or f"exit {proc.returncode}"
        raise ServerFailed(f"the server with tracing {setup} did not start: {said}") from None
    return proc, sock


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rpc_cost(calls: int, rounds: int, warm_up: int, tmp: Path) -> None:
    servers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    clients: dict[str, Client] = {}
    request = api_pb2.VersionRequest()
    try:
        for setup in SETUPS:
            servers[setup] = _server(tmp, setup)
            clients[setup] = connect(servers[setup][1])
        for c in clients.values():
            for _ in range(warm_up):
                c.runtime.Version(request)
        samples: dict[str, list[float]] = {t: [] for t in SETUPS}
        for _ in range(rounds):
            for trace, c in clients.items():
                start = time.perf_counter_ns()
                for _ in range(calls):
                    c.runtime.Version(request)
                samples[trace].append((time.perf_counter_ns() - start) / calls)
        off = statistics.median(samples["off"])
        print(
            f"Version RPC, tracing off:     {off / 1000:8.1f} µs  (median of {rounds} rounds "
            f"of {calls} calls)"
        )
        for setup in ("on", "on+file"):
            t = statistics.median(samples[setup])
            extra = "  (target: ≤ 5 %)" if setup == "on" else "  (opt-in --trace-file)"
            print(
                f"Version RPC, tracing {setup + ':':<8} {t / 1000:8.1f} µs, "
                f"{100 * (t - off) / off:+5.1f} %{extra}"
            )
    finally:
        for c in clients.values():
            c.close()
        for proc, _ in servers.values():
            _stop(proc)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: the servers are stopped on the way out either way."""
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="spans per sample")
    parser.add_argument("--calls", type=int, default=2_000, help="RPCs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )
    parser.add_argument("--smoke", action="store_true", help="one short round of each, for CI")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    events, calls, rounds, warm_up = args.events, args.calls, args.rounds, 200
    if args.smoke:
        events, calls, rounds, warm_up = 100, 10, 1, 1
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
        event_cost(events, Path(d))
        try:
            rpc_cost(calls, rounds, warm_up, Path(d))
        except ServerFailed as e:
            print(f"failed: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted; the servers stopped", file=sys.stderr)
            sys.exit(130)


if __name__ == "__main__":
    main()
