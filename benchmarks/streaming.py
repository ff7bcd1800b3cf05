"""How fast does an exec's output come through our websocket and SPDY? Prints figures only.

Issue 7's benchmark. ``kubectl exec`` (and ``crictl exec``) reads a process's
output through the streaming server: the Exec RPC answers a URL, the client
upgrades it to a websocket, and every byte the process writes goes from its
pipe to the shim, over ``shim.sock`` to the server, and out in a websocket
message. The floor for the same bytes is runc by itself with the process's
stdout on a pipe: the process writes straight into the reader's pipe, nothing
copies it on the way. So each figure of ours is printed beside that floor:

* **Ours**: a real server (``python -m teaching_cri serve``, a subprocess, as a
  user runs it) on a socket of its own, its streaming server on
  ``--stream-address 127.0.0.1:0`` (a free port: the Exec RPC's URL names it),
  with a CNI conf dir holding one conflist of this benchmark's own (a private
  bridge, ``--bridge``, deleted at the end). The image is built by the server
  (``BuildLocalImage`` of ``teaching-cri.local/busybox:latest``, from the host's
  static busybox); one pod is run and one container in it runs ``sleep 1000``
  with a pid namespace of its own (``pid=CONTAINER``), with the config the
  kubelet sends (``containers.py``'s). Each session is what a client does: the
  Exec RPC (stdout only, no tty), the URL dialled as ``ws://`` with the
  ``v4.channel.k8s.io`` subprotocol and no limit on a message's size, messages
  read until the server closes (the first an empty "ready" frame on stdout, the
  last the exit status on the error channel).
* **Bare**: ``runc --root <the server's state dir>/runc exec <id> ...`` in the
  same container, a subprocess whose stdout is a pipe that this script reads
  (1 MiB at a time), as a shell's ``runc exec ... | wc -c`` would.

**Throughput**: ``head -c N /dev/zero`` (``--bytes``, 200 MB by default) or,
with ``--source cat``, ``cat`` of a file of N bytes made in the container's
rootfs before the runs (the issue's "``runc exec cat`` of the same bytes").
The producer matters: busybox's ``head`` writes 4 KiB at a time and spends a
CPU of its own (about 150 MB/s into ``cat >/dev/null`` on the host), so with it
the pipe's figure is mostly head's, and ours sends 7-12 KiB messages; busybox's
``cat`` ``sendfile``s 64 KiB at a time, GB/s into a pipe, which leaves ours'
own cost in view. The stdout bytes are counted (not the channel byte of each
message), timed from the websocket's connect to its close (ours; the Exec RPC
before it is not timed) and from ``runc exec``'s start to its stdout's end and
exit (bare). Both include a ``runc exec`` (ours' shim runs ``runc exec -d``
once the websocket is up), which is small beside 200 MB. MB/s, with MB = 10⁶ bytes; the median of
``--runs`` runs after one unmeasured warm-up, bare and ours alternating run by
run. The targets (issue 7): ours at least 100 MB/s, and within 3 × of the pipe
(ours' MB/s at least a third of bare's), both at the median.

**SPDY** (issue 12): the same runs once more through SPDY/3.1 on the same
URLs, beside the websocket's from the same run: each session is what
client-go's remotecommand v4 does (a POST upgraded with ``Upgrade: SPDY/3.1``
and ``X-Stream-Protocol-Version: v4.channel.k8s.io``, then an error stream and
a stdout stream, read until the server's GOAWAY), played by a client on
``teaching_cri.streaming.spdy``'s core that, like Go's spdystream, never sends
WINDOW_UPDATE: the server holds to its windows for the first 64 KiB, probes
with a PING and then sends without them (the rule in spdy.py's docstring), a
one-time wait of about a quarter of a second per session that the figures
include. The targets (issue 12): SPDY at least 100 MB/s, and within 1.5 × of
the websocket (SPDY's MB/s at least two thirds of the websocket's), both at the
median; the memory figures cover both paths. The set-up latency is measured
for SPDY too (the upgrade, then the two streams opened).

**Memory**: the websocket path has back-pressure all the way (a slow client
slows the process: the server awaits each send, the shim stops reading the
process's pipe when its client is 1 MiB behind), so streaming hundreds of MB
must not grow the server. The server's resident set (``VmRSS`` in
``/proc/<pid>/status``) is printed before the throughput runs and at its peak
during them (sampled every 4 MB received, and after each run), and the shim's
likewise (it holds the backlog of the exec's output).

**Set-up latency**: what ``kubectl exec`` waits before it sees anything, for
``echo x``: from the Exec RPC's call to the first stdout byte, in three parts:
the RPC, the websocket's upgrade (connect returns), and the wait for the first
byte (the stream task consumes the token, the shim runs ``runc exec -d``,
``echo`` writes). ``--latency-runs`` runs (30 by default) after one warm-up;
the median, 95th percentile and minimum. Beside it, for information, ``runc
exec <id> echo x`` to its first byte on a pipe. No target in the issue.

It needs root, runc, /bin/busybox (Debian's busybox-static), iproute2's ip and
the CNI plugins bridge, host-local and loopback (Debian's
containernetworking-plugins), and exits with status 2, saying why, without
them. Tracing is on (``--trace off`` to compare: every websocket message is a
SERVER_WRITEABLE span of its own). ``--steps`` adds the median of every step of
the Exec, Websocket and WebsocketStream charts over the latency runs. Ctrl-C or
SIGTERM stops after the run in progress and cleans up (a second one stops at
once, and cleans up too). At the end it says which processes are left in the
container (the exec'd ones must all be gone), removes the container and the
pod, and says what is left behind (mounts under its directory, veths on the
bridge, runc containers, live shims, the pod's cgroup).

    sudo python benchmarks/streaming.py [--runs 5] [--bytes 200000000]
        [--source head|cat] [--latency-runs 30] [--runc runc] [--dir /tmp] [--bridge tcri-bench2]
        [--subnet 10.238.0.0/16] [--trace on|off] [--steps]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from containers import Server as PodServer  # the benchmark next door's: image, pod, container
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidHandshake
from websockets.typing import Subprotocol
from websockets.version import version as websockets_version

from teaching_cri.api import api_pb2
from teaching_cri.image.hostimages import BusyboxUnavailable
from teaching_cri.runtime import cgroups
from teaching_cri.streaming import spdy

from _bench import (
    BenchError,
    Interrupt,
    Table,
    add_runc_args,
    add_server_args,
    alternate,
    bridge_taken,
    cgroup_dirs,
    exit_if,
    exits,
    host_leftovers,
    ignore_signals,
    live_shims,
    machine,
    must,
    new_parser,
    node_times,
    p95,
    pod_bench_unavailable,
    print_leftovers,
    rss_bytes,
    tear_down_pod_host,
    verdict,
    write_conflist,
)

MB = 1_000_000  # bytes: throughput in MB/s, as dd and the issue count it
DEFAULT_BYTES = 200 * MB
DEFAULT_RUNS = 5
DEFAULT_LATENCY_RUNS = 30
MIN_THROUGHPUT = 100 * MB  # bytes/s, ours at the median
SPDY_FACTOR = 1.5  # SPDY within this factor of the websocket's throughput, at the median
PIPE_FACTOR = 3.0  # ours within this factor of the pipe's throughput, at the median
CHUNK = 1 << 20  # the bare reader's read size
RSS_EVERY = 4 * MB  # stdout bytes between two samples of the server's and shim's RSS
SESSION_TIMEOUT = 300.0  # s for one session, connect to close
PROTOCOL = "v4.channel.k8s.io"
STDOUT, ERROR = 1, 3  # the channels (the first byte of each message)
BLOB = "/stream-bench.bin"  # --source cat: the file, in the container's rootfs
STREAM_ADDRESS = "127.0.0.1:0"  # any free port: the Exec RPC's URL names the real one
CHARTS = ("Exec", "Websocket", "WebsocketStream")  # --steps: the set-up's charts

LATENCY_TABLE = Table(44)


# --- Ours: a server whose streaming server is on a free port ---------------------------


class Server(PodServer):
    """``containers.py``'s server (the image, the pod, its containers), its
    streaming server on a free port."""

    def __init__(self, base: Path, conf_dir: Path, trace: str) -> None:
        super().__init__(base, conf_dir, trace, ("--stream-address", STREAM_ADDRESS))

    def exec_url(self, container_id: str, cmd: Sequence[str]) -> str:
        """The Exec RPC, stdout only, no tty: the streaming URL (``http://...``)."""
        request = api_pb2.ExecRequest(container_id=container_id, cmd=list(cmd), stdout=True)
        return str(self.runtime.Exec(request, timeout=30).url)

    def shim_pid(self, container_id: str) -> int:
        return int((self.state / "containers" / container_id / "shim.pid").read_text().strip())


def ws_url(url: str) -> str:
    """The RPC's URL is http://…; a websocket client dials it as ws://…"""
    return "ws://" + url.removeprefix("http://")


# --- Memory ------------------------------------------------------------------------------


@dataclass
class Rss:
    """A process's resident set: before the runs, the highest sample, after."""

    pid: int
    before: int = 0
    peak: int = 0
    after: int = 0
    samples: int = 0

    def sample(self) -> None:
        rss = rss_bytes(self.pid)
        if rss is not None:
            self.peak = max(self.peak, rss)
            self.samples += 1

    def start(self) -> None:
        self.before = rss_bytes(self.pid) or 0
        self.peak = self.before

    def end(self) -> None:
        self.after = rss_bytes(self.pid) or 0


# --- One session through ours, one runc exec ---------------------------------------------


@dataclass
class Streamed:
    """What one websocket session received."""

    stdout: int = 0  # payload bytes on channel 1
    messages: int = 0
    ready: bool = False  # the first message was the empty frame on stdout
    status: str = ""  # the error channel's last message
    started: float = 0.0  # perf_counter when the dial began
    connected: float = 0.0  # perf_counter when the upgrade was done
    first_byte: float = 0.0  # perf_counter when the first stdout byte arrived
    closed: float = 0.0  # perf_counter when the connection was closed

    def success(self) -> bool:
        try:
            return bool(json.loads(self.status).get("status") == "Success")
        except ValueError:
            return False


async def session(url: str, every: int = 0, sample: Callable[[], None] | None = None) -> Streamed:
    """Dial ``url``, read every message until the server closes; ``sample``
    called every ``every`` stdout bytes."""
    got = Streamed(started=time.perf_counter())
    next_sample = every
    async with ws_connect(
        ws_url(url),
        subprotocols=[Subprotocol(PROTOCOL)],
        max_size=None,
        compression=None,
        open_timeout=30,
    ) as ws:
        got.connected = time.perf_counter()
        async for message in ws:
            if not isinstance(message, bytes) or not message:
                continue  # a binary protocol: never
            channel, size = message[0], len(message) - 1
            if channel == STDOUT:
                if got.messages == 0 and size == 0:
                    got.ready = True
                elif size and not got.first_byte:
                    got.first_byte = time.perf_counter()
                got.stdout += size
                if sample is not None and got.stdout >= next_sample:
                    sample()
                    next_sample += every
            elif channel == ERROR:
                got.status = message[1:].decode(errors="replace")
            got.messages += 1
    got.closed = time.perf_counter()
    return got


async def bounded(url: str, every: int = 0, sample: Callable[[], None] | None = None) -> Streamed:
    return await asyncio.wait_for(session(url, every, sample), SESSION_TIMEOUT)


async def spdy_session(
    url: str, every: int = 0, sample: Callable[[], None] | None = None
) -> Streamed:
    """The same exec as client-go's remotecommand v4 over SPDY/3.1: the upgrade,
    an error and a stdout stream, bytes read until the server closes. Like
    spdystream it never gives window credit back (no ``consumed``)."""
    got = Streamed(started=time.perf_counter(), ready=True)  # SPDY has no ready frame
    parts = url.removeprefix("http://").split("/", 1)
    host, port = parts[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"POST /{parts[1]} HTTP/1.1", f"Host: {parts[0]}", "Content-Length: 0"]
    head += ["Connection: Upgrade", "Upgrade: SPDY/3.1", f"X-Stream-Protocol-Version: {PROTOCOL}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    status = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1]
    if status != b"101":
        raise ConnectionError(f"SPDY upgrade answered {status.decode()}")
    conn = spdy.Connection(client=True, flow_control=False)
    error = conn.open_stream({"streamtype": "error"})
    stdout = conn.open_stream({"streamtype": "stdout"})
    writer.write(conn.data_to_send())
    got.connected = time.perf_counter()
    next_sample, status_text = every, bytearray()
    while data := await reader.read(1 << 18):
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, spdy.DataReceived) and event.stream_id == stdout:
                if not got.first_byte:
                    got.first_byte = time.perf_counter()
                got.stdout += len(event.data)
                got.messages += 1
                if sample is not None and got.stdout >= next_sample:
                    sample()
                    next_sample += every
            elif isinstance(event, spdy.DataReceived) and event.stream_id == error:
                status_text += event.data
        if out := conn.data_to_send():
            writer.write(out)
    writer.close()
    got.status = status_text.decode(errors="replace")
    got.closed = time.perf_counter()
    return got


async def spdy_bounded(
    url: str, every: int = 0, sample: Callable[[], None] | None = None
) -> Streamed:
    return await asyncio.wait_for(spdy_session(url, every, sample), SESSION_TIMEOUT)


def stream_once(
    server: Server, container_id: str, cmd: Sequence[str], rss: Sequence[Rss], wire: str = "ws"
) -> tuple[Streamed, float]:
    """Ours: ``cmd``'s stdout through the websocket (or SPDY), RSS sampled."""

    def sample() -> None:
        for r in rss:
            r.sample()

    url = server.exec_url(container_id, cmd)
    dial = spdy_bounded if wire == "spdy" else bounded
    try:
        got = asyncio.run(dial(url, RSS_EVERY, sample))
    except (OSError, InvalidHandshake, ConnectionClosedError, TimeoutError) as e:
        raise BenchError(f"the exec session failed: {e!r}\n{server.tail()}") from None
    sample()
    return got, got.closed - got.started


def runc_exec(runc: str, root: Path, container_id: str, cmd: Sequence[str]) -> list[str]:
    return [runc, "--root", str(root), "exec", container_id, *cmd]


def pipe_once(runc: str, root: Path, container_id: str, cmd: Sequence[str]) -> tuple[int, float]:
    """Bare: ``runc exec <id> <cmd>``, stdout a pipe read here 1 MiB at a time:
    the bytes read and the seconds from start to exit."""
    argv = runc_exec(runc, root, container_id, cmd)
    got = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(CHUNK):
            got += len(chunk)
        code = proc.wait()
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0:
        raise BenchError(f"{' '.join(argv)}: exit {code}")
    return got, seconds


# --- The measurements ---------------------------------------------------------------------


@dataclass
class Results:
    nbytes: int
    source: str  # --source
    command: str = ""  # what the throughput runs exec
    bare: list[float] = field(default_factory=list)  # seconds per run
    ours: list[float] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)  # websocket messages per run (ours)
    spdy: list[float] = field(default_factory=list)  # seconds per run, SPDY
    spdy_frames: list[int] = field(default_factory=list)  # stdout data frames per run
    spdy_upgrade: list[float] = field(default_factory=list)  # SPDY set-up, by part
    spdy_first: list[float] = field(default_factory=list)
    spdy_setup: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rpc: list[float] = field(default_factory=list)  # set-up latency, by part
    upgrade: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    setup: list[float] = field(default_factory=list)
    bare_first: list[float] = field(default_factory=list)
    steps: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (chart, node)

    def check(self, what: str, got: Streamed, size: int) -> None:
        """Note a session that did not deliver ``size`` stdout bytes, its ready
        frame and a Success status (its figures are kept all the same)."""
        if got.stdout != size or not got.success() or not got.ready:
            self.failures.append(
                f"{what}: {got.stdout} stdout bytes of {size}, ready frame"
                f" {'yes' if got.ready else 'no'}, status {got.status[:80] or 'none'}"
            )


def source_command(source: str, nbytes: int, runc: str, root: Path, container_id: str) -> list[str]:
    """What writes ``nbytes`` to stdout in the container: ``head -c`` of /dev/zero
    (busybox's head writes 4 KiB at a time, and costs CPU of its own), or ``cat``
    of a file of that size made in the container's rootfs first (busybox's cat
    ``sendfile``s 64 KiB at a time: the pipe's floor without the producer's cost)."""
    if source == "head":
        return ["head", "-c", str(nbytes), "/dev/zero"]
    make = f"head -c {nbytes} /dev/zero > {BLOB}"
    must(*runc_exec(runc, root, container_id, ["sh", "-c", make]))
    return ["cat", BLOB]


def measure_throughput(
    server: Server,
    runc: str,
    container_id: str,
    runs: int,
    rss: Sequence[Rss],
    interrupt: Interrupt,
    results: Results,
) -> None:
    root, n = server.state / "runc", results.nbytes
    cmd = source_command(results.source, n, runc, root, container_id)
    results.command = " ".join(cmd)
    for r in rss:
        r.start()
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        (bare_bytes, bare_seconds), (got, seconds) = alternate(
            i,
            partial(pipe_once, runc, root, container_id, cmd),
            partial(stream_once, server, container_id, cmd, rss),
        )
        results.check(f"run {i}", got, n)
        spdy_got, spdy_seconds = stream_once(server, container_id, cmd, rss, "spdy")
        results.check(f"SPDY run {i}", spdy_got, n)
        if bare_bytes != n:
            results.failures.append(f"run {i}: the pipe gave {bare_bytes} bytes of {n}")
        label = "warm-up" if i == 0 else f"run {i}/{runs}"
        print(
            f"  {label:<9} pipe {n / bare_seconds / MB:8.1f} MB/s,"
            f" ours {n / seconds / MB:8.1f} MB/s ({got.messages} messages),"
            f" SPDY {n / spdy_seconds / MB:8.1f} MB/s ({spdy_got.messages} frames)",
            flush=True,
        )
        if i:
            results.bare.append(bare_seconds)
            results.ours.append(seconds)
            results.messages.append(got.messages)
            results.spdy.append(spdy_seconds)
            results.spdy_frames.append(spdy_got.messages)
    for r in rss:
        r.end()


async def first_byte_session(server: Server, container_id: str) -> tuple[Streamed, float]:
    """Ours: ``echo x``; the session and when the Exec RPC was called (perf_counter),
    inside the loop, so that starting the loop is not counted."""
    t0 = time.perf_counter()
    url = server.exec_url(container_id, ["echo", "x"])
    return await bounded(url), t0


async def spdy_first_byte_session(server: Server, container_id: str) -> tuple[Streamed, float]:
    t0 = time.perf_counter()
    url = server.exec_url(container_id, ["echo", "x"])
    return await spdy_bounded(url), t0


def latency_once(server: Server, container_id: str, wire: str = "ws") -> tuple[Streamed, float]:
    dial = spdy_first_byte_session if wire == "spdy" else first_byte_session
    try:
        return asyncio.run(dial(server, container_id))
    except (OSError, InvalidHandshake, ConnectionClosedError, TimeoutError) as e:
        raise BenchError(f"the exec session failed: {e!r}\n{server.tail()}") from None


def bare_first_byte(runc: str, root: Path, container_id: str) -> float:
    """Bare: ``runc exec <id> echo x`` to the first byte on its stdout pipe."""
    argv = runc_exec(runc, root, container_id, ["echo", "x"])
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        seconds = time.perf_counter() - t0
        proc.stdout.read()
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0 or first != b"x":
        raise BenchError(f"{' '.join(argv)}: exit {code}, first byte {first!r}")
    return seconds


def measure_latency(
    server: Server,
    runc: str,
    container_id: str,
    runs: int,
    steps: bool,
    interrupt: Interrupt,
    results: Results,
) -> None:
    root = server.state / "runc"
    for i in range(runs + 1):  # the first is the warm-up
        interrupt.check()
        since = time.time_ns()
        bare, (got, called) = alternate(
            i,
            partial(bare_first_byte, runc, root, container_id),
            partial(latency_once, server, container_id),
        )
        results.check(f"latency run {i}", got, len(b"x\n"))
        if not i or not got.first_byte:  # the warm-up, or a failure (noted)
            continue
        results.bare_first.append(bare)
        results.rpc.append(got.started - called)
        results.upgrade.append(got.connected - got.started)
        results.first.append(got.first_byte - got.connected)
        results.setup.append(got.first_byte - called)
        spdy_got, spdy_called = latency_once(server, container_id, "spdy")
        results.check(f"SPDY latency run {i}", spdy_got, len(b"x\n"))
        if spdy_got.first_byte:
            results.spdy_upgrade.append(spdy_got.connected - spdy_got.started)
            results.spdy_first.append(spdy_got.first_byte - spdy_got.connected)
            results.spdy_setup.append(spdy_got.first_byte - spdy_called)
        if steps:
            time.sleep(0.05)  # the session's CLOSED callback may end just after the client
            for chart in CHARTS:
                for node, seconds in node_times(server.recent([chart], since)).items():
                    results.steps.setdefault((chart, node), []).append(seconds)


# --- The report ---------------------------------------------------------------------------


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB


def report_throughput(results: Results, runs: int, rss: Sequence[tuple[str, Rss]]) -> None:
    n = results.nbytes
    print(f"\n== exec stdout throughput: {results.command} (MB/s, {runs} runs) ==")
    print(f"{'':<44} {'median':>8} {'min':>8} {'max':>8} {'s, median':>10}")
    for label, seconds in (
        ("bare: runc exec, stdout to a pipe", results.bare),
        (f"ours: Exec + websocket ({PROTOCOL})", results.ours),
        ("ours: Exec + SPDY/3.1 (spdystream-like)", results.spdy),
    ):
        rates = [mb_s(n, s) for s in seconds]
        print(
            f"{label:<44} {statistics.median(rates):8.1f} {min(rates):8.1f} {max(rates):8.1f}"
            f" {statistics.median(seconds):10.3f}"
        )
    bare, ours = mb_s(n, statistics.median(results.bare)), mb_s(n, statistics.median(results.ours))
    messages = statistics.median(results.messages)
    print(
        f"ours: {messages:.0f} websocket messages a run, {n / messages / 1024:.1f} KiB each"
        " on average"
    )
    print(
        f"ours at the median: {ours:.1f} MB/s (target: ≥ {MIN_THROUGHPUT / MB:.0f} MB/s):"
        f" {verdict(ours >= MIN_THROUGHPUT / MB)}"
    )
    print(
        f"the pipe / ours at the median: {bare / ours:.2f} × (target: ≤ {PIPE_FACTOR:.0f} ×):"
        f" {verdict(bare <= PIPE_FACTOR * ours)}"
    )
    spdy_rate = mb_s(n, statistics.median(results.spdy))
    frames = statistics.median(results.spdy_frames)
    print(f"SPDY: {frames:.0f} stdout data frames a run, {n / frames / 1024:.1f} KiB each")
    print(
        f"SPDY at the median: {spdy_rate:.1f} MB/s (target: ≥ {MIN_THROUGHPUT / MB:.0f} MB/s):"
        f" {verdict(spdy_rate >= MIN_THROUGHPUT / MB)}"
    )
    print(
        f"the websocket / SPDY at the median: {ours / spdy_rate:.2f} ×"
        f" (target: ≤ {SPDY_FACTOR} ×): {verdict(ours <= SPDY_FACTOR * spdy_rate)}"
    )
    streamed = 2 * n * (runs + 1) / MB
    for name, r in rss:
        print(
            f"{name} RSS: {r.before / 2**20:.1f} MiB before, {r.peak / 2**20:.1f} MiB at the"
            f" peak ({(r.peak - r.before) / 2**20:+.1f} MiB), {r.after / 2**20:.1f} MiB after"
            f"\n  ({r.samples} samples while {streamed:.0f} MB went through, websocket and SPDY,"
            " warm-up included)"
        )


def report_latency(results: Results) -> None:
    if not results.setup:
        print("\n== session set-up: no run reached its first byte ==")
        return
    print("\n== session set-up: echo x, Exec RPC to the first stdout byte ==")
    print(LATENCY_TABLE.head(len(results.setup)))
    print(LATENCY_TABLE.row("ours: Exec RPC", results.rpc))
    print(LATENCY_TABLE.row("ours: websocket upgrade (connect)", results.upgrade))
    print(LATENCY_TABLE.row("ours: upgrade to the first stdout byte", results.first))
    print(LATENCY_TABLE.row("ours: the set-up, RPC to first byte", results.setup))
    if results.spdy_setup:
        print(LATENCY_TABLE.row("SPDY: upgrade and two streams opened", results.spdy_upgrade))
        print(LATENCY_TABLE.row("SPDY: then to the first stdout byte", results.spdy_first))
        print(LATENCY_TABLE.row("SPDY: the set-up, RPC to first byte", results.spdy_setup))
    print(LATENCY_TABLE.row("bare: runc exec echo x, to its first byte", results.bare_first))
    extra = statistics.median(results.setup) - statistics.median(results.bare_first)
    print(
        f"ours − bare, at the median: {extra * 1000:+.1f} ms (no target in issue 7;"
        f" p95 of ours {p95(results.setup) * 1000:.1f} ms)"
    )


def report_steps(results: Results) -> None:
    """Every step of the set-up's charts over the latency runs, median ms per
    session, slowest first within each chart."""
    if not results.steps:
        print("\nno steps: the server's tracing is off")
        return
    print("\n== Our steps in the set-up, from the server's traces: median (ms) per session ==")
    for chart in CHARTS:
        rows = [(statistics.median(v), n) for (c, n), v in results.steps.items() if c == chart]
        print(f"{chart}: {sum(m for m, _ in rows) * 1000:.2f} ms in its steps")
        for median, node in sorted(rows, reverse=True):
            if median >= 0.00001:
                print(f"  {node:<52} {median * 1000:8.3f}")


def report_failures(results: Results) -> None:
    if results.failures:
        f = results.failures
        print(f"\nwarning: {len(f)} sessions did not deliver what they should; {'; '.join(f[:3])}")


# --- Leftovers and the run ------------------------------------------------------------------


def processes_in(runc: str, root: Path, container_id: str) -> list[int]:
    """The pids ``runc ps`` sees in the container."""
    out = must(runc, "--root", str(root), "ps", "--format", "json", container_id)
    return [int(pid) for pid in json.loads(out or "[]")]


def leftovers(tmp: Path, bridge: str, runc: str, server: Server, pod: str) -> list[str]:
    """What is still there after the container and the pod were removed."""
    found = host_leftovers(tmp, bridge, runc, (server.state / "runc",))
    found += [f"shim {pid}" for pid in live_shims(server.state)]
    with contextlib.suppress(grpc.RpcError):
        found += [f"container {c.id[:12]} in the server" for c in server.list().containers]
    if pod:
        found += [f"the pod's cgroup {d}" for d in cgroup_dirs(cgroups.pod_parent(pod))]
    return found


def run(args: argparse.Namespace, runc: str, tmp: Path, interrupt: Interrupt) -> None:
    start = time.perf_counter()
    conf_dir, _network = write_conflist(tmp, args.subnet, args.bridge)
    (tmp / "srv").mkdir()
    server: Server | None = None
    pod = ""
    try:
        server = Server(tmp / "srv", conf_dir, args.trace)
        server.build_image()
        pod = server.run_pod(tmp / "logs")
        container_id = server.create("stream")
        server.start(container_id)
        url = server.exec_url(container_id, ["true"])
        print(
            f"server, its busybox image, the pod and a running container ready in"
            f" {time.perf_counter() - start:.1f} s; in {tmp}; streaming at"
            f" {url.rsplit('/cri/', 1)[0]}"
        )
        results = Results(args.bytes, args.source)
        rss = (
            ("the server's", Rss(server.process.pid)),
            ("the shim's", Rss(server.shim_pid(container_id))),
        )
        root = server.state / "runc"
        try:
            print(f"throughput, {args.bytes / MB:g} MB a run ({args.source}):", flush=True)
            measure_throughput(
                server, runc, container_id, args.runs, [r for _, r in rss], interrupt, results
            )
            measure_latency(
                server, runc, container_id, args.latency_runs, args.steps, interrupt, results
            )
            time.sleep(0.2)  # the last session's clean-up
            left_in = processes_in(runc, root, container_id)
            server.stop_remove(container_id)
            server.remove_pod()
        except grpc.RpcError as e:
            raise server.failure(e) from None
        report_throughput(results, args.runs, rss)
        report_latency(results)
        if args.steps:
            report_steps(results)
        report_failures(results)
        extra = len(left_in) - 1
        print(
            f"\nprocesses in the container after every session: {len(left_in)}"
            f" ({'sleep only' if extra == 0 else f'{extra} besides sleep: exec leftovers'})"
        )
        left = leftovers(tmp, args.bridge, runc, server, pod)
        print_leftovers(left, "mounts, veths, runc containers, shims, containers, the pod's cgroup")
        server.print_log_end()
    finally:
        ignore_signals()
        if server is not None:
            server.stop()
            server.reap(runc)
        tear_down_pod_host(tmp, pod, args.bridge)


def unavailable(runc: str | None, runc_name: str) -> str:
    return pod_bench_unavailable("streaming.py", runc, runc_name)


def main() -> None:
    parser = new_parser(__doc__)
    parser.set_defaults(runs=DEFAULT_RUNS)
    parser.add_argument(
        "--bytes",
        type=int,
        default=DEFAULT_BYTES,
        help=f"bytes each throughput run streams (default {DEFAULT_BYTES})",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=DEFAULT_LATENCY_RUNS,
        help=f"set-up latency runs (default {DEFAULT_LATENCY_RUNS})",
    )
    parser.add_argument(
        "--source",
        choices=("head", "cat"),
        default="cat",
        help="what writes the bytes: cat of a file of N (default, the issue's runc exec cat),"
        " or head -c N /dev/zero (busybox head writes 4 KiB at a time and is itself the limit)",
    )
    add_runc_args(parser)
    add_server_args(parser, "tcri-bench2", "10.238.0.0/16")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.bytes, args.latency_runs = 1, 1_000_000, 1
    if args.runs < 1 or args.latency_runs < 1:
        parser.error("--runs and --latency-runs must be at least 1")
    if args.bytes < 1:
        parser.error("--bytes must be at least 1")
    runc = shutil.which(args.runc)
    exit_if(unavailable(runc, args.runc) or bridge_taken(args.bridge))
    assert runc is not None
    print(machine(runc, f"websockets {websockets_version}"))
    interrupt = Interrupt()
    interrupt.handle_signals()
    removed = "the container, the pod, its namespace and the bridge"
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d, exits(removed):
        try:
            run(args, runc, Path(d), interrupt)
        except BusyboxUnavailable as e:
            print(f"no busybox image: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
