"""The runc backend: containers as runc runs them, each under its own shim.

Who does what (iSulad's ``rt_isula_*`` and containerd's runc shim split it
the same way):

* the **shim** runs ``runc create`` and stays: it owns the container's stdio,
  writes its log, reaps its init and records the exit (:mod:`.shim`). The
  server's create returns as soon as the shim is there, before its
  ``runc create`` has finished (iSulad's ``shim_create(fg=false)``); whatever
  needs the container itself (a start, a kill, an update) first awaits the
  shim's report of it (:meth:`RuncBackend.created`);
* the **server** runs the short runc commands itself: ``start``, ``kill``,
  ``update``, ``state``, ``delete``; they change the container, not who
  watches it. ``runc delete`` runs as soon as the exit is recorded (the exit
  watcher's, as containerd deletes a task when it exits), so RemoveContainer
  has only our own files left to remove.

Everything a restarted server needs is on disk, in the container's state dir
(``<state>/containers/<id>/``): ``config.json`` (the bundle's spec),
``container.json`` (our record), and the shim's ``shim.pid``, ``init.pid``
and ``exit.json``; :meth:`RuncBackend.recover` reads them back and
reattaches to the shims still running. While the server runs, the record and
a recorded exit are also kept in memory (:mod:`.records`): only this process
writes the record, and an exit never changes once written, so a status call
reads neither file again.

As root runc puts each container in ``/teaching-cri/<pod>/<id>`` (cgroupfs);
without root it runs rootless (:mod:`.rootless`), with no cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from ..fsutil import atomic_write_json, crash_point, move_aside
from ..trace.tracer import annotate, branch, child_span, decide, step
from . import cgroups, shim
from .backend import (
    KILL_WAIT,
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
from .records import ID_PATTERN, UNREADABLE, Record, RecordCache
from .rootless import make_rootless
from .shim_client import (
    SPAWN_TIMEOUT,
    Channel,
    ProcessStream,
    ShimLauncher,
    ShimReport,
    Spawned,
    package_root,
    request,
)

log = logging.getLogger(__name__)
RECORD = "container.json"
STARTING = "starting"  # set from just before runc start until it has returned
RUNC_DELETED = "runc_deleted"  # set once the exit watcher has deleted runc's state
TIERS = ("runc", "rootless-runc", "processes")


def plainrun_argv() -> list[str]:
    """:mod:`.plainrun` as a command, run like runc by the shim and by us."""
    boot = "import sys; sys.path.insert(0, sys.argv[1]); from teaching_cri.runtime.plainrun import main; main(sys.argv[2:])"  # noqa: E501
    return [sys.executable, "-I", "-S", "-c", boot, package_root()]


class RuncBackend(Backend):
    name = "runc"

    def __init__(self, state_root: Path, runc: str = "runc", *, tier: str = "") -> None:
        """``tier``: ``runc`` (root), ``rootless-runc``, or ``processes`` (plainrun,
        our runc stand-in that isolates nothing); by default the first two by euid."""
        self.name = tier or ("runc" if os.geteuid() == 0 else "rootless-runc")
        if self.name not in TIERS:
            raise InvalidArgument(f"tier {tier!r}: one of {', '.join(TIERS)}")
        self.rootless = self.name != "runc"
        if self.name == "processes":
            self.runtime = plainrun_argv()
        else:
            found = shutil.which(runc)
            if found is None:
                raise FailedPrecondition(f"{runc!r} not found (apt-get install runc)")
            self.runtime = [found]
        self.containers_dir = state_root / "containers"
        self.runc_root = state_root / "runc"
        self.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.runc_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._exits: dict[str, asyncio.Future[ExitStatus]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._creates: dict[str, asyncio.Task[int]] = {}  # runc create under way: the init's pid
        self._images: dict[str, str] = {}  # container id → image id
        self._records = RecordCache(lambda container_id: self.dir(container_id) / RECORD)
        self._exited: dict[str, ExitStatus] = {}  # exits read: exit.json never changes
        self.on_exit: list[ExitCallback] = []
        self.launcher = ShimLauncher()

    # -- helpers -------------------------------------------------------------------

    def dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def _known(self, container_id: str) -> Path:
        if not self._records.known(container_id):
            raise NotFound(f"container {container_id!r} not found")
        return self.dir(container_id)

    def record(self, container_id: str) -> Record:
        """Our record of the container, read-only, from memory (the file is
        read once: :class:`.records.RecordCache`); a change goes through
        :meth:`_update`."""
        return self._records.get(container_id)

    def _save(self, container_id: str, record: Mapping[str, Any]) -> None:
        """A whole record, to the file and then to memory."""
        self._records.save(container_id, record)

    def _update(self, container_id: str, changes: Mapping[str, Any]) -> Record:
        """Some fields changed, merged into the record as it is now."""
        return self._records.update(container_id, changes)

    async def _runc(self, *args: str, stdin: bytes | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.runtime,
            "--root",
            str(self.runc_root),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(stdin)
        except asyncio.CancelledError:  # the caller gave up: leave no runc behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
            if "does not exist" in message:
                raise NotFound(f"runc {args[0]}: {message}")
            raise FailedPrecondition(f"runc {args[0]}: {message}")
        return out.decode(errors="replace")

    def read_exit(self, container_id: str) -> ExitStatus | None:
        """The exit, once the shim (or :meth:`_shim_lost`) has recorded it.
        Until then ``exit.json`` is looked for on every call: the shim writes
        it before it tells the exit watcher, and whoever asks in between
        sees the exit already. Once read it is kept: an exit never changes."""
        known = self._exited.get(container_id)
        if known is not None:
            return known
        path = f"{self.containers_dir}/{container_id}/{shim.EXIT}"
        if not os.path.exists(path):  # a running container: one stat, no exception raised
            return None
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        status = ExitStatus(
            int(data["exit_code"]),
            int(data["finished_at"]),
            int(data.get("signal", 0)),
            bool(data.get("oom_killed", False)),
            str(data.get("message", "")),
            data.get("reason") == "StartError",
        )
        self._exited[container_id] = status
        return status

    # -- create ------------------------------------------------------------------

    @child_span("RuntimeCreate")
    async def create(self, request: CreateRequest) -> ContainerState:
        if not decide("valid_id", bool(ID_PATTERN.match(request.id))):
            raise InvalidArgument(f"container id {request.id!r}: letters, digits, '_.-' only")
        d = self.dir(request.id)
        try:
            d.mkdir(mode=0o711)
        except FileExistsError:
            branch("state_dir_free", "N")
            raise AlreadyExists(f"container {request.id!r} exists already") from None
        else:
            branch("state_dir_free", "Y")
        try:
            return await self._create(request, d)
        except BaseException:
            await self.undo_create(request.id, d)
            raise

    @step("undo_create")
    async def undo_create(self, container_id: str, d: Path) -> None:
        """Whatever the create made goes: runc's state (and the process it may
        have started), the state dir; the caller's error stays the reason."""
        with contextlib.suppress(Exception):
            await self._runc("delete", "--force", container_id)
        shutil.rmtree(d, ignore_errors=True)
        self._records.forget(container_id)
        self._exited.pop(container_id, None)
        self._images.pop(container_id, None)

    async def _create(self, request: CreateRequest, d: Path) -> ContainerState:
        notes: dict[str, str] = dict(request.notes)
        spec, cgroups_path = self.adapt_spec_to_the_tier(request, notes)
        stop = parse_signal(request.stop_signal)
        self.write_bundle(d, spec)
        if request.log_path:
            Path(request.log_path).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "id": request.id,
            "pod_id": request.pod_id,
            "cgroups_path": cgroups_path,
            "log_path": request.log_path,
            "tty": request.tty,
            "stdin": request.stdin,
            "stdin_once": request.stdin_once,
            "stop_signal": stop.name,
            "image_id": request.image_id,
            "created_at": time.time_ns(),
            "started_at": 0,
            "notes": notes,
            "resources": request.spec.get("linux", {}).get("resources", {}),
        }
        self._save(request.id, record)
        self._images[request.id] = request.image_id
        spawned = await self.spawn(d, request, cgroups_path)
        self._update(request.id, {"shim_pid": spawned.shim_pid})
        self._creates[request.id] = asyncio.get_running_loop().create_task(
            self._runc_created(request.id, spawned.report)
        )
        self.watch_for_the_exit(request.id)
        return ContainerState(request.id, "created", 0, record["created_at"], notes=notes)

    @step("adapt_spec_to_the_tier")
    def adapt_spec_to_the_tier(
        self, request: CreateRequest, notes: dict[str, str]
    ) -> tuple[dict[str, Any], str]:
        """As root: the container's cgroup, under its pod's. Rootless: the spec
        made rootless (a user namespace, no cgroups). Processes: nothing
        isolates, and the notes say so. The spec and the cgroup path."""
        annotate(tier=self.name)
        spec = dict(request.spec)
        if self.name == "rootless-runc":
            return make_rootless(spec, os.geteuid(), os.getegid(), notes), ""
        if self.name == "processes":
            notes["isolation"] = "none: a plain process of the server's user (plainrun)"
            return spec, ""
        cgroups_path = cgroups.container_path(request.pod_id, request.id)
        spec["linux"] = {**spec.get("linux", {}), "cgroupsPath": cgroups_path}
        cgroups.ensure_pod(request.pod_id)
        return spec, cgroups_path

    @step("write_bundle")
    def write_bundle(self, d: Path, spec: dict[str, Any]) -> None:
        """The bundle is the state dir: config.json here, the rootfs where the spec says."""
        atomic_write_json(d / "config.json", spec, durable=False)

    @step("spawn_shim")
    async def spawn(self, d: Path, request: CreateRequest, cgroups_path: str) -> Spawned:
        """The shim, started; returns once it is there (its pid known), while
        its ``runc create`` runs on: iSulad's ``shim_create(fg=false)``."""
        spawned = await self.launcher.launch(
            d,
            {
                "id": request.id,
                "bundle": str(d),
                "runtime": [*self.runtime, "--root", str(self.runc_root)],
                "log_path": request.log_path,
                "tty": request.tty,
                "stdin": request.stdin,
                "stdin_once": request.stdin_once,
                "memory_events": cgroups.memory_events(cgroups_path) if cgroups_path else "",
            },
        )
        annotate(shim_pid=str(spawned.shim_pid))
        return spawned

    async def _runc_created(self, container_id: str, report: ShimReport) -> int:
        """The shim's second line, read by a task of its own: the init's pid,
        saved in the record, or runc create's error (raised to whoever awaits
        it; the shim has recorded it as the exit, a StartError)."""
        try:
            pid = await report.init_pid()
            self._update(container_id, {"pid": pid})
            return pid
        finally:
            self._creates.pop(container_id, None)

    async def created(self, container_id: str) -> int:
        """The init's pid once ``runc create`` is done (0 if the container
        never got one: its create failed, or its shim died). What a kill, an
        update or a delete awaits first: runc knows no container before."""
        with contextlib.suppress(FailedPrecondition, Internal):
            return await self._runc_create_done(container_id)
        return 0

    # -- watching for the exit -------------------------------------------------------

    @step("watch_for_the_exit")
    def watch_for_the_exit(self, container_id: str) -> None:
        """A ``wait`` connection to the shim, held by a task of its own: the
        exit is recorded whoever asks, or nobody, and runc's state deleted then."""
        self._watch(container_id)

    def _watch(self, container_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._exits.setdefault(container_id, loop.create_future())
        if container_id not in self._watchers:
            self._watchers[container_id] = loop.create_task(self._wait_for_shim(container_id))

    async def _wait_for_shim(self, container_id: str) -> None:
        """Hold a ``wait`` connection until the shim says the init has exited (or
        is gone); then ``exit.json`` is on disk, written before the shim spoke."""
        d = self.dir(container_id)
        pending = self._creates.get(container_id)
        if pending is not None:  # the shim serves once its runc create is done
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        try:
            channel, answer = await Channel.open(d, {"op": "wait"})
        except (FailedPrecondition, NotFound):
            pass
        else:
            try:
                if "exit" not in answer:
                    while await channel.next_frame() is not None:
                        pass
            finally:
                await channel.close()
        status = self.read_exit(container_id)
        if status is None:
            status = await self._shim_lost(container_id)
        await self.forget_runc_state(container_id)
        self._watchers.pop(container_id, None)
        future = self._exits.setdefault(container_id, asyncio.get_running_loop().create_future())
        if not future.done():
            future.set_result(status)
        for callback in list(self.on_exit):
            result = callback(container_id, status)
            if asyncio.iscoroutine(result):
                await result

    async def forget_runc_state(self, container_id: str) -> None:
        """The exit is on disk: runc's state (and with it the container's
        cgroup) has nothing more to tell, so it goes now, as containerd
        deletes a task when it exits, and RemoveContainer does not wait for
        it. ``--force``: a lost shim's container may still be dying of our
        SIGKILL. Our state dir stays (record, ``exit.json``, log), so
        ContainerStatus reports the exit until the container is removed.

        The record then says so, and :meth:`delete` skips runc. The mark is
        written after runc's state is gone, so a server killed in between
        finds no mark and ``delete`` runs ``runc delete`` once more, which
        finds nothing: the one order in which losing the mark costs nothing."""
        if not self.dir(container_id).exists():
            return  # removed (its record may outlive it in memory a moment): delete() ran runc
        try:
            self.record(container_id)
        except (NotFound, RecordUnreadable):
            return  # being removed, or unreadable: delete() runs runc itself
        try:
            await self._runc("delete", "--force", container_id)
        except NotFound:
            pass  # deleted already (a remove that overtook us)
        except FailedPrecondition as exc:
            log.warning("runc delete of exited %s: %s; RemoveContainer retries", container_id, exc)
            return
        with contextlib.suppress(OSError, NotFound, RecordUnreadable):  # removed meanwhile
            self._update(container_id, {RUNC_DELETED: True})

    async def _shim_lost(self, container_id: str) -> ExitStatus:
        """The shim is gone and left no exit record (killed, or the machine
        rebooted): the container cannot be watched any more. Kill what is left
        and record the exit as unknown, as containerd does (exit 255)."""
        if not self.dir(container_id).exists():
            return ExitStatus(255, time.time_ns(), message="container removed")
        with contextlib.suppress(NotFound, FailedPrecondition):
            await self._runc("kill", container_id, "KILL")
        status = ExitStatus(255, time.time_ns(), message="the shim exited without recording")
        atomic_write_json(
            self.dir(container_id) / shim.EXIT,
            {
                "exit_code": status.exit_code,
                "finished_at": status.finished_at,
                "message": status.message,
            },
        )
        self._exited[container_id] = status
        return status

    async def wait(self, container_id: str) -> ExitStatus:
        """The exit, once recorded and (while a watcher runs) runc's state deleted."""
        self._known(container_id)
        if container_id not in self._watchers:
            status = self.read_exit(container_id)
            if status is not None:
                return status
            self._watch(container_id)
        return await asyncio.shield(self._exits[container_id])

    # -- start, kill (Backend.stop, the one stop sequence, is built on these) -------

    @child_span("RuntimeStart")
    async def start(self, container_id: str) -> ContainerState:
        self._known(container_id)
        await self.get_container_process_pid(container_id)
        record = self.record(container_id)
        if decide("exited_already", self.read_exit(container_id) is not None):
            raise FailedPrecondition(f"container {container_id!r} has exited; it cannot start")
        if decide("started_already", bool(record["started_at"])):
            raise FailedPrecondition(f"container {container_id!r} was started already")
        # Written before runc start (a quick init may exit before runc returns,
        # and a server killed in between must not find it "created" while it
        # runs); "starting" tells recover() to ask runc which it was.
        self._update(container_id, {"started_at": time.time_ns(), STARTING: True})
        crash_point("runtime_start:intent_written")
        try:
            await self.runc_start(container_id)
        except BaseException:
            with contextlib.suppress(NotFound):  # removed meanwhile: the error stays the reason
                self._update(container_id, {"started_at": 0, STARTING: False})
            raise
        crash_point("runtime_start:runc_started")
        self._update(container_id, {STARTING: False})
        return await self.state(container_id)

    @step("get_container_process_pid")
    async def get_container_process_pid(self, container_id: str) -> int:
        """Wait for the shim's ``runc create``, as iSulad's ``rt_isula_start``
        does first: the report on the shim's pipe while this server holds it;
        after a restart, what the shim leaves in the state dir (iSulad polls
        its shim's pid file the same way, every 100 ms while the shim lives).
        A create that failed fails the start with runc's words (the shim has
        recorded the exit: 128, StartError, as containerd does)."""
        return await self._runc_create_done(container_id)

    async def _runc_create_done(self, container_id: str) -> int:
        pending = self._creates.get(container_id)
        if pending is not None:
            return await asyncio.shield(pending)
        record = self.record(container_id)
        if record.get("pid"):
            return int(record["pid"])
        pid = await self.pid_left_by_the_shim(container_id)
        if pid:
            self._update(container_id, {"pid": pid})
        return pid

    async def pid_left_by_the_shim(self, container_id: str) -> int:
        """No report to read (the server restarted meanwhile): ``init.pid``
        once runc create has written it; an exit recorded instead (a create
        that failed, a lost shim) or a shim dead without either says why not."""
        d = self.dir(container_id)
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int((d / shim.INIT_PID).read_text())
            status = self.read_exit(container_id)
            if status is not None:
                if status.start_error:
                    raise FailedPrecondition(status.message)
                return 0  # exited otherwise: the caller's own checks say so
            if not self.shim_alive(container_id):
                raise FailedPrecondition(
                    f"container {container_id!r}: failed read pid from dead shim"
                )
            if time.monotonic() > deadline:
                raise Internal(f"the shim did not report within {SPAWN_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)

    @step("runc_start")
    async def runc_start(self, container_id: str) -> None:
        """The shim's ``runc create`` left the init waiting on its exec fifo; this releases it."""
        await self._runc("start", container_id)

    @child_span("RuntimeKill")
    async def kill(self, container_id: str, signum: int) -> None:
        self._known(container_id)
        await self.created(container_id)
        if decide("exited_already", self.read_exit(container_id) is not None):
            return
        await self.runc_kill(container_id, signum)

    @step("runc_kill")
    async def runc_kill(self, container_id: str, signum: int) -> None:
        """A container that exits meanwhile is no error: the signal had nothing left to do."""
        try:
            await self._runc("kill", container_id, str(int(signum)))
        except (NotFound, FailedPrecondition) as exc:
            if "not running" not in str(exc) and "does not exist" not in str(exc):
                raise

    def exit_status(self, container_id: str) -> ExitStatus | None:
        return self.read_exit(container_id)

    # -- delete ----------------------------------------------------------------------

    async def delete(self, container_id: str) -> None:
        """Remove a container that is not running: runc's state, the cgroup, our dir.
        A container created but never started is killed first (nothing to lose).
        runc's state is usually gone already (the exit watcher deleted it);
        ``runc delete`` runs here only when the record does not say so: the
        server died between the exit and now, or the record cannot be read
        (then the container is killed and deleted as runc knows it: removing
        it is what the user asked for)."""
        await self.created(container_id)
        try:
            record = self.record(container_id)
        except RecordUnreadable:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self._runc("delete", "--force", container_id)  # kills, and its cgroup
            self._forget(container_id)
            return
        if self.read_exit(container_id) is None:
            if record["started_at"]:
                raise FailedPrecondition(
                    f"container {container_id!r} is running; stop it before removing it"
                )
            await self.stop(container_id, 0)
        record = await self.watcher_done(container_id, record)
        if not record.get(RUNC_DELETED):
            with contextlib.suppress(NotFound):
                await self._runc("delete", "--force", container_id)
        if record.get("cgroups_path"):
            cgroups.remove(record["cgroups_path"])  # runc's delete removed it, but for a leftover
        self._forget(container_id)

    async def watcher_done(self, container_id: str, record: Record) -> Record:
        """The exit is on disk (the shim writes it before it tells the watcher):
        let the watcher finish deleting runc's state rather than race it. The
        record as it is then."""
        if container_id in self._watchers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(container_id), KILL_WAIT)
            with contextlib.suppress(NotFound, RecordUnreadable):
                return self.record(container_id)
        return record

    def _forget(self, container_id: str) -> None:
        for tasks in (self._watchers, self._creates):
            task = tasks.pop(container_id, None)
            if task is not None:
                task.cancel()
        self._exits.pop(container_id, None)
        self._exited.pop(container_id, None)
        self._records.forget(container_id)
        self._images.pop(container_id, None)
        shutil.rmtree(self.dir(container_id), ignore_errors=True)

    # -- state -------------------------------------------------------------------------

    async def state(self, container_id: str) -> ContainerState:
        record = self.record(container_id)
        status = self.read_exit(container_id)
        phase = "running" if record["started_at"] else "created"
        if status is not None:
            phase = "exited"
        return ContainerState(
            container_id,
            phase,
            int(record.get("pid", 0)),
            int(record["created_at"]),
            int(record["started_at"]),
            status,
            dict(record.get("notes", {})),
        )

    def list_ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.containers_dir.glob(f"*/{RECORD}"))

    def pid_of(self, container_id: str) -> int:
        """The container's init pid (0 if it is gone)."""
        try:
            return int(self.record(container_id).get("pid", 0))
        except (NotFound, RecordUnreadable, ValueError):
            return 0

    def uses_image(self, image_id: str) -> bool:
        return image_id in self._images.values()

    # -- exec, attach --------------------------------------------------------------

    @step("exec_process")
    def exec_process(self, container_id: str, args: list[str]) -> dict[str, Any]:
        """The container's own process (user, env, cwd, capabilities) with other args,
        as containerd's exec does."""
        if not args:
            raise InvalidArgument("exec: the command is empty")
        spec = json.loads((self.dir(container_id) / "config.json").read_text())
        process: dict[str, Any] = dict(spec["process"])
        process["args"] = list(args)
        process.pop("oomScoreAdj", None)
        return process

    def running(self, container_id: str) -> bool:
        return (
            bool(self.record(container_id)["started_at"]) and self.read_exit(container_id) is None
        )

    async def _running(self, container_id: str) -> Path:
        if not self.running(container_id):
            raise FailedPrecondition(f"container {container_id!r} is not running")
        return self.dir(container_id)

    @child_span("RuntimeExec")
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
        if not decide("container_running", self.running(container_id)):
            raise FailedPrecondition(f"container {container_id!r} is not running")
        d = self.dir(container_id)
        hello: dict[str, Any] = {
            "op": "exec",
            "process": self.exec_process(container_id, args),
            "tty": tty,
            "stdin": stdin,
        }
        if tty and width and height:
            hello |= {"width": width, "height": height}
        return await self.open_process_stream(d, hello)

    @step("open_process_stream")
    async def open_process_stream(self, d: Path, hello: dict[str, Any]) -> ProcessStream:
        """The shim starts the process (``runc exec``) and streams its stdio
        over this connection."""
        return await ProcessStream.open(d, hello)

    async def exec_sync(self, container_id: str, args: list[str], timeout: float) -> ExecResult:
        """Run to completion, keep at most 16 MiB of each stream. On timeout the
        connection is closed, and the shim SIGKILLs the process: nothing is left."""
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            stream = await asyncio.wait_for(
                self.exec(container_id, args), timeout if timeout > 0 else None
            )
        except TimeoutError:  # the shim kills it when it sees us gone
            raise DeadlineExceeded(
                f"exec {args[0]!r} in {container_id!r} did not even start in {timeout:g} s"
            ) from None
        timeout = max(0.001, deadline - asyncio.get_running_loop().time()) if timeout > 0 else 0
        kept = {"stdout": bytearray(), "stderr": bytearray()}
        written = {"stdout": 0, "stderr": 0}

        async def collect() -> None:
            async for name, data in stream.output():
                buf = kept[name]
                buf += data[: max(0, MAX_EXEC_OUTPUT - len(buf))]
                written[name] += len(data)

        try:
            if timeout > 0:
                await asyncio.wait_for(collect(), timeout)
            else:
                await collect()
        except TimeoutError:
            await self.kill_exec(stream)
            raise DeadlineExceeded(
                f"exec {args[0]!r} in {container_id!r} timed out after {timeout:g} s; killed"
            ) from None
        finally:
            await stream.close()
        if stream.exit is None:
            raise FailedPrecondition(stream.error or "exec: the shim went away")
        code = int(stream.exit["exit_code"])
        return ExecResult(
            code, bytes(kept["stdout"]), bytes(kept["stderr"]), written["stdout"], written["stderr"]
        )

    async def kill_exec(self, stream: ProcessStream) -> None:
        """SIGKILL the exec'd process and wait for its reaping, so that when the
        caller hears of the timeout the process is already gone."""
        with contextlib.suppress(ConnectionError, OSError):
            await stream.signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_drain(stream), KILL_WAIT)

    async def attach(
        self, container_id: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> ProcessStream:
        d = await self._running(container_id)
        return await ProcessStream.open(
            d, {"op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr}
        )

    async def resize(self, container_id: str, width: int, height: int) -> None:
        if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
            raise InvalidArgument(f"terminal size {width}x{height}: each must be 1..65535")
        d = await self._running(container_id)
        if not self.record(container_id)["tty"]:
            raise FailedPrecondition(f"container {container_id!r} has no terminal to resize")
        await request(d, "resize", width=width, height=height)

    async def reopen_log(self, container_id: str) -> None:
        d = await self._running(container_id)
        await request(d, "reopen_log")

    # -- resources -------------------------------------------------------------------

    async def update(self, container_id: str, resources: dict[str, Any]) -> dict[str, str]:
        """``runc update`` with runtime-spec LinuxResources; recorded either way so
        the status can show it. Rootless: recorded, not enforced (no cgroups)."""
        await self.created(container_id)
        self.record(container_id)  # NotFound, RecordUnreadable
        if self.read_exit(container_id) is not None:
            raise FailedPrecondition(f"container {container_id!r} has exited")
        notes: dict[str, str] = {}
        if self.rootless:
            notes["resources"] = f"recorded, not enforced ({self.name}: no cgroups)"
        else:
            await self._runc(
                "update", "--resources", "-", container_id, stdin=json.dumps(resources).encode()
            )
        record = self.record(container_id)  # as it is after the await
        self._update(
            container_id,
            {
                "resources": merge_resources(record.get("resources", {}), resources),
                "notes": {**record.get("notes", {}), **notes},
            },
        )
        return notes

    def current_resources(self, container_id: str) -> dict[str, Any]:
        """The container's limits as its cgroup has them now ({} without cgroups)."""
        path = self.record(container_id).get("cgroups_path") or ""
        return cgroups.read_resources(path) if path and cgroups.exists(path) else {}

    async def stats(self, container_id: str) -> cgroups.CgroupStats:
        """The cgroup's counters, or the init's own without one. An exited
        container's cgroup went with runc's state, and its pid may be another
        process's by now: it uses nothing."""
        await self.created(container_id)
        record = self.record(container_id)
        path = record.get("cgroups_path") or ""
        if path and cgroups.exists(path):
            return cgroups.read_stats(path)
        if self.read_exit(container_id) is not None:
            return cgroups.CgroupStats(time.time_ns(), 0, 0, 0, None, 0, 0)
        return proc_stats(int(record.get("pid", 0)))

    # -- after a restart -------------------------------------------------------------

    async def recover(self) -> list[ContainerState]:
        """Rebuild the view from disk: every container dir with a record is ours.
        A shim still serving gets a new ``wait``; one gone without an exit record
        means the container is lost (exit 255). What ``runc list`` knows that we
        do not (a create cut short by the server's death) is deleted."""
        self.sweep_unrecorded_dirs()
        ours = set(self.list_ids())
        for orphan in sorted(set(await self.runtime_list()) - ours):
            await self.delete_orphan(orphan)
        states = []
        for container_id in sorted(ours):
            try:
                record = self.record(container_id)
            except RecordUnreadable as exc:
                self.unreadable_record(container_id, exc)
                continue
            self._images[container_id] = str(record.get("image_id", ""))
            if record.get(STARTING):
                await self.settle_start(container_id)
            if self.read_exit(container_id) is None:
                if self.shim_alive(container_id):
                    self._watch(container_id)
                else:  # settle it now, so the state we report is true
                    self._exits[container_id] = asyncio.get_running_loop().create_future()
                    self._exits[container_id].set_result(await self._shim_lost(container_id))
            states.append(await self.state(container_id))
        annotate(containers=str(len(states)))
        return states

    def sweep_unrecorded_dirs(self) -> None:
        """A state dir with no ``container.json`` is what a kill between
        ``mkdir`` and the first record, or in the middle of a delete's
        ``rmtree``, leaves: nothing refers to it, so it goes."""
        for d in self.containers_dir.iterdir():
            if d.is_dir() and not (d / RECORD).exists():
                log.warning("state dir %s has no %s: removed", d, RECORD)
                shutil.rmtree(d, ignore_errors=True)

    def unreadable_record(self, container_id: str, exc: RecordUnreadable) -> None:
        """The load policy (``store/records.py``), for the runtime's record: never
        a reason to stop the server or touch the container. The bad file is
        moved aside and a placeholder saying why takes its place, so that the
        manager reports the container UNKNOWN and ``delete`` removes what runc
        knows of it."""
        path = self.dir(container_id) / RECORD
        with contextlib.suppress(OSError, ValueError, TypeError):
            if UNREADABLE in json.loads(path.read_text()):
                return  # moved aside at an earlier start
        aside = move_aside(path, "unreadable")
        why = f"{exc}; the file is kept as {aside.name}"
        log.error("%s; the container is left alone and reported UNKNOWN", why)
        self._save(container_id, {UNREADABLE: why})

    async def settle_start(self, container_id: str) -> None:
        """A start cut short by the server's death: runc knows whether it
        happened. Still "created": not started, a StartContainer may try again."""
        try:
            status = json.loads(await self._runc("state", container_id)).get("status")
        except (NotFound, FailedPrecondition, ValueError):
            status = "stopped"
        changes: dict[str, Any] = {STARTING: False}
        if status == "created":
            changes["started_at"] = 0
        self._update(container_id, changes)

    def shim_alive(self, container_id: str) -> bool:
        """Is the shim that ``shim.pid`` names still running (and still ours, not a
        process that got its pid after it exited)?"""
        try:
            pid = int((self.dir(container_id) / shim.SHIM_PID).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        return b"teaching_cri" in cmdline

    def drop_pod_level(self, pod_id: str) -> None:
        """The pod's cgroup level, its containers' all gone."""
        if not self.rootless:
            cgroups.remove(cgroups.pod_parent(pod_id))

    async def runtime_list(self) -> list[str]:
        """The containers runc (or plainrun) has state for under our --root."""
        try:
            listed = json.loads(await self._runc("list", "--format", "json") or "null")
        except (FailedPrecondition, NotFound, ValueError):
            return []
        return [str(c["id"]) for c in listed or []]

    async def delete_orphan(self, container_id: str) -> None:
        annotate(container_id=container_id)
        with contextlib.suppress(FailedPrecondition, NotFound):
            await self._runc("delete", "--force", container_id)

    async def close(self) -> None:
        """Stop watching (the shims and containers go on). A create under way is
        awaited first, so that its pid is in the record, not only in the shim."""
        if self._creates:
            await asyncio.wait(list(self._creates.values()), timeout=SPAWN_TIMEOUT)
        for task in list(self._watchers.values()):
            task.cancel()
        for task in list(self._watchers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
        await self.launcher.close()


def merge_resources(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """An update's values over the old ones, field by field (cpu.quota does not
    wipe cpu.shares)."""
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


async def _drain(stream: ProcessStream) -> None:
    async for _ in stream.output():
        pass


def proc_stats(pid: int) -> cgroups.CgroupStats:
    """Without a cgroup: the init's own CPU time and resident memory from /proc
    (its children are not counted; the unprivileged tier says so)."""
    now = time.time_ns()
    cpu = rss = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cgroups.CgroupStats(now, cpu, rss, rss, None, 1 if cpu or rss else 0, 0)
