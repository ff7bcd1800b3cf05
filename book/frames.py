"""The frame diagrams of the streaming chapter, drawn with graphviz.

Each diagram is one graphviz node whose label is an HTML-like table: a frame
laid out field by field (32 bits to a row, a field as wide as its bits, as
the SPDY draft draws them), or a session as rows of messages in time order.
``write_frame_diagrams(DIR)`` writes every SVG into DIR; the chapter
(``streaming.md``) shows them with alt text of its own.
"""

# The diagrams' text is kept one string per cell, as it is drawn, whatever its length.
# ruff: noqa: E501

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import graphviz

FONT = "Helvetica"
HEAD = "#e8eef7"
CLIENT = "#e6f4ea"  # client to server
SERVER = "#fdf1dc"  # server to client
Field = tuple[str, int]  # (text, width in bits; 0 for "the rest")


def _esc(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "<br/>")


def bit_layout(title: str, rows: Sequence[Sequence[Field]], note: str = "") -> str:
    """A frame as rows of 32 bits: each field a cell spanning its width."""
    cells = [
        f'<tr><td colspan="32" bgcolor="{HEAD}"><b>{_esc(title)}</b></td></tr>',
        "<tr>"
        + "".join(
            f'<td colspan="8"><font point-size="9">bits {i}–{i + 7}</font></td>'
            for i in (0, 8, 16, 24)
        )
        + "</tr>",
    ]
    for row in rows:
        tds = []
        for text, bits in row:
            span = bits or 32
            height = ' height="40"' if bits == 0 else ""
            tds.append(f'<td colspan="{span}"{height}>{_esc(text)}</td>')
        cells.append("<tr>" + "".join(tds) + "</tr>")
    if note:
        cells.append(
            f'<tr><td colspan="32" align="left"><font point-size="10">{_esc(note)}</font></td></tr>'
        )
    return (
        "<"
        + '<table border="0" cellborder="1" cellspacing="0" cellpadding="5">'
        + "".join(cells)
        + "</table>>"
    )


def message_rows(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of messages; a row whose first cell starts with → is the client's."""
    width = len(header)
    cells = [
        f'<tr><td colspan="{width}" bgcolor="{HEAD}"><b>{_esc(title)}</b></td></tr>',
        "<tr>" + "".join(f"<td><b>{_esc(h)}</b></td>" for h in header) + "</tr>",
    ]
    for row in rows:
        color = CLIENT if row[0].startswith("→") else SERVER
        cells.append(
            "<tr>"
            + "".join(f'<td bgcolor="{color}" align="left">{_esc(c)}</td>' for c in row)
            + "</tr>"
        )
    return (
        "<"
        + '<table border="0" cellborder="1" cellspacing="0" cellpadding="5">'
        + "".join(cells)
        + "</table>>"
    )


def _svg(name: str, labels: Sequence[str]) -> str:
    dot = graphviz.Digraph(name, graph_attr={"rankdir": "TB", "nodesep": "0.4", "ranksep": "0.3"})
    dot.attr("node", shape="plaintext", fontname=FONT, fontsize="11")
    previous = ""
    for i, label in enumerate(labels):
        node = f"n{i}"
        dot.node(node, label)
        if previous:
            dot.edge(previous, node, style="invis")
        previous = node
    svg: bytes = dot.pipe(format="svg")
    return svg.decode("utf-8")


def websocket_channel_frames() -> str:
    return _svg(
        "websocket-channels",
        [
            bit_layout(
                "channel.k8s.io, v4.channel.k8s.io, v5.channel.k8s.io: one binary websocket message",
                [
                    [
                        ("FIN=1", 1),
                        ("RSV", 3),
                        ("opcode 2 (binary)", 4),
                        ("MASK", 1),
                        ("payload length (7, +16 or +64 bits)", 23),
                    ],
                    [("masking key (client to server only, 32 bits)", 32)],
                    [
                        ("channel (1 byte): 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize", 8),
                        ("payload: the stream's bytes, raw (NUL bytes included)", 24),
                    ],
                ],
                "The websocket frame carries the message; the message's first byte names the channel.",
            ),
            bit_layout(
                "base64.channel.k8s.io, v4.base64.channel.k8s.io: one text websocket message",
                [
                    [
                        ("FIN=1", 1),
                        ("RSV", 3),
                        ("opcode 1 (text)", 4),
                        ("MASK", 1),
                        ("payload length", 23),
                    ],
                    [
                        ("channel as an ASCII digit: '0'…'4'", 8),
                        ('payload: base64 of the bytes, with padding ("Zm9vCg==" is "foo\\n")', 24),
                    ],
                ],
            ),
            bit_layout(
                "v5.channel.k8s.io only: the client closes a channel (stdin's end of file)",
                [
                    [
                        ("255 (CLOSE)", 8),
                        ("channel closed, e.g. 0", 8),
                        ("nothing more: exactly 2 bytes", 16),
                    ]
                ],
            ),
            bit_layout(
                "v4 and v5: the error channel's last message, the exit status",
                [
                    [
                        ("3 (error)", 8),
                        (
                            '{"status":"Success"} or {"status":"Failure","reason":"NonZeroExitCode", "details":{"causes":[{"reason":"ExitCode","message":"1"}]}}',
                            24,
                        ),
                    ]
                ],
                "Before v4 the error channel carries only an error's text, and nothing on success.",
            ),
        ],
    )


def websocket_exec_session() -> str:
    return _svg(
        "websocket-exec",
        [
            message_rows(
                "An exec over v4.channel.k8s.io: `sh -c 'read x; echo $x; exit 3'` with stdin",
                ("direction", "bytes on the wire", "what it is"),
                [
                    (
                        "→ client",
                        "GET /cri/exec/TOKEN\nUpgrade: websocket\nSec-WebSocket-Protocol: v4.channel.k8s.io",
                        "the URL Exec answered; the token is good once, for a minute",
                    ),
                    (
                        "← server",
                        "101 Switching Protocols\nSec-WebSocket-Protocol: v4.channel.k8s.io",
                        "FILTER_PROTOCOL_CONNECTION accepted it",
                    ),
                    (
                        "← server",
                        "[0x01]",
                        "ESTABLISHED: an empty message on the first output channel: ready",
                    ),
                    ("→ client", "[0x00] hi\\n", "RECEIVE: stdin"),
                    ("→ client", '[0x04] {"Width":80,"Height":24}', "RECEIVE: resize (tty only)"),
                    ("← server", "[0x01] hi\\n", "SERVER_WRITEABLE: stdout"),
                    (
                        "← server",
                        '[0x03] {"status":"Failure","reason":"NonZeroExitCode",…"message":"3"…}',
                        "the exit status on the error channel",
                    ),
                    ("← server", "close 1000", "CLOSED: the session ends"),
                ],
            )
        ],
    )


def spdy_frames() -> str:
    return _svg(
        "spdy-frames",
        [
            bit_layout(
                "SPDY/3.1 control frame (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE)",
                [
                    [
                        ("C=1", 1),
                        ("version = 3 (15 bits)", 15),
                        (
                            "type (16 bits): 1 SYN_STREAM, 2 SYN_REPLY, 3 RST_STREAM, …, 9 WINDOW_UPDATE",
                            16,
                        ),
                    ],
                    [("flags (8)", 8), ("length of what follows (24 bits)", 24)],
                    [("the frame's fields", 0)],
                ],
            ),
            bit_layout(
                "SYN_STREAM (type 1): the client opens a stream",
                [
                    [("X", 1), ("stream id (31 bits; the client's are odd)", 31)],
                    [("X", 1), ("associated stream id (31 bits)", 31)],
                    [
                        ("priority (3)", 3),
                        ("unused (5)", 5),
                        ("slot (8)", 8),
                        ("header block →", 16),
                    ],
                    [
                        (
                            "header block: name/value pairs, zlib-compressed with the SPDY/3 dictionary, one zlib context per direction for the whole session",
                            0,
                        )
                    ],
                ],
                "Flags: FIN (0x01) the sender will send nothing more on it, UNIDIRECTIONAL (0x02).",
            ),
            bit_layout(
                "DATA frame: a stream's bytes",
                [
                    [("C=0", 1), ("stream id (31 bits)", 31)],
                    [("flags (8): FIN 0x01", 8), ("length (24 bits)", 24)],
                    [("data", 0)],
                ],
                "A DATA frame uses up the receiver's window (stream and session); WINDOW_UPDATE gives it back.",
            ),
            bit_layout(
                "WINDOW_UPDATE (type 9): flow control, per stream or for the session (stream id 0)",
                [
                    [("X", 1), ("stream id (31 bits)", 31)],
                    [("X", 1), ("delta-window-size (31 bits)", 31)],
                ],
                "Go's spdystream never sends one; the server holds to a client's windows only once the client has shown it counts them.",
            ),
        ],
    )


def spdy_exec_streams() -> str:
    return _svg(
        "spdy-exec",
        [
            message_rows(
                "An exec over SPDY/3.1 (v4.channel.k8s.io): one SPDY stream per channel",
                ("direction", "frame", "what it is"),
                [
                    (
                        "→ client",
                        "GET /cri/exec/TOKEN\nUpgrade: SPDY/3.1\nX-Stream-Protocol-Version: v4.channel.k8s.io",
                        "the same URL as the websocket's",
                    ),
                    (
                        "← server",
                        "101 Switching Protocols\nX-Stream-Protocol-Version: v4.channel.k8s.io",
                        "the version picked (400 without the header, 403 with none in common)",
                    ),
                    (
                        "→ client",
                        "SYN_STREAM id=1 streamType: error",
                        "opened first; the server waits 30 s for the streams the request names",
                    ),
                    ("→ client", "SYN_STREAM id=3 streamType: stdin", "only with stdin"),
                    ("→ client", "SYN_STREAM id=5 streamType: stdout", ""),
                    ("→ client", "SYN_STREAM id=7 streamType: resize", "only with a tty"),
                    ("← server", "SYN_REPLY id=1, 3, 5, 7", "each stream accepted"),
                    (
                        "→ client",
                        "DATA id=3 'hi\\n', then DATA id=3 FIN",
                        "stdin, then its end: the process reads end of file",
                    ),
                    ("← server", "DATA id=5 'hi\\n'", "stdout"),
                    (
                        "← server",
                        'DATA id=1 {"status":"Success"} FIN',
                        "the exit status on the error stream",
                    ),
                    ("← server", "GOAWAY, then the connection closes", ""),
                ],
            )
        ],
    )


def port_forward() -> str:
    return _svg(
        "port-forward",
        [
            message_rows(
                "Port-forward over websocket (v4.channel.k8s.io, ?port=80&port=443)",
                ("direction", "message", "what it is"),
                [
                    (
                        "← server",
                        "[0x00] 0x50 0x00",
                        "channel 0: data of the first port; its first message is the port, little-endian uint16 (80)",
                    ),
                    (
                        "← server",
                        "[0x01] 0x50 0x00",
                        "channel 1: errors of the first port, the same prefix",
                    ),
                    (
                        "← server",
                        "[0x02] 0xbb 0x01  /  [0x03] 0xbb 0x01",
                        "channels 2 and 3: the second port (443)",
                    ),
                    (
                        "→ client",
                        "[0x00] GET / HTTP/1.1…",
                        "bytes for port 80 inside the pod's network namespace",
                    ),
                    ("← server", "[0x00] HTTP/1.1 200 OK…", "what the port answered"),
                ],
            ),
            message_rows(
                "Port-forward over SPDY/3.1 (portforward.k8s.io): two streams per forwarded connection",
                ("direction", "frame", "what it is"),
                [
                    (
                        "→ client",
                        "SYN_STREAM id=1 streamType: error, port: 80, requestID: 0",
                        "the connection's error stream",
                    ),
                    (
                        "→ client",
                        "SYN_STREAM id=3 streamType: data, port: 80, requestID: 0",
                        "its data stream, joined to the error stream by requestID",
                    ),
                    ("→ client", "DATA id=3 GET / HTTP/1.1…", "to port 80 in the pod"),
                    ("← server", "DATA id=3 HTTP/1.1 200 OK…", "back from it"),
                    (
                        "← server",
                        "DATA id=1 'failed to connect…' (only on failure)",
                        "a failed connect is a message on the error stream",
                    ),
                ],
            ),
            message_rows(
                "SPDY tunnelled in websocket (subprotocol SPDY/3.1+portforward.k8s.io)",
                ("direction", "websocket message", "what it is"),
                [
                    (
                        "→ client",
                        "GET /cri/portforward/TOKEN\nUpgrade: websocket\nSec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io",
                        "client-go's newer dialers",
                    ),
                    (
                        "→ client",
                        "binary message: the bytes of SPDY frames",
                        "the same SPDY session as above, with websocket messages for a TCP stream",
                    ),
                    (
                        "← server",
                        "binary message: the bytes of SPDY frames",
                        "message boundaries mean nothing: a frame may span messages",
                    ),
                ],
            ),
        ],
    )


DIAGRAMS = {
    "websocket-channels.svg": websocket_channel_frames,
    "websocket-exec.svg": websocket_exec_session,
    "spdy-frames.svg": spdy_frames,
    "spdy-exec.svg": spdy_exec_streams,
    "port-forward.svg": port_forward,
}


def write_frame_diagrams(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in DIAGRAMS.items():
        (out / name).write_text(draw())
        written.append(out / name)
    return written
