"""Port forwarding into a pod over the websocket (iSulad: a stub; SPDY: spdy_portforward.py).

The Kubernetes websocket port-forward protocol (k8s.io/kubelet's
``portforward/websocket.go``): for the i-th forwarded port, channel 2i
carries data and channel 2i+1 errors; the first message the server sends
on each is the port, a little-endian uint16, so the client can tell them
apart. Bytes the client writes on a data channel go to that port inside
the pod's network namespace, and what the port answers comes back.

Reaching "inside the pod" is :mod:`.nsconnect`'s: a socket belongs to the
network namespace it was created in, so something inside the pod's namespace
connects (a thread of ours as root, a single-threaded helper process that
joins the pod's user namespace without root, nobody when the pod shares the
server's network) and the event loop then uses the socket like any other.
Which way was taken is the decision ``way_into_the_pod_netns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import FailedPrecondition, NotFound
from ..trace.tracer import branch, current_span, decide, step
from . import nsconnect
from .channel import ChannelError, Protocol

if TYPE_CHECKING:
    from ..manager.container import ContainerManager


def connect_in_namespace(netns: str, port: int, way: str = "") -> socket.socket:
    """A connected, non-blocking TCP socket to 127.0.0.1:port inside ``netns``,
    or FailedPrecondition saying why not (blocks: run it in a thread)."""
    try:
        return nsconnect.connect(netns, port, way)
    except OSError as exc:
        raise FailedPrecondition(f"port {port} in the pod: {exc.strerror or exc}") from None


def pod_network_namespace(manager: ContainerManager, sandbox_id: str) -> str:
    sandbox = manager.sandboxes.find(sandbox_id)
    if sandbox is None:
        raise NotFound(f"pod sandbox {sandbox_id!r} not found")
    if sandbox.netns:
        return sandbox.netns
    pid = manager.sandboxes.backend_pid(sandbox.id)
    if not pid:
        raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} has no running infra")
    return f"/proc/{pid}/ns/net"


async def serve_port_forward(
    ws: ServerConnection, protocol: Protocol, request: Any, manager: ContainerManager
) -> None:
    """The stream half of diagrams/PortForward.toml."""
    with step("get_ports"):
        ports = [int(p) for p in request.port]
    if not decide("valid_ports", bool(ports) and all(0 < p < 65536 for p in ports)):
        await close_with_error(ws, "no valid port to forward")
        return
    try:
        netns = pod_network_namespace(manager, request.pod_sandbox_id)
    except (NotFound, FailedPrecondition) as exc:
        decide("get_pod_network_namespace", False)
        await close_with_error(ws, str(exc))
        return
    else:
        decide("get_pod_network_namespace", True)
    way = nsconnect.way_into(netns)
    branch("way_into_the_pod_netns", way, netns=netns)
    branch("which_wire", wire_of(ws))
    with step("write_port_on_data_and_error_channels"):
        for i, port in enumerate(ports):
            for channel in (2 * i, 2 * i + 1):  # each channel opens with its port
                await ws.send(protocol.encode(channel, struct.pack("<H", port)))
    writers: dict[int, asyncio.StreamWriter] = {}
    copies: list[asyncio.Task[None]] = []
    for i, port in enumerate(ports):
        branch("for_each_port", "next")
        try:
            sock = await asyncio.to_thread(connect_in_namespace, netns, port, way)
        except FailedPrecondition as exc:
            decide("connect_in_pod_netns", False)
            with step("write_error_on_error_channel"):
                await ws.send(protocol.encode(2 * i + 1, str(exc).encode()))
            continue
        else:
            decide("connect_in_pod_netns", True)
        with step("copy_data_both_ways"):
            reader, writer = await asyncio.open_connection(sock=sock)
            writers[2 * i] = writer
            copies.append(asyncio.ensure_future(copy_out(reader, ws, protocol, 2 * i)))
    else:  # the ports ran out (the loop has no break)
        branch("for_each_port", "done")
    with step("wait_for_the_copies"):
        await copy_in(ws, protocol, writers, copies)
    with step("close_session"):
        await ws.close()


def wire_of(connection: object) -> str:
    """The wire a session came by, read from the connection the walk was
    handed: after the shared namespace steps the chart parts by it, the
    websocket walk to its port prefixes, the SPDY walk
    (spdy_portforward.py) to its stream pairs."""
    return "websocket" if isinstance(connection, ServerConnection) else "spdy"


async def close_with_error(ws: ServerConnection, message: str) -> None:
    """The chart's error end close with error: no error channel exists yet, so
    the reason goes in the websocket's close frame, and the span ends here
    with the error, at the decision whose N branch led here (not by a step:
    an end is where the span stops)."""
    await ws.close(1011, message[:120])
    span = current_span()
    if span is not None:
        span.error(message)


async def copy_in(
    ws: ServerConnection,
    protocol: Protocol,
    writers: dict[int, asyncio.StreamWriter],
    copies: list[asyncio.Task[None]],
) -> None:
    """The client's bytes to the pod until the client goes."""
    try:
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return
            try:
                channel, data = decode_port_message(protocol, message)
            except ChannelError:
                continue
            target = writers.get(channel)
            if target is not None and data:
                target.write(data)
                await target.drain()
    finally:
        for task in copies:
            task.cancel()
        for writer in writers.values():
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def copy_out(
    reader: asyncio.StreamReader, ws: ServerConnection, protocol: Protocol, channel: int
) -> None:
    with contextlib.suppress(ConnectionClosed, ConnectionError):
        while data := await reader.read(65536):
            await ws.send(protocol.encode(channel, data))


def decode_port_message(protocol: Protocol, message: bytes | str) -> tuple[int, bytes]:
    """A client's message: its channel, its payload (ports use channels beyond 4)."""
    if protocol.base64:
        import base64

        if not isinstance(message, str) or not message or not message[0].isdigit():
            raise ChannelError("a base64 message starts with its channel digit")
        return int(message[0]), base64.b64decode(message[1:])
    if not isinstance(message, bytes) or not message:
        raise ChannelError("a binary message starts with its channel byte")
    return message[0], message[1:]
