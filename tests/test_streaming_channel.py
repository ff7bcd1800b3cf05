"""The Kubernetes channel protocols, on messages alone (no sockets)."""

from __future__ import annotations

import base64
import json

import pytest

from teaching_cri.streaming.channel import (
    CLOSE,
    ERROR,
    RESIZE,
    STDIN,
    STDOUT,
    ChannelError,
    Protocol,
    lowest_writable,
    negotiate,
    parse_resize,
)


def test_the_newest_offered_protocol_wins() -> None:
    assert negotiate(["channel.k8s.io", "v4.channel.k8s.io"]).name == "v4.channel.k8s.io"  # type: ignore[union-attr]
    assert negotiate(["base64.channel.k8s.io"]).name == "base64.channel.k8s.io"  # type: ignore[union-attr]
    assert negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"]).version == 5  # type: ignore[union-attr]
    assert negotiate(["SPDY/3.1", "chat"]) is None


def test_binary_frames_carry_any_byte_including_nul() -> None:
    v4 = Protocol("v4.channel.k8s.io")
    payload = b"a\x00b\xff"
    assert v4.encode(STDOUT, payload) == b"\x01" + payload
    assert v4.split(b"\x00" + payload) == (STDIN, payload), "not cut at the NUL"


def test_base64_frames_are_text_with_a_channel_digit() -> None:
    b64 = Protocol("v4.base64.channel.k8s.io")
    assert b64.encode(STDOUT, b"\x00hi") == "1" + base64.b64encode(b"\x00hi").decode()
    assert b64.split("0" + base64.b64encode(b"in\x00").decode()) == (STDIN, b"in\x00")
    with pytest.raises(ChannelError, match="base64"):
        b64.split("0not base64!")
    with pytest.raises(ChannelError, match="text messages"):
        b64.split(b"\x00raw")
    with pytest.raises(ChannelError, match="not a digit"):
        b64.split("x" + base64.b64encode(b"in").decode())


def test_resize_and_the_v5_close_frame() -> None:
    v5 = Protocol("v5.channel.k8s.io")
    channel, payload = v5.split(b"\x04" + json.dumps({"Width": 132, "Height": 43}).encode())
    assert channel == RESIZE and parse_resize(payload) == (132, 43)
    assert v5.split(bytes([255, 0])) == (CLOSE, b"\x00")
    with pytest.raises(ChannelError, match="exactly one"):
        v5.split(bytes([255, 0, 1]))
    v4 = Protocol("v4.channel.k8s.io")
    assert v4.split(bytes([255, 0, 1])) == (255, b"\x00\x01"), "v4 has no close frame"
    with pytest.raises(ChannelError, match="Width"):
        parse_resize(b"{}")
    with pytest.raises(ChannelError, match="out of range"):
        parse_resize(b'{"Width": 0, "Height": 24}')
    with pytest.raises(ChannelError, match="channel byte"):
        v5.split(b"")


def test_an_error_is_a_failure_status_with_its_reason_and_code() -> None:
    doc = json.loads(Protocol("v5.channel.k8s.io").error("no", reason="BadRequest", code=400)[1:])
    assert doc == {
        "metadata": {},
        "status": "Failure",
        "message": "no",
        "reason": "BadRequest",
        "code": 400,
    }
    assert Protocol("channel.k8s.io").error("no") == b"\x03no", "before v4: the text"


def test_exit_status_is_a_kubernetes_status_from_v4_on() -> None:
    v4 = Protocol("v4.channel.k8s.io")
    ok = v4.exit_status(0)
    assert isinstance(ok, bytes) and ok[0] == ERROR
    assert json.loads(ok[1:]) == {"metadata": {}, "status": "Success"}
    failed = v4.exit_status(3, ["sh", "-c", "exit 3"])
    assert isinstance(failed, bytes)
    doc = json.loads(failed[1:])
    assert doc["status"] == "Failure" and doc["reason"] == "NonZeroExitCode"
    assert doc["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    old = Protocol("channel.k8s.io")
    assert old.exit_status(0) is None
    assert old.exit_status(3) == b"\x03command terminated with non-zero exit code: 3"


def test_the_ready_frame_goes_to_the_lowest_writable_channel() -> None:
    assert lowest_writable(stdout=True, stderr=True) == 1
    assert lowest_writable(stdout=False, stderr=True) == 2
    assert lowest_writable(stdout=False, stderr=False) == 3
