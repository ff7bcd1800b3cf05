"""SPDY/3.1, sans I/O: the wire a stock kubelet and crictl stream over.

client-go's ``tools/remotecommand`` and ``portforward`` (through
``k8s.io/apimachinery/pkg/util/httpstream/spdy`` and moby's ``spdystream``)
upgrade the streaming URL's HTTP connection to ``SPDY/3.1`` and open one
SPDY stream per thing they carry (stdin, stdout, stderr, the error channel,
resizes; a data and an error stream per forwarded port). There is no
maintained SPDY library for Python, so this module is one, shaped like h11
and the websockets library: it never touches a socket. The I/O layer feeds
what it reads to :meth:`Connection.receive_data`, handles
:meth:`Connection.events`, calls the sending methods, and writes out
:meth:`Connection.data_to_send`.

The protocol in brief (the SPDY Protocol Draft 3.1):

* Every frame has an 8-byte header. A control frame: a 1 bit, the version
  (15 bits, 3), the type (16 bits), flags (8), length (24). A data frame: a 0
  bit, the stream id (31 bits), flags (8), length (24).
* SYN_STREAM opens a stream (client ids odd, server ids even, each new one
  higher than the last), SYN_REPLY accepts it, HEADERS adds headers,
  RST_STREAM ends one stream abnormally, GOAWAY ends the session, PING
  measures it (the receiver echoes it), SETTINGS tunes it, WINDOW_UPDATE
  gives flow-control credit. FIN half-closes the sender's side;
  UNIDIRECTIONAL opens a stream the receiver may not send on.
* Header blocks (name/value pairs with 32-bit lengths) are compressed with
  zlib primed with :data:`DICTIONARY`, one compression context per direction
  for the whole session, each block ended by a sync flush: a block can only
  be decompressed by a peer that saw every block before it.
* Flow control (3.1): each stream and the session have a 64 KiB window per
  direction; data spends it, WINDOW_UPDATE (stream 0: the session) restores
  it. A sender holds data that does not fit.

Errors are the spec's two kinds: a stream error resets one stream
(RST_STREAM with a status), a session error sends GOAWAY and ends the
session (the corrupt header block that leaves the shared zlib context
unusable is one).

Flow control with peers that do not count
-------------------------------------------

``spdystream`` (moby/spdystream), the SPDY of every Go client and server
Kubernetes ships, parses WINDOW_UPDATE and SETTINGS and then drops them (its
frame handler has no case for either), never sends either, and writes each
``Write`` as one data frame of whatever size, whatever our windows say. Its
only brake is TCP: its reader hands each data frame to the stream's reader
through an unbuffered channel, so a reader that does not read stops the
session's reading, and the socket fills. A server that held to windows with it
would stall after 64 KiB of output; one that policed its own windows would
reset a large stdin. A peer written from the draft counts both ways, and is
owed exactly that. The rule, ``Connection(flow_control=None)``:

* Until the peer shows which kind it is, we hold our data to its windows
  (as the draft asks) and do not police ours.
* A WINDOW_UPDATE from the peer shows that it counts: from then on its
  windows bind us and ours bind it (data past them is FLOW_CONTROL_ERROR on
  the stream, a GOAWAY for the session's).
* Data from the peer past our window, or silence, shows that it does not.
  Silence is judged by a probe: when data waits for a window and the peer has
  never sent a WINDOW_UPDATE, we send a PING. Its answer means the peer has
  read every byte we sent before it (frames are read in order), so
  :class:`WindowProbeAnswered` tells the I/O layer, which owns the clock:
  if no WINDOW_UPDATE has come after a short grace, it calls
  :meth:`Connection.ignore_peer_windows`. A counting peer that has read a
  whole window and consumed none of it in that time is taken for spdystream;
  that is the rule's one guess, and it errs towards not deadlocking.
* Either way our memory stays bounded without the windows: the I/O layer
  stops reading the socket while too much received data waits to be
  consumed, and stops producing while the socket's write buffer is full.

``flow_control=True`` holds to the windows and polices them from the start
(a peer known to count), ``False`` never does either (how the tests play
spdystream); both still send WINDOW_UPDATE as data is consumed, so a counting
peer is never starved.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01
DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = 0x7FFFFFFF
MAX_STREAM_ID = 0x7FFFFFFF
MAX_LENGTH = 0xFFFFFF  # a frame's 24-bit length field


def _dictionary() -> bytes:
    """The SPDY/3 header dictionary (the draft's section 2.6.10.1): header
    names and common values, each with a 32-bit length as a header block
    writes them, then a run of status codes, status lines, dates and media
    types. Rebuilt here from its parts so the structure shows; the tests
    check its length (1423) and its Adler-32, which every zlib stream
    compressed with it names in its header."""
    words = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416"
        "417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found"
        "500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
        "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in words)
    return prefixed + tail.encode("ascii")


DICTIONARY = _dictionary()


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class Setting(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


# A header block: lowercase names; a value holding NUL bytes is several values
# (the spec's way, and Go's http.Header's when it writes one).
Headers = dict[str, str]


class SpdyError(Exception):
    """A session error: the session ends with GOAWAY and this status."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


class StreamError(Exception):
    """A stream error: that stream is reset with this status, the session goes on."""

    def __init__(self, stream_id: int, status: RstStatus, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


class UsageError(RuntimeError):
    """The application asked for something the protocol forbids (sending on a
    closed stream, opening one after GOAWAY): a bug on our side, not the peer's."""


# -- frames -----------------------------------------------------------------------


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_to: int = 0
    priority: int = 0  # 0 (highest) to 7


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    values: dict[int, int]
    flags: int = 0
    value_flags: dict[int, int] = field(default_factory=dict)  # persist/persisted, by id


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int  # 0: the session's window
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    flags: int = 0


Frame = (
    SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data
)


# -- header blocks ------------------------------------------------------------------


def pack_header_block(headers: Headers) -> bytes:
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw_name, raw_value = name.lower().encode(), value.encode()
        parts += [struct.pack(">I", len(raw_name)), raw_name]
        parts += [struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def unpack_header_block(block: bytes, stream_id: int) -> Headers:
    """A decompressed block's pairs. Malformed content is the stream's error:
    the block decompressed, so the session's zlib context is still good."""

    def bad(why: str) -> StreamError:
        return StreamError(stream_id, RstStatus.PROTOCOL_ERROR, f"header block: {why}")

    view = memoryview(block)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise bad("truncated")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    (count,) = struct.unpack(">I", take(4))
    headers: Headers = {}
    for _ in range(count):
        (n,) = struct.unpack(">I", take(4))
        name = take(n)
        (n,) = struct.unpack(">I", take(4))
        value = take(n)
        if not name:
            raise bad("an empty header name")
        try:
            text_name, text_value = name.decode(), value.decode()
        except UnicodeDecodeError:
            raise bad("a header that is not UTF-8") from None
        if text_name != text_name.lower():
            raise bad(f"header name {text_name!r} is not lowercase")
        if text_name in headers:
            raise bad(f"header {text_name!r} appears twice")
        headers[text_name] = text_value
    if pos != len(view):
        raise bad("bytes after the last pair")
    return headers


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of ``name`` (NUL separates a header's values)."""
    value = headers.get(name)
    return [] if value is None else value.split("\x00")


class HeaderCompressor:
    """One direction's zlib stream: every block we send, in order."""

    def __init__(self, level: int = zlib.Z_DEFAULT_COMPRESSION) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        block = pack_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's zlib stream. A block that does not inflate breaks the
    context for every later block, so it is a session error."""

    def __init__(self, max_block: int) -> None:
        self._z = zlib.decompressobj(zdict=DICTIONARY)
        self.max_block = max_block

    def decompress(self, compressed: bytes, stream_id: int) -> Headers:
        try:
            block = self._z.decompress(compressed, self.max_block)
        except zlib.error as exc:
            raise SpdyError(f"header block does not decompress: {exc}") from None
        if self._z.unconsumed_tail:
            raise SpdyError(f"header block inflates past {self.max_block} bytes")
        return unpack_header_block(block, stream_id)


# -- framing ------------------------------------------------------------------------


def _control(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise UsageError(f"a {frame_type.name} frame of {len(payload)} bytes does not fit")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


class FrameWriter:
    """Frames to bytes; owns the outgoing header compression context."""

    def __init__(self) -> None:
        self.headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Data):
            if len(frame.data) > MAX_LENGTH:
                raise UsageError(f"a data frame of {len(frame.data)} bytes does not fit")
            return (
                struct.pack(
                    ">II", frame.stream_id & MAX_STREAM_ID, (frame.flags << 24) | len(frame.data)
                )
                + frame.data
            )
        if isinstance(frame, SynStream):
            head = struct.pack(
                ">IIBB",
                frame.stream_id,
                frame.associated_to,
                (frame.priority & 7) << 5,
                0,
            )
            block = self.headers.compress(frame.headers)
            return _control(FrameType.SYN_STREAM, frame.flags, head + block)
        if isinstance(frame, SynReply):
            block = self.headers.compress(frame.headers)
            payload = struct.pack(">I", frame.stream_id) + block
            return _control(FrameType.SYN_REPLY, frame.flags, payload)
        if isinstance(frame, HeadersFrame):
            block = self.headers.compress(frame.headers)
            payload = struct.pack(">I", frame.stream_id) + block
            return _control(FrameType.HEADERS, frame.flags, payload)
        if isinstance(frame, RstStream):
            payload = struct.pack(">II", frame.stream_id, frame.status)
            return _control(FrameType.RST_STREAM, 0, payload)
        if isinstance(frame, Settings):
            entries = [struct.pack(">I", len(frame.values))]
            for key, value in frame.values.items():
                flag = frame.value_flags.get(key, 0)
                entries.append(struct.pack(">II", (flag << 24) | key, value))
            return _control(FrameType.SETTINGS, frame.flags, b"".join(entries))
        if isinstance(frame, Ping):
            return _control(FrameType.PING, 0, struct.pack(">I", frame.ping_id))
        if isinstance(frame, GoAway):
            payload = struct.pack(">II", frame.last_good_stream_id, frame.status)
            return _control(FrameType.GOAWAY, 0, payload)
        payload = struct.pack(">II", frame.stream_id, frame.delta)
        return _control(FrameType.WINDOW_UPDATE, 0, payload)


# The exact payload length of the fixed-size control frames, the least of the others.
_EXACT = {
    FrameType.RST_STREAM: 8,
    FrameType.PING: 4,
    FrameType.GOAWAY: 8,
    FrameType.WINDOW_UPDATE: 8,
}
_AT_LEAST = {
    FrameType.SYN_STREAM: 10,
    FrameType.SYN_REPLY: 4,
    FrameType.HEADERS: 4,
    FrameType.SETTINGS: 4,
}


class FrameReader:
    """Bytes to frames, whatever pieces they arrive in; owns the incoming
    header decompression context. Holds at most one frame's bytes: a frame
    announcing more than ``max_frame`` is a session error before it arrives."""

    def __init__(self, *, max_frame: int = 1 << 20, max_header_block: int = 256 * 1024) -> None:
        self._buffer = bytearray()
        self.headers = HeaderDecompressor(max_header_block)
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        """The next whole frame; None until one has arrived. Unknown control
        frame types are skipped, as the spec asks. Raises :class:`SpdyError`
        or :class:`StreamError` (the frame is consumed either way)."""
        while True:
            if len(self._buffer) < 8:
                return None
            first, second = struct.unpack_from(">II", self._buffer)
            flags, length = second >> 24, second & MAX_LENGTH
            if length > self.max_frame:
                raise SpdyError(f"a frame of {length} bytes (at most {self.max_frame})")
            if len(self._buffer) < 8 + length:
                return None
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            if not first & 0x80000000:
                return Data(first & MAX_STREAM_ID, payload, flags)
            version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise SpdyError(f"SPDY version {version}; this session speaks {VERSION}")
            try:
                frame_type = FrameType(kind)
            except ValueError:
                continue
            return self._control(frame_type, flags, payload)

    def _control(self, frame_type: FrameType, flags: int, payload: bytes) -> Frame:
        exact = _EXACT.get(frame_type)
        if exact is not None and len(payload) != exact:
            raise SpdyError(f"{frame_type.name} of {len(payload)} bytes, not {exact}")
        if len(payload) < _AT_LEAST.get(frame_type, 0):
            raise SpdyError(f"{frame_type.name} of only {len(payload)} bytes")
        if frame_type is FrameType.SYN_STREAM:
            stream_id, associated, pri = struct.unpack_from(">IIB", payload)
            stream_id &= MAX_STREAM_ID
            headers = self.headers.decompress(payload[10:], stream_id)
            return SynStream(stream_id, headers, flags, associated & MAX_STREAM_ID, pri >> 5)
        if frame_type in (FrameType.SYN_REPLY, FrameType.HEADERS):
            stream_id = struct.unpack_from(">I", payload)[0] & MAX_STREAM_ID
            headers = self.headers.decompress(payload[4:], stream_id)
            if frame_type is FrameType.SYN_REPLY:
                return SynReply(stream_id, headers, flags)
            return HeadersFrame(stream_id, headers, flags)
        if frame_type is FrameType.RST_STREAM:
            stream_id, status = struct.unpack(">II", payload)
            return RstStream(stream_id & MAX_STREAM_ID, status)
        if frame_type is FrameType.SETTINGS:
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise SpdyError(f"SETTINGS says {count} entries in {len(payload)} bytes")
            values: dict[int, int] = {}
            value_flags: dict[int, int] = {}
            for i in range(count):
                key, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                values[key & 0xFFFFFF] = value
                if key >> 24:
                    value_flags[key & 0xFFFFFF] = key >> 24
            return Settings(values, flags, value_flags)
        if frame_type is FrameType.PING:
            return Ping(struct.unpack(">I", payload)[0])
        if frame_type is FrameType.GOAWAY:
            last, status = struct.unpack(">II", payload)
            return GoAway(last & MAX_STREAM_ID, status)
        stream_id, delta = struct.unpack(">II", payload)
        return WindowUpdate(stream_id & MAX_STREAM_ID, delta & MAX_WINDOW)


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpened:
    """The peer's SYN_STREAM. Answer with :meth:`Connection.reply` or reset it."""

    stream_id: int
    headers: Headers
    unidirectional: bool = False
    associated_to: int = 0
    priority: int = 0


@dataclass(frozen=True)
class StreamReplied:
    """The peer's SYN_REPLY to a stream we opened."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True)
class HeadersReceived:
    stream_id: int
    headers: Headers


@dataclass(frozen=True)
class DataReceived:
    """Call :meth:`Connection.consumed` once the application has taken it:
    that is what gives the peer its window back."""

    stream_id: int
    data: bytes


@dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed the stream (FIN): it will send nothing more on it."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    """The stream is gone: the peer reset it, or we did (``local``) because
    the peer broke a stream rule (``reason`` says which)."""

    stream_id: int
    status: int
    local: bool = False
    reason: str = ""


@dataclass(frozen=True)
class SettingsReceived:
    values: dict[int, int]


@dataclass(frozen=True)
class PingReceived:
    """The peer's PING (already answered)."""

    ping_id: int


@dataclass(frozen=True)
class PingAcknowledged:
    """The answer to a PING of ours."""

    ping_id: int


@dataclass(frozen=True)
class WindowProbeAnswered:
    """The answer to the PING sent when our data waited for a window of a peer
    that has never sent WINDOW_UPDATE: it has read all we sent. Wait a little
    for its WINDOW_UPDATE, then :meth:`Connection.ignore_peer_windows` if
    :attr:`Connection.peer_counts` is still None (see the module's rule)."""

    ping_id: int


@dataclass(frozen=True)
class WindowUpdated:
    """Credit from the peer; held data may have gone out (stream 0: the session)."""

    stream_id: int
    delta: int


@dataclass(frozen=True)
class ConnectionTerminated:
    """The session is over: the peer sent GOAWAY, or we did (``local``)
    because of a session error. Nothing more is read after our own."""

    status: int
    last_good_stream_id: int
    reason: str = ""
    local: bool = False


Event = (
    StreamOpened
    | StreamReplied
    | HeadersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | SettingsReceived
    | PingReceived
    | PingAcknowledged
    | WindowProbeAnswered
    | WindowUpdated
    | ConnectionTerminated
)


# -- the session --------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    stream_id: int
    ours: bool
    send_window: int
    recv_window: int
    local_open: bool = True  # we may still send
    remote_open: bool = True  # the peer may still send
    replied: bool = False  # a stream of ours: SYN_REPLY arrived; the peer's: we replied
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    pending_fin: bool = False
    unacked: int = 0  # consumed by the application, not yet credited to the peer


class Connection:
    """One SPDY/3.1 session, either side.

    ``client``: our stream ids are odd (a client's) or even (a server's).
    ``flow_control``: True holds to the peer's windows and polices ours;
    False does neither; None learns which the peer wants (the module's rule),
    the answer in :attr:`peer_counts`. ``max_streams``: the peer's streams open at
    once; more are refused. Memory is bounded by ``max_frame`` for incoming
    frames, ``max_header_block`` for an inflated header block, the receive
    windows (with flow control) for unconsumed data, and the I/O layer for
    outgoing data held by windows (:meth:`pending` says how much).
    """

    def __init__(
        self,
        *,
        client: bool,
        flow_control: bool | None = True,
        initial_window: int = DEFAULT_WINDOW,
        max_streams: int = 100,
        max_frame: int = 1 << 20,
        max_header_block: int = 256 * 1024,
        max_data_frame: int = 16 * 1024,
        remembered_resets: int = 64,
    ) -> None:
        self.client = client
        self.peer_counts: bool | None = flow_control
        self._probe: int | None = None  # our PING asking a silent peer
        self.max_streams = max_streams
        self.max_data_frame = max_data_frame
        self._reader = FrameReader(max_frame=max_frame, max_header_block=max_header_block)
        self._writer = FrameWriter()
        self._out = bytearray()
        self._events: list[Event] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._next_ping = 1 if client else 2
        self._pings: set[int] = set()
        self._last_peer_id = 0
        self._reset: deque[int] = deque(maxlen=remembered_resets)  # ids we reset lately
        self._recv_initial = initial_window
        self._send_initial = DEFAULT_WINDOW
        self._session_send = DEFAULT_WINDOW
        self._session_recv = DEFAULT_WINDOW
        self._session_unacked = 0
        self.peer_settings: dict[int, int] = {}
        self.closed = False  # a GOAWAY was sent or received
        self._terminated = False  # we sent GOAWAY for a session error: input is ignored
        if initial_window != DEFAULT_WINDOW:
            self.send_settings({Setting.INITIAL_WINDOW_SIZE: initial_window})

    # -- I/O ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """What the socket read. Events and replies pile up until drained."""
        if self._terminated:
            return
        self._reader.feed(data)
        while not self._terminated:
            try:
                frame = self._reader.next_frame()
            except StreamError as exc:
                self._stream_error(exc)
                continue
            except SpdyError as exc:
                self._session_error(exc)
                return
            if frame is None:
                return
            try:
                self._handle(frame)
            except StreamError as exc:
                self._stream_error(exc)
            except SpdyError as exc:
                self._session_error(exc)

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- sending -------------------------------------------------------------------

    def open_stream(
        self,
        headers: Headers,
        *,
        fin: bool = False,
        unidirectional: bool = False,
        associated_to: int = 0,
        priority: int = 0,
    ) -> int:
        if self.closed:
            raise UsageError("no new streams after GOAWAY")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise UsageError("stream ids are used up")
        self._next_id += 2
        flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
        self._emit(SynStream(stream_id, headers, flags, associated_to, priority))
        stream = _Stream(stream_id, True, self._send_initial, self._recv_initial)
        stream.local_open = not fin
        stream.remote_open = not unidirectional
        self._streams[stream_id] = stream
        self._forget_if_done(stream)
        return stream_id

    def reply(self, stream_id: int, headers: Headers | None = None, *, fin: bool = False) -> None:
        """SYN_REPLY: accept the peer's stream (spdystream's ``SendReply``)."""
        stream = self._sendable(stream_id)
        if stream.ours or stream.replied:
            raise UsageError(f"stream {stream_id} takes no SYN_REPLY from us")
        stream.replied = True
        self._emit(SynReply(stream_id, headers or {}, FLAG_FIN if fin else 0))
        if fin:
            stream.local_open = False
            self._forget_if_done(stream)

    def send_headers(self, stream_id: int, headers: Headers, *, fin: bool = False) -> None:
        stream = self._sendable(stream_id)
        self._emit(HeadersFrame(stream_id, headers, FLAG_FIN if fin else 0))
        if fin:
            stream.local_open = False
            self._forget_if_done(stream)

    def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """Queue ``data`` (and FIN). What the windows allow goes out at once;
        the rest waits for WINDOW_UPDATE (see :meth:`pending`)."""
        stream = self._sendable(stream_id)
        if not stream.ours and not stream.replied:
            raise UsageError(f"reply to stream {stream_id} before sending on it")
        if data:
            stream.pending.append(bytes(data))
            stream.pending_bytes += len(data)
        if fin:
            stream.local_open = False
            stream.pending_fin = True
        self._flush(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: RstStatus = RstStatus.CANCEL) -> None:
        self._emit(RstStream(stream_id, status))
        self._drop(stream_id)

    def ping(self) -> int:
        ping_id = self._next_ping
        self._next_ping += 2
        if self._next_ping > MAX_STREAM_ID:
            self._next_ping = 1 if self.client else 2
        self._pings.add(ping_id)
        self._emit(Ping(ping_id))
        return ping_id

    def send_settings(self, values: dict[int, int]) -> None:
        self._emit(Settings({int(k): v for k, v in values.items()}))

    def go_away(self, status: GoAwayStatus = GoAwayStatus.OK) -> None:
        """End the session: the peer's streams up to the last we saw may finish."""
        if not self.closed:
            self.closed = True
            self._emit(GoAway(self._last_peer_id, status))

    def consumed(self, stream_id: int, amount: int) -> None:
        """The application took ``amount`` bytes of the stream's data: give
        the peer its credit back, in updates of at least half a window (as
        Chromium does) so a byte-at-a-time reader is not a frame per byte."""
        if amount <= 0:
            return
        self._credit_session(amount)
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            return
        stream.unacked += amount
        if stream.unacked >= self._recv_initial // 2:
            self._emit(WindowUpdate(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    # -- what the application may ask -------------------------------------------------

    def pending(self, stream_id: int | None = None) -> int:
        """Bytes held back by windows: one stream's, or all."""
        if stream_id is None:
            return sum(s.pending_bytes for s in self._streams.values())
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.pending_bytes

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return 0 if stream is None else min(stream.send_window, self._session_send)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def can_send(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.local_open

    @property
    def open_streams(self) -> list[int]:
        return sorted(self._streams)

    # -- receiving --------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            self._on_data(frame)
        elif isinstance(frame, SynStream):
            self._on_syn_stream(frame)
        elif isinstance(frame, SynReply):
            stream = self._receivable(frame.stream_id, frame.flags)
            if stream is None:
                return
            if not stream.ours:
                raise StreamError(
                    frame.stream_id, RstStatus.PROTOCOL_ERROR, "SYN_REPLY to the peer's own stream"
                )
            if stream.replied:
                raise StreamError(frame.stream_id, RstStatus.STREAM_IN_USE, "a second SYN_REPLY")
            stream.replied = True
            self._events.append(StreamReplied(frame.stream_id, frame.headers))
            self._remote_fin(stream, frame.flags)
        elif isinstance(frame, HeadersFrame):
            stream = self._receivable(frame.stream_id, frame.flags)
            if stream is None:
                return
            self._events.append(HeadersReceived(frame.stream_id, frame.headers))
            self._remote_fin(stream, frame.flags)
        elif isinstance(frame, RstStream):
            if frame.status == 0:
                raise SpdyError("RST_STREAM with status 0")
            if frame.stream_id in self._streams:
                self._drop(frame.stream_id)
                self._events.append(StreamReset(frame.stream_id, frame.status))
        elif isinstance(frame, Settings):
            self._on_settings(frame)
        elif isinstance(frame, Ping):
            if frame.ping_id % 2 == (1 if self.client else 0):
                if frame.ping_id in self._pings:
                    self._pings.discard(frame.ping_id)
                    if frame.ping_id == self._probe:
                        self._probe = None
                        if self.peer_counts is None:
                            self._events.append(WindowProbeAnswered(frame.ping_id))
                    else:
                        self._events.append(PingAcknowledged(frame.ping_id))
            else:
                self._emit(Ping(frame.ping_id))
                self._events.append(PingReceived(frame.ping_id))
        elif isinstance(frame, GoAway):
            self.closed = True
            self._events.append(ConnectionTerminated(frame.status, frame.last_good_stream_id))
        else:
            self._on_window_update(frame)

    def _on_syn_stream(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if sid == 0:
            raise SpdyError("SYN_STREAM for stream 0")
        if sid % 2 == self._next_id % 2:
            raise SpdyError(f"the peer opened stream {sid}, an id of ours")
        if sid in self._streams:
            raise StreamError(sid, RstStatus.STREAM_IN_USE, f"stream {sid} is already open")
        if sid <= self._last_peer_id:
            raise SpdyError(f"stream {sid} after stream {self._last_peer_id}: ids must increase")
        self._last_peer_id = sid
        if self.closed:
            return  # after GOAWAY, new streams are ignored
        if len([s for s in self._streams.values() if not s.ours]) >= self.max_streams:
            raise StreamError(
                sid, RstStatus.REFUSED_STREAM, f"more than {self.max_streams} streams"
            )
        stream = _Stream(sid, False, self._send_initial, self._recv_initial)
        stream.local_open = not frame.flags & FLAG_UNIDIRECTIONAL
        self._streams[sid] = stream
        self._events.append(
            StreamOpened(
                sid,
                frame.headers,
                bool(frame.flags & FLAG_UNIDIRECTIONAL),
                frame.associated_to,
                frame.priority,
            )
        )
        self._remote_fin(stream, frame.flags)

    def _on_data(self, frame: Data) -> None:
        size = len(frame.data)
        sid = frame.stream_id
        if sid == 0:
            raise SpdyError("a data frame for stream 0")
        self._session_recv -= size
        if self._session_recv < 0 and not self._overrun_allowed():
            raise SpdyError(f"data past the session's window by {-self._session_recv} bytes")
        stream = self._streams.get(sid)
        if stream is None or not stream.remote_open:
            self._credit_session(size)  # nobody will consume it
            if sid in self._reset:
                return  # in flight when we reset it
            if stream is None:
                raise StreamError(sid, RstStatus.INVALID_STREAM, f"data for stream {sid}, not open")
            raise StreamError(sid, RstStatus.STREAM_ALREADY_CLOSED, f"data after FIN on {sid}")
        if stream.ours and not stream.replied:
            self._credit_session(size)
            raise StreamError(sid, RstStatus.PROTOCOL_ERROR, f"data on {sid} before SYN_REPLY")
        stream.recv_window -= size
        if stream.recv_window < 0 and not self._overrun_allowed():
            self._credit_session(size)
            raise StreamError(
                sid,
                RstStatus.FLOW_CONTROL_ERROR,
                f"data past stream {sid}'s window by {-stream.recv_window} bytes",
            )
        if size:
            self._events.append(DataReceived(sid, frame.data))
        self._remote_fin(stream, frame.flags)

    def _on_settings(self, frame: Settings) -> None:
        window = frame.values.get(Setting.INITIAL_WINDOW_SIZE)
        if window is not None:
            if window > MAX_WINDOW:
                raise SpdyError(f"an initial window of {window}")
            delta, self._send_initial = window - self._send_initial, window
            for stream in self._streams.values():
                stream.send_window += delta
        if frame.flags & FLAG_SETTINGS_CLEAR:
            self.peer_settings.clear()
        self.peer_settings.update(frame.values)
        self._events.append(SettingsReceived(dict(frame.values)))
        if window is not None:
            self._flush_all()

    def _overrun_allowed(self) -> bool:
        """Data past our window: an error from a peer that counts; from one
        not yet known, the sign that it does not (spdystream)."""
        if self.peer_counts is None:
            self.ignore_peer_windows()
        return self.peer_counts is False

    def ignore_peer_windows(self) -> None:
        """The peer does not count (the module's rule): send without its
        windows, and let its data past ours. No effect once it has shown
        that it counts."""
        if self.peer_counts is None:
            self.peer_counts = False
            self._probe = None
            self._flush_all()

    def _on_window_update(self, frame: WindowUpdate) -> None:
        if self.peer_counts is None:
            self.peer_counts = True
        if frame.delta == 0:
            if frame.stream_id == 0:
                raise SpdyError("WINDOW_UPDATE of 0 for the session")
            raise StreamError(frame.stream_id, RstStatus.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if frame.stream_id == 0:
            self._session_send += frame.delta
            if self._session_send > MAX_WINDOW:
                raise SpdyError("the session's send window passed 2^31-1")
            self._events.append(WindowUpdated(0, frame.delta))
            self._flush_all()
            return
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # the stream may have ended while the update was in flight
        stream.send_window += frame.delta
        if stream.send_window > MAX_WINDOW:
            raise StreamError(
                frame.stream_id, RstStatus.FLOW_CONTROL_ERROR, "the send window passed 2^31-1"
            )
        self._events.append(WindowUpdated(frame.stream_id, frame.delta))
        self._flush(stream)

    def _receivable(self, stream_id: int, flags: int) -> _Stream | None:
        """The open stream a SYN_REPLY or HEADERS is about, None if we reset it lately."""
        if stream_id == 0:
            raise SpdyError("a stream frame for stream 0")
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id in self._reset:
                return None
            raise StreamError(
                stream_id, RstStatus.INVALID_STREAM, f"stream {stream_id} is not open"
            )
        if not stream.remote_open:
            raise StreamError(
                stream_id, RstStatus.STREAM_ALREADY_CLOSED, f"stream {stream_id} ended"
            )
        return stream

    def _remote_fin(self, stream: _Stream, flags: int) -> None:
        if flags & FLAG_FIN:
            stream.remote_open = False
            self._events.append(StreamEnded(stream.stream_id))
            self._forget_if_done(stream)

    # -- errors -------------------------------------------------------------------------

    def _stream_error(self, exc: StreamError) -> None:
        self._emit(RstStream(exc.stream_id, exc.status))
        self._drop(exc.stream_id)
        self._events.append(StreamReset(exc.stream_id, exc.status, local=True, reason=str(exc)))

    def _session_error(self, exc: SpdyError) -> None:
        if not self.closed:
            self._emit(GoAway(self._last_peer_id, exc.status))
        self.closed = True
        self._terminated = True
        self._events.append(
            ConnectionTerminated(exc.status, self._last_peer_id, str(exc), local=True)
        )

    # -- flow ----------------------------------------------------------------------------

    def _flush(self, stream: _Stream) -> None:
        while stream.pending:
            allowed = self.max_data_frame
            if self.peer_counts is not False:
                allowed = min(allowed, stream.send_window, self._session_send)
            if allowed <= 0:
                if self.peer_counts is None and self._probe is None and not self.closed:
                    self._probe = self.ping()
                return
            chunk = stream.pending.popleft()
            if len(chunk) > allowed:
                stream.pending.appendleft(chunk[allowed:])
                chunk = chunk[:allowed]
            stream.pending_bytes -= len(chunk)
            stream.send_window -= len(chunk)
            self._session_send -= len(chunk)
            last = not stream.pending and stream.pending_fin
            self._emit(Data(stream.stream_id, chunk, FLAG_FIN if last else 0))
            if last:
                stream.pending_fin = False
        if stream.pending_fin:
            stream.pending_fin = False
            self._emit(Data(stream.stream_id, b"", FLAG_FIN))
        self._forget_if_done(stream)

    def _flush_all(self) -> None:
        for stream in list(self._streams.values()):
            if stream.pending or stream.pending_fin:
                self._flush(stream)

    def _credit_session(self, amount: int) -> None:
        self._session_unacked += amount
        if self._session_unacked >= DEFAULT_WINDOW // 2:
            self._emit(WindowUpdate(0, self._session_unacked))
            self._session_recv += self._session_unacked
            self._session_unacked = 0

    # -- bookkeeping ------------------------------------------------------------------------

    def _emit(self, frame: Frame) -> None:
        self._out += self._writer.encode(frame)

    def _sendable(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            raise UsageError(f"stream {stream_id} is closed for sending")
        return stream

    def _drop(self, stream_id: int) -> None:
        """Forget a reset stream, remembering its id for the frames in flight."""
        self._streams.pop(stream_id, None)
        if stream_id not in self._reset:
            self._reset.append(stream_id)

    def _forget_if_done(self, stream: _Stream) -> None:
        if (
            not stream.local_open
            and not stream.remote_open
            and not stream.pending
            and not stream.pending_fin
        ):
            self._streams.pop(stream.stream_id, None)
