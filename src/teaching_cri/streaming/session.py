"""A streaming session, whatever carries it: one process's stdio to one client.

The seed's ExecServe and AttachServe (its Websocket_Stream chart) join a
client's connection to a process in a container. That joining does not
depend on the wire: this module sees a :class:`Transport` (the websocket
one is in ``server.py``, SPDY's in ``spdy_server.py``) and a
:class:`~teaching_cri.runtime.shim_client.ProcessStream`, and runs two pumps:

* out: the process's stdout and stderr to the client, in order, each send
  awaited, so a slow client slows the process (the shim stops reading its
  pipe) instead of filling memory;
* in: the client's stdin, resizes and (v5) stdin close to the process.

It ends when the process exits (the caller reports its status) or when the
client goes. Either way the process stream is left open: closing it is the
session's clean-up (the Websocket chart's CLOSED), which kills an exec'd
process that has lost its client, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from ..runtime.shim_client import ProcessStream
from .channel import STDIN, Incoming


class ClientGone(ConnectionError):
    """A transport's ``send`` found the connection closed by the client."""


class Transport(Protocol):
    async def send(self, channel: int, data: bytes) -> None: ...  # may raise ClientGone
    async def send_exit(self, exit_code: int) -> None: ...

    async def receive(self) -> Incoming | None:
        """The client's next message for :func:`pump_in` to apply, or None once
        the client has gone. The websocket transport applies each message
        itself, in its RECEIVE callback's span, so it only ever returns None."""
        ...

    async def close(self) -> None: ...


async def pump_out(process: ProcessStream, transport: Transport, channels: dict[str, int]) -> bool:
    """True when the process's output has ended, False when the client went first."""
    try:
        async for name, data in process.output():
            channel = channels.get(name)
            if channel is not None:
                await transport.send(channel, data)
    except ClientGone:
        return False
    return True


async def pump_in(process: ProcessStream, transport: Transport, stdin: bool) -> None:
    """Until the client goes; stdin EOF is forwarded (v5's close frame)."""
    while True:
        message = await transport.receive()
        if message is None:
            return
        if message.kind == "stdin" and stdin:
            if message.data:
                await process.write_stdin(message.data)
        elif message.kind == "close" and message.channel == STDIN and stdin:
            await process.close_stdin()
        elif message.kind == "resize":
            await process.resize(message.width, message.height)


async def serve_process(
    process: ProcessStream,
    transport: Transport,
    *,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    report_exit: bool,
) -> int | None:
    """Run the two pumps until the process ends or the client leaves. The
    exit code if the process ended with one (sent first with ``report_exit``);
    None when the client left first or the stream ended without a status."""
    channels = {"stdout": 1} if stdout else {}
    if stderr:
        channels["stderr"] = 2
    out = asyncio.ensure_future(pump_out(process, transport, channels))
    inp = asyncio.ensure_future(pump_in(process, transport, stdin))
    try:
        done, _ = await asyncio.wait({out, inp}, return_when=asyncio.FIRST_COMPLETED)
        if inp in done or not out.result():  # the client left first
            return None
        code = int(process.exit["exit_code"]) if process.exit else None
        if report_exit and code is not None:
            await transport.send_exit(code)
        return code
    finally:
        for task in (out, inp):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
