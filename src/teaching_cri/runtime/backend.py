"""What the CRI layer may ask of a backend, and the values it gets back.

iSulad's ``runtime/`` offers the same verbs through ``runtime_create``,
``runtime_start``, ``runtime_kill``, ``runtime_rm``, ``runtime_exec``,
``runtime_update``, ``runtime_resources_stats`` and ``runtime_resize``; the
container manager calls only these, never runc directly, so
an unprivileged tier can stand in where runc as root cannot run.
"""

from __future__ import annotations

import abc
import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..fsutil import crash_point
from ..trace.tracer import annotate, child_span, decide, step
from .cgroups import CgroupStats
from .shim_client import ProcessStream

# ExecSync keeps at most this much of stdout and of stderr while the command
# runs (the rest is read and dropped, so the command never blocks on a full
# pipe); the CRI layer then fits both into one reply (cri/container_exec.py).
MAX_EXEC_OUTPUT = 16 << 20
KILL_WAIT = 10.0  # after SIGKILL, how long a container may take to be reaped


class RecordUnreadable(FailedPrecondition):
    """A container's runtime record (its ``container.json``) cannot be read.
    Never a reason to kill or delete it: the manager reports it UNKNOWN and
    RemoveContainer cleans it up."""


@dataclass(frozen=True)
class CreateRequest:
    """A container to create: its id, its OCI spec, where its log goes."""

    id: str
    spec: dict[str, Any]
    log_path: str = ""
    pod_id: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    stop_signal: str = ""  # from the image (StopSignal) or the config; "" is SIGTERM
    image_id: str = ""  # so RemoveImage can refuse an image a container uses
    notes: Mapping[str, str] = field(default_factory=dict)  # spec.SpecNotes: kept for status


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    finished_at: int  # ns since the epoch
    signal: int = 0
    oom_killed: bool = False
    message: str = ""
    start_error: bool = False  # never ran: runc create failed (exit code 128, containerd's)

    @property
    def reason(self) -> str:
        """ContainerStatus.reason as the kubelet knows it."""
        if self.start_error:
            return "StartError"
        if self.oom_killed:
            return "OOMKilled"
        return "Completed" if self.exit_code == 0 else "Error"


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str  # "created" | "running" | "exited"
    pid: int
    created_at: int
    started_at: int = 0
    exit: ExitStatus | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    """What ExecSync's command left: its exit code, the output kept, and how
    many bytes it wrote to each stream (more than kept when the output was cut)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_written: int = 0
    stderr_written: int = 0


ExitCallback = Callable[[str, ExitStatus], Awaitable[None] | None]


def parse_signal(name: str, default: signal.Signals = signal.SIGTERM) -> signal.Signals:
    """``SIGTERM``, ``TERM`` or ``15`` (the forms an image's StopSignal takes)."""
    name = name.strip()
    if not name:
        return default
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        upper = name.upper()
        return signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]
    except (KeyError, ValueError):
        raise InvalidArgument(f"unknown signal {name!r}") from None


class Backend(abc.ABC):
    """The verbs; each ``id`` is a container id the backend created."""

    name: str
    rootless: bool  # no cgroups: limits are recorded, not enforced
    on_exit: list[ExitCallback]  # told of every container's exit, once

    @abc.abstractmethod
    async def create(self, request: CreateRequest) -> ContainerState: ...

    @abc.abstractmethod
    async def start(self, container_id: str) -> ContainerState: ...

    @abc.abstractmethod
    async def kill(self, container_id: str, signum: int) -> None: ...

    @abc.abstractmethod
    async def wait(self, container_id: str) -> ExitStatus: ...

    @abc.abstractmethod
    def exit_status(self, container_id: str) -> ExitStatus | None:
        """The exit, if the container has exited (``None`` while it lives)."""

    @abc.abstractmethod
    def record(self, container_id: str) -> Mapping[str, Any]:
        """The backend's own record of the container, read-only (every
        backend keeps ``pod_id`` and ``stop_signal`` in it); ``NotFound``
        without one, ``RecordUnreadable`` for one that cannot be read."""

    def stop_signal(self, container_id: str) -> signal.Signals:
        """The signal that asks this container to stop (its image's
        StopSignal); SIGKILL for a container whose record cannot be read
        (its stop signal is in it): a stop asked for still stops it."""
        try:
            return signal.Signals[self.record(container_id)["stop_signal"]]
        except RecordUnreadable:
            return signal.SIGKILL

    @child_span("RuntimeStop")
    async def stop(self, container_id: str, timeout: float) -> ExitStatus:
        """The stop signal, ``timeout`` seconds of grace, then SIGKILL: the one
        stop sequence, for every backend (built on its ``kill`` and ``wait``)
        and every caller (StopContainer, a pod's stop, a forced remove).

        PID 1 of a pid namespace gets only the signals it handles, so an init
        without a SIGTERM handler (``sleep``) ignores the stop signal; SIGKILL,
        sent from outside, always works."""
        signum = self.stop_signal(container_id)  # NotFound for an unknown container
        status = self.exit_status(container_id)
        if decide("exited_already", status is not None):
            assert status is not None
            return status
        if decide("grace_period", timeout > 0):
            await self.send_stop_signal(container_id, signum)
            try:
                status = await asyncio.wait_for(self.wait(container_id), timeout)
            except TimeoutError:
                decide("exited_within_timeout", False)
            else:
                decide("exited_within_timeout", True)
                return status
        await self.send_sigkill(container_id)
        crash_point("runtime_stop:sigkill_sent")
        try:
            status = await asyncio.wait_for(self.wait(container_id), KILL_WAIT)
        except TimeoutError:
            decide("reaped", False)
            raise FailedPrecondition(
                f"container {container_id!r} did not exit {KILL_WAIT:.0f} s after SIGKILL"
            ) from None
        else:
            decide("reaped", True)
        return status

    @step("send_stop_signal")
    async def send_stop_signal(self, container_id: str, signum: signal.Signals) -> None:
        annotate(signal=signum.name)
        await self.kill(container_id, signum)

    @step("send_sigkill")
    async def send_sigkill(self, container_id: str) -> None:
        await self.kill(container_id, signal.SIGKILL)

    @abc.abstractmethod
    async def delete(self, container_id: str) -> None: ...

    @abc.abstractmethod
    async def state(self, container_id: str) -> ContainerState: ...

    @abc.abstractmethod
    async def exec(
        self,
        container_id: str,
        args: list[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        width: int = 0,
        height: int = 0,
    ) -> ProcessStream: ...

    @abc.abstractmethod
    async def exec_sync(self, container_id: str, args: list[str], timeout: float) -> ExecResult: ...

    @abc.abstractmethod
    async def attach(
        self, container_id: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> ProcessStream: ...

    @abc.abstractmethod
    async def resize(self, container_id: str, width: int, height: int) -> None: ...

    @abc.abstractmethod
    async def reopen_log(self, container_id: str) -> None: ...

    @abc.abstractmethod
    async def update(self, container_id: str, resources: dict[str, Any]) -> dict[str, str]: ...

    @abc.abstractmethod
    async def stats(self, container_id: str) -> CgroupStats: ...

    @abc.abstractmethod
    def current_resources(self, container_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def recover(self) -> list[ContainerState]: ...

    @abc.abstractmethod
    def list_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def uses_image(self, image_id: str) -> bool: ...

    def pod_of(self, container_id: str) -> str:
        """The pod a container belongs to ("" for none, if it is gone, or if
        its record cannot be read)."""
        try:
            return str(self.record(container_id).get("pod_id", ""))
        except (NotFound, RecordUnreadable):
            return ""

    @abc.abstractmethod
    def pid_of(self, container_id: str) -> int: ...

    async def release_pod(self, pod_id: str) -> None:
        """RemovePodSandbox's last call: refused while a container of the pod
        is left; then what the backend keeps for the pod itself goes."""
        users = [c for c in self.list_ids() if self.pod_of(c) == pod_id]
        if users:
            raise FailedPrecondition(f"pod {pod_id!r} still has containers: {', '.join(users[:5])}")
        self.drop_pod_level(pod_id)

    @abc.abstractmethod
    def drop_pod_level(self, pod_id: str) -> None:
        """What the backend keeps for a pod beyond its containers (the runc
        backend's pod cgroup), removed."""

    @abc.abstractmethod
    async def close(self) -> None: ...
