"""The SPDY/3.1 core (streaming/spdy.py), without sockets: two Connections
talk through their byte buffers, or a test writes frames by hand."""

from __future__ import annotations

import struct
import zlib

import pytest

from teaching_cri.streaming import spdy
from teaching_cri.streaming.spdy import (
    DICTIONARY,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    Connection,
    ConnectionTerminated,
    Data,
    DataReceived,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    GoAwayStatus,
    HeadersFrame,
    Ping,
    PingAcknowledged,
    PingReceived,
    RstStatus,
    RstStream,
    Setting,
    Settings,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
    SynReply,
    SynStream,
    UsageError,
    WindowUpdate,
)

SAMPLE_FRAMES: list[Frame] = [
    SynStream(1, {"streamtype": "error", "port": "8080"}, FLAG_FIN, 0, 3),
    SynStream(3, {"streamtype": "stdin"}, FLAG_UNIDIRECTIONAL, 1, 7),
    SynReply(1, {}),
    SynReply(3, {"x": "a\x00b"}, FLAG_FIN),
    HeadersFrame(3, {"status": "ok"}, FLAG_FIN),
    RstStream(5, RstStatus.FLOW_CONTROL_ERROR),
    Settings({Setting.INITIAL_WINDOW_SIZE: 1 << 20, Setting.MAX_CONCURRENT_STREAMS: 10}),
    Settings({}, spdy.FLAG_SETTINGS_CLEAR),
    Ping(7),
    GoAway(9, GoAwayStatus.INTERNAL_ERROR),
    WindowUpdate(0, 12345),
    WindowUpdate(3, 0x7FFFFFFF),
    Data(3, b"hello\x00world", FLAG_FIN),
    Data(1, b""),
    SynStream(5, {"streamtype": "error", "port": "8080"}),  # compressed against the first
]


class Peer:
    """A Connection and a reader of what it sends (its own zlib context)."""

    def __init__(self, **kwargs: bool | int) -> None:
        self.conn = Connection(**kwargs)  # type: ignore[arg-type]
        self.reader = FrameReader()

    def frames(self) -> list[Frame]:
        self.reader.feed(self.conn.data_to_send())
        out = []
        while (frame := self.reader.next_frame()) is not None:
            out.append(frame)
        return out


def pump(a: Connection, b: Connection) -> None:
    """Carry bytes both ways until both are quiet."""
    while True:
        ab, ba = a.data_to_send(), b.data_to_send()
        if not ab and not ba:
            return
        b.receive_data(ab)
        a.receive_data(ba)


def pair(**server: bool | int) -> tuple[Connection, Connection]:
    return Connection(client=True), Connection(client=False, **server)  # type: ignore[arg-type]


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_a_block_from_an_independent_compressor_is_read() -> None:
    """What a Go peer sends: its own zlib stream primed with the dictionary,
    whose header names the dictionary by its Adler-32."""
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    block = spdy.pack_header_block({"streamtype": "stdout", "requestid": "0"})
    compressed = z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)
    assert compressed[1] & 0x20  # FDICT
    assert struct.unpack(">I", compressed[2:6])[0] == zlib.adler32(DICTIONARY)
    decompressor = spdy.HeaderDecompressor(1 << 16)
    assert decompressor.decompress(compressed, 1) == {"streamtype": "stdout", "requestid": "0"}
    # and ours, read by a plain zlib decompressor with the dictionary
    ours = spdy.HeaderCompressor().compress({"port": "80"})
    plain = zlib.decompressobj(zdict=DICTIONARY)
    assert spdy.unpack_header_block(plain.decompress(ours), 1) == {"port": "80"}


def test_frames_round_trip() -> None:
    writer, reader = FrameWriter(), FrameReader()
    for frame in SAMPLE_FRAMES:
        reader.feed(writer.encode(frame))
        assert reader.next_frame() == frame
    assert reader.next_frame() is None


def test_frames_split_at_every_byte_boundary() -> None:
    writer = FrameWriter()
    wire = b"".join(writer.encode(frame) for frame in SAMPLE_FRAMES)
    for cut in range(len(wire) + 1):
        reader = FrameReader()
        got: list[Frame] = []
        for piece in (wire[:cut], wire[cut:]):
            reader.feed(piece)
            while (frame := reader.next_frame()) is not None:
                got.append(frame)
        assert got == SAMPLE_FRAMES, cut
        assert reader.buffered == 0


def test_a_session_fed_a_byte_at_a_time() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": "stdout"})
    client.send_data(sid, b"x" * 1000, fin=True)
    for byte in client.data_to_send():
        server.receive_data(bytes((byte,)))
    events = server.events()
    assert events[0] == StreamOpened(1, {"streamtype": "stdout"})
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"x" * 1000
    assert events[-1] == StreamEnded(1)


def test_the_compression_context_spans_the_session() -> None:
    writer = FrameWriter()
    headers = {"streamtype": "stdout", "port": "8080", "requestid": "17"}
    first = writer.encode(SynStream(1, headers))
    second = writer.encode(SynStream(3, headers))
    assert len(second) < len(first) - 10  # the second refers back to the first
    reader = FrameReader()
    reader.feed(first + second)
    assert reader.next_frame() == SynStream(1, headers)
    assert reader.next_frame() == SynStream(3, headers)
    stranger = FrameReader()  # a reader that missed the first block cannot read the second
    stranger.feed(second)
    with pytest.raises(spdy.SpdyError):
        stranger.next_frame()


def test_a_corrupt_header_block_ends_the_session() -> None:
    client = Connection(client=True)
    server = Peer(client=False)
    client.open_stream({"streamtype": "error"})
    wire = bytearray(client.data_to_send())
    wire[20] ^= 0xFF  # inside the compressed block
    wire[21] ^= 0xFF
    server.conn.receive_data(bytes(wire))
    (event,) = server.conn.events()
    assert isinstance(event, ConnectionTerminated) and event.local
    assert event.status == GoAwayStatus.PROTOCOL_ERROR
    assert server.frames() == [GoAway(0, GoAwayStatus.PROTOCOL_ERROR)]
    server.conn.receive_data(Connection(client=True).data_to_send() + b"more")
    assert server.conn.events() == [] and server.frames() == []


def test_a_bad_header_block_content_resets_only_its_stream() -> None:
    writer = FrameWriter()
    server = Peer(client=False)
    bad = writer.encode(SynStream(1, {"streamtype": "x"}))
    raw = struct.pack(">I", 1) + struct.pack(">I", 4) + b"Port" + struct.pack(">I", 2) + b"80"
    compressed = writer.headers._z.compress(raw) + writer.headers._z.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">IIBB", 3, 0, 0, 0) + compressed
    upper = struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    good = writer.encode(SynStream(5, {"port": "80"}))
    server.conn.receive_data(bad + upper + good)
    events = server.conn.events()
    assert [type(e) for e in events] == [StreamOpened, StreamReset, StreamOpened]
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == [1, 5]
    reset = events[1]
    assert isinstance(reset, StreamReset) and (reset.stream_id, reset.local) == (3, True)
    assert "'Port' is not lowercase" in reset.reason, "the I/O layer logs why"
    assert server.frames() == [RstStream(3, RstStatus.PROTOCOL_ERROR)]


def test_a_window_overrun_is_a_flow_control_error() -> None:
    client = Connection(client=True, flow_control=False)  # a sender that does not count
    server = Peer(client=False, initial_window=1024)  # announced in a SETTINGS frame
    assert server.frames() == [Settings({Setting.INITIAL_WINDOW_SIZE: 1024})]
    sid = client.open_stream({"streamtype": "stdin"})
    client.send_data(sid, b"a" * 1024)
    server.conn.receive_data(client.data_to_send())
    assert server.frames() == []  # exactly the window: fine
    client.send_data(sid, b"b")
    server.conn.receive_data(client.data_to_send())
    assert server.frames() == [RstStream(sid, RstStatus.FLOW_CONTROL_ERROR)]
    reset = server.conn.events()[-1]
    assert isinstance(reset, StreamReset)
    assert (reset.stream_id, reset.status, reset.local) == (sid, RstStatus.FLOW_CONTROL_ERROR, True)
    assert "window by 1 bytes" in reset.reason
    assert not server.conn.is_open(sid)


def test_a_session_window_overrun_ends_the_session() -> None:
    client = Connection(client=True, flow_control=False)
    server = Peer(client=False)
    for _ in range(2):
        client.send_data(client.open_stream({}), b"a" * 40_000)
    server.conn.receive_data(client.data_to_send())
    assert server.frames() == [GoAway(3, GoAwayStatus.PROTOCOL_ERROR)]


def test_data_beyond_the_peers_window_waits_for_window_update() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": "stdout"})
    pump(client, server)
    server.events()
    server.reply(sid)
    server.send_data(sid, b"o" * 100_000, fin=True)
    assert server.pending(sid) == 100_000 - 64 * 1024
    pump(client, server)
    got = [e for e in client.events() if isinstance(e, DataReceived)]
    assert sum(len(e.data) for e in got) == 64 * 1024
    assert server.pending(sid) == 100_000 - 64 * 1024  # no credit yet: nothing moves
    for event in got:  # the application takes it: WINDOW_UPDATEs go back
        client.consumed(sid, len(event.data))
    pump(client, server)
    rest = client.events()
    assert sum(len(e.data) for e in rest if isinstance(e, DataReceived)) == 100_000 - 64 * 1024
    assert rest[-1] == StreamEnded(sid)
    assert server.pending() == 0


def test_without_flow_control_nothing_waits() -> None:
    client, server = pair(flow_control=False)
    sid = client.open_stream({"streamtype": "stdout"})
    pump(client, server)
    server.reply(sid)
    server.send_data(sid, b"o" * 200_000)
    assert server.pending(sid) == 0


def test_an_initial_window_setting_moves_every_stream() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": "stdout"})
    pump(client, server)
    server.reply(sid)
    server.send_data(sid, b"o" * 70_000)
    assert server.pending(sid) == 70_000 - 64 * 1024
    client.send_settings({Setting.INITIAL_WINDOW_SIZE: 128 * 1024})
    client.consumed(sid, 64 * 1024)  # the session window needs credit too
    pump(client, server)
    assert server.pending(sid) == 0


def test_a_reused_stream_id() -> None:
    writer = FrameWriter()
    server = Peer(client=False)
    server.conn.receive_data(writer.encode(SynStream(1, {})) + writer.encode(SynStream(1, {})))
    assert server.frames() == [RstStream(1, RstStatus.STREAM_IN_USE)]
    server.conn.receive_data(writer.encode(SynStream(5, {})) + writer.encode(SynStream(3, {})))
    assert server.frames() == [GoAway(5, GoAwayStatus.PROTOCOL_ERROR)]


def test_a_client_may_not_open_an_even_stream() -> None:
    server = Peer(client=False)
    server.conn.receive_data(FrameWriter().encode(SynStream(2, {})))
    assert server.frames() == [GoAway(0, GoAwayStatus.PROTOCOL_ERROR)]


def test_ping_is_answered() -> None:
    client, server = pair()
    ping_id = client.ping()
    assert ping_id == 1
    pump(client, server)
    assert server.events() == [PingReceived(1)]
    assert client.events() == [PingAcknowledged(1)]
    assert server.ping() == 2


def test_a_ping_answer_nobody_asked_for_is_ignored() -> None:
    server = Peer(client=False)
    server.conn.receive_data(FrameWriter().encode(Ping(4)))
    assert server.conn.events() == [] and server.frames() == []


def test_a_stream_both_ways_then_forgotten() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": "stdin"})
    pump(client, server)
    assert server.events() == [StreamOpened(sid, {"streamtype": "stdin"})]
    with pytest.raises(UsageError):
        server.send_data(sid, b"too early")  # SYN_REPLY first
    server.reply(sid)
    client.send_data(sid, b"in", fin=True)
    server.send_data(sid, b"out", fin=True)
    pump(client, server)
    assert client.events() == [StreamReplied(sid, {}), DataReceived(sid, b"out"), StreamEnded(sid)]
    assert server.events() == [DataReceived(sid, b"in"), StreamEnded(sid)]
    assert client.open_streams == [] and server.open_streams == []


def test_data_on_a_stream_that_is_not_open() -> None:
    writer = FrameWriter()
    server = Peer(client=False)
    server.conn.receive_data(writer.encode(Data(9, b"?")))
    assert server.frames() == [RstStream(9, RstStatus.INVALID_STREAM)]
    server.conn.receive_data(writer.encode(SynStream(11, {}, FLAG_FIN)))
    server.conn.reply(11)
    server.frames()
    server.conn.receive_data(writer.encode(Data(11, b"late")))
    assert server.frames() == [RstStream(11, RstStatus.STREAM_ALREADY_CLOSED)]
    server.conn.receive_data(writer.encode(Data(11, b"in flight")))
    assert server.frames() == []  # we reset it: frames still coming are dropped


def test_the_peers_reset_and_goaway() -> None:
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.events()
    client.reset_stream(sid, RstStatus.CANCEL)
    pump(client, server)
    assert server.events() == [StreamReset(sid, RstStatus.CANCEL)]
    client.go_away()
    pump(client, server)
    assert server.events() == [ConnectionTerminated(GoAwayStatus.OK, 0)]
    assert server.closed
    with pytest.raises(UsageError):
        server.open_stream({})


def test_unknown_control_frames_are_skipped() -> None:
    server = Peer(client=False)
    noop = struct.pack(">HHI", 0x8003, 5, 0)
    server.conn.receive_data(noop + FrameWriter().encode(Ping(1)))
    assert server.conn.events() == [PingReceived(1)]


def test_a_frame_past_the_limit_ends_the_session_before_it_arrives() -> None:
    server = Peer(client=False, max_frame=1024)
    server.conn.receive_data(struct.pack(">II", 1, 5000))
    assert server.frames() == [GoAway(0, GoAwayStatus.PROTOCOL_ERROR)]


def test_wrong_lengths_and_versions_are_session_errors() -> None:
    for wire in (
        struct.pack(">HHI", 0x8003, 6, 3) + b"abc",  # PING of 3 bytes
        struct.pack(">HHI", 0x8002, 6, 4) + b"abcd",  # SPDY/2
        struct.pack(">HHI", 0x8003, 4, 8) + struct.pack(">II", 5, 0),  # 5 settings in 8 bytes
    ):
        server = Peer(client=False)
        server.conn.receive_data(wire)
        assert server.frames() == [GoAway(0, GoAwayStatus.PROTOCOL_ERROR)]


def test_too_many_streams_are_refused() -> None:
    client, server = pair(max_streams=2)
    ids = [client.open_stream({}) for _ in range(3)]
    pump(client, server)
    assert [e.stream_id for e in server.events() if isinstance(e, StreamOpened)] == ids[:2]
    assert client.events() == [StreamReset(ids[2], RstStatus.REFUSED_STREAM)]


# -- the flow-control rule for peers that may not count (the module's docstring) ----------


def learning_pair(**client: bool | int) -> tuple[Connection, Connection, int]:
    """A learning server and a client with one stdout stream replied to."""
    c = Connection(client=True, **client)  # type: ignore[arg-type]
    s = Connection(client=False, flow_control=None)
    sid = c.open_stream({"streamtype": "stdout"})
    pump(c, s)
    s.events()
    s.reply(sid)
    return c, s, sid


def test_a_silent_peer_is_probed_then_sent_to_without_windows() -> None:
    """spdystream reads everything and never says WINDOW_UPDATE: once a window is
    spent our PING asks; its answer is the I/O layer's cue to stop waiting."""
    client, server, sid = learning_pair(flow_control=False)
    server.send_data(sid, b"o" * 100_000, fin=True)
    assert server.pending(sid) == 100_000 - 64 * 1024
    out = server.data_to_send()
    reader = FrameReader()
    reader.feed(out)
    frames = []
    while (frame := reader.next_frame()) is not None:
        frames.append(frame)
    assert frames[-1] == Ping(2), "the probe follows the window's last byte"
    client.receive_data(out)  # the client takes the data in, and answers only the PING
    server.receive_data(client.data_to_send())
    assert server.events() == [spdy.WindowProbeAnswered(2)]
    assert server.peer_counts is None and server.pending(sid) > 0, "the grace is the I/O layer's"
    server.ignore_peer_windows()
    assert server.peer_counts is False and server.pending(sid) == 0
    client.receive_data(server.data_to_send())
    got = [e for e in client.events() if isinstance(e, DataReceived)]
    assert sum(len(e.data) for e in got) == 100_000


def test_a_window_update_shows_the_peer_counts_and_binds_it() -> None:
    client, server, sid = learning_pair()
    server.send_data(sid, b"o" * 70_000)
    pump(client, server)
    for event in client.events():
        if isinstance(event, DataReceived):
            client.consumed(sid, len(event.data))
    pump(client, server)
    assert server.peer_counts is True
    assert server.pending(sid) == 0
    server.ignore_peer_windows()  # too late: it counts
    assert server.peer_counts is True
    stdin = client.open_stream({"streamtype": "stdin"})
    pump(client, server)
    server.events()
    server.reply(stdin)
    pump(client, server)
    client.peer_counts = False  # the client misbehaves from here on
    client.send_data(stdin, b"i" * (64 * 1024 + 1))
    server.receive_data(client.data_to_send())
    ended = server.events()[-1]
    assert isinstance(ended, ConnectionTerminated) and ended.local
    assert "past the session's window" in ended.reason


def test_data_past_our_window_from_an_unknown_peer_shows_it_does_not_count() -> None:
    """spdystream's stdin: a large write goes out whatever our window says; it is
    taken in (the I/O layer bounds it by not reading), and our held data goes too."""
    client, server, sid = learning_pair(flow_control=False)
    server.send_data(sid, b"o" * 70_000)
    assert server.pending(sid) > 0
    stdin = client.open_stream({"streamtype": "stdin"})
    pump(client, server)
    server.events()
    server.reply(stdin)
    pump(client, server)
    client.send_data(stdin, b"i" * 100_000)
    server.receive_data(client.data_to_send())
    events = server.events()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 100_000
    assert not [e for e in events if isinstance(e, StreamReset | spdy.ConnectionTerminated)]
    assert server.peer_counts is False and server.pending(sid) == 0
