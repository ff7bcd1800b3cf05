"""The server's side of the shim: spawn one, and talk to it over ``shim.sock``.

:func:`spawn_shim` starts :mod:`.shim` with the interpreter that runs the
server (``sys.executable``, never a PATH lookup: the shim must be the code
this server was installed with), isolated (``-I -S``: no site-packages scan,
no environment, it imports only the standard library and two of our modules),
and waits for the first line it prints: its own pid, the shim is there.
``runc create`` runs after that line, on the shim's own: its second line (the
container's init pid, or why ``runc create`` failed) is read later, by
whoever needs the init (:class:`ShimReport`), as iSulad's ``shim_create``
(``fg=false``) returns before the shim's ``runc create`` and its
``rt_isula_start`` waits for the shim's pid file.

:class:`ProcessStream` is a connection to a process's stdio, the init's
(attach) or an exec's, in terms that do not depend on how the bytes reach the
user: the websocket and SPDY streaming servers sit on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FailedPrecondition, Internal, NotFound
from . import frames, shim

SPAWN_TIMEOUT = 60.0
READ_SIZE = 256 * 1024  # from a shim: several of its frames per read
MAX_JOINED = 1 << 20  # output joined into one piece at most (a websocket message)
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from teaching_cri.runtime.{module} import main; main(sys.argv[2:])"
)


def package_root() -> str:
    """The directory that holds the ``teaching_cri`` package, for the shim's sys.path."""
    return str(Path(__file__).resolve().parents[2])


class ShimReport:
    """The pipe a shim reports on: a line when it is there (its pid), a line
    when ``runc create`` is done (the init's pid, or runc's error)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        closing: asyncio.BaseTransport | None = None,
        proc: asyncio.subprocess.Process | None = None,
    ) -> None:
        self.reader = reader
        self.closing = closing
        self.proc = proc  # a spawned shim's first process, gone once it has forked

    async def line(self) -> dict[str, Any]:
        """The next report; a shim that closed the pipe without one died."""
        raw = await self.reader.readline()
        if not raw:
            raise Internal(f"the shim died before reporting: {await self.last_words()}")
        report: dict[str, Any] = json.loads(raw)
        if "error" in report:
            raise FailedPrecondition(f"runtime create failed: {report['error']}")
        return report

    async def last_words(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return "no output"
        with contextlib.suppress(TimeoutError):
            err = await asyncio.wait_for(self.proc.stderr.read(), 1)
            lines = err.decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no output"
        return "no output"

    async def shim_pid(self) -> int:
        """The first line: the shim is there."""
        report = await asyncio.wait_for(self.line(), SPAWN_TIMEOUT)
        if self.proc is not None:
            await self.proc.wait()  # it exits once it has forked the shim
        return int(report["shim_pid"])

    async def init_pid(self) -> int:
        """The second line: ``runc create`` is done. Read once, then the pipe is closed."""
        try:
            return int((await asyncio.wait_for(self.line(), SPAWN_TIMEOUT))["pid"])
        except TimeoutError:
            raise Internal(f"the shim did not report within {SPAWN_TIMEOUT:.0f} s") from None
        finally:
            self.close()

    def close(self) -> None:
        if self.closing is not None:
            self.closing.close()
        if self.proc is not None:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.feed_eof()


@dataclass(frozen=True)
class Spawned:
    shim_pid: int
    report: ShimReport  # its second line still to come: the init's pid


async def spawn_shim(state_dir: Path, config: dict[str, Any]) -> Spawned:
    """Write ``shim.json`` and start the shim as a new process; it runs ``runc create``.
    (:class:`ShimLauncher` does the same through the pre-forked zygote, faster.)"""
    (state_dir / shim.CONFIG).write_text(json.dumps(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        "-c",
        _BOOT.format(module="shim"),
        package_root(),
        str(state_dir),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own session: the server's signals do not reach it
    )
    assert proc.stdout is not None
    return await _first_report(ShimReport(proc.stdout, proc=proc))


async def _first_report(report: ShimReport) -> Spawned:
    try:
        return Spawned(await report.shim_pid(), report)
    except TimeoutError:
        report.close()
        raise Internal(f"the shim did not report within {SPAWN_TIMEOUT:.0f} s") from None
    except BaseException:
        report.close()
        raise


class ShimLauncher:
    """Starts shims through one pre-forked :mod:`.zygote` (its spare shim, forked
    ahead, not an interpreter's start-up), restarting it if it died, spawning
    if it cannot."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _zygote(self) -> socket.socket:
        async with self._lock:
            if self._sock is not None and self._proc is not None and self._proc.returncode is None:
                return self._sock
            await self.close()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _BOOT.format(module="zygote"),
                    package_root(),
                    str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
            finally:
                theirs.close()
            ours.setblocking(False)  # a zygote that stops reading is replaced, never waited on
            self._sock = ours
            return ours

    async def launch(self, state_dir: Path, config: dict[str, Any]) -> Spawned:
        (state_dir / shim.CONFIG).write_text(json.dumps(config))
        for _attempt in range(2):
            sock = await self._zygote()
            read_end, write_end = os.pipe()
            try:
                socket.send_fds(sock, [os.fsencode(state_dir)], [write_end])
            except OSError:  # the zygote died (or stopped reading): start another
                os.close(read_end)
                await self.close()
                continue
            finally:
                os.close(write_end)
            return await _first_report(await _report_pipe(read_end))
        return await spawn_shim(state_dir, config)

    async def close(self) -> None:
        """The zygote reads EOF and exits; the shims it made live on."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), 5)
            self._proc = None


async def _report_pipe(fd: int) -> ShimReport:
    """The read end of a zygote-made shim's report pipe, as lines."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return ShimReport(reader, transport)


class Channel:
    """One connection to ``shim.sock``: frames in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = frames.FrameDecoder()
        self._ready: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, state_dir: Path, hello: dict[str, Any]) -> tuple[Channel, dict[str, Any]]:
        """Connect, send HELLO, read the answer: OK's payload, or ``{"exit": ...}``
        when a wait arrives as the container exits; the shim's ERROR is raised."""
        try:
            dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise NotFound(f"no shim state at {state_dir}") from None
        try:
            for attempt in range(50):
                try:
                    reader, writer = await asyncio.open_unix_connection(shim.socket_path(dir_fd))
                    break
                except BlockingIOError:  # the shim's accept queue is full: it is busy
                    await asyncio.sleep(0.01 * (attempt + 1))
            else:
                raise FailedPrecondition("the container's shim is too busy to answer")
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise FailedPrecondition(
                f"the container's shim is not running ({exc.strerror})"
            ) from None
        finally:
            os.close(dir_fd)
        channel = cls(reader, writer)
        try:
            await channel.send(frames.encode_json(frames.HELLO, hello))
            answer = await channel.next_frame()
            if answer is None:
                raise FailedPrecondition(
                    "the shim closed the connection (the container has exited)"
                )
            kind, payload = answer
            value = frames.decode_json(payload)
        except (ConnectionError, OSError, frames.ProtocolError) as exc:
            await channel.close()
            raise FailedPrecondition(f"talking to the shim: {exc}") from None
        except BaseException:
            await channel.close()
            raise
        if kind == frames.ERROR:
            await channel.close()
            raise FailedPrecondition(str(value.get("message", "shim error")))
        if kind == frames.EXIT:
            return channel, {"exit": value}
        return channel, value

    def ready(self) -> list[tuple[int, bytes]]:
        """Frames decoded already, waiting for ``next_frame``: no I/O to look."""
        return self._ready

    async def next_frame(self) -> tuple[int, bytes] | None:
        while not self._ready:
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                return None
            self._ready = self._decoder.feed(data)
        return self._ready.pop(0)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class ProcessStream:
    """A live connection to one process's stdio (attach or exec), protocol-neutral.

    ``output()`` yields ``("stdout" | "stderr", bytes)`` until the process
    exits; then ``exit`` holds its status. Closing the stream before that
    kills an exec'd process (the shim does it), which is how a timed-out
    ExecSync leaves nothing behind."""

    def __init__(self, channel: Channel, hello: dict[str, Any]) -> None:
        self._channel = channel
        self.pid = int(hello.get("pid", 0))
        self.tty = bool(hello.get("tty"))
        self.exit: dict[str, Any] | None = hello.get("exit")
        self.error = ""

    @classmethod
    async def open(cls, state_dir: Path, hello: dict[str, Any]) -> ProcessStream:
        return cls(*await Channel.open(state_dir, hello))

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """The process's output in order; frames of one stream that have
        arrived together are joined, so a process writing 4 KiB at a time
        costs one message downstream, not one per write."""
        while self.exit is None:
            frame = await self._channel.next_frame()
            if frame is None:
                return
            kind, payload = frame
            if kind in (frames.STDOUT, frames.STDERR):
                ready = self._channel.ready()
                if ready and ready[0][0] == kind:
                    parts = [payload]
                    size = len(payload)
                    while ready and ready[0][0] == kind and size < MAX_JOINED:
                        more = ready.pop(0)[1]
                        parts.append(more)
                        size += len(more)
                    payload = b"".join(parts)
                yield ("stdout" if kind == frames.STDOUT else "stderr"), payload
            elif kind == frames.EXIT:
                self.exit = frames.decode_json(payload)
            elif kind == frames.ERROR:
                self.error = str(frames.decode_json(payload).get("message", ""))
                return

    async def write_stdin(self, data: bytes) -> None:
        await self._channel.send(frames.encode_stream(frames.STDIN, data))

    async def close_stdin(self) -> None:
        await self._channel.send(frames.encode(frames.STDIN_CLOSE))

    async def resize(self, width: int, height: int) -> None:
        await self._channel.send(
            frames.encode_json(frames.RESIZE, {"width": width, "height": height})
        )

    async def signal(self, signum: int) -> None:
        await self._channel.send(frames.encode_json(frames.SIGNAL, {"signal": signum}))

    async def close(self) -> None:
        await self._channel.close()


async def request(state_dir: Path, op: str, **fields: Any) -> None:
    """A one-shot request (reopen_log, resize, close_stdin): HELLO, OK, done."""
    channel, _answer = await Channel.open(state_dir, {"op": op, **fields})
    await channel.close()
