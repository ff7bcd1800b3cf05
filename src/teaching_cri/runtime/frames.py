"""The shim's wire protocol, sans I/O: length-prefixed frames on a unix socket.

The server and a container's shim talk over ``shim.sock`` in the container's
state dir, as containerd talks ttrpc to its shims and iSulad reads the fifos
isulad-shim leaves beside the bundle. A frame is one kind byte, a 4-byte
big-endian length and the payload::

    +------+----------------+-----------------+
    | kind | length (u32 BE) | payload (length) |
    +------+----------------+-----------------+

A connection opens with one ``HELLO`` frame whose JSON payload names what the
client wants (:data:`OPS`); after that the kinds below carry a stream's bytes,
a terminal resize, a signal, and finally the exit status. Nothing here reads
or writes a socket, so the codec is tested on bytes alone and imported by the
shim without pulling in anything but the standard library.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">BI")
MAX_PAYLOAD = 1 << 20  # a frame carries at most 1 MiB; streams are cut into frames

HELLO = 1  # client → shim, first frame: {"op": ..., ...}
STDIN = 2  # client → shim: bytes for the process's stdin
STDIN_CLOSE = 3  # client → shim: close the process's stdin (stdin_once, EOF)
RESIZE = 4  # client → shim: {"width": cols, "height": rows} of the terminal
SIGNAL = 5  # client → shim: {"signal": n} for the exec'd process
STDOUT = 6  # shim → client
STDERR = 7  # shim → client
EXIT = 8  # shim → client: {"exit_code": n, "finished_at": ns, ...}, then close
ERROR = 9  # shim → client: a message, then close
OK = 10  # shim → client: the HELLO was accepted, {"pid": n, ...}

# What a HELLO may ask for:
#   attach      stream the container's stdio (stdin/stdout/stderr flags)
#   exec        run a process in the container ({"process": OCI process, "tty", "stdin"})
#   wait        nothing until the container's init exits, then EXIT
#   reopen_log  close and reopen the CRI log file (ReopenContainerLog)
#   resize      resize the container's terminal once
#   close_stdin close the container's stdin
OPS = ("attach", "exec", "wait", "reopen_log", "resize", "close_stdin")


class ProtocolError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: int, value: dict[str, Any]) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def encode_stream(kind: int, data: bytes) -> bytes:
    """``data`` as as many frames as it takes."""
    if len(data) <= MAX_PAYLOAD:
        return encode(kind, data)
    return b"".join(
        encode(kind, data[i : i + MAX_PAYLOAD]) for i in range(0, len(data), MAX_PAYLOAD)
    )


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"frame payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("frame payload is not a JSON object")
    return value


class FrameDecoder:
    """Bytes in, whole frames out; a frame split across reads waits for the rest."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            with memoryview(self._buffer) as view:  # one copy, not a slice and a copy
                frames.append((kind, bytes(view[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting."""
        return len(self._buffer)
