"""The streaming server's SPDY/3.1, judged by a client written from the spec
(tests/spdy_client.py), as kubectl and the kubelet's proxy would use it: exec
and attach with remotecommand v4, port-forward over SPDY and tunnelled in
websocket messages, protocol refusal, many sessions, a client that vanishes."""

from __future__ import annotations

import hashlib
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client

import spdy_client as spdy
from conftest import Server, start_server
from test_containers import IMAGE, _unavailable, container, node, pod  # noqa: F401 - a fixture
from test_streaming import expected_seq, free_port, host_pod_with_a_sleeper, http_server, running

pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=_unavailable())

V4 = "v4.channel.k8s.io"
GET = b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n"


def exec_url(client: Client, cid: str, *cmd: str, **kw: bool) -> str:
    kw = {"stdout": True, "stderr": True, **kw}
    return client.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=list(cmd), **kw)).url


def test_exec_echo_gives_exactly_hello_and_success(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "secho", "sleep", "1000")
    out, err, status = spdy.remote_command(exec_url(client, cid, "echo", "-n", "hello"))
    assert (out, err) == (b"hello", b"")
    assert status == {"metadata": {}, "status": "Success"}


def test_tty_exec_takes_stdin_and_a_resize(node: tuple[Server, Client, Path]) -> None:  # noqa: F811
    """With a tty there is no stderr stream and there is a resize stream; the size
    is sent before stdin, and the shell waits a moment before asking for it (the
    streams are independent, as they are for kubectl)."""
    _srv, client, logs = node
    cid = running(client, logs, "stty", "sleep", "1000")
    url = exec_url(client, cid, "sh", tty=True, stdin=True, stderr=False)
    out, err, status = spdy.remote_command(
        url, stdin=b"sleep 0.5; stty size\nexit\n", tty=True, resize=(132, 43)
    )
    assert b"43 132" in out
    assert err == b""
    assert status["status"] == "Success"


def test_a_non_zero_exit_is_reported_with_its_code(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "sexit", "sleep", "1000")
    out, _err, status = spdy.remote_command(exec_url(client, cid, "sh", "-c", "exit 3"))
    assert out == b""
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


def test_attach_with_stdin_once_ends_when_stdin_closes(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "satt", "/bin/sh", stdin=True, stdin_once=True)
    url = client.runtime.Attach(
        api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    out, _err, _status = spdy.remote_command(url, stdin=b"echo -n hello\n")
    assert out == b"hello"
    for _ in range(50):
        state = client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid)
        ).status.state
        if state == api_pb2.CONTAINER_EXITED:
            break
        time.sleep(0.1)
    assert state == api_pb2.CONTAINER_EXITED, "stdin closed: sh ended, and stdin_once"


def test_a_megabyte_and_more_within_the_windows(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    """Twenty windows' worth: the server must wait for our WINDOW_UPDATEs and never
    send past the stream's or the session's window."""
    _srv, client, logs = node
    cid = running(client, logs, "sbig", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "busybox", "seq", "1", "200000"), [V4])
    try:
        error = session.open_stream({"streamType": "error"})
        stdout = session.open_stream({"streamType": "stdout"})
        session.open_stream({"streamType": "stderr"})
        digest, total = hashlib.sha256(), 0
        while chunk := stdout.read():
            digest.update(chunk)
            total += len(chunk)
        assert (total, digest.hexdigest()) == expected_seq(200000)
        assert b"Success" in error.read_all()
        assert session.violations == [], session.violations
    finally:
        session.close()


def test_an_unknown_protocol_is_refused_with_the_accepted_ones(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "sproto", "sleep", "1000")
    with pytest.raises(spdy.UpgradeRefused) as refused:
        spdy.connect(exec_url(client, cid, "true"), ["v9.channel.k8s.io"])
    assert refused.value.status == 403
    accepted = refused.value.values("X-Accepted-Stream-Protocol-Versions")
    assert V4 in ",".join(accepted), refused.value.headers


def test_ten_sessions_at_once(node: tuple[Server, Client, Path]) -> None:  # noqa: F811
    _srv, client, logs = node
    cid = running(client, logs, "smany", "sleep", "1000")
    urls = [exec_url(client, cid, "echo", "-n", str(i)) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(spdy.remote_command, urls))
    assert [out for out, _err, _status in results] == [str(i).encode() for i in range(10)]
    assert all(status["status"] == "Success" for _out, _err, status in results)


def test_a_client_killed_mid_exec_leaves_no_process(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "skill", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "sh", "-c", "echo go; sleep 100"), [V4])
    session.open_stream({"streamType": "error"})
    stdout = session.open_stream({"streamType": "stdout"})
    session.open_stream({"streamType": "stderr"})
    assert stdout.read(10) == b"go\n"
    session.abort()  # the socket closes: no GOAWAY, no RST_STREAM
    for _ in range(100):
        ps = client.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "args"])
        ).stdout.splitlines()
        if b"sleep 100" not in ps:  # whole lines: the container's own is "sleep 1000"
            break
        time.sleep(0.1)
    assert b"sleep 100" not in ps, ps
    assert b"sleep 1000" in ps, "the container itself lives on"


def pod_with_httpd(client: Client, logs: Path, name: str, host_network: bool) -> tuple[str, int]:
    """A pod serving "forwarded" over HTTP: on the pod's network at 8080, or on
    the host's at a free port. Its id and the port."""
    if not host_network:
        sandbox = pod(client, logs, name)
        port = 8080
    else:
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="d", uid=f"u-{name}"),
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                )
            ),
            log_directory=str(logs / name),
        )
        request = api_pb2.RunPodSandboxRequest(config=config)
        sandbox = (client.runtime.RunPodSandbox(request).pod_sandbox_id, config)
        port = free_port()
    cid = container(client, sandbox, "httpd", *http_server(port))
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    time.sleep(0.5)
    return sandbox[0], port


@pytest.mark.parametrize("tunnelled", [False, True], ids=["spdy", "spdy-in-websocket"])
@pytest.mark.parametrize("host_network", [False, True], ids=["pod-network", "host-network"])
def test_port_forward_fetches_from_the_pod(
    node: tuple[Server, Client, Path],  # noqa: F811
    host_network: bool,
    tunnelled: bool,
) -> None:
    _srv, client, logs = node
    client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
    sandbox_id, port = pod_with_httpd(client, logs, f"spf{int(host_network)}", host_network)
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[port])
    ).url
    reply = spdy.port_forward(url, port, GET, tunnelled=tunnelled)
    assert b"200 OK" in reply and reply.endswith(b"forwarded\n")


def test_a_client_that_never_sends_window_update_gets_everything(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    """client-go's spdystream neither sends WINDOW_UPDATE nor reads ours: twenty
    windows of output must still come through (spdy.py's rule), not stall at 64 KiB."""
    _srv, client, logs = node
    cid = running(client, logs, "ssilent", "sleep", "1000")
    url = exec_url(client, cid, "busybox", "seq", "1", "200000")
    session = spdy.connect(url, [V4], counting=False)
    try:
        error = session.open_stream({"streamType": "error"})
        stdout = session.open_stream({"streamType": "stdout"})
        session.open_stream({"streamType": "stderr"})
        digest, total = hashlib.sha256(), 0
        while chunk := stdout.read(20):
            digest.update(chunk)
            total += len(chunk)
        assert (total, digest.hexdigest()) == expected_seq(200000)
        assert b"Success" in error.read_all()
    finally:
        session.close()


def test_no_protocol_version_offered_is_a_bad_request(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    """httpstream.Handshake: X-Stream-Protocol-Version is required (the kubelet's 400)."""
    _srv, client, logs = node
    cid = running(client, logs, "snover", "sleep", "1000")
    with pytest.raises(spdy.UpgradeRefused) as refused:
        spdy.connect(exec_url(client, cid, "true"), [])
    assert refused.value.status == 400
    assert b"X-Stream-Protocol-Version is required" in refused.value.body


def still_serving(client: Client, cid: str) -> None:
    """After a session ended badly, the next one works."""
    out, _err, status = spdy.remote_command(exec_url(client, cid, "echo", "-n", "ok"))
    assert (out, status["status"]) == (b"ok", "Success")


def wait_closed(session: spdy.Session, timeout: float = 10) -> None:
    with session.cond:
        assert session.cond.wait_for(lambda: session.closed, timeout), "the server hung on"


def test_garbage_after_the_upgrade_ends_that_session_with_goaway(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "sgarb", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "true"), [V4])
    session.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "G" is no control frame bit
    wait_closed(session)
    assert session.goaway_status == 1, "GOAWAY PROTOCOL_ERROR"
    session.abort()
    still_serving(client, cid)


def test_a_header_block_that_does_not_inflate_ends_the_session(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "sbadhdr", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "true"), [V4])
    bad = struct.pack(">IIBB", 1, 0, 0, 0) + b"\x78\xbb not zlib at all"
    session.send(spdy.control_frame(spdy.SYN_STREAM, 0, bad))
    wait_closed(session)
    assert session.goaway_status == 1
    session.abort()
    still_serving(client, cid)


def test_an_unknown_stream_type_is_reset_and_ends_the_exec_session(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "sbogus", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "true"), [V4])
    session.open_stream({"streamType": "error"})
    with pytest.raises(ConnectionError, match="refused"):
        session.open_stream({"streamType": "bogus"})
    wait_closed(session)
    assert session.goaway_status == 1
    session.abort()
    still_serving(client, cid)


def test_a_stream_id_in_use_is_reset(node: tuple[Server, Client, Path]) -> None:  # noqa: F811
    _srv, client, logs = node
    cid = running(client, logs, "sreuse", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "true"), [V4])
    try:
        error = session.open_stream({"streamType": "error"})
        with session._send_lock:  # the same id again, its header block in the codec's order
            session._send(spdy.syn_stream(session._codec, error.id, {"streamtype": "stdout"}))
        with session.cond:
            assert session.cond.wait_for(lambda: error.reset_status, 10)
        assert error.reset_status == 8, "RST_STREAM STREAM_IN_USE"
    finally:
        session.close()
    still_serving(client, cid)


def test_data_past_the_window_of_a_counting_client_ends_the_session(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    """A client that has sent a WINDOW_UPDATE counts: the server's windows bind it."""
    _srv, client, logs = node
    cid = running(client, logs, "soverrun", "sleep", "1000")
    session = spdy.connect(exec_url(client, cid, "sleep", "5"), [V4])
    error = session.open_stream({"streamType": "error"})
    session.send(spdy.window_update(0, 1))
    session.send(spdy.data_frame(error.id, 0, b"x" * (64 * 1024 + 1)))  # nobody reads it
    wait_closed(session)
    assert session.goaway_status == 1
    session.abort()
    still_serving(client, cid)


def test_a_killed_client_frees_its_session_slot(short_tmp: Path) -> None:
    """With one session allowed, the next client gets in once the killed one's
    connection is gone (no 503): CLOSED ran, whatever way the session ended."""
    srv = start_server(short_tmp / "slot", "--stream-max-sessions", "1")
    try:
        client = srv.client()
        sandbox_id, cid = host_pod_with_a_sleeper(client, short_tmp, "slot")
        session = spdy.connect(exec_url(client, cid, "sh", "-c", "echo go; sleep 100"), [V4])
        session.open_stream({"streamType": "error"})
        stdout = session.open_stream({"streamType": "stdout"})
        session.open_stream({"streamType": "stderr"})
        assert stdout.read(10) == b"go\n"
        session.abort()
        for _ in range(50):
            try:
                out, _err, status = spdy.remote_command(exec_url(client, cid, "echo", "-n", "in"))
                break
            except spdy.UpgradeRefused as exc:
                assert exc.status == 503
                time.sleep(0.1)
        assert (out, status["status"]) == (b"in", "Success")
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    finally:
        srv.stop()


def test_port_forward_bad_streams_are_reset_and_the_session_goes_on(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    """The kubelet's checks per stream: a bad one is reset, the others are served;
    a port nobody listens on is an error message on that pair's error stream."""
    _srv, client, logs = node
    client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
    sandbox_id, port = pod_with_httpd(client, logs, "spfbad", False)
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[port])
    ).url
    session = spdy.connect(url, ["portforward.k8s.io"])
    try:
        for bad in (
            {"streamType": "bogus", "port": str(port), "requestID": "0"},
            {"streamType": "data", "port": "0", "requestID": "0"},
            {"streamType": "data", "requestID": "0"},
        ):
            with pytest.raises(ConnectionError, match="refused"):
                session.open_stream(bad)
        closed = {"streamType": "error", "port": "9", "requestID": "1"}
        error = session.open_stream(closed)
        error.close_write()
        session.open_stream({**closed, "streamType": "data"})
        assert b"error forwarding port 9" in error.read_all()
        pair = {"port": str(port), "requestID": "2"}
        error = session.open_stream({"streamType": "error", **pair})
        error.close_write()
        data = session.open_stream({"streamType": "data", **pair})
        data.write(GET)
        reply = data.read_all()
        assert b"200 OK" in reply and reply.endswith(b"forwarded\n")
        assert error.read_all() == b""
        assert session.goaway is None, "the session goes on"
    finally:
        session.close()
