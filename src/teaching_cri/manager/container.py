"""Containers: what iSulad's ContainerManagerService and ``cb->container.*`` do.

A container belongs to a ready pod sandbox and runs one image. These are the
flows; the records and their index are the container store's
(``store/container.py``), as containerd keeps ``store/container`` apart from
its ``criService``.

The helpers the seed names keep its names, so a reader of
``cri_container_manager_design.md`` finds them: GetRealContainerOrSandboxID,
MakeContainerName / ParseContainerName, MakeLabels, MakeAnnotations,
GenerateMountBindings and the packing of devices and security context.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..api import api_pb2
from ..errors import (
    AlreadyExists,
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from ..fsutil import crash_point
from ..image.manager import ImageManager
from ..image.store import ImageRecord
from ..runtime import seccomp
from ..runtime.backend import (
    Backend,
    CreateRequest,
    ExecResult,
    ExitStatus,
    RecordUnreadable,
)
from ..runtime.cgroups import CgroupStats
from ..runtime.runc import merge_resources
from ..runtime.shim_client import ProcessStream
from ..runtime.spec import (
    ImageRunConfig,
    SandboxContext,
    capabilities,
    config_mounts,
    devices,
    generate_spec,
    security_paths,
)
from ..store.container import CREATED as CREATED
from ..store.container import EXITED as EXITED
from ..store.container import PENDING_CREATE, ContainerStore, state_name, unreadable
from ..store.container import RECORD_UNREADABLE as RECORD_UNREADABLE
from ..store.container import RUNNING as RUNNING
from ..store.container import UNKNOWN as UNKNOWN
from ..store.container import Container as Container
from ..store.container import State as State
from ..store.sandbox import READY
from ..trace.tracer import annotate, branch, decide, step
from . import validate
from .events import Mailbox
from .sandbox import Sandbox, SandboxManager
from .writable_layers import ContainerFigures, WritableLayers

TYPE_LABEL = "cri.isulad.type"  # iSulad: CRIHelpers::Constants::CONTAINER_TYPE_LABEL_KEY
TYPE_CONTAINER = "container"
TYPE_SANDBOX = "podsandbox"
LOG_PATH_LABEL = "cri.container.logpath"  # iSulad: CONTAINER_LOGPATH_LABEL_KEY
SANDBOX_ID_LABEL = "cri.sandbox.id"

log = logging.getLogger(__name__)


def make_container_name(
    sandbox: api_pb2.PodSandboxMetadata, container: api_pb2.ContainerMetadata
) -> str:
    """``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>``, as the seed's MakeContainerName."""
    return "_".join(
        (
            "k8s",
            container.name,
            sandbox.name,
            sandbox.namespace,
            sandbox.uid,
            str(container.attempt),
        )
    )


def parse_container_name(name: str) -> dict[str, str]:
    """The seed's ParseContainerName: the parts back out of a name."""
    parts = name.split("_")
    if len(parts) != 6 or parts[0] != "k8s":
        raise InvalidArgument(f"container name {name!r} is not k8s_<c>_<pod>_<ns>_<uid>_<n>")
    keys = ("container", "pod", "namespace", "uid", "attempt")
    return dict(zip(keys, parts[1:], strict=True))


def extract_labels(container: Container) -> dict[str, str]:
    """The seed's ExtractLabels: the labels the kubelet set, without ours (the
    type, the sandbox, the log path), which iSulad keeps in the same map and
    we keep apart, so they come back verbatim."""
    return {k: v for k, v in container.config.labels.items() if k not in container.internal_labels}


class ContainerManager:
    def __init__(
        self,
        store: ContainerStore,
        backend: Backend,
        images: ImageManager,
        sandboxes: SandboxManager,
        seccomp_profile_root: Path,
    ) -> None:
        self.containers = store
        self.seccomp_profile_root = seccomp_profile_root
        self.backend = backend
        self.images = images
        self.sandboxes = sandboxes
        self.on_event: list[Callable[[str, Container], None]] = []
        self.mailbox = Mailbox()  # GetContainerEvents' subscribers
        self.writable_layers = WritableLayers(images.snapshots)  # ContainerStats' disk figures
        backend.on_exit.append(self._exited)
        sandboxes.pod_containers = self

    # -- after a restart ---------------------------------------------------------

    async def load(self) -> None:
        """The records from disk (one that cannot be read stands as UNKNOWN, see
        the store's load policy), the runtime truth from the backend (a
        container that exited while we were away is EXITED with its real code);
        a create cut short is undone, and a runtime container with no record
        (a create cut before its record existed) removed."""
        for container in self.containers.load(
            lambda cid, why: unreadable(cid, self.backend.pod_of(cid), why)
        ):
            if container.pending == PENDING_CREATE:
                log.warning("container %s: its create was cut short; undoing it", container.id)
                await self.undo_create(container)
                continue
            container.listing  # noqa: B018 - converted now, not in the first ListContainers
            await self.refresh(container)
        sandboxes = {s.id for s in self.sandboxes.all()}
        for orphan in self.backend.list_ids():
            if orphan not in self.containers and orphan not in sandboxes:
                await self.forget_orphan(orphan)

    async def undo_create(self, container: Container) -> None:
        """Whatever a create made goes: the runtime container, the rootfs, the record."""
        with contextlib.suppress(CRIError):
            await self.backend.stop(container.id, 0)
        with contextlib.suppress(CRIError):
            await self.backend.delete(container.id)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.images.snapshots.remove_view, container.id)
        self.containers.delete(container)

    async def forget_orphan(self, container_id: str) -> None:
        """A runtime container with no record. Nothing refers to it; remove it whole."""
        with contextlib.suppress(CRIError):
            await self.backend.stop(container_id, 0)
            await self.backend.delete(container_id)
        await asyncio.to_thread(self.images.snapshots.remove_view, container_id)

    async def refresh(self, container: Container) -> None:
        """The runtime's truth into the record; a container loaded from an
        unreadable record stays UNKNOWN: the record no longer says what it is."""
        if container.reason == RECORD_UNREADABLE:
            return
        try:
            state = await self.backend.state(container.id)
        except NotFound:
            if container.state != EXITED:
                container.state = UNKNOWN
            return
        except RecordUnreadable as exc:
            container.state, container.reason = UNKNOWN, RECORD_UNREADABLE
            container.message = str(exc)
            return
        before = (container.state, container.started_at, container.finished_at)
        if state.exit is not None:
            container.started_at = state.started_at or container.started_at
            container.exited(state.exit)
        elif state.status == "running":
            container.state, container.started_at = RUNNING, state.started_at
        if (container.state, container.started_at, container.finished_at) != before:
            self.containers.save(container)

    async def _exited(self, container_id: str, status: ExitStatus) -> None:
        container = self.containers.get(container_id)
        if container is None or container.state == EXITED:
            return
        container.exited(status)
        self.containers.save(container)
        self.publish("CONTAINER_STOPPED_EVENT", container)

    def publish(self, kind: str, container: Container) -> None:
        self.mailbox.publish((kind, container))
        for listener in list(self.on_event):
            listener(kind, container)

    # -- the seed's helpers --------------------------------------------------------

    @step("get_real_container_or_sandbox_id")
    def get_real_container_or_sandbox_id(self, given: str, kind: str) -> str | None:
        """A full id or a unique prefix, among containers or sandboxes (the type
        label); ``None`` when there is none, an error when the prefix is ambiguous."""
        if not given:
            raise InvalidArgument(
                f"{'pod_sandbox_id' if kind == TYPE_SANDBOX else 'container_id'} is empty"
            )
        if kind == TYPE_SANDBOX:
            return self.sandboxes.sandboxes.resolve(given)
        return self.containers.resolve(given)

    def find(self, given: str) -> Container | None:
        real = self.get_real_container_or_sandbox_id(given, TYPE_CONTAINER)
        found = decide("get_container_id", real is not None)
        return self.containers.get(real) if found and real else None

    def get(self, given: str) -> Container:
        container = self.find(given)
        if container is None:
            raise NotFound(f"container {given!r} not found")
        return container

    # -- CreateContainer ----------------------------------------------------------

    async def create(
        self,
        sandbox_id: str,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig,
    ) -> str:
        real = self.get_real_container_or_sandbox_id(sandbox_id, TYPE_SANDBOX)
        if not decide("get_pod_id", real is not None):
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        sandbox = self.sandboxes.get(real or "")
        if not decide("sandbox_ready", await self.sandboxes.current_state(sandbox) == READY):
            raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} is not ready")
        self.get_container_or_sandbox_runtime(sandbox)
        image = self.generate_create_container_request(config)
        self.validate_container_config(config)
        name = self.make_container_name(sandbox, config)
        labels = self.make_labels(sandbox, config)
        self.make_annotations(config)
        self.generate_mount_bindings(config)
        self.pack_create_container_host_config_devices(config)
        self.pack_create_container_host_config_security_context(config, image)
        container_id = secrets.token_hex(32)
        log_path = self.update_create_config(sandbox, config, labels)
        holder = self.containers.holder(name)
        if not decide("name_reserved", holder is None):
            raise AlreadyExists(
                f"container name {name!r} is in use by {(holder or '')[:12]}: remove it first"
            )
        self.containers.reserve(name, container_id)  # no await since the check: atomic
        try:
            container = await self.m_cb_container_create(
                container_id, name, sandbox, config, sandbox_config, image, log_path, labels
            )
        except BaseException:
            self.containers.release(name, container_id)
            raise
        if not decide("pod_still_there", self.sandboxes.find(sandbox.id) is not None):
            await self.cb_container_remove(container)
            raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} was removed meanwhile")
        self.mailbox_publish("CONTAINER_CREATED_EVENT", container)
        return container_id

    @step("get_container_or_sandbox_runtime")
    def get_container_or_sandbox_runtime(self, sandbox: Sandbox) -> str:
        return sandbox.runtime_handler

    @step("generate_create_container_request")
    def generate_create_container_request(self, config: api_pb2.ContainerConfig) -> ImageRecord:
        """The config checked field by field, its image found (pulled already)."""
        if not config.HasField("metadata") or not config.metadata.name:
            raise InvalidArgument("container config: metadata.name is empty")
        if "_" in config.metadata.name:
            raise InvalidArgument(
                f"container config: metadata.name {config.metadata.name!r} may not contain '_'"
            )
        if not config.image.image:
            raise InvalidArgument("container config: image.image is empty")
        image = self.images.resolve(config.image.image)
        if image is None:
            raise NotFound(f"image {config.image.image!r} not found: pull it first")
        return image

    @step("validate_container_config")
    def validate_container_config(self, config: api_pb2.ContainerConfig) -> None:
        """What the kubelet would never send, refused before anything exists (validate.py)."""
        validate.container_config(config)

    @step("make_container_name")
    def make_container_name(self, sandbox: Sandbox, config: api_pb2.ContainerConfig) -> str:
        return make_container_name(sandbox.config.metadata, config.metadata)

    @step("make_labels")
    def make_labels(self, sandbox: Sandbox, config: api_pb2.ContainerConfig) -> dict[str, str]:
        """Ours beside the kubelet's: the type, the sandbox, the log path. Kept apart,
        so the labels the kubelet set come back verbatim."""
        labels = {TYPE_LABEL: TYPE_CONTAINER, SANDBOX_ID_LABEL: sandbox.id}
        clash = [k for k in config.labels if k in labels]
        if clash:
            raise InvalidArgument(f"container config: label {clash[0]!r} is reserved")
        return labels

    @step("make_annotations")
    def make_annotations(self, config: api_pb2.ContainerConfig) -> dict[str, str]:
        return dict(config.annotations)

    @step("generate_mount_bindings")
    def generate_mount_bindings(self, config: api_pb2.ContainerConfig) -> list[dict[str, Any]]:
        """A host path that does not exist becomes a directory (0755), as
        containerd makes it: runc would refuse the bind otherwise."""
        for m in config.mounts:
            if m.host_path.startswith("/") and not os.path.lexists(m.host_path):
                try:
                    os.makedirs(m.host_path, mode=0o755, exist_ok=True)
                except OSError as exc:
                    raise FailedPrecondition(
                        f"mount {m.container_path!r}: creating host_path {m.host_path!r}: "
                        f"{exc.strerror}"
                    ) from None
        return config_mounts(config)

    @step("pack_create_container_host_config_devices")
    def pack_create_container_host_config_devices(
        self, config: api_pb2.ContainerConfig
    ) -> list[dict[str, Any]]:
        return devices(config)[0]

    @step("pack_create_container_host_config_security_context")
    def pack_create_container_host_config_security_context(
        self, config: api_pb2.ContainerConfig, image: ImageRecord
    ) -> list[str]:
        """Checked here, before anything exists: the user fields, the masked and
        read-only paths, and the seccomp profile, read and resolved against the
        container's capabilities; the chart's "seccomp profile ?" records which
        kind (or "invalid", with the error naming the field and value)."""
        sc = config.linux.security_context
        if sc.HasField("run_as_user") and sc.run_as_username:
            raise InvalidArgument("security context: run_as_user and run_as_username both set")
        if (
            sc.HasField("run_as_group")
            and not sc.HasField("run_as_user")
            and not sc.run_as_username
        ):
            raise InvalidArgument(
                f"security context: run_as_group {sc.run_as_group.value} is set without "
                "run_as_user or run_as_username"
            )
        caps = capabilities(config)
        security_paths(config)
        try:
            choice = seccomp.choose(sc, self.seccomp_profile_root)
            seccomp.linux_seccomp(choice, caps)
        except InvalidArgument as exc:
            branch("seccomp_profile", "invalid", error=str(exc))
            raise
        branch("seccomp_profile", choice.kind, source=choice.source or choice.why)
        return caps

    @step("update_create_config")
    def update_create_config(
        self, sandbox: Sandbox, config: api_pb2.ContainerConfig, labels: dict[str, str]
    ) -> str:
        """The log path: the sandbox's log_directory joined with the config's log_path."""
        directory = sandbox.config.log_directory
        log_path = ""
        if config.log_path:
            if not directory:
                raise InvalidArgument("log_path is set but the sandbox has no log_directory")
            log_path = validate.log_path(directory, config.log_path)
        labels[LOG_PATH_LABEL] = log_path
        return log_path

    @step("m_cb_container_create")
    async def m_cb_container_create(
        self,
        container_id: str,
        name: str,
        sandbox: Sandbox,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig,
        image: ImageRecord,
        log_path: str,
        labels: dict[str, str],
    ) -> Container:
        """The record first, saying "create" (a restart undoes a create it
        finds cut short: the client never got the id), then the rootfs, the
        spec and the runtime container; then the record, done."""
        container = Container(
            container_id,
            name,
            sandbox.id,
            base64.b64encode(config.SerializeToString()).decode(),
            config.image.image,
            image.id,
            time.time_ns(),
            log_path,
            labels,
            pending=PENDING_CREATE,
        )
        self.containers.persist(container)
        crash_point("create_container:intent_written")
        try:
            rootfs = await asyncio.to_thread(
                self.images.snapshots.mount_view,
                [layer.chain_id for layer in image.layers],
                container_id,
            )
            crash_point("create_container:rootfs_mounted")
            spec, notes = generate_spec(
                config,
                ImageRunConfig.from_config(image.config),
                rootfs,
                sandbox=self.pod_context(sandbox, config),
                annotations={
                    "io.kubernetes.cri.container-type": "container",
                    "io.kubernetes.cri.sandbox-id": sandbox.id,
                },
                seccomp_profile_root=self.seccomp_profile_root,
                seccomp_enforced=self.backend.name not in ("processes", "fake"),
            )
            container.resources = spec.get("linux", {}).get("resources", {})
            container.notes = notes.clamped
            await self.backend.create(
                CreateRequest(
                    container_id,
                    spec,
                    log_path=log_path,
                    pod_id=sandbox.id,
                    stdin=config.stdin,
                    stdin_once=config.stdin_once,
                    tty=config.tty,
                    stop_signal=ImageRunConfig.from_config(image.config).stop_signal,
                    image_id=image.id,
                    notes=notes.clamped,
                )
            )
            crash_point("create_container:runtime_created")
            container.pending = ""
            self.containers.save(container)
        except BaseException:
            await asyncio.to_thread(self.images.snapshots.remove_view, container_id)
            self.containers.delete(container)
            raise
        container.listing  # noqa: B018 - converted once, here, for every ListContainers
        return container

    def pod_context(self, sandbox: Sandbox, config: api_pb2.ContainerConfig) -> SandboxContext:
        """The pod's namespaces; with pid TARGET, the target container's pid
        namespace instead (kubectl debug --target)."""
        context = self.sandboxes.context_for(sandbox, config)
        options = config.linux.security_context.namespace_options
        if options.pid != api_pb2.TARGET:
            return context
        target = self.containers.get(options.target_id)
        if target is None or target.sandbox_id != sandbox.id:
            raise NotFound(f"namespace_options: target container {options.target_id!r} not in pod")
        pid = self.sandboxes.backend_pid(target.id)
        if target.state != RUNNING or not pid:
            raise FailedPrecondition(f"target container {target.id[:12]} is not running")
        return replace(context, namespaces={**context.namespaces, "pid": f"/proc/{pid}/ns/pid"})

    @step("mailbox_publish")
    def mailbox_publish(self, kind: str, container: Container) -> None:
        annotate(event=kind)
        self.publish(kind, container)

    # -- StartContainer ------------------------------------------------------------

    async def start(self, given: str) -> None:
        container = self.get(given)
        if not decide("container_created", container.state == CREATED):
            why = f" ({container.reason}: {container.message})" if container.message else ""
            raise FailedPrecondition(
                f"container {container.id[:12]} is {state_name(container.state)}{why}, "
                "only a created container can start"
            )
        await self.m_cb_container_start(container)
        self.create_container_log_symlink(container)
        self.mailbox_publish("CONTAINER_STARTED_EVENT", container)

    @step("m_cb_container_start")
    async def m_cb_container_start(self, container: Container) -> None:
        state = await self.backend.start(container.id)
        crash_point("start_container:runtime_started")
        container.started_at = state.started_at
        if state.exit is not None:  # it has finished already (its exit event may be next)
            container.exited(state.exit)
        elif container.state == CREATED:
            container.state = RUNNING
        self.containers.save(container)

    def create_container_log_symlink(self, container: Container) -> None:
        """Absent in our chart: the shim writes the CRI log at the kubelet's path."""

    # -- StopContainer ---------------------------------------------------------------

    async def stop(self, given: str, timeout: int) -> None:
        container = self.find(given)
        if container is None:
            return  # idempotent, as CRI requires
        self.set_id_and_timeout(container, timeout)
        await self.m_cb_container_stop(container, max(0, timeout))

    @step("set_id_and_timeout")
    def set_id_and_timeout(self, container: Container, timeout: int) -> None:
        annotate(timeout=str(max(0, timeout)))  # negative counts as 0, as the chart says

    @step("m_cb_container_stop")
    async def m_cb_container_stop(self, container: Container, timeout: int) -> None:
        await self.refresh(container)
        if decide("already_stopped", container.state in (EXITED, UNKNOWN)):
            return
        if container.state == CREATED:  # never started: nothing runs, nothing to wait for
            timeout = 0
        await self.runtime_stop(container, timeout)

    @step("runtime_stop")
    async def runtime_stop(self, container: Container, timeout: int) -> None:
        """The stop signal, the grace period, SIGKILL: the backend's one stop
        sequence (the chart RuntimeStop, a child span of this step), then the
        exit recorded before the call returns."""
        status = await self.backend.stop(container.id, timeout)
        await self._exited(container.id, status)

    # -- RemoveContainer ---------------------------------------------------------------

    async def remove(self, given: str) -> None:
        container = self.find(given)
        if container is None:
            return  # idempotent
        self.remove_container_log_symlink(container)
        await self.cb_container_remove(container)
        self.mailbox_publish("CONTAINER_DELETED_EVENT", container)

    @step("remove_container_log_symlink")
    def remove_container_log_symlink(self, container: Container) -> None:
        """Our log file at the kubelet's path, where iSulad removes its link."""
        if container.log_path:
            with contextlib.suppress(FileNotFoundError):
                Path(container.log_path).unlink()

    @step("cb_container_remove")
    async def cb_container_remove(self, container: Container) -> None:
        """Forced: a running container is killed first."""
        with contextlib.suppress(NotFound):
            try:
                running = (await self.backend.state(container.id)).exit is None
            except RecordUnreadable:
                running = False  # delete() kills what runc knows of it
            if running:
                await self.backend.stop(container.id, 0)
            await self.backend.delete(container.id)
        crash_point("remove_container:runtime_deleted")
        await asyncio.to_thread(self.images.snapshots.remove_view, container.id)
        self.containers.delete(container)

    # -- ExecSync --------------------------------------------------------------------

    async def exec_sync(self, given: str, cmd: list[str], timeout: int) -> ExecResult:
        container = self.get(given)
        await self.refresh(container)
        if not decide("container_running", container.state == RUNNING):
            raise FailedPrecondition(f"container {container.id[:12]} is not running")
        self.exec_sync_from_grpc(cmd, timeout)
        try:
            result = await self.m_cb_container_exec(container, cmd, timeout)
        except DeadlineExceeded:
            decide("timed_out", True)
            raise
        else:
            decide("timed_out", False)
        return result

    @step("exec_sync_from_grpc")
    def exec_sync_from_grpc(self, cmd: list[str], timeout: int) -> None:
        if not cmd or not cmd[0]:
            raise InvalidArgument("ExecSync: cmd is empty")
        if timeout < 0:
            raise InvalidArgument(f"ExecSync: timeout {timeout} is negative")

    @step("m_cb_container_exec")
    async def m_cb_container_exec(
        self, container: Container, cmd: list[str], timeout: int
    ) -> ExecResult:
        return await self.backend.exec_sync(container.id, cmd, float(timeout))

    # -- UpdateContainerResources -----------------------------------------------------

    async def update(self, container: Container, resources: dict[str, Any]) -> None:
        """All or nothing: runc may fail after writing some files, so what the
        cgroup had before (not what we think it had) is written back."""
        previous = self.backend.current_resources(container.id)
        try:
            with step("m_cb_container_update"):
                await self.backend.update(container.id, resources)
        except CRIError:
            await self.restore_previous_resources(container, previous)
            raise
        container.resources = merge_resources(container.resources, resources)
        self.containers.save(container)

    @step("restore_previous_resources")
    async def restore_previous_resources(
        self, container: Container, previous: dict[str, Any]
    ) -> None:
        """Transactional: what runc may have written before failing is put back."""
        annotate(restored=json.dumps(previous))
        if previous:
            with contextlib.suppress(CRIError):
                await self.backend.update(container.id, previous)

    # -- ReopenContainerLog ----------------------------------------------------------

    async def reopen_log(self, given: str) -> None:
        container = self.get(given)
        await self.refresh(container)
        if not decide("container_running", container.state == RUNNING):
            raise FailedPrecondition(
                f"container {container.id[:12]} is not running: there is no log to reopen"
            )
        await self.shim_reopen_log(container)

    @step("shim_reopen_log")
    async def shim_reopen_log(self, container: Container) -> None:
        await self.backend.reopen_log(container.id)

    # -- Exec and Attach, for the streaming server ----------------------------------

    async def exec_stream(
        self, container: Container, cmd: list[str], *, tty: bool, stdin: bool
    ) -> ProcessStream:
        """A new process in the container, its stdio streamed (Exec)."""
        return await self.backend.exec(container.id, cmd, tty=tty, stdin=stdin)

    async def attach_stream(
        self, container: Container, *, stdin: bool, stdout: bool, stderr: bool
    ) -> ProcessStream:
        """The container's own stdio, streamed (Attach)."""
        return await self.backend.attach(container.id, stdin=stdin, stdout=stdout, stderr=stderr)

    # -- ContainerStats ------------------------------------------------------------------

    async def stats(self, container: Container) -> CgroupStats:
        return await self.backend.stats(container.id)

    async def figures(self, containers: list[Container]) -> list[ContainerFigures]:
        """What ContainerStats reports of each container: its cgroup, read now
        (None if it cannot be read: a container stopped meanwhile), and its
        writable layer's last sample (:mod:`.writable_layers`)."""
        layers = await self.writable_layers.samples(c.id for c in containers)
        out: list[ContainerFigures] = []
        for c in containers:
            try:
                out.append((c, await self.stats(c), layers.get(c.id)))
            except Exception:
                out.append((c, None, layers.get(c.id)))
        return out

    # -- for the pod sandboxes ----------------------------------------------------------

    def in_sandbox(self, sandbox_id: str) -> list[Container]:
        return self.containers.in_sandbox(sandbox_id)

    async def stop_container(self, container_id: str) -> None:
        """StopPodSandbox's "stop all containers": StopContainer's flow with no grace."""
        await self.stop(container_id, 0)

    async def remove_container(self, container_id: str) -> None:
        """RemovePodSandbox's "remove all containers": RemoveContainer's flow."""
        await self.remove(container_id)
