"""hostPort, as critest checks it (cri-tools ``pkg/validate/networking.go``,
"runtime should support port mapping with host port and container port"): a
pod's ``PortMapping`` with a host port is reached from the node at
``<node address>:<hostPort>``; it is the CNI ``portmap`` plugin (in the conflist
``teaching-cri cni install`` writes) that makes it, from the mappings the
runtime hands it as ``runtimeConfig.portMappings``. StopPodSandbox's CNI DEL
takes every rule of the pod away again.

Then ``check_host_ports``, the admission of a pod's host ports before anything
is made: malformed mappings, ports another pod holds, ports a socket holds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.errors import FailedPrecondition, InvalidArgument
from teaching_cri.manager.hostports import check_host_ports

from cri_node import Node, create_container, needs_root_node, pod_config, run_pod, start

SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")
HTTPD = "mkdir -p /www && echo hello from the pod > /www/index.html && exec httpd -f -p 80 -h /www"


def _nat_rules() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30
    ).stdout


def _chains() -> set[str]:
    return {line[1:].split()[0] for line in _nat_rules().splitlines() if line.startswith(":")}


@pytest.fixture
def portmap_chains() -> Iterator[None]:
    """The chains portmap shares between all its pods are left by its DEL; if this
    test made them and no pod uses them any more, they go with the test."""
    before = _chains()
    yield
    made = [c for c in SHARED_CHAINS if c in _chains() and c not in before]
    if not made or "-A CNI-HOSTPORT-DNAT " in _nat_rules():
        return
    for line in _nat_rules().splitlines():
        jumps = line.startswith("-A ") and any(f"-j {c}" in line for c in made)
        if jumps and line.split()[1] not in made:
            rule = shlex.split(line)[1:]  # the comment is quoted
            subprocess.run(["iptables", "-t", "nat", "-D", *rule], capture_output=True)
    for c in made:
        subprocess.run(["iptables", "-t", "nat", "-F", c], capture_output=True)
    for c in made:
        subprocess.run(["iptables", "-t", "nat", "-X", c], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _get(address: str, port: int, timeout: float = 2.0) -> str:
    """One HTTP/1.0 GET, answered or an OSError."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _get_when_up(address: str, port: int, deadline: float = 15.0) -> str:
    end = time.monotonic() + deadline
    while True:
        try:
            answer = _get(address, port)
            if "hello from the pod" in answer or time.monotonic() > end:
                return answer
        except OSError:
            if time.monotonic() > end:
                raise
        time.sleep(0.2)


def _node_address(pod_subnet_prefix: str) -> str:
    """This machine's own non-loopback IPv4 address (not a pod bridge's), or ''."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        address = fields[3].split("/")[0]
        if not fields[1].startswith("tcri") and not address.startswith(pod_subnet_prefix):
            return address
    return ""


@needs_root_node
def test_a_host_port_reaches_the_pod_until_the_pod_stops(portmap_chains: None, node: Node) -> None:
    """``portmap_chains`` first: set up before the node, so torn down after its pods."""
    port = _free_port()
    pod = pod_config(
        "hostport",
        port_mappings=[
            api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=80, host_port=port),
            api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080),  # documented only
        ],
    )
    pod_id = run_pod(node.client, pod)
    cid = create_container(node.client, pod_id, pod, "httpd", "sh", "-c", HTTPD)
    start(node.client, cid)

    assert "hello from the pod" in _get_when_up("127.0.0.1", port), "localhost, via snat"
    status = node.client.runtime.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status
    pod_ip = ipaddress.ip_address(status.network.ip)
    address = _node_address(".".join(str(pod_ip).split(".")[:3]) + ".")
    if address:
        assert "hello from the pod" in _get(address, port), f"the node's own {address}"
    rules = [line for line in _nat_rules().splitlines() if pod_id in line]
    assert any(f"--dports {port} " in line for line in rules), "\n".join(rules)
    own_chain = rules[0].rsplit("-j ", 1)[1]  # the pod's CNI-DN-<hash>: its DNAT rules
    assert f":{own_chain} " in _nat_rules() and "8080" not in _nat_rules(), "host_port 0: none"

    node.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert [line for line in _nat_rules().splitlines() if pod_id[:12] in line] == []
    assert own_chain not in _nat_rules()
    with pytest.raises(OSError):
        _get("127.0.0.1", port, timeout=1.0)


@needs_root_node
def test_a_taken_host_port_is_refused_before_the_pod_is_made(
    portmap_chains: None, node: Node
) -> None:
    port = _free_port()
    first = pod_config("first", port_mappings=[_map(port)])
    first_id = run_pod(node.client, first)
    with pytest.raises(grpc.RpcError) as err:
        run_pod(node.client, pod_config("second", port_mappings=[_map(port)]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f":{port}/tcp" in (err.value.details() or "")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        with pytest.raises(grpc.RpcError) as err:
            run_pod(node.client, pod_config("third", port_mappings=[_map(held)]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f":{held}/tcp is in use" in (err.value.details() or "")
    items = node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [item.id for item in items] == [first_id], "nothing made for the refused pods"


# -- check_host_ports: admission, without a node -------------------------------------


def _pod(name: str, *mappings: api_pb2.PortMapping) -> api_pb2.PodSandboxConfig:
    return pod_config(name, port_mappings=list(mappings))


def _map(host_port: int, protocol: int = api_pb2.TCP, host_ip: str = "") -> api_pb2.PortMapping:
    return api_pb2.PortMapping(
        protocol=protocol,
        container_port=80,
        host_port=host_port,
        host_ip=host_ip,
    )


def test_a_port_another_pod_maps_is_refused_naming_it() -> None:
    port = _free_port()
    theirs = _pod("first", _map(port))
    with pytest.raises(
        FailedPrecondition, match=f"host port 0.0.0.0:{port}/tcp .*pod cri-test-namespace/first"
    ):
        check_host_ports(_pod("second", _map(port)), [theirs])
    with pytest.raises(FailedPrecondition, match=f"127.0.0.1:{port}/tcp"):
        check_host_ports(_pod("second", _map(port, host_ip="127.0.0.1")), [theirs])
    check_host_ports(_pod("udp", _map(port, api_pb2.UDP)), [theirs])
    check_host_ports(_pod("other", _map(_free_port())), [theirs])
    one_ip = _pod("first", _map(port, host_ip="127.0.0.1"))
    check_host_ports(_pod("second", _map(port, host_ip="127.0.0.2")), [one_ip])
    check_host_ports(_pod("nothing", _map(0)), [_pod("zero", _map(0))])


@pytest.mark.parametrize(("kind", "protocol"), [("tcp", api_pb2.TCP), ("udp", api_pb2.UDP)])
def test_a_port_a_socket_on_the_node_holds_is_refused(kind: str, protocol: int) -> None:
    with contextlib.ExitStack() as stack:
        kind_of = socket.SOCK_STREAM if protocol == api_pb2.TCP else socket.SOCK_DGRAM
        holder = stack.enter_context(socket.socket(socket.AF_INET, kind_of))
        holder.bind(("127.0.0.1", 0))
        if protocol == api_pb2.TCP:
            holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(FailedPrecondition, match=f"{port}/{kind} is in use on this node"):
            check_host_ports(_pod("p", _map(port, protocol)), [])
        with pytest.raises(FailedPrecondition, match="in use"):
            check_host_ports(_pod("p", _map(port, protocol, "127.0.0.1")), [])
    check_host_ports(_pod("p", _map(port, protocol)), [])


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (_map(70000), "host_port 70000 is not in 1..65535"),
        (_map(-1), "host_port -1"),
        (api_pb2.PortMapping(container_port=0, host_port=8080), "container_port 0"),
        (api_pb2.PortMapping(container_port=65536), "container_port 65536"),
        (_map(8080, protocol=7), "protocol 7 is not TCP, UDP or SCTP"),
        (_map(8080, host_ip="localhost"), "host_ip 'localhost' is not an IP address"),
    ],
)
def test_malformed_mappings_are_invalid_arguments(
    mapping: api_pb2.PortMapping, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_host_ports(_pod("bad", mapping), [])


def test_a_port_asked_twice_by_one_pod_is_an_invalid_argument() -> None:
    port = _free_port()
    with pytest.raises(InvalidArgument, match="asked twice"):
        check_host_ports(_pod("twice", _map(port), _map(port, host_ip="127.0.0.1")), [])
    check_host_ports(_pod("both", _map(port), _map(port, api_pb2.UDP)), [])
