"""Pod sandboxes: what iSulad's PodSandboxManagerService and SandboxManager do.

A sandbox is the pod's shared context, made before any of its containers: a
network namespace with an IP (from CNI), a hostname, /etc/hosts,
/etc/resolv.conf and /dev/shm, a cgroup parent, and an *infra* process (the
pause container) that holds the namespaces and reaps zombies. Its containers
join those namespaces. The steps below are the nodes of
``diagrams/RunPodSandbox.toml`` and its siblings, in the charts' order.

Where things live: the record (checkpoint of the config, state, IPs, the ADD
result CNI DEL needs) in the sandbox store (``store/sandbox.py``), so a
sandbox survives a restart; runtime files (hosts, resolv.conf, shm) under
``<state>/sandboxes/<id>/``; the pinned network namespace at
``<state>/netns/<id>``; the infra container in the backend, with the
sandbox's id as its own (as iSulad does).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict

from ..api import api_pb2
from ..errors import CRIError, FailedPrecondition, InvalidArgument, NotFound
from ..fsutil import MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, crash_point, mount, umount
from ..image.manager import ImageManager
from ..image.registry import Credentials, RegistryUnavailable
from ..image.store import ImageRecord
from ..runtime import cgroups, seccomp
from ..runtime.backend import Backend, CreateRequest, RecordUnreadable
from ..runtime.spec import ImageRunConfig, SandboxContext, generate_spec
from ..store.container import RUNNING, Container
from ..store.sandbox import NOTREADY as NOTREADY
from ..store.sandbox import PENDING_REMOVE, PENDING_RUN, SandboxStore, unreadable
from ..store.sandbox import READY as READY
from ..store.sandbox import Sandbox as Sandbox
from ..store.sandbox import State as State
from ..trace.tracer import annotate, branch, decide, quiet, step
from . import netns, validate
from .cni import CNI, LOOPBACK, Attachment, NetworkConfig, ips_of
from .hostports import check_host_ports
from .writable_layers import ContainerFigures


class PodContainers(Protocol):
    """What the pod flows need of the containers: StopPodSandbox's "stop all
    containers", RemovePodSandbox's "remove all containers", PodSandboxStats'
    containers' stats."""

    def in_sandbox(self, sandbox_id: str) -> list[Container]: ...

    async def stop_container(self, container_id: str) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def figures(self, containers: list[Container]) -> list[ContainerFigures]: ...


class NoContainers:
    """Until the container manager registers itself: a pod has no containers."""

    def in_sandbox(self, sandbox_id: str) -> list[Container]:
        return []

    async def stop_container(self, container_id: str) -> None:
        raise NotFound(container_id)

    async def remove_container(self, container_id: str) -> None:
        raise NotFound(container_id)

    async def figures(self, containers: list[Container]) -> list[ContainerFigures]:
        return []


INFRA_LABEL = ("cri.isulad.type", "podSandbox")  # iSulad's label on the infra container
BUILT_IN_INFRA = "teaching-cri.local/pause:builtin"
SETUP_NETWORK_FIRST = "cri.sandbox.network.setup.v2"  # iSulad 2.0's pod annotation
SHM_SIZE = 64 << 20
log = logging.getLogger(__name__)
RUNTIME_HANDLERS = ("",)  # the default handler only: runc (or the tier standing in for it)
HOST_NAME_MAX = 64  # bytes: what sethostname(2) takes
_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\Z")  # \Z: no "\n"
PAUSE_RETRY_AFTER = 300.0  # seconds a failed pause-image pull is remembered


def sandbox_name(metadata: api_pb2.PodSandboxMetadata) -> str:
    """The infra container's name, as the kubelet's dockershim named it and iSulad does."""
    return f"k8s_POD_{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"


def check_hostname(hostname: str) -> None:
    """An explicit hostname the kernel (at most 64 bytes) or a resolver (RFC 1123
    labels) would refuse is the client's mistake, said before anything is made:
    runc would otherwise fail at create with ``sethostname: invalid argument``."""
    size = len(hostname.encode())
    if size > HOST_NAME_MAX:
        raise InvalidArgument(
            f"hostname {hostname[:80]!r}: {size} bytes, the kernel takes at most {HOST_NAME_MAX}"
        )
    if not all(_HOSTNAME_LABEL.match(label) for label in hostname.split(".")):
        raise InvalidArgument(
            f"hostname {hostname!r}: not an RFC 1123 host name (dot-separated labels of "
            "letters, digits and '-', each starting and ending with a letter or digit)"
        )


def infra_seccomp(
    sc: api_pb2.LinuxSandboxSecurityContext,
) -> api_pb2.LinuxContainerSecurityContext:
    """The pod's seccomp request as the infra's own: containerd filters the
    pause container with the profile the pod's security context names (none
    asked for: unconfined), and never a privileged pod's."""
    return api_pb2.LinuxContainerSecurityContext(
        privileged=sc.privileged,
        seccomp=sc.seccomp if sc.HasField("seccomp") else None,
        seccomp_profile_path=sc.seccomp_profile_path,
    )


class SandboxManager:
    def __init__(
        self,
        store: SandboxStore,
        state: Path,
        backend: Backend,
        images: ImageManager,
        cni: CNI,
        pause_image: str,
        *,
        privileged_network: bool,
        seccomp_profile_root: Path | None = None,
    ) -> None:
        self.sandboxes = store
        self.seccomp_profile_root = seccomp_profile_root
        self.files = state / "sandboxes"
        self.netns_dir = state / "netns"
        self.backend = backend
        self.images = images
        self.cni = cni
        self.pause_image = pause_image
        self.privileged_network = privileged_network  # root: pinned netns and CNI
        self.on_event: list[Callable[[str, str], None]] = []
        self.pod_containers: PodContainers = NoContainers()
        self._cpu_samples: dict[str, tuple[int, int]] = {}
        self._pause_failure: tuple[float, CRIError] | None = None
        # The configs of the pods being made, by id: their hostPorts are held
        # from the check on, as a running pod's are.
        self._starting: dict[str, api_pb2.PodSandboxConfig] = {}
        self._warned_fallback = ""

    # -- after a restart -----------------------------------------------------------

    async def load(self) -> None:
        """Every record, read once here (lookups never go to the disk, which
        only takes the writes); an unreadable one stands as a NOTREADY pod
        (the store's load policy); a RunPodSandbox cut short is undone whole
        (the client never got the id); a RemovePodSandbox cut short stays NOTREADY."""
        for sandbox in self.sandboxes.load(
            lambda sid, why: unreadable(
                sid, str(self.netns_dir / sid) if (self.netns_dir / sid).exists() else "", why
            )
        ):
            if sandbox.pending == PENDING_RUN:
                log.warning("pod sandbox %s: its run was cut short; undoing it", sandbox.id)
                await self.undo_run(sandbox)
            elif sandbox.pending == PENDING_REMOVE:
                sandbox.state = NOTREADY

    async def undo_run(self, sandbox: Sandbox) -> None:
        """What a RunPodSandbox cut short may have made, in reverse: CNI's
        addresses, the pinned namespace, the infra and its cgroup, the files.
        Each as far as it goes: a restart never fails over one of them."""
        undo: list[Callable[[], Awaitable[None]]] = [
            lambda: self._teardown(sandbox),
            lambda: netns.remove(Path(sandbox.netns)) if sandbox.netns else asyncio.sleep(0),
            lambda: self._remove_infra(sandbox),
            lambda: self._forget(sandbox),
        ]
        for action in undo:
            try:
                await action()
            except (CRIError, OSError) as exc:
                log.error("pod sandbox %s: undoing its run: %s", sandbox.id, exc)
        self.sandboxes.delete(sandbox)

    # -- the store's lookups ----------------------------------------------------------

    def all(self) -> list[Sandbox]:
        return self.sandboxes.list()

    def find(self, sandbox_id: str) -> Sandbox | None:
        """By full id or a unique prefix of it, as crictl and the kubelet use them."""
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id is empty")
        real = self.sandboxes.resolve(sandbox_id)
        return self.sandboxes.get(real) if real else None

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self.find(sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return sandbox

    # -- RunPodSandbox --------------------------------------------------------------

    async def run(self, config: api_pb2.PodSandboxConfig, runtime_handler: str) -> str:
        sandbox = self.prepare_sandbox_data(config, runtime_handler)
        try:
            return await self._run(sandbox, config)
        except BaseException:
            self.sandboxes.release(sandbox.name, sandbox.id)
            raise
        finally:
            del self._starting[sandbox.id]

    async def _run(self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig) -> str:
        if decide("host_network_in_user_namespace", self._user_namespace_host_network(config)):
            raise FailedPrecondition(
                "a host-network pod cannot run under rootless-runc: its containers join the "
                "infra's user namespace, and runc 1.1 cannot do that without a network "
                "namespace of their own. Run the server as root, use --runtime processes, "
                "or leave namespace_options.network unset (the pod then has loopback only)"
            )
        sandbox.infra_image = await self.ensure_sandbox_image_exists(sandbox)
        self.prepare_sandbox_checkpoint(sandbox, config)
        undo: list[Callable[[], Any]] = [lambda: self._forget(sandbox)]
        try:
            context = await self.update_sandbox_config(sandbox, config)
            if decide("namespace_is_cni", not sandbox.host_network):
                path = self.prepare_sandbox_key(sandbox)
                if await self.prepare_network_namespace(sandbox, path):
                    undo.append(lambda: netns.remove(path))
            self.sandbox_manager_create_sandbox(sandbox)
            first = config.annotations.get(SETUP_NETWORK_FIRST) == "true"
            if decide("setup_network_first", first and not sandbox.host_network):
                await self._network(sandbox, config, undo)
                decide("infra_started", False)
            # Before the create: a failed runc create has already made the pod's cgroup.
            undo.append(lambda: self._remove_infra(sandbox))
            await self.sandbox_create(sandbox, config, context)
            crash_point("run_pod_sandbox:infra_created")
            if decide("network_while_creating", self._network_while_creating(sandbox)):
                await self._network(sandbox, config, undo)
                branch("infra_started", "created")
            await self.sandbox_start(sandbox)
            if sandbox.host_network:
                branch("network_ready", "host")
            elif not decide("network_ready", sandbox.network_ready):
                await self._network(sandbox, config, undo)
                decide("infra_started", True)
            self.sandbox_update_network_settings(sandbox)
        except BaseException as exc:
            with step("undo_taken_steps"):
                for action in reversed(undo):
                    with contextlib.suppress(Exception):
                        result = action()
                        if hasattr(result, "__await__"):
                            await result
            if isinstance(exc, CRIError) or not isinstance(exc, Exception):
                raise  # a cancellation (the client gave up) stays one
            raise FailedPrecondition(str(exc) or type(exc).__name__) from exc
        self.mailbox_publish(sandbox.id, "started")
        return sandbox.id

    def _network_while_creating(self, sandbox: Sandbox) -> bool:
        """CNI ADD while the infra's shim runs ``runc create``: the plugins need
        only the pinned namespace (root), not the infra; unprivileged, loopback
        is set up in the namespace the started infra made."""
        return self.privileged_network and bool(sandbox.netns) and not sandbox.network_ready

    def _user_namespace_host_network(self, config: api_pb2.PodSandboxConfig) -> bool:
        host_network = config.linux.security_context.namespace_options.network == api_pb2.NODE
        return host_network and self.backend.name == "rootless-runc"

    @step("prepare_sandbox_data")
    def prepare_sandbox_data(
        self, config: api_pb2.PodSandboxConfig, runtime_handler: str
    ) -> Sandbox:
        """Check the metadata, the handler and the name (one sandbox per name)."""
        md = config.metadata
        validate.pod_metadata(md)
        if runtime_handler not in RUNTIME_HANDLERS:
            raise InvalidArgument(
                f"runtime handler {runtime_handler!r} is unknown; known: the default ('')"
            )
        if config.hostname:
            check_hostname(config.hostname)
        seccomp.choose(infra_seccomp(config.linux.security_context), self.seccomp_profile_root)
        # The pods whose network is up hold their hostPorts (portmap's rules), and
        # so do those being made: a RunPodSandbox awaits between here and CNI ADD.
        held = (s.config for s in self.all() if s.network_ready)
        check_host_ports(config, itertools.chain(held, self._starting.values()))
        name = sandbox_name(md)
        sandbox = Sandbox(
            secrets.token_hex(32), name, "", time.time_ns(), runtime_handler=runtime_handler
        )
        self.sandboxes.reserve(name, sandbox.id)  # no await since the checks: atomic
        self._starting[sandbox.id] = config  # until run() returns
        annotate(sandbox_id=sandbox.id, name=name)
        return sandbox

    @step("ensure_sandbox_image_exists")
    async def ensure_sandbox_image_exists(self, sandbox: Sandbox) -> str:
        """The pause image, pulled if missing. Only an unreachable registry (an
        offline laptop) puts the built-in infra in its place; any other failed
        pull (not found, unauthorized, corrupt) fails the call with its error."""
        image = self.images.resolve(self.pause_image)
        if decide("pause_image_available", image is not None):
            assert image is not None
            return image.id
        image, failure = await self.pull_pause_image()
        if image is not None:
            return image.id
        assert failure is not None
        if not decide("registry_unreachable", isinstance(failure, RegistryUnavailable)):
            raise failure
        return await self.use_built_in_infra(sandbox, failure)

    @step("pull_pause_image")
    async def pull_pause_image(self) -> tuple[ImageRecord | None, CRIError | None]:
        """A pull, unless one failed less than PAUSE_RETRY_AFTER ago: without
        that memory every RunPodSandbox of an offline node would wait for the
        registry again."""
        when, failure = self._pause_failure or (0.0, None)
        if failure is not None and time.monotonic() - when < PAUSE_RETRY_AFTER:
            annotate(remembered=f"{failure} ({time.monotonic() - when:.0f} s ago)")
            return None, failure
        try:
            with quiet():  # folds PullImage's flow: here the pull is this one step
                return await self.images.pull(self.pause_image, Credentials()), None
        except (CRIError, OSError) as exc:
            kind = type(exc) if isinstance(exc, CRIError) else FailedPrecondition
            error = kind(f"pulling the pause image {self.pause_image}: {exc}")
            self._pause_failure = (time.monotonic(), error)
            return None, error

    @step("use_built_in_infra")
    async def use_built_in_infra(self, sandbox: Sandbox, failure: CRIError) -> str:
        sandbox.infra_fallback = f"the built-in infra: {failure}"
        if self._warned_fallback != str(failure):
            self._warned_fallback = str(failure)
            log.warning("pause image unreachable, pods use the built-in infra: %s", failure)
        image = self.images.resolve(BUILT_IN_INFRA)
        if image is None:
            with quiet():  # folds BuildLocalImage's flow: here the build is this one step
                image = await self.images.build_infra(BUILT_IN_INFRA)
        annotate(image=BUILT_IN_INFRA)
        return image.id

    @step("prepare_sandbox_checkpoint")
    def prepare_sandbox_checkpoint(
        self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig
    ) -> None:
        """The config as sent, kept whole (port mappings included) for restarts,
        and written now, saying "run", before anything outside the record
        exists (the /dev/shm mount, the namespace, the infra): a restart that
        finds it still saying so undoes what it names (the client never got the id)."""
        sandbox.config_b64 = base64.b64encode(config.SerializeToString()).decode()
        sandbox.pending = PENDING_RUN
        self.sandboxes.persist(sandbox)
        crash_point("run_pod_sandbox:checkpoint_written")

    @step("update_sandbox_config")
    async def update_sandbox_config(
        self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig
    ) -> SandboxContext:
        """The sandbox's files: hostname, /etc/hosts, resolv.conf from DNSConfig, /dev/shm."""
        d = self.files / sandbox.id
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        # Empty: the node's name, as containerd does (the pod's name may be
        # 253 characters, the kernel takes 64 bytes).
        hostname = config.hostname or os.uname().nodename
        if sandbox.host_network:
            hostname = os.uname().nodename
        (d / "hostname").write_text(hostname + "\n")
        (d / "hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        dns = config.dns_config
        if dns.servers or dns.searches or dns.options:
            lines = [f"nameserver {s}" for s in dns.servers]
            if dns.searches:
                lines.append("search " + " ".join(dns.searches))
            if dns.options:
                lines.append("options " + " ".join(dns.options))
            (d / "resolv.conf").write_text("\n".join(lines) + "\n")
        else:
            with contextlib.suppress(OSError):
                shutil.copyfile("/etc/resolv.conf", d / "resolv.conf")
            (d / "resolv.conf").touch()
        shm = d / "shm"
        shm.mkdir(exist_ok=True, mode=0o1777)
        host_ipc = config.linux.security_context.namespace_options.ipc == api_pb2.NODE
        if os.geteuid() == 0 and not host_ipc and not os.path.ismount(shm):
            try:
                mount(
                    "shm",
                    shm,
                    "tmpfs",
                    f"mode=1777,size={SHM_SIZE}",
                    MS_NOSUID | MS_NODEV | MS_NOEXEC,
                )
            except OSError as exc:
                raise FailedPrecondition(
                    f"mounting the pod's /dev/shm at {shm}: {exc.strerror}"
                ) from None
        return SandboxContext(
            hostname=hostname,
            hosts=str(d / "hosts"),
            resolv_conf=str(d / "resolv.conf"),
            shm="/dev/shm" if host_ipc else str(shm),
        )

    @step("prepare_sandbox_key")
    def prepare_sandbox_key(self, sandbox: Sandbox) -> Path:
        """Where the network namespace will be pinned: the sandbox key."""
        return self.netns_dir / sandbox.id

    @step("prepare_network_namespace")
    async def prepare_network_namespace(self, sandbox: Sandbox, path: Path) -> bool:
        """Pinned, as root; without root the infra makes its own, in its user
        namespace, and the pod's containers join it through the infra's pid."""
        if not self.privileged_network:
            annotate(netns="the infra's own (no root to pin one)")
            return False
        sandbox.netns = str(path)
        self.sandboxes.persist(sandbox)  # the intent: a restart removes what it names
        await netns.create(path)
        crash_point("run_pod_sandbox:netns_pinned")
        return True

    @step("sandbox_manager_create_sandbox")
    def sandbox_manager_create_sandbox(self, sandbox: Sandbox) -> None:
        """On disk from here on: a restart finds it, Stop and Remove can clean it."""
        self.sandboxes.save(sandbox)

    async def _network(
        self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig, undo: list[Callable[[], Any]]
    ) -> None:
        if decide("running_as_root", self.privileged_network):
            network = self.setup_sandbox_network()
            await self.cni_add(sandbox, config, network)
            undo.append(lambda: self._teardown(sandbox))
        else:
            self.set_up_loopback_only(sandbox)
        self.set_network_ready(sandbox)

    @step("setup_sandbox_network")
    def setup_sandbox_network(self) -> NetworkConfig:
        """iSulad's SetUpPod: which network (the first usable config in the conf dir)."""
        network = self.cni.network()
        annotate(network=network.name, config=network.path)
        return network

    @step("cni_add")
    async def cni_add(
        self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig, network: NetworkConfig
    ) -> None:
        attachment = self._attachment(sandbox, config)
        await self.cni.add(
            NetworkConfig.from_document(LOOPBACK), Attachment(sandbox.id, sandbox.netns, "lo")
        )
        sandbox.cni_network = {
            "name": network.name,
            "cniVersion": network.cni_version,
            "plugins": list(network.plugins),
        }
        self.sandboxes.save(sandbox)  # the intent: a restart DELs what this network ADDed
        sandbox.cni_result = await self.cni.add(network, attachment)
        crash_point("run_pod_sandbox:network_added")
        sandbox.ips = ips_of(sandbox.cni_result)
        annotate(ips=",".join(sandbox.ips))

    def _attachment(self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig) -> Attachment:
        mappings = [
            {
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": api_pb2.Protocol.Name(p.protocol).lower(),
                **({"hostIP": p.host_ip} if p.host_ip else {}),
            }
            for p in config.port_mappings
            if p.host_port
        ]
        return Attachment(
            sandbox.id,
            sandbox.netns,
            args={
                "K8S_POD_NAMESPACE": config.metadata.namespace,
                "K8S_POD_NAME": config.metadata.name,
                "K8S_POD_INFRA_CONTAINER_ID": sandbox.id,
                "K8S_POD_UID": config.metadata.uid,
            },
            runtime_config={"portMappings": mappings} if mappings else {},
        )

    @step("set_up_loopback_only")
    def set_up_loopback_only(self, sandbox: Sandbox) -> None:
        """Without root: the infra's own network namespace (in its user namespace)
        has loopback only; nothing reaches the pod from outside. Said in its status."""
        sandbox.loopback_only = True

    @step("set_network_ready")
    def set_network_ready(self, sandbox: Sandbox) -> None:
        sandbox.network_ready = True
        self.sandboxes.save(sandbox)

    @step("sandbox_create")
    async def sandbox_create(
        self, sandbox: Sandbox, config: api_pb2.PodSandboxConfig, context: SandboxContext
    ) -> None:
        """The infra container: the pod's namespaces and its zombie reaper."""
        backend = self.backend
        record = self.images.images.get(sandbox.infra_image)
        if record is None:
            raise FailedPrecondition(f"the infra image {sandbox.infra_image} is gone")
        image = ImageRunConfig.from_config(record.config)
        sc = config.linux.security_context
        options = sc.namespace_options
        join = {"network": sandbox.netns} if sandbox.netns else {}
        net_mode = (
            api_pb2.NODE
            if sandbox.host_network
            else (api_pb2.POD if sandbox.netns else api_pb2.CONTAINER)
        )
        infra_config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="POD"),
            labels={INFRA_LABEL[0]: INFRA_LABEL[1]},
            annotations=dict(config.annotations),
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    privileged=sc.privileged,
                    seccomp=sc.seccomp if sc.HasField("seccomp") else None,
                    seccomp_profile_path=sc.seccomp_profile_path,
                    readonly_rootfs=True,
                    no_new_privs=True,
                    namespace_options=api_pb2.NamespaceOption(
                        network=net_mode,
                        pid=api_pb2.NODE if options.pid == api_pb2.NODE else api_pb2.CONTAINER,
                        ipc=api_pb2.NODE if options.ipc == api_pb2.NODE else api_pb2.CONTAINER,
                    ),
                    run_as_user=sc.run_as_user if sc.HasField("run_as_user") else None,
                    run_as_group=sc.run_as_group if sc.HasField("run_as_group") else None,
                ),
            ),
        )
        rootfs = await asyncio.to_thread(
            self.images.snapshots.mount_view,
            [layer.chain_id for layer in record.layers],
            sandbox.id,
        )
        try:
            spec, notes = generate_spec(
                infra_config,
                image,
                rootfs,
                sandbox=SandboxContext(
                    hostname=context.hostname,
                    namespaces=join,
                    hosts=context.hosts,
                    resolv_conf=context.resolv_conf,
                    shm=context.shm,
                ),
                annotations={"io.kubernetes.cri.container-type": "sandbox"},
                seccomp_profile_root=self.seccomp_profile_root,
                seccomp_enforced=backend.name not in ("processes", "fake"),
            )
            if config.linux.sysctls:
                spec["linux"]["sysctl"] = dict(config.linux.sysctls)
            await backend.create(
                CreateRequest(
                    sandbox.id,
                    spec,
                    pod_id=sandbox.id,
                    stop_signal=image.stop_signal,
                    image_id=record.id,
                    notes=notes.clamped,
                )
            )
        except BaseException:
            self.images.snapshots.remove_view(sandbox.id)
            raise

    @step("sandbox_start")
    async def sandbox_start(self, sandbox: Sandbox) -> None:
        await self.backend.start(sandbox.id)
        sandbox.state = READY
        self.sandboxes.save(sandbox)

    @step("sandbox_update_network_settings")
    def sandbox_update_network_settings(self, sandbox: Sandbox) -> None:
        """The pod's IP into its /etc/hosts, and the record saved, done: from
        here on a restart keeps the pod."""
        hostname = (self.files / sandbox.id / "hostname").read_text().strip()
        if sandbox.ips:
            with open(self.files / sandbox.id / "hosts", "a", encoding="utf-8") as f:
                f.write(f"{sandbox.ips[0]}\t{hostname}\n")
        sandbox.pending = ""
        self.sandboxes.save(sandbox)

    @step("mailbox_publish")
    def mailbox_publish(self, sandbox_id: str, what: str) -> None:
        """iSulad's lifecycle event (its mailbox); ListenPodSandboxEvents later."""
        for listener in list(self.on_event):
            listener(sandbox_id, what)

    def context_for(self, sandbox: Sandbox, config: api_pb2.ContainerConfig) -> SandboxContext:
        """What a container of this pod joins: the pinned network namespace (or
        the infra's own), the infra's ipc and uts, its pid namespace when the
        container asks for the pod's (NamespaceMode POD), the pod's files."""
        pid = self.backend_pid(sandbox.id)
        if not pid:
            raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} has no running infra")
        ns = {
            kind: f"/proc/{pid}/ns/{name}"
            for kind, name in (("ipc", "ipc"), ("uts", "uts"), ("pid", "pid"), ("network", "net"))
        }
        if sandbox.netns:
            ns["network"] = sandbox.netns
        if self.backend.rootless and self.backend.name == "rootless-runc":
            ns["user"] = f"/proc/{pid}/ns/user"  # which owns the infra's other namespaces
        d = self.files / sandbox.id
        host_ipc = sandbox.config.linux.security_context.namespace_options.ipc == api_pb2.NODE
        return SandboxContext(
            hostname=(d / "hostname").read_text().strip(),
            namespaces=ns,
            hosts=str(d / "hosts"),
            resolv_conf=str(d / "resolv.conf"),
            shm="/dev/shm" if host_ipc else str(d / "shm"),
        )

    # -- undo helpers ----------------------------------------------------------------

    async def _forget(self, sandbox: Sandbox) -> None:
        self.sandboxes.delete(sandbox)
        await self._release_files(sandbox)
        shutil.rmtree(self.files / sandbox.id, ignore_errors=True)

    async def _remove_infra(self, sandbox: Sandbox) -> None:
        backend = self.backend
        if sandbox.id in backend.list_ids():
            await backend.stop(sandbox.id, 0)
            await backend.delete(sandbox.id)
        await asyncio.to_thread(self.images.snapshots.remove_view, sandbox.id)
        await backend.release_pod(sandbox.id)

    async def _teardown(self, sandbox: Sandbox) -> None:
        """DEL for each ADD: the pod's network, then its loopback."""
        if sandbox.cni_network and sandbox.netns:
            network = NetworkConfig.from_document(sandbox.cni_network)
            attachment = self._attachment(sandbox, sandbox.config)
            await self.cni.delete(network, attachment, sandbox.cni_result or None)
            await self.cni.delete(
                NetworkConfig.from_document(LOOPBACK),
                Attachment(sandbox.id, sandbox.netns, "lo"),
                None,
            )

    async def _release_files(self, sandbox: Sandbox) -> None:
        shm = self.files / sandbox.id / "shm"
        if os.path.ismount(shm):
            try:
                umount(shm, MNT_DETACH)  # lazily: a process may still hold a file there
            except OSError as exc:
                raise FailedPrecondition(
                    f"unmounting the pod's /dev/shm at {shm}: {exc.strerror}"
                ) from None

    # -- StopPodSandbox -------------------------------------------------------------

    async def stop(self, sandbox_id: str) -> None:
        sandbox = self.sandbox_manager_get_sandbox(sandbox_id)
        if not decide("sandbox_found", sandbox is not None):
            return
        assert sandbox is not None
        self.mark_sandbox_stopping(sandbox)
        self.get_network_mode_and_annotations(sandbox)
        await self.stop_all_containers_in_sandbox(sandbox)
        crash_point("stop_pod_sandbox:containers_stopped")
        await self.clear_cni_network(sandbox)
        crash_point("stop_pod_sandbox:network_cleared")
        await self.cleanup_sandbox_files(sandbox)
        await self.sandbox_stop(sandbox)

    @step("sandbox_manager_get_sandbox")
    def sandbox_manager_get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        return self.find(sandbox_id)

    @step("mark_sandbox_stopping")
    def mark_sandbox_stopping(self, sandbox: Sandbox) -> None:
        """Durably NOTREADY before anything stops: a restart after a kill in
        the middle finds the pod not ready, never READY with its network gone."""
        if sandbox.state != NOTREADY:
            sandbox.state = NOTREADY
            self.sandboxes.save(sandbox)
        crash_point("stop_pod_sandbox:marked")

    @step("get_network_mode_and_annotations")
    def get_network_mode_and_annotations(self, sandbox: Sandbox) -> None:
        annotate(host_network=str(sandbox.host_network), netns=sandbox.netns)

    @step("stop_all_containers_in_sandbox")
    async def stop_all_containers_in_sandbox(self, sandbox: Sandbox) -> None:
        """Whatever of the pod still runs stops now (the kubelet gave each its
        grace period with StopContainer already)."""
        for container_id in self.sandbox_get_containers(sandbox):
            await self.cb_container_stop(container_id)

    @step("sandbox_get_containers")
    def sandbox_get_containers(self, sandbox: Sandbox) -> list[str]:
        return [c.id for c in self.pod_containers.in_sandbox(sandbox.id)]

    @step("cb_container_stop")
    async def cb_container_stop(self, container_id: str) -> None:
        with contextlib.suppress(NotFound), quiet():  # folds StopContainer's flow into this step
            await self.pod_containers.stop_container(container_id)

    @step("clear_cni_network")
    async def clear_cni_network(self, sandbox: Sandbox) -> None:
        if not decide("network_ready", sandbox.network_ready):
            return
        self.sandbox_get_sandbox_key(sandbox)
        await self.network_teardown(sandbox)
        self.sandbox_set_network_ready(sandbox, False)
        await self.remove_network_namespace(sandbox)

    @step("sandbox_get_sandbox_key")
    def sandbox_get_sandbox_key(self, sandbox: Sandbox) -> str:
        return sandbox.netns

    @step("network_teardown")
    async def network_teardown(self, sandbox: Sandbox) -> None:
        if decide("loopback_only", sandbox.loopback_only or not sandbox.cni_network):
            return
        await self.cni_del(sandbox)

    @step("cni_del")
    async def cni_del(self, sandbox: Sandbox) -> None:
        await self._teardown(sandbox)

    @step("sandbox_set_network_ready")
    def sandbox_set_network_ready(self, sandbox: Sandbox, ready: bool) -> None:
        sandbox.network_ready = ready
        self.sandboxes.save(sandbox)

    @step("remove_network_namespace")
    async def remove_network_namespace(self, sandbox: Sandbox) -> None:
        """Unpinned once DEL has succeeded; Remove deletes the file."""
        if sandbox.netns and netns.is_pinned(Path(sandbox.netns)):
            await netns.remove(Path(sandbox.netns))

    @step("cleanup_sandbox_files")
    async def cleanup_sandbox_files(self, sandbox: Sandbox) -> None:
        await self._release_files(sandbox)

    @step("sandbox_stop")
    async def sandbox_stop(self, sandbox: Sandbox) -> None:
        if sandbox.id in self.backend.list_ids():
            with contextlib.suppress(NotFound):
                await self.backend.stop(sandbox.id, 10)

    # -- RemovePodSandbox ----------------------------------------------------------

    async def remove(self, sandbox_id: str) -> None:
        sandbox = self.sandbox_manager_get_sandbox(sandbox_id)
        if not decide("sandbox_found", sandbox is not None):
            return
        assert sandbox is not None
        self.mark_sandbox_removing(sandbox)
        if decide("namespace_is_cni", not sandbox.host_network):
            if decide("network_ready", sandbox.network_ready):
                await self.clear_cni_network_for_remove(sandbox)
            await self.remove_network_namespace_file(sandbox)
        await self.cleanup_sandbox_files(sandbox)
        await self.remove_all_containers_in_sandbox(sandbox)
        await self.sandbox_remove(sandbox)
        self.sandbox_manager_delete_sandbox(sandbox)
        self.mailbox_publish(sandbox.id, "deleted")

    @step("mark_sandbox_removing")
    def mark_sandbox_removing(self, sandbox: Sandbox) -> None:
        """Durably NOTREADY before anything is torn down: a restart after a
        kill in the middle finds the pod not ready, and Remove again finishes it."""
        sandbox.state, sandbox.pending = NOTREADY, PENDING_REMOVE
        self.sandboxes.save(sandbox)
        crash_point("remove_pod_sandbox:marked")

    @step("clear_cni_network")
    async def clear_cni_network_for_remove(self, sandbox: Sandbox) -> None:
        if not sandbox.loopback_only:
            await self._teardown(sandbox)
        sandbox.network_ready = False
        self.sandboxes.save(sandbox)

    @step("remove_network_namespace_file")
    async def remove_network_namespace_file(self, sandbox: Sandbox) -> None:
        if sandbox.netns:
            await netns.remove(Path(sandbox.netns))

    @step("remove_all_containers_in_sandbox")
    async def remove_all_containers_in_sandbox(self, sandbox: Sandbox) -> None:
        for container_id in self.sandbox_get_containers(sandbox):
            await self.cb_container_remove(container_id)

    @step("cb_container_remove")
    async def cb_container_remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound), quiet():  # folds RemoveContainer's flow into this step
            await self.pod_containers.remove_container(container_id)

    @step("sandbox_remove")
    async def sandbox_remove(self, sandbox: Sandbox) -> None:
        """The infra, its rootfs, the pod's cgroup, the runtime files."""
        await self._remove_infra(sandbox)
        crash_point("remove_pod_sandbox:infra_removed")
        await self._release_files(sandbox)
        shutil.rmtree(self.files / sandbox.id, ignore_errors=True)

    @step("sandbox_manager_delete_sandbox")
    def sandbox_manager_delete_sandbox(self, sandbox: Sandbox) -> None:
        self.sandboxes.delete(sandbox)

    # -- PodSandboxStatus, ListPodSandbox ---------------------------------------------

    @step("sandbox_status")
    async def sandbox_status(self, sandbox: Sandbox) -> State:
        return await self.current_state(sandbox)

    async def current_state(self, sandbox: Sandbox) -> State:
        """READY while the infra runs; an infra that died, or whose runtime
        record cannot be read (its state unknown: the load policy), makes the
        pod NOTREADY."""
        if sandbox.state == READY:
            try:
                state = await self.backend.state(sandbox.id)
            except (NotFound, RecordUnreadable):
                state = None
            if state is None or state.status != "running":
                sandbox.state = NOTREADY
                self.sandboxes.save(sandbox)
        return sandbox.state

    # -- UpdatePodSandboxResources -----------------------------------------------------

    async def update_resources(
        self,
        sandbox_id: str,
        resources: api_pb2.LinuxContainerResources,
        overhead: api_pb2.LinuxContainerResources,
    ) -> None:
        sandbox = self.sandbox_manager_get_sandbox(sandbox_id)
        if not decide("sandbox_found", sandbox is not None):
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        assert sandbox is not None
        limits = self.add_overhead(resources, overhead)
        sandbox.resources = {k: v for k, v in limits.items() if v}
        parent = cgroups.pod_parent(sandbox.id)
        if decide("pod_cgroup", not self.backend.rootless and cgroups.exists(parent)):
            self.write_pod_cgroup_limits(parent, limits)
        else:
            self.record_unenforced_resources(sandbox)
        self.sandboxes.save(sandbox)

    @step("add_overhead")
    def add_overhead(
        self,
        resources: api_pb2.LinuxContainerResources,
        overhead: api_pb2.LinuxContainerResources,
    ) -> dict[str, int]:
        """What the pod's cgroup gets: each limit that is set, plus the overhead."""
        limits = {
            "memory": resources.memory_limit_in_bytes + overhead.memory_limit_in_bytes
            if resources.memory_limit_in_bytes
            else 0,
            "cpu_quota": resources.cpu_quota + overhead.cpu_quota if resources.cpu_quota else 0,
            "cpu_period": resources.cpu_period,
            "cpu_shares": resources.cpu_shares + overhead.cpu_shares if resources.cpu_shares else 0,
        }
        for name, value in limits.items():
            if value < 0:
                raise InvalidArgument(f"{name} {value} is negative")
        return limits

    @step("write_pod_cgroup_limits")
    def write_pod_cgroup_limits(self, parent: str, limits: dict[str, int]) -> None:
        try:
            written = cgroups.write_limits(
                parent,
                memory=limits["memory"],
                cpu_quota=limits["cpu_quota"],
                cpu_period=limits["cpu_period"],
                cpu_shares=limits["cpu_shares"],
            )
        except OSError as exc:  # the kernel refused a value (below current usage, say)
            where = f"{exc.filename}: {exc.strerror}"
            raise FailedPrecondition(f"pod cgroup {parent}: {where}") from None
        annotate(**{Path(k).name: v for k, v in written.items()})

    @step("record_unenforced_resources")
    def record_unenforced_resources(self, sandbox: Sandbox) -> None:
        annotate(enforced="no: no cgroups without root")

    # -- PodSandboxStats, ListPodSandboxStats ----------------------------------------

    @step("get_cgroup_parent_and_sandbox_key")
    def get_cgroup_parent_and_sandbox_key(self, sandbox: Sandbox) -> tuple[str, int]:
        """The pod's cgroup, and the infra's pid: its /proc/<pid>/net is the pod's."""
        return cgroups.pod_parent(sandbox.id), self.backend_pid(sandbox.id)

    def backend_pid(self, container_id: str) -> int:
        return self.backend.pid_of(container_id)

    @step("sandbox_get_annotations")
    def sandbox_get_annotations(self, sandbox: Sandbox) -> dict[str, str]:
        return dict(sandbox.config.annotations)

    @step("get_pod_sandbox_cgroup_metrics")
    def get_pod_sandbox_cgroup_metrics(self, parent: str) -> cgroups.CgroupStats:
        return cgroups.read_stats(parent)

    @step("get_pod_sandbox_network_metrics")
    def get_pod_sandbox_network_metrics(self, pid: int) -> list[InterfaceUsage]:
        return read_net_dev(pid) if pid else []

    @step("sandbox_update_cpu_metrics")
    def sandbox_update_cpu_metrics(self, sandbox_id: str, timestamp: int, usage: int) -> int:
        """CPU as cores used since the last sample (usage_nano_cores), iSulad's
        UpdateCPUMetrics: the first sample has nothing to compare with."""
        last = self._cpu_samples.get(sandbox_id)
        self._cpu_samples[sandbox_id] = (timestamp, usage)
        if last is None or timestamp <= last[0] or usage < last[1]:
            return 0
        return (usage - last[1]) * 1_000_000_000 // (timestamp - last[0])

    @step("container_manager_service_list_container_stats")
    async def container_manager_service_list_container_stats(
        self, sandbox: Sandbox
    ) -> list[ContainerFigures]:
        """The pod's running containers' figures, as ListContainerStats reads
        them with the filter pod_sandbox_id."""
        running = [c for c in self.pod_containers.in_sandbox(sandbox.id) if c.state == RUNNING]
        return await self.pod_containers.figures(running)

    def verbose_info(self, sandbox: Sandbox) -> dict[str, str]:
        info = {
            "id": sandbox.id,
            "name": sandbox.name,
            "netns": sandbox.netns,
            "network": "loopback only (no root: no CNI)"
            if sandbox.loopback_only
            else ("host" if sandbox.host_network else "cni"),
            "cni_result": sandbox.cni_result,
            "infra_image": sandbox.infra_image,
            "infra_fallback": sandbox.infra_fallback,
            "record_unreadable": sandbox.unreadable,
            "runtime_handler": sandbox.runtime_handler,
            "resources": sandbox.resources,
            "resources_enforced": not self.backend.rootless,
            "config": MessageToDict(sandbox.config, preserving_proto_field_name=True),
        }
        return {"info": json.dumps(info)}


@dataclass(frozen=True)
class InterfaceUsage:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def read_net_dev(pid: int) -> list[InterfaceUsage]:
    """/proc/<pid>/net/dev is the table of the network namespace that pid is in:
    the pod's, read through its infra, with no need to enter the namespace."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
            name, _, numbers = line.partition(":")
            f = numbers.split()
            if len(f) >= 11 and name.strip() != "lo":
                out.append(
                    InterfaceUsage(name.strip(), int(f[0]), int(f[2]), int(f[8]), int(f[10]))
                )
    return out
