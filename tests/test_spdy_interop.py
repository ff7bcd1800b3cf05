"""The SPDY/3.1 streaming server against the SPDY library client-go, crictl
and the kubelet use: moby/spdystream v0.2.0 (Debian's
golang-github-docker-spdystream-dev), driven by a small Go program
(tests/spdy_interop/main.go) that does on the wire what client-go's
remotecommand v4 and portforward clients do. Nothing of ours is on the
client's side: every expectation is client-go's reading of what the
server sent (and the CRI's, for what the container does).

As root the containers run under runc in a CNI pod; as a user, under the
unprivileged tier (rootless runc, a pod with loopback only)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.runtime.backends import user_namespaces_allowed

from conftest import IS_ROOT, Server, start_server
from test_containers import _unavailable, container, pod, runc_node, serving
from test_streaming import running

GO_SOURCE = Path(__file__).parent / "spdy_interop" / "main.go"
GOPATH = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their source
SPDYSTREAM = GOPATH / "src" / "github.com" / "moby" / "spdystream"
V4 = "v4.channel.k8s.io"
CLIENT_FAILED = 125  # the Go program's own failures (dial, upgrade, streams)


def _no_go() -> str:
    if shutil.which("go") is None:
        return "needs Go: apt-get install golang-go"
    if not (SPDYSTREAM / "connection.go").is_file():
        return (
            f"needs spdystream's source in {SPDYSTREAM}: "
            "apt-get install golang-github-docker-spdystream-dev"
        )
    return ""


def _no_node() -> str:
    if IS_ROOT:
        return _unavailable()
    if shutil.which("runc") is None or not user_namespaces_allowed():
        return "the unprivileged tier needs runc and unprivileged user namespaces"
    if not Path("/bin/busybox").exists():
        return "the local busybox image needs busybox-static"
    return ""


pytestmark = pytest.mark.skipif(bool(_no_go() or _no_node()), reason=_no_go() or _no_node())


@pytest.fixture(scope="session")
def interop_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go client, built once, offline, in GOPATH mode against Debian's
    spdystream; its build cache in this run's tmp directory (any user)."""
    work = tmp_path_factory.mktemp("spdy_interop")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(work / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
    }
    binary = work / "spdy_interop"
    built = subprocess.run(
        ["go", "build", "-o", str(binary), str(GO_SOURCE)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, f"go build failed:\n{built.stderr}"
    return binary


@pytest.fixture
def interop_node(short_tmp: Path) -> Iterator[tuple[Server, Client, Path]]:
    """A server with a busybox image: runc with CNI as root, the unprivileged
    tier (the server's own choice) as a user. Once it stopped, its log must
    hold no warning or error of the streaming server: these clients broke
    no rule (a client-go Close resets the streams it still has, for one)."""

    def nodes() -> Iterator[tuple[Server, Client, Path]]:
        if IS_ROOT:
            return runc_node(short_tmp)
        return serving(start_server(short_tmp / "srv"), short_tmp / "logs")

    with contextlib.contextmanager(nodes)() as node:
        yield node
    # the node's own teardown has run: pods removed, server stopped
    complaints = [
        line
        for line in node[0].output().splitlines()
        if "teaching_cri.streaming" in line and (" WARNING " in line or " ERROR " in line)
    ]
    assert not complaints, "\n".join(complaints)


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: bytes
    report: dict[str, Any]


def run_client(
    binary: Path, verb: str, url: str, *flags: str, stdin: bytes = b"", timeout: float = 60
) -> Run:
    """The Go client on ``url``; its report parsed (the client wrote none only
    when it failed itself, which fails the test with what it said)."""
    report = binary.parent / f"report-{os.getpid()}-{time.monotonic_ns()}.json"
    done = subprocess.run(
        [str(binary), "-report", str(report), *flags, verb, url],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    assert done.returncode != CLIENT_FAILED and report.exists(), (
        f"the spdystream client failed: {done.stderr.decode(errors='replace')}"
    )
    doc: dict[str, Any] = json.loads(report.read_text())
    report.unlink()
    return Run(done.returncode, done.stdout, done.stderr, doc)


def exec_url(client: Client, cid: str, *cmd: str, **kw: bool) -> str:
    kw = {"stdout": True, "stderr": True, **kw}
    return client.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=list(cmd), **kw)).url


def test_exec_echo_gives_hi_and_exit_0(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    _srv, client, logs = interop_node
    cid = running(client, logs, "iecho", "sleep", "1000")
    run = run_client(interop_client, "exec", exec_url(client, cid, "echo", "hi"))
    assert (run.stdout, run.stderr, run.code) == (b"hi\n", b"", 0)
    assert run.report["protocol"] == V4, "client-go offers v4 first; the kubelet picks it"
    assert run.report["status"]["status"] == "Success"


def test_exec_exit_3_is_a_non_zero_exit_code_status(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """The kubelet's v4 error stream for a failed command: Failure,
    NonZeroExitCode, the code as the ExitCode cause; errorDecoderV4 reads it
    as exec.CodeExitError{Code: 3}, and kubectl exits 3."""
    _srv, client, logs = interop_node
    cid = running(client, logs, "iexit", "sleep", "1000")
    url = exec_url(client, cid, "sh", "-c", "echo oops >&2; exit 3")
    run = run_client(interop_client, "exec", url)
    assert (run.stdout, run.stderr, run.code) == (b"", b"oops\n", 3)
    status = run.report["status"]
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert {"reason": "ExitCode", "message": "3"} in status["details"]["causes"]
    assert run.report["error"] == "command terminated with exit code 3"


def test_a_mebibyte_of_stdin_comes_back_whole_through_cat(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """1 MiB of random bytes in 32 KiB DATA frames (client-go's io.Copy), and
    back: spdystream sends no WINDOW_UPDATE and heeds none, so the server must
    neither stall at its 64 KiB windows nor take the client for an offender."""
    _srv, client, logs = interop_node
    cid = running(client, logs, "icat", "sleep", "1000")
    payload = os.urandom(1 << 20)
    url = exec_url(client, cid, "cat", stdin=True)
    run = run_client(interop_client, "exec", url, "-stdin", stdin=payload, timeout=120)
    assert run.code == 0, run.report
    assert len(run.stdout) == len(payload)
    assert run.stdout == payload, "every byte, in order"
    assert run.stderr == b""


def test_tty_exec_sees_the_last_size_sent_on_the_resize_stream(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """With a tty client-go opens no stderr stream and a resize stream, on
    which it JSON-encodes each TerminalSize; the shell waits a moment before
    asking (the streams are independent goroutines in client-go)."""
    _srv, client, logs = interop_node
    cid = running(client, logs, "itty", "sleep", "1000")
    url = exec_url(client, cid, "sh", tty=True, stdin=True, stderr=False)
    run = run_client(
        interop_client,
        "exec",
        url,
        "-tty",
        "-stdin",
        "-resize",
        "80x24,132x43",
        stdin=b"sleep 1; stty size\nexit\n",
    )
    assert run.code == 0, run.report
    assert b"43 132" in run.stdout, run.stdout
    assert b"24 80" not in run.stdout, "the later size replaced the first"
    assert run.stderr == b""


def test_the_server_answers_client_gos_keepalive_pings(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """client-go pings every 5 s (RoundTripperFor's PingPeriod); here every
    100 ms through a command that lasts 1.5 s: each PING is echoed back."""
    _srv, client, logs = interop_node
    cid = running(client, logs, "iping", "sleep", "1000")
    url = exec_url(client, cid, "sleep", "1.5")
    run = run_client(interop_client, "exec", url, "-ping-period", "100ms")
    assert run.code == 0, run.report
    assert run.report["pings"] >= 5, run.report


def test_attach_to_a_running_shell(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """Attach with stdin to a container running sh (stdin_once): what we send
    runs in it, our stdin's end ends it; attach's error stream says nothing."""
    _srv, client, logs = interop_node
    cid = running(client, logs, "iatt", "/bin/sh", stdin=True, stdin_once=True)
    url = client.runtime.Attach(
        api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    run = run_client(interop_client, "exec", url, "-stdin", stdin=b"echo attached $((6 * 7))\n")
    assert (run.stdout, run.code) == (b"attached 42\n", 0)
    assert "status" not in run.report, "attach reports no exit status"
    for _ in range(50):
        status = client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid)
        ).status
        if status.state == api_pb2.CONTAINER_EXITED:
            break
        time.sleep(0.1)
    assert (status.state, status.exit_code) == (api_pb2.CONTAINER_EXITED, 0)


def echo_server(client: Client, logs: Path, name: str) -> str:
    """A pod with busybox nc echoing (cat) every connection to port 8080 of
    the pod's network; its id once the port answers."""
    sandbox = pod(client, logs, name)
    cid = container(client, sandbox, "echo", "busybox", "nc", "-ll", "-p", "8080", "-e", "cat")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    for _ in range(50):
        probe = client.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["busybox", "netstat", "-ltn"], timeout=5)
        )
        if b":8080 " in probe.stdout:
            return sandbox[0]
        time.sleep(0.1)
    raise AssertionError(f"nc never listened on 8080: {probe.stdout!r} {probe.stderr!r}")


def test_port_forward_carries_data_both_ways(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """Two connections on one session (requestID 0 and 1, as kubectl forwards
    each local connection), 256 KiB each way on each: the server's FIN when
    the pod's side closes ends each copy, the error streams stay empty."""
    _srv, client, logs = interop_node
    sandbox_id = echo_server(client, logs, "ipf")
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[8080])
    ).url
    payload = os.urandom(256 << 10)
    run = run_client(
        interop_client, "portforward", url, "-port", "8080", "-count", "2", stdin=payload
    )
    assert run.report["protocol"] == "portforward.k8s.io"
    assert run.report.get("forwardErrors") is None and run.code == 0, run.report
    assert run.stdout == payload + payload


def test_port_forward_to_a_closed_port_says_so_on_the_error_stream(
    interop_client: Path, interop_node: tuple[Server, Client, Path]
) -> None:
    """Nobody listens on 9: the kubelet writes why on that pair's error
    stream (portforward prints it as 'an error occurred forwarding')."""
    _srv, client, logs = interop_node
    sandbox_id = echo_server(client, logs, "ipfx")
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[9])
    ).url
    run = run_client(interop_client, "portforward", url, "-port", "9", stdin=b"anyone?")
    assert run.code == 1
    assert run.stdout == b""
    (message,) = run.report["forwardErrors"]
    assert "9" in message, message
