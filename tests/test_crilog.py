"""The CRI log format: records, F and P tags, long lines cut at 16 KiB."""

from __future__ import annotations

import re

import pytest

from teaching_cri.runtime.crilog import MAX_LINE, CRILogEncoder, rfc3339_nano

RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)\n$", re.DOTALL)


def parse(records: list[bytes]) -> list[tuple[str, str, bytes]]:
    out = []
    for r in records:
        m = RECORD.match(r)
        assert m, r
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    return out


def test_timestamps_are_gos_rfc3339nano() -> None:
    assert rfc3339_nano(1_764_428_645_123_456_789) == "2025-11-29T15:04:05.123456789Z"
    assert rfc3339_nano(1_764_428_645_120_000_000) == "2025-11-29T15:04:05.12Z"
    assert rfc3339_nano(1_764_428_645_000_000_000) == "2025-11-29T15:04:05Z"


def test_whole_lines_are_f_records_even_across_feeds() -> None:
    enc = CRILogEncoder("stdout", clock=lambda: 0)
    assert enc.feed(b"hel") == []
    records = enc.feed(b"lo\nworld\n\nx")
    assert records[0] == b"1970-01-01T00:00:00Z stdout F hello\n"
    assert parse(records) == [
        ("stdout", "F", b"hello"),
        ("stdout", "F", b"world"),
        ("stdout", "F", b""),
    ]
    assert parse(enc.close()) == [("stdout", "P", b"x")]
    assert enc.close() == []


def test_a_40_kib_line_is_cut_into_p_records_and_ends_with_f() -> None:
    enc = CRILogEncoder("stderr")
    line = bytes(range(256)).replace(b"\n", b"-") * 160  # 40 KiB, no newline inside
    records = parse(enc.feed(line + b"\nnext\n"))
    assert [(s, t, len(c)) for s, t, c in records] == [
        ("stderr", "P", MAX_LINE),
        ("stderr", "P", MAX_LINE),
        ("stderr", "F", 40960 - 2 * MAX_LINE),
        ("stderr", "F", 4),
    ]
    assert b"".join(c for _, _, c in records[:3]) == line


def test_a_long_line_arriving_in_small_pieces() -> None:
    enc = CRILogEncoder("stdout", max_line=10)
    out: list[bytes] = []
    for i in range(25):
        out += enc.feed(bytes([65 + i]))
    out += enc.feed(b"\n")
    tags = [(t, c) for _, t, c in parse(out)]
    assert tags == [("P", b"ABCDEFGHIJ"), ("P", b"KLMNOPQRST"), ("F", b"UVWXY")]


def test_a_line_of_exactly_the_maximum_is_one_f_record() -> None:
    enc = CRILogEncoder("stdout", max_line=4)
    assert [(t, c) for _, t, c in parse(enc.feed(b"abcd\n"))] == [("F", b"abcd")]


def test_only_stdout_and_stderr() -> None:
    with pytest.raises(ValueError, match="stdout or stderr"):
        CRILogEncoder("stdin")
