"""hostPorts: is each port a pod asks for on the node free to give?

A ``PortMapping`` with a ``host_port`` becomes, through the CNI ``portmap``
plugin, iptables NAT rules that send the node's port to the pod. NAT rules
never fail to add when something else uses the port: a second pod's rule
would silently lose to the first's, a host daemon listening there would
silently stop receiving. So the sandbox is refused before anything is made
(FAILED_PRECONDITION, with the port named) when the port is taken, either by
another ready pod's mapping or by a socket bound on the node, found by trying
to bind it as the kubelet's old hostport manager did.

A mapping with ``host_port`` 0 is not a hostPort at all: the kubelet sends one
for every container port it knows of, to document it; nothing is published.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ..api import api_pb2
from ..errors import FailedPrecondition, InvalidArgument

_SOCKET_KIND: dict[int, tuple[int, int]] = {
    api_pb2.TCP: (socket.SOCK_STREAM, 0),
    api_pb2.UDP: (socket.SOCK_DGRAM, 0),
    api_pb2.SCTP: (socket.SOCK_STREAM, getattr(socket, "IPPROTO_SCTP", 132)),
}


@dataclass(frozen=True)
class HostPort:
    """One published port: the address ('' for every address), port and protocol."""

    host_ip: str
    port: int
    protocol: int

    def __str__(self) -> str:
        name = api_pb2.Protocol.Name(self.protocol).lower()
        return f"{self.host_ip or '0.0.0.0'}:{self.port}/{name}"

    def overlaps(self, other: HostPort) -> bool:
        """Same port and protocol, and addresses that meet: equal, or either one
        the wildcard (which takes the port on every address)."""
        if (self.port, self.protocol) != (other.port, other.protocol):
            return False
        wild = ("", "0.0.0.0", "::")
        return self.host_ip in wild or other.host_ip in wild or self.host_ip == other.host_ip


def _pod_name(config: api_pb2.PodSandboxConfig) -> str:
    return f"{config.metadata.namespace}/{config.metadata.name}"


def host_ports(config: api_pb2.PodSandboxConfig) -> list[HostPort]:
    """The ports a pod publishes, each mapping checked (INVALID_ARGUMENT)."""
    out: list[HostPort] = []
    for p in config.port_mappings:
        if p.protocol not in api_pb2.Protocol.values():
            raise InvalidArgument(f"port mapping: protocol {p.protocol} is not TCP, UDP or SCTP")
        if not 1 <= p.container_port <= 65535:
            raise InvalidArgument(
                f"port mapping: container_port {p.container_port} is not in 1..65535"
            )
        if not 0 <= p.host_port <= 65535:
            raise InvalidArgument(f"port mapping: host_port {p.host_port} is not in 1..65535")
        if p.host_ip:
            try:
                ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f"port mapping: host_ip {p.host_ip!r} is not an IP address"
                ) from None
        if not p.host_port:
            continue
        port = HostPort(p.host_ip, p.host_port, p.protocol)
        clash = next((q for q in out if q.overlaps(port)), None)
        if clash is not None:
            raise InvalidArgument(f"port mapping: host port {port} is asked twice (also {clash})")
        out.append(port)
    return out


def _published(config: api_pb2.PodSandboxConfig) -> list[HostPort]:
    """Another pod's ports, as it holds them: already admitted, not judged again."""
    return [
        HostPort(p.host_ip, p.host_port, p.protocol) for p in config.port_mappings if p.host_port
    ]


def _bound_elsewhere(port: HostPort) -> bool:
    """Whether binding the port fails because a socket on the node has it.
    SO_REUSEADDR, so a closed connection lingering in TIME_WAIT does not count;
    a listener still does. Anything but EADDRINUSE (no SCTP in this kernel, an
    address not on this node) is not a conflict this check can see."""
    family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
    kind, proto = _SOCKET_KIND[port.protocol]
    try:
        sock = socket.socket(family, kind, proto)
    except OSError:
        return False
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((port.host_ip or ("::" if family == socket.AF_INET6 else ""), port.port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def check_host_ports(
    config: api_pb2.PodSandboxConfig, others: Iterable[api_pb2.PodSandboxConfig]
) -> None:
    """Refuse a pod whose hostPorts are malformed (INVALID_ARGUMENT) or taken
    (FAILED_PRECONDITION): by a mapping of another pod in ``others`` (the ready
    sandboxes), or by a socket on this node."""
    wanted = host_ports(config)
    if not wanted:
        return
    for other in others:
        for theirs in _published(other):
            for port in wanted:
                if port.overlaps(theirs):
                    raise FailedPrecondition(
                        f"host port {port} is already mapped by pod {_pod_name(other)} ({theirs})"
                    )
    for port in wanted:
        if _bound_elsewhere(port):
            raise FailedPrecondition(
                f"host port {port} is in use on this node: a socket is bound to it"
            )
