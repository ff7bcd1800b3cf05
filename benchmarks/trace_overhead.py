"""What does tracing cost? Prints figures; asserts nothing.

1. One trace event: a span with steps, emitted into the sinks a server has
   (ring buffer, Follow fan-out with no subscriber, JSONL file), against the
   same code with the tracer disabled.
2. One Version RPC over the real unix socket: a server with tracing on against
   one with ``--trace off``, measured in alternating rounds so drift in the
   machine's load hits both alike. The target: tracing adds at most 5 %.

    python benchmarks/trace_overhead.py [--calls 2000] [--rounds 5]
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

from teaching_cri.api import api_pb2
from teaching_cri.client import connect, wait_for_socket
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


def _server(base: Path, setup: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = base / f"{setup}.sock"
    flags = [f.format(base=base) for f in SETUPS[setup]]
    root, state = base / f"root-{setup}", base / f"state-{setup}"
    cmd = [sys.executable, "-m", "teaching_cri", "serve", "--socket", str(sock)]
    cmd += ["--root", str(root), "--state", str(state), "--log-level", "error", *flags]
    proc = subprocess.Popen(cmd)
    wait_for_socket(sock, timeout=30)
    return proc, sock


def rpc_cost(calls: int, rounds: int, tmp: Path) -> None:
    servers = {t: _server(tmp, t) for t in SETUPS}
    clients = {t: connect(sock) for t, (_, sock) in servers.items()}
    request = api_pb2.VersionRequest()
    try:
        for c in clients.values():
            for _ in range(200):
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
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="spans per sample")
    parser.add_argument("--calls", type=int, default=2_000, help="RPCs per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcri-bench-") as d:
        event_cost(args.events, Path(d))
        rpc_cost(args.calls, args.rounds, Path(d))


if __name__ == "__main__":
    main()
