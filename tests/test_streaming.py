"""The websocket streaming server with a real websockets client: exec, attach,
port-forward, refusals, disconnects, a hundred megabytes; each callback's
trace checked against its chart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.streaming import nsconnect
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.conformance import spans as conformance_spans
from teaching_cri.trace.events import TraceEvent

from conftest import Server, start_server
from test_containers import IMAGE, container, node, pod  # noqa: F401 - node is a fixture

V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"


def ws_url(url: str) -> str:
    """The URL the RPC gives is http://…; a websocket client dials it as ws://…
    (kubectl and the kubelet's proxy do the same)."""
    return "ws://" + url.removeprefix("http://")


def running(client: Client, logs: Path, name: str, *command: str, **kw: object) -> str:
    sandbox = pod(client, logs, f"p{name}")
    if kw:
        sandbox_id, sandbox_config = sandbox
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=IMAGE),
            command=list(command),
            **kw,  # type: ignore[arg-type]
        )
        cid = client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
            )
        ).container_id
    else:
        cid = container(client, sandbox, name, *command)
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return cid


async def session(
    url: str,
    protocol: str,
    send: list[bytes] = (),
    limit: int = 0,  # type: ignore[assignment]
) -> list[bytes | str]:
    """Everything the server sends until it closes (sending ``send`` first)."""
    got: list[bytes | str] = []
    async with ws_connect(ws_url(url), subprotocols=[protocol], max_size=None) as ws:  # type: ignore[list-item]
        for message in send:
            await ws.send(message)
        async for message in ws:
            got.append(message)
            if limit and len(got) >= limit:
                break
    return got


def stdout_of(messages: list[bytes | str]) -> bytes:
    return b"".join(m[1:] for m in messages if isinstance(m, bytes) and m[:1] == b"\x01")


def status_of(messages: list[bytes | str]) -> dict[str, object]:
    errors = [m for m in messages if isinstance(m, bytes) and m[:1] == b"\x03"]
    assert errors, f"no status on the error channel in {messages[:5]}"
    doc: dict[str, object] = json.loads(errors[-1][1:])
    return doc


def test_exec_echo_gives_exactly_hello_and_success(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    _srv, client, logs = node
    since = time.time_ns()
    cid = running(client, logs, "echo", "sleep", "1000")
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", "hello"], stdout=True, stderr=True)
    ).url
    messages = asyncio.run(session(url, V4))
    assert messages[0] == b"\x01", "the ready frame: empty, on the lowest writable channel"
    assert stdout_of(messages) == b"hello"
    assert status_of(messages) == {"metadata": {}, "status": "Success"}
    time.sleep(0.2)
    assert_conforms(client.recent(since_unix_nano=since), charts)


def test_tty_exec_takes_input_resizes_and_reports_exit_3(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "tty", "sleep", "1000")
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdin=True, stdout=True)
    ).url
    resize = b"\x04" + json.dumps({"Width": 132, "Height": 43}).encode()
    messages = asyncio.run(session(url, V4, [resize, b"\x00stty size; exit 3\n"]))
    assert b"43 132" in stdout_of(messages)
    status = status_of(messages)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


def test_attach_sends_stdin_and_ends_when_stdin_closes(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "att", "/bin/sh", stdin=True, stdin_once=True)
    url = client.runtime.Attach(
        api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    messages = asyncio.run(session(url, V5, [b"\x00echo -n hello\n", bytes([255, 0])]))
    assert stdout_of(messages) == b"hello"
    status = client.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
    assert status.state == api_pb2.CONTAINER_EXITED, "stdin closed: sh ended, and stdin_once"


def test_twenty_sessions_at_once(node: tuple[Server, Client, Path]) -> None:  # noqa: F811
    _srv, client, logs = node
    cid = running(client, logs, "many", "sleep", "1000")
    urls = [
        client.runtime.Exec(
            api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", str(i)], stdout=True)
        ).url
        for i in range(20)
    ]

    async def all_of_them() -> list[list[bytes | str]]:
        return await asyncio.gather(*(session(u, V4) for u in urls))

    results = asyncio.run(all_of_them())
    failed = [r for i, r in enumerate(results) if stdout_of(r) != str(i).encode()]
    assert not failed, f"sessions without their output: {failed[:3]}"
    assert [stdout_of(r) for r in results] == [str(i).encode() for i in range(20)]
    assert all(status_of(r)["status"] == "Success" for r in results)


def test_bad_tokens_are_refused(node: tuple[Server, Client, Path]) -> None:  # noqa: F811
    _srv, client, logs = node
    cid = running(client, logs, "tok", "sleep", "1000")
    url = client.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    asyncio.run(session(url, V4))
    for bad in (url, url.rsplit("/", 1)[0] + "/AAAAAAAAAAA", url.replace("/exec/", "/attach/")):
        with pytest.raises(InvalidStatus) as err:
            asyncio.run(session(bad, V4))
        assert err.value.response.status_code == 404


def test_a_client_that_leaves_mid_exec_leaves_no_process(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    _srv, client, logs = node
    cid = running(client, logs, "leave", "sleep", "1000")
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["sh", "-c", "echo go; sleep 777"], stdout=True)
    ).url
    asyncio.run(session(url, V4, limit=2))  # the ready frame and "go", then away
    for _ in range(50):
        ps = client.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "args"])
        ).stdout
        if b"sleep 777" not in ps:
            break
        time.sleep(0.1)
    assert b"sleep 777" not in ps


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def expected_seq(n: int) -> tuple[int, str]:
    """Length and sha256 of ``seq 1 n``'s output, computed here."""
    digest, total = hashlib.sha256(), 0
    for start in range(1, n + 1, 1_000_000):
        data = "".join(f"{i}\n" for i in range(start, min(start + 1_000_000, n + 1))).encode()
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def test_a_hundred_megabytes_arrive_intact_in_bounded_memory(
    node: tuple[Server, Client, Path],  # noqa: F811
) -> None:
    srv, client, logs = node
    cid = running(client, logs, "big", "sleep", "1000")
    n = 13_000_000  # seq's 106 MB
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["busybox", "seq", "1", str(n)], stdout=True)
    ).url
    before = _rss_kib(srv.process.pid)
    peak = before

    async def stream() -> tuple[int, str, dict[str, object]]:
        nonlocal peak
        digest = hashlib.sha256()
        total = count = 0
        status: dict[str, object] = {}
        async with ws_connect(ws_url(url), subprotocols=[V4], max_size=None) as ws:  # type: ignore[list-item]
            async for message in ws:
                assert isinstance(message, bytes)
                if message[:1] == b"\x01":
                    digest.update(message[1:])
                    total += len(message) - 1
                    count += 1
                    if count % 64 == 0:
                        peak = max(peak, _rss_kib(srv.process.pid))
                elif message[:1] == b"\x03":
                    status = json.loads(message[1:])
        return total, digest.hexdigest(), status

    total, digest, status = asyncio.run(stream())
    assert status["status"] == "Success"
    assert (total, digest) == expected_seq(n), "every byte, in order"
    assert peak - before < 64 * 1024, f"the server grew by {(peak - before) // 1024} MiB"


def http_server(port: int) -> tuple[str, ...]:
    """A container command: busybox's httpd on ``port``, serving "forwarded".
    Relative paths: the processes tier's working directory is the image's root
    but its ``/`` is the host's."""
    return (
        "sh",
        "-c",
        "mkdir -p www && echo forwarded > www/index.html && "
        f"exec busybox httpd -f -p {port} -h www",
    )


def forward_and_fetch(client: Client, sandbox_id: str, port: int) -> bytes:
    """GET / through a port-forward session to ``port`` of the pod: the bytes back."""
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[port])
    ).url
    assert "/cri/portforward/" in url

    async def fetch() -> bytes:
        body = b""
        async with ws_connect(ws_url(url), subprotocols=[V4], max_size=None) as ws:  # type: ignore[list-item]
            first = [await ws.recv(), await ws.recv()]
            assert first == [b"\x00" + struct.pack("<H", port), b"\x01" + struct.pack("<H", port)]
            await ws.send(b"\x00GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 5)
                    assert isinstance(message, bytes)
                    if message[:1] == b"\x00":
                        body += message[1:]
                        if b"forwarded" in body:
                            break
                    elif message[:1] == b"\x01":
                        raise AssertionError(f"error channel: {message[1:]!r}")
            except TimeoutError:
                pass
        return body

    return asyncio.run(fetch())


def way_taken(events: list[TraceEvent]) -> list[str]:
    """The labels of the port-forward sessions' ``way_into_the_pod_netns`` decisions."""
    return [e.label for e in events if e.node == "way_into_the_pod_netns"]


def test_port_forward_reaches_a_server_in_the_pod(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    """As root (runc) a thread of the server enters the pod's network namespace;
    without root (rootless-runc) a helper process joins the pod's user
    namespace first; the trace says which."""
    srv, client, logs = node
    since = time.time_ns()
    sandbox = pod(client, logs, "pf")
    cid = container(client, sandbox, "httpd", *http_server(8080))
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    time.sleep(0.5)
    body = forward_and_fetch(client, sandbox[0], 8080)
    assert b"200 OK" in body and b"forwarded" in body
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    tier = (
        json.loads(
            client.runtime.Status(api_pb2.StatusRequest(verbose=True)).info.get("backend", "{}")
        )
        .get("details", {})
        .get("tier")
    )
    expected = {"runc": "setns", "rootless-runc": "helper", "processes": "shared"}
    if tier in expected:
        assert way_taken(events) == [expected[tier]], f"tier {tier}"
    else:
        assert way_taken(events), f"no way traced (tier {tier!r}):\n{srv.output()[-2000:]}"


def test_port_forward_refuses_a_port_out_of_range(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    """A port of 0 in the RPC is refused before any URL exists: INVALID_ARGUMENT
    naming it, the span's error at ports in range ? (its N edge)."""
    _srv, client, logs = node
    sandbox_id, _ = pod(client, logs, "pfzero")
    since = time.time_ns()
    with pytest.raises(grpc.RpcError) as refused:
        client.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[8080, 0])
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "port 0 is not in 1..65535" in (refused.value.details() or "")
    time.sleep(0.2)
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    assert spans_of(events, "PortForward") == [
        [
            "port_forward",
            "get_real_container_or_sandbox_id",
            "get_sandbox_id[Y]",
            "ports_in_range[N]",
            "ports_in_range",
        ]
    ]


def test_a_port_forward_session_with_no_ports_is_closed_saying_so(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    """The RPC may name no ports (the kubelet can name them later), but the
    websocket walk needs at least one: no error channel exists yet, so the
    close frame says why (1011), and the session's span ends with the error
    at valid ports ? (its N edge into close with error)."""
    _srv, client, logs = node
    sandbox_id, _ = pod(client, logs, "pfnone")
    since = time.time_ns()
    url = client.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id)).url
    messages, code, reason = asyncio.run(session_until_closed(url, V4))
    assert messages == []
    assert (code, reason) == (1011, "no valid port to forward")
    time.sleep(0.2)
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    [_rpc, stream] = sorted(spans_of(events, "PortForward"), key=len, reverse=True)
    assert stream == ["port_forward", "get_ports", "valid_ports[N]", "valid_ports"], stream


def test_a_port_forward_session_to_a_pod_removed_since_its_url_names_the_pod(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    """The URL was issued for a ready pod, which was removed before the client
    connected: the close frame (1011) says the pod is not found, naming it,
    and the span ends with the error at get pod network namespace ? (N)."""
    _srv, client, logs = node
    sandbox_id, _ = pod(client, logs, "pfgone")
    url = client.runtime.PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[8080])
    ).url
    client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    since = time.time_ns()
    messages, code, reason = asyncio.run(session_until_closed(url, V4))
    assert messages == []
    assert code == 1011 and sandbox_id in reason and "not found" in reason, (code, reason)
    time.sleep(0.2)
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    assert spans_of(events, "PortForward") == [
        [
            "port_forward",
            "get_ports",
            "valid_ports[Y]",
            "get_pod_network_namespace[N]",
            "get_pod_network_namespace",
        ]
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("runtime", ["unprivileged", "processes"])
def test_port_forward_in_an_unprivileged_pod(
    short_tmp: Path, runtime: str, charts: ChartSet
) -> None:
    """The unprivileged tiers: rootless-runc's pod has its own network
    namespace in its own user namespace (a helper joins both; as root a thread
    may enter it directly); the processes tier has no namespaces, so the pod is
    on the host's network and the server connects directly."""
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is needed for the local image")
    from teaching_cri.api import admin_pb2

    srv = start_server(short_tmp / runtime, "--runtime", runtime)
    try:
        client = srv.client()
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
        since = time.time_ns()
        sandbox = pod(client, short_tmp / "logs", f"pf-{runtime}")
        port = free_port()  # the processes tier serves on the host's network
        cid = container(client, sandbox, "httpd", *http_server(port))
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        time.sleep(0.5)
        body = forward_and_fetch(client, sandbox[0], port)
        assert b"200 OK" in body and b"forwarded" in body, srv.output()[-2000:]
        events = client.recent(since_unix_nano=since)
        assert_conforms(events, charts)
        details = json.loads(
            client.runtime.Status(api_pb2.StatusRequest(verbose=True)).info["backend"]
        )["details"]
        if details["tier"] == "processes":
            expected = "shared"
        else:
            expected = "setns" if os.geteuid() == 0 else "helper"
        assert way_taken(events) == [expected]
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox[0]))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox[0]))
    finally:
        srv.stop()


@pytest.fixture
def namespaced_http_server() -> Iterator[str]:
    """A Python http.server on 127.0.0.1:8080 in a fresh user and network
    namespace of ours (unshare: as any user where user namespaces are allowed):
    its network namespace's path."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("unshare --user --net is not allowed here (user namespaces off?)")
    script = "ip link set lo up && exec python3 -m http.server 8080 --bind 127.0.0.1"
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        netns = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 10
        while True:
            try:
                nsconnect.connect(netns, 8080, nsconnect.HELPER).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield netns
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("way", ["default", nsconnect.HELPER])
def test_nsconnect_connects_inside_a_namespace_and_says_why_not(
    namespaced_http_server: str, way: str
) -> None:
    """Both ways into a namespace of another user namespace give an ordinary
    connected socket; a port nobody listens on is ECONNREFUSED, from the helper too."""
    netns = namespaced_http_server
    chosen = nsconnect.way_into(netns)
    assert chosen == (nsconnect.SETNS if os.geteuid() == 0 else nsconnect.HELPER)
    assert nsconnect.way_into("/proc/self/ns/net") == nsconnect.SHARED
    use = chosen if way == "default" else way
    sock = nsconnect.connect(netns, 8080, use)
    try:
        sock.setblocking(True)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        nsconnect.connect(netns, 8081, use)


def host_pod_with_a_sleeper(client: Client, base: Path, name: str) -> tuple[str, str]:
    """A pod on the host's network (no CNI config needed) and a running container."""
    from teaching_cri.api import admin_pb2

    client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
    host = api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
        )
    )
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="d", uid="u"),
        linux=host,
        log_directory=str(base / "logs"),
    )
    sandbox_id = client.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)
    ).pod_sandbox_id
    cid = container(client, (sandbox_id, config), name, "sleep", "1000")
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return sandbox_id, cid


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "stream.crt", directory / "stream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_the_streaming_server_speaks_tls_when_given_a_certificate(short_tmp: Path) -> None:
    import ssl

    from conftest import start_server
    from test_containers import IS_ROOT

    if not IS_ROOT:
        pytest.skip("containers need root here")
    cert, key = _self_signed(short_tmp)
    srv = start_server(
        short_tmp / "tls", "--stream-tls-cert", str(cert), "--stream-tls-key", str(key)
    )
    try:
        client = srv.client()
        sandbox_id, cid = host_pod_with_a_sleeper(client, short_tmp, "tls")
        url = client.runtime.Exec(
            api_pb2.ExecRequest(container_id=cid, cmd=["echo", "-n", "secret"], stdout=True)
        ).url
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))

        async def over_tls() -> list[bytes | str]:
            got: list[bytes | str] = []
            address = "wss://" + url.removeprefix("https://")
            async with ws_connect(address, subprotocols=[V4], ssl=trust) as ws:  # type: ignore[list-item]
                async for message in ws:
                    got.append(message)
            return got

        messages = asyncio.run(over_tls())
        assert stdout_of(messages) == b"secret"
        assert status_of(messages)["status"] == "Success"
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    finally:
        srv.stop()
    assert "secret" not in srv.output() and url.rsplit("/", 1)[1] not in srv.output(), (
        "no token in the log"
    )


def test_sessions_beyond_the_limit_are_refused(short_tmp: Path) -> None:
    from conftest import start_server
    from test_containers import IS_ROOT

    if not IS_ROOT:
        pytest.skip("containers need root here")
    srv = start_server(short_tmp / "lim", "--stream-max-sessions", "1")
    try:
        client = srv.client()
        sandbox_id, cid = host_pod_with_a_sleeper(client, short_tmp, "lim")

        def url() -> str:
            request = api_pb2.ExecRequest(container_id=cid, cmd=["sleep", "2"], stdout=True)
            return ws_url(client.runtime.Exec(request).url)

        async def two() -> int:
            first, second = url(), url()
            async with ws_connect(first, subprotocols=[V4]):  # type: ignore[list-item]
                await asyncio.sleep(0.3)
                try:
                    async with ws_connect(second, subprotocols=[V4]):  # type: ignore[list-item]
                        return 101
                except InvalidStatus as exc:
                    return exc.response.status_code

        assert asyncio.run(two()) == 503
        client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    finally:
        srv.stop()


async def session_until_closed(
    url: str,
    protocol: str,
    send: list[bytes] = (),  # type: ignore[assignment]
) -> tuple[list[bytes | str], int | None, str]:
    """Everything the server sends, then its close code and reason (a code
    other than 1000 ends ``async for`` with an exception; the code is kept)."""
    got: list[bytes | str] = []
    async with ws_connect(ws_url(url), subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        for message in send:
            await ws.send(message)
        try:
            async for message in ws:
                got.append(message)
        except ConnectionClosed:
            pass
        return got, ws.close_code, ws.close_reason


def spans_of(events: list[TraceEvent], chart: str) -> list[list[str]]:
    """Each span of ``chart`` as its nodes from its start, a taken branch as
    node[label]; an error repeats the node it happened at."""
    return [
        [e.node + (f"[{e.label}]" if e.label else "") for e in span]
        for span in conformance_spans(events).values()
        if span[0].chart == chart
    ]


@pytest.mark.parametrize("verb", ["exec", "attach"])
def test_a_container_stopped_after_its_url_was_issued_is_a_clear_error(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
    verb: str,
) -> None:
    """The URL was valid when issued; by the time the client connects the
    container has stopped. The client reads a Failure Status naming it (the
    API server's BadRequest for a container that does not run) and a 1011
    close whose reason says the same; the StreamTask leaves by exec/attach
    return 0 ? N, as the seed draws a failed cb->container.exec."""
    _srv, client, logs = node
    cid = running(client, logs, f"stop{verb}", "sleep", "1000", stdin=True)
    if verb == "exec":
        url = client.runtime.Exec(
            api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)
        ).url
    else:
        url = client.runtime.Attach(
            api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True)
        ).url
    client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    since = time.time_ns()
    messages, code, reason = asyncio.run(session_until_closed(url, V4))
    status = status_of(messages)
    assert status["status"] == "Failure" and status["reason"] == "BadRequest", status
    assert status["code"] == 400
    assert "is not running" in str(status["message"]) and cid[:12] in str(status["message"])
    assert code == 1011 and "is not running" in reason, (code, reason)
    time.sleep(0.2)
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    [stream] = spans_of(events, "WebsocketStream")
    assert stream[-5:] == [
        f"cb_container_{verb}",
        f"{verb}_return_0[N]",
        "write_error_message",
        "close_session",
        "sem_post_lws_ctx_sync_close_sem",
    ], stream


def test_receive_does_each_messages_work_and_ignores_what_it_may_not(
    node: tuple[Server, Client, Path],  # noqa: F811
    charts: ChartSet,
) -> None:
    """Every client message is one RECEIVE span: stdin is written there (the
    command reads it back), a message on a channel a client may not write,
    a v5 close of a channel other than stdin and a malformed resize are each
    traced for what they are, and the session goes on to its exit."""
    _srv, client, logs = node
    cid = running(client, logs, "recv", "sleep", "1000")
    url = client.runtime.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["head", "-c", "5"], stdin=True, stdout=True)
    ).url
    since = time.time_ns()
    sent = [b"\x01not yours", bytes([255, 1]), b"\x04{not json", b"\x00hello"]
    messages, code, _reason = asyncio.run(session_until_closed(url, V5, sent))
    assert stdout_of(messages) == b"hello"
    assert status_of(messages)["status"] == "Success" and code == 1000
    time.sleep(0.2)
    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    received = [
        path[2:]
        for path in spans_of(events, "Websocket")
        if path[1] == "switch_reason[LWS_CALLBACK_RECEIVE]"
    ]
    assert received == [
        ["switch_char_in[others]", "debug_invalid_data", "return_0"],
        ["switch_char_in[others]", "debug_invalid_data", "return_0"],
        [
            "switch_char_in[WebsocketChannel::RESIZECHANNEL]",
            "parse_terminal_size",
            "parse_terminal_size",
        ],
        ["switch_char_in[WebsocketChannel::STDINCHANNEL]", "write_char_in_1", "return_0"],
    ], received
    failed = [e for e in events if e.chart == "Websocket" and e.kind.value == "error"]
    assert len(failed) == 1 and "Width" in failed[0].attributes["error"], failed
