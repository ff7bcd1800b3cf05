"""The kubelet's container log format, as a sans-I/O encoder.

Every line a container writes becomes one record in the file the kubelet
reads (``kubectl logs``, log rotation, critest's parser)::

    2026-11-29T15:04:05.123456789Z stdout F hello

time (RFC 3339 with nanoseconds, as Go's ``time.RFC3339Nano`` writes it),
stream, tag and content. ``F`` marks the end of a line; ``P`` a partial one:
a line longer than the maximum (16 KiB, containerd's default) is cut into
``P`` records and ends with an ``F``, and bytes still unterminated when the
stream closes are written as ``P`` too. iSulad instead writes docker's
json-file format and symlinks it into place; critest's parser and the
kubelet's rotation want this one.

The encoder only turns bytes into records; the shim that owns the file does
the writing, so this can be tested without processes or files. How the shim
opens that file is here too (:func:`open_log`): the path is the kubelet's,
and the file must be the one it names, not one a symlink points to.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime

MAX_LINE = 16 * 1024
# No symlink followed at the last component (ELOOP), no blocking on a FIFO
# with no reader (ENXIO), not inherited by runc and the container.
LOG_OPEN_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


def open_log(path: str) -> int:
    """The container's log file, appended to, made 0640 if new. CreateContainer
    checked the way there (``manager/validate.py``: no symlink, a regular
    file); this holds when something changed since: a symlink or anything
    but a regular file at the name is an OSError, never a file elsewhere."""
    fd = os.open(path, LOG_OPEN_FLAGS, 0o640)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return fd


def rfc3339_nano(unix_ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}{'.' + fraction if fraction else ''}Z"


class CRILogEncoder:
    """Bytes of one stream (``stdout`` or ``stderr``) in, log records out."""

    def __init__(
        self, stream: str, *, max_line: int = MAX_LINE, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
        self.stream = stream
        self.max_line = max_line
        self.clock = clock
        self._pending = bytearray()

    def _record(self, tag: str, content: bytes | bytearray) -> bytes:
        head = f"{rfc3339_nano(self.clock())} {self.stream} {tag} ".encode()
        return head + bytes(content) + b"\n"

    def feed(self, data: bytes) -> list[bytes]:
        """The complete records ``data`` makes (with what came before it)."""
        self._pending += data
        out: list[bytes] = []
        while True:
            end = self._pending.find(b"\n", 0, self.max_line + 1)
            if end != -1:  # a whole line, short enough: one F record
                out.append(self._record("F", self._pending[:end]))
                del self._pending[: end + 1]
            elif len(self._pending) > self.max_line:  # too long: cut a P record off it
                out.append(self._record("P", self._pending[: self.max_line]))
                del self._pending[: self.max_line]
            else:  # the start of a line: wait for more
                return out

    def close(self) -> list[bytes]:
        """At the end of the stream: what is left, unterminated, as a partial record."""
        if not self._pending:
            return []
        record = self._record("P", self._pending)
        self._pending.clear()
        return [record]
