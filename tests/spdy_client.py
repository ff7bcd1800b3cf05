"""A small SPDY/3.1 client, written from the SPDY/3.1 draft and client-go's use of
it (remotecommand v4, portforward), so the tests can judge the streaming
server's SPDY without sharing a line of code with it.

Framing follows the draft's tables: every frame has an 8-byte header, control
frames carry version 3 and a type, data frames a 31-bit stream id; header blocks
are 32-bit counted name/value pairs, zlib-compressed against the fixed SPDY/3
dictionary with one compression context per direction for the whole session.
Flow control is SPDY/3.1's: 64 KiB windows per stream and per session (stream
id 0), replenished by WINDOW_UPDATE as the reader consumes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02
SETTINGS_INITIAL_WINDOW_SIZE = 7
RST_PROTOCOL_ERROR, RST_REFUSED_STREAM, RST_CANCEL = 1, 3, 5
INITIAL_WINDOW = 65536
MAX_DATA = 16384  # what we put in one data frame: small enough to interleave streams

# The SPDY/3 header dictionary (draft 3, section 2.6.10.1): length-prefixed header
# names and common values, then a run of status codes, dates and media types.
# 1423 bytes, Adler-32 0xe3c6a7c2 (the DICTID a peer's inflate checks).
_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base "
    "content-encoding content-language content-length content-location content-md5 "
    "content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
    "method get status 200_OK version HTTP/1.1 url public set-cookie keep-alive origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.replace("_", " ").encode() for w in _WORDS.split())
    + _TAIL.encode()
)


@dataclass
class Frame:
    """One frame off the wire: ``kind`` is the control type, 0 for a data frame."""

    kind: int
    flags: int
    payload: bytes
    stream_id: int = 0  # data frames only; control payloads carry their own


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    """|1|version(15)|type(16)| flags(8)|length(24)| payload."""
    return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    """|0|stream-id(31)| flags(8)|length(24)| data."""
    return struct.pack(">II", stream_id & 0x7FFFFFFF, flags << 24 | len(data)) + data


def parse_frame(header: bytes, payload: bytes) -> Frame:
    """The 8-byte header tells control from data by its first bit."""
    first, second = struct.unpack(">II", header)
    flags = second >> 24
    if first & 0x80000000:
        version = (first >> 16) & 0x7FFF
        if version != VERSION:
            raise ValueError(f"control frame of SPDY version {version}, not {VERSION}")
        return Frame(first & 0xFFFF, flags, payload)
    return Frame(0, flags, payload, stream_id=first & 0x7FFFFFFF)


def encode_header_block(headers: dict[str, str]) -> bytes:
    """Uncompressed: a 32-bit count, then 32-bit length-prefixed names and values.
    SPDY/3 wants names in lower case, so ``streamType`` goes out as ``streamtype``
    (what Go's spdystream sends too)."""
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        for text in (name.lower().encode(), value.encode()):
            out.append(struct.pack(">I", len(text)) + text)
    return b"".join(out)


def decode_header_block(raw: bytes) -> dict[str, str]:
    (count,), at, headers = struct.unpack_from(">I", raw), 4, {}
    for _ in range(count):
        texts = []
        for _ in range(2):
            (length,) = struct.unpack_from(">I", raw, at)
            texts.append(raw[at + 4 : at + 4 + length].decode())
            at += 4 + length
        headers[texts[0]] = texts[1]  # several values would be NUL-separated: kept so
    return headers


class HeaderCodec:
    """The two zlib contexts of a session: every header block we send continues
    one deflate stream, every block we receive continues the peer's, each block
    ending on a sync flush, so a block missed (even of a stream we refuse)
    breaks every later one."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)

    def compress(self, headers: dict[str, str]) -> bytes:
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decompress(self, data: bytes) -> dict[str, str]:
        return decode_header_block(self._inflate.decompress(data))


def syn_stream(
    codec: HeaderCodec, stream_id: int, headers: dict[str, str], flags: int = 0
) -> bytes:
    """Stream id, associated-to stream id 0, priority 0 and slot 0, the header block."""
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + codec.compress(headers)
    return control_frame(SYN_STREAM, flags, payload)


def window_update(stream_id: int, delta: int) -> bytes:
    return control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


def rst_stream(stream_id: int, status: int) -> bytes:
    return control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))


class UpgradeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status, self.headers, self.body = status, headers, body

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Stream:
    session: Session
    id: int
    headers: dict[str, str]
    reply: dict[str, str] | None = None  # the SYN_REPLY's headers, once it came
    send_window: int = INITIAL_WINDOW
    recv_window: int = INITIAL_WINDOW
    received: bytearray = field(default_factory=bytearray)
    remote_closed: bool = False  # FIN seen (or the session ended)
    reset_status: int = 0  # RST_STREAM's status, 0 if none

    def write(self, data: bytes) -> None:
        """Sends as the windows allow: waits for the server's WINDOW_UPDATEs
        (a session that does not count, as spdystream, sends at once)."""
        while data:
            n = min(len(data), MAX_DATA)
            if self.session.counting:
                n = self.session.take_window(self, n)
            self.session.send(data_frame(self.id, 0, data[:n]))
            data = data[n:]

    def close_write(self) -> None:
        """Half-close: an empty data frame with FIN (how Go's spdystream closes)."""
        self.session.send(data_frame(self.id, FLAG_FIN, b""))

    def reset(self, status: int = RST_CANCEL) -> None:
        self.session.send(rst_stream(self.id, status))

    def read(self, timeout: float = 30) -> bytes:
        """What has arrived (waiting for something), b"" at the end; each read
        gives the bytes back to both windows."""
        with self.session.cond:
            if not self.session.cond.wait_for(
                lambda: self.received or self.remote_closed or self.reset_status, timeout
            ):
                raise TimeoutError(f"stream {self.id} {self.headers}: nothing in {timeout}s")
            data = bytes(self.received)
            self.received.clear()
        if data:
            self.session.consumed(self, len(data))
        return data

    def read_all(self, timeout: float = 30) -> bytes:
        out = bytearray()
        while chunk := self.read(timeout):
            out += chunk
        if self.reset_status:
            raise ConnectionResetError(f"stream {self.id} reset with status {self.reset_status}")
        return bytes(out)


class Session:
    """A SPDY session over any byte pipe: ``send`` writes bytes, ``recv`` returns
    some (b"" at the end). A reader thread demultiplexes frames into streams,
    answers the server's PINGs and applies SETTINGS and WINDOW_UPDATEs.

    ``counting=False`` plays Go's spdystream, the SPDY of client-go: it never
    sends WINDOW_UPDATE and ignores the server's windows (its brake is TCP's)."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        recv: Callable[[], bytes],
        close: Callable[[], None],
        protocol: str,
        counting: bool = True,
    ) -> None:
        self._send, self._recv, self._close, self.protocol = send, recv, close, protocol
        self.counting = counting
        self._buffer = bytearray()
        self._codec, self._send_lock = HeaderCodec(), threading.Lock()
        self.cond = threading.Condition()
        self.streams: dict[int, Stream] = {}
        self._next_id = 1  # a client's streams are odd
        self.send_window = INITIAL_WINDOW  # the session's, SPDY/3.1
        self._initial_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW  # what the server may still send us
        self.violations: list[str] = []  # what the server did against the spec
        self.goaway: int | None = None  # the last good stream id of the server's GOAWAY
        self.goaway_status: int | None = None
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._send(data)

    def open_stream(self, headers: dict[str, str], timeout: float = 10) -> Stream:
        """SYN_STREAM, then wait for the SYN_REPLY (as client-go does before using it)."""
        with self._send_lock:  # ids and header blocks must reach the wire in order
            with self.cond:
                stream = Stream(self, self._next_id, headers, send_window=self._initial_window)
                self._next_id += 2
                self.streams[stream.id] = stream
            self._send(syn_stream(self._codec, stream.id, headers))
        with self.cond:
            if not self.cond.wait_for(
                lambda: stream.reply is not None or stream.reset_status or self.closed, timeout
            ):
                raise TimeoutError(f"no SYN_REPLY for stream {stream.id} {headers}")
        if stream.reply is None:
            raise ConnectionError(f"stream {stream.id} {headers} refused ({stream.reset_status})")
        return stream

    def take_window(self, stream: Stream, want: int, timeout: float = 30) -> int:
        with self.cond:
            if not self.cond.wait_for(
                lambda: min(stream.send_window, self.send_window) > 0 or self.closed, timeout
            ):
                raise TimeoutError(f"stream {stream.id}: the server opened no window")
            if self.closed:
                raise ConnectionError("session closed")
            n = min(want, stream.send_window, self.send_window)
            stream.send_window -= n
            self.send_window -= n
            return n

    def consumed(self, stream: Stream, n: int) -> None:
        """Gives ``n`` bytes back to the session's window and, while the server may
        still send on it, to the stream's; nothing once the connection is gone
        (nor ever, for a session that does not count)."""
        if not self.counting:
            return
        with self.cond:
            self.recv_window += n
            stream_open = not stream.remote_closed
            stream.recv_window += n if stream_open else 0
            if self.closed:
                return
        update = window_update(0, n) + (window_update(stream.id, n) if stream_open else b"")
        with contextlib.suppress(OSError):  # the server may hang up meanwhile
            self.send(update)

    def close(self) -> None:
        """GOAWAY, then the socket (client-go's Close resets streams and closes)."""
        with contextlib.suppress(OSError):
            self.send(control_frame(GOAWAY, 0, struct.pack(">II", 0, 0)))
        self.abort()

    def abort(self) -> None:
        """Close the connection without a word, as a killed client would."""
        self._close()
        self._reader.join(5)

    def _read(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            chunk = self._recv()
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_loop(self) -> None:
        try:
            while (header := self._read(8)) is not None:
                length = struct.unpack_from(">I", header, 4)[0] & 0xFFFFFF
                payload = self._read(length)
                if payload is None:
                    break
                if answer := self._handle(parse_frame(header, payload)):
                    self.send(answer)
        except (OSError, ValueError, zlib.error) as exc:
            if not self.closed:
                self.violations.append(f"reader stopped: {exc!r}")
        finally:
            with self.cond:
                self.closed = True
                for stream in self.streams.values():
                    stream.remote_closed = True
                self.cond.notify_all()

    def _handle(self, frame: Frame) -> bytes:
        """Applies one frame; returns what to answer (sent without the lock held)."""
        p = frame.payload
        sid = struct.unpack_from(">I", p)[0] & 0x7FFFFFFF if len(p) >= 4 else 0
        with self.cond:
            self.cond.notify_all()
            if frame.kind == 0:
                stream = self.streams.get(frame.stream_id)
                self.recv_window -= len(p)
                if self.recv_window < 0 and self.counting:
                    self.violations.append(f"session window overrun by {-self.recv_window}")
                if stream is None:
                    self.violations.append(f"data for unknown stream {frame.stream_id}")
                else:
                    stream.received += p
                    stream.recv_window -= len(p)
                    if stream.recv_window < 0 and self.counting:
                        self.violations.append(f"stream {stream.id} window overrun")
                    stream.remote_closed |= bool(frame.flags & FLAG_FIN)
            elif frame.kind in (SYN_REPLY, HEADERS):
                headers = self._codec.decompress(p[4:])  # always: keeps the context in step
                if stream := self.streams.get(sid):
                    stream.reply = {**(stream.reply or {}), **headers}
                    stream.remote_closed |= bool(frame.flags & FLAG_FIN)
            elif frame.kind == SYN_STREAM:
                self._codec.decompress(p[10:])
                return rst_stream(sid, RST_REFUSED_STREAM)  # we accept no pushed streams
            elif frame.kind == RST_STREAM:
                if stream := self.streams.get(sid):
                    stream.reset_status = struct.unpack_from(">I", p, 4)[0] or RST_PROTOCOL_ERROR
            elif frame.kind == SETTINGS:
                for i in range(struct.unpack_from(">I", p)[0]):
                    flags_id, value = struct.unpack_from(">II", p, 4 + 8 * i)
                    if flags_id & 0xFFFFFF == SETTINGS_INITIAL_WINDOW_SIZE:
                        for stream in self.streams.values():
                            stream.send_window += value - self._initial_window
                        self._initial_window = value
            elif frame.kind == PING and sid % 2 == 0:  # the server's (even ids): echo it
                return control_frame(PING, 0, p)
            elif frame.kind == GOAWAY:
                self.goaway = sid
                self.goaway_status = struct.unpack_from(">I", p, 4)[0]
            elif frame.kind == WINDOW_UPDATE:
                delta = struct.unpack_from(">I", p, 4)[0] & 0x7FFFFFFF
                if sid == 0:
                    self.send_window += delta
                elif stream := self.streams.get(sid):
                    stream.send_window += delta
        return b""


class _Connection:
    """A TCP connection after an HTTP/1.1 upgrade: reads go through a buffer (the
    response's headers are read line by line, what follows is the new protocol)."""

    def __init__(self, url: str, headers: list[str], method: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// here, not {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        # as Go's net.Dial leaves every TCP connection of client-go: small frames
        # go at once, not after the peer's delayed ACK (some 40 ms)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        request = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", *headers]
        self.sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
        status_line = self.file.readline().decode("latin-1")
        self.headers: list[tuple[str, str]] = []
        while (line := self.file.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))
        self.status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        if self.status != 101:
            length = int(self.header("content-length") or -1)
            with contextlib.suppress(OSError):
                body = self.file.read(length) if length >= 0 else self.file.read()
            self.close()
            raise UpgradeRefused(self.status, self.headers, body)
        self.sock.settimeout(None)

    def header(self, name: str) -> str:
        return next((v for n, v in self.headers if n.lower() == name), "")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.file.close()
        self.sock.close()


def connect(url: str, protocols: Iterable[str], counting: bool = True) -> Session:
    """The upgrade client-go's SPDY round tripper makes: a POST with ``Connection:
    Upgrade``, ``Upgrade: SPDY/3.1`` and one ``X-Stream-Protocol-Version`` per
    protocol; the answer must be 101 naming one of them."""
    protocols = list(protocols)
    headers = ["Content-Length: 0", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
    headers += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    conn = _Connection(url, headers, "POST")
    chosen = conn.header("x-stream-protocol-version")
    if chosen not in protocols:
        conn.close()
        raise ConnectionError(f"101 without one of {protocols} chosen: {conn.headers}")
    return Session(conn.sock.sendall, lambda: conn.file.read1(65536), conn.close, chosen, counting)


def connect_tunnelled(url: str, subprotocol: str = "SPDY/3.1+portforward.k8s.io") -> Session:
    """SPDY inside a websocket (client-go's tunneling dialer): each write is one
    binary message (masked, as from any websocket client), and the messages read
    back to back make one byte stream. Our own websocket framing (RFC 6455): the
    subprotocol's ``/`` is no RFC token, so strict libraries refuse to offer it."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13"]
    headers += [f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Protocol: {subprotocol}"]
    conn = _Connection(url, headers, "GET")
    accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    if conn.header("sec-websocket-accept") != base64.b64encode(accept).decode():
        conn.close()
        raise ConnectionError(f"not a websocket handshake: {conn.headers}")
    if conn.header("sec-websocket-protocol") != subprotocol:
        conn.close()
        raise ConnectionError(f"101 without {subprotocol}: {conn.headers}")

    def send_message(payload: bytes, opcode: int = 0x2) -> None:
        """FIN set, one frame per message; the length in 7, 16 or 64 bits."""
        n, mask = len(payload), os.urandom(4)
        if n < 126:
            size = bytes([0x80 | n])
        else:
            size = struct.pack(">BH", 0x80 | 126, n) if n < 65536 else struct.pack(">BQ", 0xFF, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        conn.sock.sendall(bytes([0x80 | opcode]) + size + mask + masked)

    def recv() -> bytes:
        while True:
            head = conn.file.read(2)
            if len(head) < 2:
                return b""
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n >= 126:
                n = int.from_bytes(conn.file.read(2 if n == 126 else 8), "big")
            payload = conn.file.read(n)  # a server's frames are not masked
            if opcode == 0x8:  # close
                return b""
            if opcode == 0x9:  # ping: pong with the same payload
                send_message(payload, 0xA)
            elif opcode == 0x1:
                raise ValueError(f"a text message in a SPDY tunnel: {payload[:80]!r}")
            elif opcode in (0x0, 0x2) and payload:
                return payload

    return Session(send_message, recv, conn.close, subprotocol)


def remote_command(
    url: str,
    protocol: str = "v4.channel.k8s.io",
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    resize: tuple[int, int] | None = None,
    timeout: float = 30,
) -> tuple[bytes, bytes, dict[str, object]]:
    """Exec or attach as client-go's remotecommand v4 does: the error stream first,
    then stdin, stdout, stderr (none with a tty) and resize (with a tty), each
    named by its ``streamType`` header; stdin is half-closed once written. The
    status is the error stream's JSON ``metav1.Status``."""
    session = connect(url, [protocol])
    try:
        error = session.open_stream({"streamType": "error"})
        streams = {}
        for name, wanted in (
            ("stdin", stdin is not None),
            ("stdout", stdout),
            ("stderr", stderr and not tty),
            ("resize", tty),
        ):
            if wanted:
                streams[name] = session.open_stream({"streamType": name})
        if resize and "resize" in streams:
            width, height = resize
            streams["resize"].write(json.dumps({"Width": width, "Height": height}).encode() + b"\n")
        with ThreadPoolExecutor(3) as pool:  # read all at once: no window waits on another
            readers = {
                n: pool.submit(streams[n].read_all, timeout)
                for n in ("stdout", "stderr")
                if n in streams
            }
            status_text = pool.submit(error.read_all, timeout)
            if stdin is not None:
                streams["stdin"].write(stdin)
                streams["stdin"].close_write()
            out = {n: f.result() for n, f in readers.items()}
            text = status_text.result()
        status: dict[str, object] = json.loads(text) if text.strip() else {}
        return out.get("stdout", b""), out.get("stderr", b""), status
    finally:
        session.close()


def port_forward(
    url: str, port: int, request: bytes, tunnelled: bool = False, timeout: float = 30
) -> bytes:
    """One connection through client-go's portforward.k8s.io: an error stream (we
    never write to it, so it is half-closed at once) and a data stream, paired by
    ``port`` and ``requestID``; ``request`` goes out, the reply comes back until the
    pod's side closes. Anything on the error stream is raised."""
    session = connect_tunnelled(url) if tunnelled else connect(url, ["portforward.k8s.io"])
    try:
        pair = {"port": str(port), "requestID": "0"}
        error = session.open_stream({"streamType": "error", **pair})
        error.close_write()
        data = session.open_stream({"streamType": "data", **pair})
        data.write(request)
        reply = data.read_all(timeout)
        message = error.read_all(timeout)
        if message:
            raise ConnectionError(f"port-forward error stream: {message!r}")
        return reply
    finally:
        session.close()
