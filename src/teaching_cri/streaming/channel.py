"""The Kubernetes channel protocols over websocket, sans I/O.

``kubectl exec`` (through the kubelet) and ``crictl exec`` multiplex one
process's streams over one websocket: each message starts with its channel,
0 stdin, 1 stdout, 2 stderr, 3 error (the exit status), 4 resize. The
flavours, negotiated as websocket subprotocols (k8s.io/apimachinery's
``wsstream`` and the kubelet's ``remotecommand``):

=========================  ========================================================
``channel.k8s.io``         binary messages; channel byte, payload
``base64.channel.k8s.io``  text messages; ASCII channel digit, base64 payload
``v4.channel.k8s.io``      binary; the error channel carries a JSON ``Status``
``v4.base64.channel.k8s.io``  text, with the JSON ``Status``
``v5.channel.k8s.io``      v4 plus ``[255, channel]``: the client closed that channel
=========================  ========================================================

Nothing here touches a socket: ``split`` takes a client's message apart into
its channel and payload, ``encode`` makes a stream's bytes a message, ``exit_status`` the
process's end into the error channel's message. Payloads are bytes through
and through: iSulad writes text frames and cuts them at the first NUL byte;
a binary-safe stream must not.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE = 255  # v5: a channel the client has finished writing

# Preferred first: the newest the client offers wins.
PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)


class ChannelError(ValueError):
    """A message that is not one of the protocol's."""


@dataclass(frozen=True)
class Incoming:
    """What a client's message asks for."""

    kind: str  # "stdin" | "resize" | "close" (v5: the client closed ``channel``)
    channel: int
    data: bytes = b""
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Protocol:
    name: str

    @property
    def base64(self) -> bool:
        return "base64" in self.name

    @property
    def version(self) -> int:
        return int(self.name[1]) if self.name.startswith("v") else 1

    # -- client → server ----------------------------------------------------------

    def split(self, message: bytes | str) -> tuple[int, bytes]:
        """A client's message as (channel, payload): its first byte (base64
        protocols: an ASCII digit, the rest decoded). v5's close frame is
        channel CLOSE with the closed channel as its one payload byte. What
        the channel means is the caller's switch."""
        if self.base64:
            if not isinstance(message, str) or not message:
                raise ChannelError("base64 protocols send text messages with a channel digit")
            if not message[0].isdigit():
                raise ChannelError(f"channel {message[0]!r} is not a digit")
            try:
                return int(message[0]), base64.b64decode(message[1:], validate=True)
            except (binascii.Error, ValueError):
                raise ChannelError("the payload is not base64") from None
        if not isinstance(message, bytes) or not message:
            raise ChannelError("binary protocols send binary messages with a channel byte")
        channel, payload = message[0], message[1:]
        if channel == CLOSE and self.version >= 5 and len(payload) != 1:
            raise ChannelError("a close message names exactly one channel")
        return channel, payload

    # -- server → client --------------------------------------------------------------

    def encode(self, channel: int, data: bytes) -> bytes | str:
        if self.base64:
            return str(channel) + base64.b64encode(data).decode("ascii")
        return bytes((channel,)) + data

    def exit_status(self, exit_code: int, command: list[str] | None = None) -> bytes | str | None:
        """The error channel's last word. v4+: a ``metav1.Status``, Success or
        NonZeroExitCode with the code as its cause (what ``kubectl`` turns into
        its own exit code); before v4: nothing on success, a message otherwise."""
        if self.version >= 4:
            return self.encode(ERROR, json.dumps(status_document(exit_code, command)).encode())
        if exit_code == 0:
            return None
        return self.encode(
            ERROR, f"command terminated with non-zero exit code: {exit_code}".encode()
        )

    def error(self, message: str, reason: str = "InternalError", code: int = 500) -> bytes | str:
        """A failure that is not the process's exit (the stream could not start):
        from v4 on a ``metav1.Status`` with its reason and HTTP-like code."""
        if self.version >= 4:
            doc = {
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }
            return self.encode(ERROR, json.dumps(doc).encode())
        return self.encode(ERROR, message.encode())


def status_document(exit_code: int, command: list[str] | None = None) -> dict[str, Any]:
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    what = f"error executing command {command}, exit code {exit_code}" if command else ""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what or exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def parse_resize(payload: bytes) -> tuple[int, int]:
    """``{"Width": 80, "Height": 24}``, as the kubelet's TerminalSize marshals."""
    try:
        size = json.loads(payload)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        raise ChannelError(
            f"a resize message is JSON {{Width, Height}}, not {payload[:40]!r}"
        ) from None
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise ChannelError(f"terminal size {width}x{height} is out of range")
    return width, height


def negotiate(offered: list[str]) -> Protocol | None:
    """The newest protocol the client offers, or None (the upgrade is refused)."""
    for name in PROTOCOLS:
        if name in offered:
            return Protocol(name)
    return None


def lowest_writable(stdout: bool, stderr: bool) -> int:
    """The channel of the empty message sent right after the upgrade, which
    tells the client the streams are open (wsstream's "ready" frame)."""
    if stdout:
        return STDOUT
    if stderr:
        return STDERR
    return ERROR
