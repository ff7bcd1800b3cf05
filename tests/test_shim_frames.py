"""The shim's frame codec, on bytes alone (no sockets, no shim)."""

from __future__ import annotations

import pytest

from teaching_cri.runtime import frames


def test_a_frame_round_trips_whatever_the_reads_cut_it_into() -> None:
    wire = frames.encode_json(frames.HELLO, {"op": "attach", "stdin": True}) + frames.encode(
        frames.STDIN, b"hello\n"
    )
    for cut in range(1, len(wire)):
        decoder = frames.FrameDecoder()
        got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert got == [
            (frames.HELLO, b'{"op":"attach","stdin":true}'),
            (frames.STDIN, b"hello\n"),
        ]
        assert decoder.pending == 0


def test_an_incomplete_frame_waits() -> None:
    decoder = frames.FrameDecoder()
    wire = frames.encode(frames.STDOUT, b"abc")
    assert decoder.feed(wire[:-1]) == []
    assert decoder.pending == len(wire) - 1
    assert decoder.feed(wire[-1:]) == [(frames.STDOUT, b"abc")]


def test_a_big_stream_is_cut_into_frames_no_bigger_than_the_limit() -> None:
    data = bytes(range(256)) * ((frames.MAX_PAYLOAD * 2 + 1000) // 256)
    got = frames.FrameDecoder().feed(frames.encode_stream(frames.STDOUT, data))
    assert all(len(p) <= frames.MAX_PAYLOAD for _, p in got)
    assert len(got) == 3
    assert b"".join(p for _, p in got) == data


def test_an_oversized_length_is_a_protocol_error_not_a_huge_buffer() -> None:
    bogus = frames.HEADER.pack(frames.STDIN, frames.MAX_PAYLOAD + 1)
    with pytest.raises(frames.ProtocolError, match="exceeds"):
        frames.FrameDecoder().feed(bogus)
    with pytest.raises(frames.ProtocolError):
        frames.encode(frames.STDIN, b"x" * (frames.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]"])
def test_json_payloads_must_be_objects(payload: bytes) -> None:
    with pytest.raises(frames.ProtocolError):
        frames.decode_json(payload)
