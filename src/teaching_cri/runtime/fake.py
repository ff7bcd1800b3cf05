"""The fake backend: containers as records, their processes a model of their command.

For tests and for learning the flows, never for isolation: it runs no
program and isolates nothing. Every manager flow (CreateContainer, Start,
Stop, Remove, the pods, ExecSync, Exec, Attach, the crash points) runs
against it as any user, in milliseconds, with no runc, no shim and no root
(``--runtime fake``).

What a "process" does is read from its command by :func:`program_of`, a
model small enough to read in one sitting:

==========================  ================================================
``echo [-n] ARGS``          writes ARGS (and a newline, without -n), exits 0
``true`` / ``false``        exits 0 / 1
``sleep N``                 waits N seconds (``infinity``: for ever), exits 0
``exit N``                  exits N
``cat``                     copies its stdin to its stdout until stdin closes
``pause``                   waits for ever; SIGTERM or SIGINT: exits 0
``sh -c 'A; B && C'``       each command in turn (``&&``, ``||`` as sh does);
                            ``trap 'exit N' SIGS`` makes those signals exit N;
                            a loop (``while``, ``until``, ``for``) runs for ever;
                            an unknown command: ``sh: X: not found``, status 127
any other init              a server, as far as the fake can tell: runs until
                            stopped
any other exec              exits 127, saying the fake cannot run it
==========================  ================================================

Signals follow the kernel's rule for PID 1 of a pid namespace: an init gets
only the signals it handles (``sleep`` ignores SIGTERM, so a stop waits out
its grace period and ends with SIGKILL, exit 137), an exec'd process dies of
any signal it does not handle. Output goes to the container's CRI log, as
the shim writes it, and to whoever is attached.

Each container's record is ``<state>/fake/<id>.json``, written before the
step it describes (as the runc backend's ``container.json``), so a server
killed at a crash point finds on restart what a real one would: a started
process goes on running (its model resumes where the clock says it is; what
it would have written meanwhile is lost, as it would be with its shim gone),
a start cut short is settled, an exit is kept. Its pids are above the
kernel's largest (``PID_MAX_LIMIT``), so that no ``/proc/<pid>`` a flow
looks up is some other process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from ..fsutil import crash_point
from .backend import (
    MAX_EXEC_OUTPUT,
    Backend,
    ContainerState,
    CreateRequest,
    ExecResult,
    ExitCallback,
    ExitStatus,
    RecordUnreadable,
    parse_signal,
)
from .cgroups import CgroupStats
from .crilog import CRILogEncoder
from .records import ID_PATTERN, Record, RecordCache
from .runc import merge_resources
from .shim_client import ProcessStream

PID_MAX_LIMIT = 1 << 22  # the kernel's largest pid on 64-bit: ours start above it
NOT_ISOLATED = (
    "nothing: the fake backend runs no program; a container is a record and a model "
    "of its command (for tests and for learning the flows)",
)
LOOPS = ("while", "until", "for")
EXIT_0: tuple[tuple[str, Any], ...] = (("exit", 0),)
FOREVER = math.inf

# -- what a command does ---------------------------------------------------------------


Steps = tuple[tuple[str, Any], ...]  # ("stdout" | "stderr", text), ("sleep", s), ("exit", code)


@dataclass(frozen=True)
class Program:
    """What a command does, as far as the fake can tell: its steps in order,
    the signals it handles (each with its handler's steps: one that ends in
    ``exit`` ends the process, any other is run and the process goes on),
    and whether it copies stdin."""

    steps: Steps
    traps: dict[int, Steps] = field(default_factory=dict)
    copies_stdin: bool = False


def program_of(args: list[str], *, init: bool) -> Program:
    """The model of ``args``, the init's (``init``) or an exec's."""
    name = os.path.basename(args[0]) if args else ""
    if name in ("sh", "ash", "bash") and len(args) >= 3 and args[1] == "-c":
        return script(args[2])
    if name == "pause":
        return Program((("sleep", FOREVER),), {signal.SIGTERM: EXIT_0, signal.SIGINT: EXIT_0})
    if name == "cat" and len(args) == 1:
        return Program((("exit", 0),), copies_stdin=True)
    steps, traps, status = command(args, unknown_runs=init)
    return Program(ended(steps, status), traps)


def ended(steps: list[tuple[str, Any]], status: int) -> tuple[tuple[str, Any], ...]:
    """The steps, ending with an exit (the last command's status, unless one said ``exit``)."""
    return tuple(steps) if steps and steps[-1][0] == "exit" else (*steps, ("exit", status))


def command(
    words: list[str], *, unknown_runs: bool = False
) -> tuple[list[tuple[str, Any]], dict[int, Steps], int]:
    """One simple command: its steps, the traps it sets, its exit status."""
    name, rest = os.path.basename(words[0]), words[1:]
    if name == "echo":
        if rest[:1] == ["-n"]:
            return [("stdout", " ".join(rest[1:]))], {}, 0
        return [("stdout", " ".join(rest) + "\n")], {}, 0
    if name in ("true", ":"):
        return [], {}, 0
    if name == "false":
        return [], {}, 1
    if name == "exit":
        code = int(rest[0]) % 256 if rest and rest[0].isdigit() else 0
        return [("exit", code)], {}, code
    if name == "sleep":
        try:
            seconds = FOREVER if rest[:1] == ["infinity"] else float(rest[0])
        except (IndexError, ValueError):
            return [("stderr", f"sleep: invalid number {' '.join(rest)!r}\n")], {}, 1
        return [("sleep", seconds)], {}, 0
    if name == "trap" and len(rest) >= 2:
        handler = tuple(script_steps(rest[0])[0])
        try:
            return [], {parse_signal(s): handler for s in rest[1:]}, 0
        except InvalidArgument as exc:
            return [("stderr", f"trap: {exc}\n")], {}, 1
    if unknown_runs:
        return [("sleep", FOREVER)], {}, 0
    message = f"{name}: not found (the fake backend runs no program but those of fake.py)\n"
    return [("stderr", message)], {}, 127


def script(text: str) -> Program:
    """``sh -c``'s script."""
    steps, traps, status = script_steps(text)
    return Program(ended(steps, status), traps)


def script_steps(text: str) -> tuple[list[tuple[str, Any]], dict[int, Steps], int]:
    """A script command by command, with the ``&&`` and ``||`` of sh: its
    steps (up to an ``exit`` or a loop), its traps, its last status."""
    lexer = shlex.shlex(text.replace("\n", ";"), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    steps: list[tuple[str, Any]] = []
    traps: dict[int, Steps] = {}
    status, joiner, words = 0, ";", []
    for token in [*lexer, ";"]:
        if token not in (";", "&&", "||", "&", "|"):
            words.append(token)
            continue
        if words and (joiner in (";", "&", "|") or (joiner == "&&") == (status == 0)):
            if words[0] in LOOPS:
                steps.append(("sleep", FOREVER))
                break
            more, set_traps, status = command(words)
            steps += more
            traps |= set_traps
            if more and more[-1][0] == "exit":
                break
        joiner, words = token, []
    return steps, traps, status


# -- a running process -----------------------------------------------------------------


class FakeProcess:
    """A program under way: its steps walked by a task, its signals obeyed."""

    def __init__(
        self,
        program: Program,
        write: Callable[[str, bytes], None],
        *,
        init: bool,
        skip: float = 0.0,
    ) -> None:
        self.program = program
        self.write = write
        self.init = init
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.done: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._run(skip))

    async def _run(self, skip: float) -> None:
        """Walk the steps; ``skip`` seconds of them passed while no server watched."""
        code = 0
        for kind, value in self.program.steps:
            if kind == "sleep":
                wait, skip = value - skip, max(0.0, skip - value)
                if wait == FOREVER:
                    await asyncio.get_running_loop().create_future()  # never done
                elif wait > 0:
                    await asyncio.sleep(wait)
            elif kind == "exit":
                code = int(value)
                break
            elif not skip:
                self.write(kind, str(value).encode())
        if self.program.copies_stdin:
            while (data := await self.stdin.get()) is not None:
                self.write("stdout", data)
        self.finish(code)

    def finish(self, code: int, signum: int = 0) -> None:
        if not self.done.done():
            self.done.set_result((code, signum))
        if asyncio.current_task() is not self.task:
            self.task.cancel()

    def signal(self, signum: int) -> None:
        """SIGKILL always kills; a handled signal runs its handler (exit N); an
        unhandled one kills an exec'd process, and PID 1 never gets it."""
        handler = self.program.traps.get(signum)
        if handler is not None:
            for kind, value in handler:
                if kind in ("stdout", "stderr"):
                    self.write(kind, str(value).encode())
            if handler and handler[-1][0] == "exit":
                self.finish(int(handler[-1][1]))
        elif signum == signal.SIGKILL or not self.init:
            self.finish(128 + signum, signum)


class FakeStream(ProcessStream):
    """A :class:`ProcessStream` with no shim behind it: the process's output
    through a queue, its stdin into the process."""

    def __init__(
        self, process: FakeProcess, *, tty: bool, pid: int, stdin_once: bool = False
    ) -> None:
        self.pid, self.tty, self.exit, self.error = pid, tty, None, ""
        self.process = process
        self.stdin_once = stdin_once  # an attach's end closes the init's stdin
        self.queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        process.done.add_done_callback(lambda _: self.queue.put_nowait(None))

    def put(self, name: str, data: bytes) -> None:
        self.queue.put_nowait((name, data))

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """Until the process ends (then ``exit`` is set) or, for an attach, the
        container is removed."""
        while (item := await self.queue.get()) is not None:
            yield item
        if self.process.done.done():
            code, signum = self.process.done.result()
            self.exit = {"exit_code": code, "signal": signum}

    async def write_stdin(self, data: bytes) -> None:
        self.process.stdin.put_nowait(data)

    async def close_stdin(self) -> None:
        self.process.stdin.put_nowait(None)

    async def resize(self, width: int, height: int) -> None:
        """A model has no terminal size to change."""

    async def signal(self, signum: int) -> None:
        self.process.signal(signum)

    async def close(self) -> None:
        """Closing an exec's stream kills it, as the shim does; an attach
        leaves the container alone, but for closing its stdin (stdin_once)."""
        if not self.process.init:
            self.process.signal(signal.SIGKILL)
        elif self.stdin_once:
            self.process.stdin.put_nowait(None)


# -- the backend ---------------------------------------------------------------------------


class FakeBackend(Backend):
    name = "fake"
    rootless = True  # no cgroups: limits are recorded, not enforced

    def __init__(self, state_root: Path) -> None:
        self.directory = state_root / "fake"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.on_exit: list[ExitCallback] = []
        self._processes: dict[str, FakeProcess] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._attached: dict[str, list[FakeStream]] = {}
        self._exits: dict[str, asyncio.Future[ExitStatus]] = {}
        self._logs: dict[str, dict[str, CRILogEncoder]] = {}
        self._next_pid = PID_MAX_LIMIT + 1
        self._records = RecordCache(self.path, "a record of the fake backend")

    # -- records -------------------------------------------------------------------------

    def path(self, container_id: str) -> Path:
        return self.directory / f"{container_id}.json"

    def record(self, container_id: str) -> Record:
        """Read-only, from memory, as the runc backend's (:class:`.records.RecordCache`)."""
        return self._records.get(container_id)

    def _update(self, container_id: str, changes: Mapping[str, Any]) -> Record:
        """Some fields changed: to the file, then to memory."""
        return self._records.update(container_id, changes)

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid - 1

    def _readable_ids(self) -> Iterator[str]:
        for container_id in self.list_ids():
            with contextlib.suppress(RecordUnreadable, NotFound):
                self.record(container_id)
                yield container_id

    # -- create, start ---------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> ContainerState:
        """The record, and a check that the command is there. runc fails its
        create for a program missing from the rootfs, after the runc backend's
        create has returned: so here too the create succeeds, the failure is
        recorded as the exit (128, StartError, runc's words) and the start
        fails with it."""
        if not ID_PATTERN.match(request.id):
            raise InvalidArgument(f"container id {request.id!r}: letters, digits, '_.-' only")
        if self._records.known(request.id):
            raise AlreadyExists(f"container {request.id!r} exists already")
        args = list(request.spec.get("process", {}).get("args", []))
        if not args:
            raise InvalidArgument("the container has no command: neither the image nor the config")
        failure = self.create_failure(request.spec, args[0])
        record = {
            "id": request.id,
            "pod_id": request.pod_id,
            "args": args,
            "log_path": request.log_path,
            "tty": request.tty,
            "stdin": request.stdin,
            "stdin_once": request.stdin_once,
            "stop_signal": parse_signal(request.stop_signal).name,
            "image_id": request.image_id,
            "created_at": time.time_ns(),
            "started_at": 0,
            "starting": False,
            "exit": None,
            "pid": self._pid(),
            "notes": {**request.notes, "isolation": "none: the fake backend runs nothing"},
            "resources": request.spec.get("linux", {}).get("resources", {}),
        }
        if request.log_path:
            Path(request.log_path).parent.mkdir(parents=True, exist_ok=True)
        if failure:
            record["exit"] = {
                "exit_code": 128,
                "finished_at": time.time_ns(),
                "signal": 0,
                "reason": "StartError",
                "message": failure,
            }
        self._records.save(request.id, record)
        status = self._exit_of(record)
        if status is not None:  # told as the runc backend's exit watcher tells it: later
            self._watchers[request.id] = asyncio.get_running_loop().create_task(
                self._create_failed(request.id, status)
            )
        return self._state(record)

    async def _create_failed(self, container_id: str, status: ExitStatus) -> None:
        self._watchers.pop(container_id, None)
        await self._tell(container_id, status)

    @staticmethod
    def create_failure(spec: dict[str, Any], program: str) -> str:
        """The program must be in the rootfs (on the spec's PATH, if it has no
        slash), or runc's create fails: its words ("" if it would not)."""
        root = Path(spec.get("root", {}).get("path", "/"))
        if "/" in program:
            candidates = [program]
        else:
            env = dict(e.split("=", 1) for e in spec.get("process", {}).get("env", []) if "=" in e)
            path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            candidates = [f"{d}/{program}" for d in path.split(":") if d]
        if any(os.path.lexists(root / c.lstrip("/")) for c in candidates):
            return ""
        return f'runtime create failed: exec: "{program}": executable file not found in $PATH'

    async def start(self, container_id: str) -> ContainerState:
        """The runc backend's order: ``started_at`` written before the process
        starts, so that a kill in between is settled on restart (the same
        crash points, at the same moments)."""
        record = self.record(container_id)
        status = self.exit_status(container_id)
        if status is not None and status.start_error:  # runc's get_container_process_pid
            raise FailedPrecondition(status.message)
        if status is not None:
            raise FailedPrecondition(f"container {container_id!r} has exited; it cannot start")
        if record["started_at"]:
            raise FailedPrecondition(f"container {container_id!r} was started already")
        record = self._update(container_id, {"started_at": time.time_ns(), "starting": True})
        crash_point("runtime_start:intent_written")
        self.run(record)
        # what runc's own state says once runc start has run
        self._update(container_id, {"launched": True})
        crash_point("runtime_start:runc_started")
        return self._state(self._update(container_id, {"starting": False}))

    def run(self, record: Record, skip: float = 0.0) -> None:
        """The init's model under way, and a task that records its exit."""
        container_id, log_path = record["id"], str(record.get("log_path", ""))
        self._processes[container_id] = FakeProcess(
            program_of(record["args"], init=True),
            lambda name, data: self.output(container_id, log_path, name, data),
            init=True,
            skip=skip,
        )
        if not record["stdin"]:  # no stdin: a cat reads end-of-file at once
            self._processes[container_id].stdin.put_nowait(None)
        self._exits.setdefault(container_id, asyncio.get_running_loop().create_future())
        self._watchers[container_id] = asyncio.get_running_loop().create_task(
            self._watch(container_id)
        )

    def output(self, container_id: str, log_path: str, name: str, data: bytes) -> None:
        """What the init writes: to its CRI log, and to whoever is attached."""
        if log_path:
            encoders = self._logs.setdefault(container_id, {})
            encoder = encoders.setdefault(name, CRILogEncoder(name))
            with open(log_path, "ab") as f:
                f.writelines(encoder.feed(data))
        for stream in self._attached.get(container_id, []):
            stream.put(name, data)

    async def _watch(self, container_id: str) -> None:
        code, signum = await self._processes[container_id].done
        self._processes.pop(container_id, None)
        self._watchers.pop(container_id, None)
        with contextlib.suppress(NotFound, RecordUnreadable):
            await self._exited(container_id, code, signum)

    async def _exited(self, container_id: str, code: int, signum: int) -> None:
        """The exit recorded, waiters woken, the manager told (once)."""
        status = ExitStatus(code, time.time_ns(), signum)
        recorded = {"exit_code": code, "finished_at": status.finished_at, "signal": signum}
        self._update(container_id, {"exit": recorded})
        await self._tell(container_id, status)

    async def _tell(self, container_id: str, status: ExitStatus) -> None:
        future = self._exits.setdefault(container_id, asyncio.get_running_loop().create_future())
        if not future.done():
            future.set_result(status)
        for callback in list(self.on_exit):
            result = callback(container_id, status)
            if asyncio.iscoroutine(result):
                await result

    # -- signals, stop, wait ------------------------------------------------------------------

    async def kill(self, container_id: str, signum: int) -> None:
        record = self.record(container_id)
        if record["exit"] is not None:
            return
        process = self._processes.get(container_id)
        if process is not None:
            process.signal(signum)
        elif signum == signal.SIGKILL:  # created, never started: it dies where it waits
            await self._exited(container_id, 128 + signum, signum)

    def exit_status(self, container_id: str) -> ExitStatus | None:
        return self._exit_of(self.record(container_id))

    @staticmethod
    def _exit_of(record: Record) -> ExitStatus | None:
        found = record["exit"]
        if found is None:
            return None
        return ExitStatus(
            int(found["exit_code"]),
            int(found["finished_at"]),
            int(found["signal"]),
            message=str(found.get("message", "")),
            start_error=found.get("reason") == "StartError",
        )

    async def wait(self, container_id: str) -> ExitStatus:
        status = self.exit_status(container_id)
        if status is not None:
            return status
        future = self._exits.setdefault(container_id, asyncio.get_running_loop().create_future())
        return await asyncio.shield(future)

    # -- delete, state -----------------------------------------------------------------------------

    async def delete(self, container_id: str) -> None:
        """As the runc backend's: a created container is killed first, a running
        one refused, an unreadable record removed as it is."""
        try:
            record = self.record(container_id)
        except RecordUnreadable:
            self._forget(container_id)
            return
        if record["exit"] is None:
            if record["started_at"]:
                raise FailedPrecondition(
                    f"container {container_id!r} is running; stop it before removing it"
                )
            await self.stop(container_id, 0)
        self._forget(container_id)

    def _forget(self, container_id: str) -> None:
        process = self._processes.pop(container_id, None)
        if process is not None:
            process.finish(137, signal.SIGKILL)
        task = self._watchers.pop(container_id, None)
        if task is not None:
            task.cancel()
        self._exits.pop(container_id, None)
        self._logs.pop(container_id, None)
        for stream in self._attached.pop(container_id, []):
            stream.queue.put_nowait(None)
        self._records.forget(container_id)
        self.path(container_id).unlink(missing_ok=True)

    def _state(self, record: Record) -> ContainerState:
        status = self.exit_status(record["id"])
        phase = "exited" if status else ("running" if record["started_at"] else "created")
        return ContainerState(
            record["id"],
            phase,
            int(record["pid"]),
            int(record["created_at"]),
            int(record["started_at"]),
            status,
            dict(record.get("notes", {})),
        )

    async def state(self, container_id: str) -> ContainerState:
        return self._state(self.record(container_id))

    def list_ids(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def uses_image(self, image_id: str) -> bool:
        return any(self.record(c).get("image_id") == image_id for c in self._readable_ids())

    def pid_of(self, container_id: str) -> int:
        try:
            record = self.record(container_id)
        except (NotFound, RecordUnreadable):
            return 0
        return int(record["pid"]) if record["exit"] is None else 0

    def running(self, container_id: str) -> FakeProcess:
        process = self._processes.get(container_id)
        if process is None or self.record(container_id)["exit"] is not None:
            raise FailedPrecondition(f"container {container_id!r} is not running")
        return process

    # -- exec, attach ---------------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        args: list[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        width: int = 0,
        height: int = 0,
    ) -> ProcessStream:
        self.running(container_id)
        if not args:
            raise InvalidArgument("exec: the command is empty")
        holder: list[FakeStream] = []
        process = FakeProcess(
            program_of(args, init=False), lambda n, d: holder[0].put(n, d), init=False
        )
        stream = FakeStream(process, tty=tty, pid=self._pid())
        holder.append(stream)
        if not stdin:
            process.stdin.put_nowait(None)
        return stream

    async def exec_sync(self, container_id: str, args: list[str], timeout: float) -> ExecResult:
        stream = await self.exec(container_id, args)
        kept = {"stdout": bytearray(), "stderr": bytearray()}

        async def collect() -> None:
            async for name, data in stream.output():
                buf = kept[name]
                buf += data[: max(0, MAX_EXEC_OUTPUT - len(buf))]

        try:
            await asyncio.wait_for(collect(), timeout if timeout > 0 else None)
        except TimeoutError:
            raise DeadlineExceeded(
                f"exec {args[0]!r} in {container_id!r} timed out after {timeout:g} s; killed"
            ) from None
        finally:
            await stream.close()
        assert stream.exit is not None
        return ExecResult(
            int(stream.exit["exit_code"]), bytes(kept["stdout"]), bytes(kept["stderr"])
        )

    async def attach(
        self, container_id: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> ProcessStream:
        process = self.running(container_id)
        record = self.record(container_id)
        stream = FakeStream(
            process, tty=bool(record["tty"]), pid=0, stdin_once=bool(record.get("stdin_once"))
        )
        self._attached.setdefault(container_id, []).append(stream)
        return stream

    async def resize(self, container_id: str, width: int, height: int) -> None:
        if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
            raise InvalidArgument(f"terminal size {width}x{height}: each must be 1..65535")
        self.running(container_id)
        if not self.record(container_id)["tty"]:
            raise FailedPrecondition(f"container {container_id!r} has no terminal to resize")

    async def reopen_log(self, container_id: str) -> None:
        """A fresh file at the log path (the kubelet has moved the old one
        aside), as the shim opens one; the next line goes there."""
        self.running(container_id)
        log_path = self.record(container_id).get("log_path")
        if log_path:
            Path(log_path).touch()

    # -- resources ------------------------------------------------------------------------------

    async def update(self, container_id: str, resources: dict[str, Any]) -> dict[str, str]:
        record = self.record(container_id)
        if record["exit"] is not None:
            raise FailedPrecondition(f"container {container_id!r} has exited")
        notes = {"resources": "recorded, not enforced (fake: no cgroups)"}
        self._update(
            container_id,
            {
                "resources": merge_resources(record.get("resources", {}), resources),
                "notes": {**record.get("notes", {}), **notes},
            },
        )
        return notes

    def current_resources(self, container_id: str) -> dict[str, Any]:
        return {}

    async def stats(self, container_id: str) -> CgroupStats:
        """Plausible and honest: a model uses no CPU, and a little memory once started."""
        record = self.record(container_id)
        live = record["started_at"] and record["exit"] is None
        memory = 1 << 20 if live else 0
        return CgroupStats(time.time_ns(), 0, memory, memory, None, 1 if live else 0, 0)

    # -- after a restart --------------------------------------------------------------------------

    async def recover(self) -> list[ContainerState]:
        """The records back; a start cut short settled (started if the model
        was launched, else still created: what runc's own state would say), a
        running model resumed where the clock says it is."""
        states = []
        for container_id in self.list_ids():
            try:
                record = self.record(container_id)
            except RecordUnreadable:
                continue  # the manager reports it UNKNOWN; delete() removes it
            self._next_pid = max(self._next_pid, int(record["pid"]) + 1)
            if record.get("starting"):  # as runc settles it: started if launched
                started_at = record["started_at"] if record.get("launched") else 0
                record = self._update(container_id, {"started_at": started_at, "starting": False})
            if record["started_at"] and record["exit"] is None:
                self.run(record, skip=(time.time_ns() - record["started_at"]) / 1e9)
            states.append(self._state(record))
        return states

    def drop_pod_level(self, pod_id: str) -> None:
        """Nothing: the models need no cgroup, and a pod has no state here."""

    async def close(self) -> None:
        """Stop the models: a server that stops takes its fake processes with
        it (their records stay, and the next server resumes them)."""
        for task in [*self._watchers.values(), *(p.task for p in self._processes.values())]:
            task.cancel()
        for task in [*self._watchers.values(), *(p.task for p in self._processes.values())]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
        self._processes.clear()
