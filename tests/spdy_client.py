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

import contextlib
import json
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
    received: bytearray = field(default_factory=bytearray)
    remote_closed: bool = False  # FIN seen (or the session ended)
    reset_status: int = 0  # RST_STREAM's status, 0 if none

    def write(self, data: bytes) -> None:
        """Sends as the windows allow: waits for the server's WINDOW_UPDATEs."""
        while data:
            n = self.session.take_window(self, min(len(data), MAX_DATA))
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
    answers the server's PINGs and applies SETTINGS and WINDOW_UPDATEs."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        recv: Callable[[], bytes],
        close: Callable[[], None],
        protocol: str,
        pending: bytes = b"",
    ) -> None:
        self._send, self._recv, self._close, self.protocol = send, recv, close, protocol
        self._buffer = bytearray(pending)
        self._codec, self._send_lock = HeaderCodec(), threading.Lock()
        self.cond = threading.Condition()
        self.streams: dict[int, Stream] = {}
        self._next_id = 1  # a client's streams are odd
        self.send_window = INITIAL_WINDOW  # the session's, SPDY/3.1
        self._initial_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW  # what the server may still send us
        self.violations: list[str] = []  # what the server did against the spec
        self.goaway: int | None = None
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._send(data)

    def open_stream(self, headers: dict[str, str], timeout: float = 10) -> Stream:
        """SYN_STREAM, then wait for the SYN_REPLY (as client-go does before using it)."""
        with self._send_lock, self.cond:  # ids must reach the wire in order
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
        with self.cond:
            self.recv_window += n
            stream_open = not stream.remote_closed
        self.send(window_update(0, n) + (window_update(stream.id, n) if stream_open else b""))

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
                if self.recv_window < 0:
                    self.violations.append(f"session window overrun by {-self.recv_window}")
                if stream is None:
                    self.violations.append(f"data for unknown stream {frame.stream_id}")
                else:
                    stream.received += p
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
            elif frame.kind == WINDOW_UPDATE:
                delta = struct.unpack_from(">I", p, 4)[0] & 0x7FFFFFFF
                if sid == 0:
                    self.send_window += delta
                elif stream := self.streams.get(sid):
                    stream.send_window += delta
        return b""


def _dial(url: str) -> tuple[socket.socket, str, str]:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// here, not {url}")
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
    sock.settimeout(None)
    return sock, parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")


def connect(url: str, protocols: Iterable[str]) -> Session:
    """The upgrade client-go's SPDY round tripper makes: a POST with ``Connection:
    Upgrade``, ``Upgrade: SPDY/3.1`` and one ``X-Stream-Protocol-Version`` per
    protocol; the answer must be 101 naming one of them."""
    protocols = list(protocols)
    sock, host, path = _dial(url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Length: 0",
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
    ]
    lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    head, _, rest = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in header_lines)]
    if status != 101:
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except OSError:
            pass
        sock.close()
        raise UpgradeRefused(status, headers, rest)
    chosen = [v for n, v in headers if n.lower() == "x-stream-protocol-version"]
    if len(chosen) != 1 or chosen[0] not in protocols:
        sock.close()
        raise ConnectionError(f"101 without one of {protocols} chosen: {headers}")

    def close() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    return Session(sock.sendall, lambda: sock.recv(65536), close, chosen[0], pending=rest)


def connect_tunnelled(url: str, subprotocol: str = "SPDY/3.1+portforward.k8s.io") -> Session:
    """SPDY inside a websocket (client-go's tunneling dialer): each write one binary
    message, and the messages read back to back as one byte stream."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    ws = ws_connect(
        "ws://" + url.removeprefix("http://"),
        subprotocols=[subprotocol],  # type: ignore[list-item]
        max_size=None,
        open_timeout=10,
    )

    def recv() -> bytes:
        try:
            message = ws.recv()
        except ConnectionClosed:
            return b""
        if not isinstance(message, bytes):
            raise ValueError(f"a text message in a SPDY tunnel: {message[:80]!r}")
        return message

    return Session(lambda data: ws.send(data), recv, ws.close, ws.subprotocol or "")


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
