"""PodSandboxStats and ListPodSandboxStats (charts: diagrams/PodSandboxStats.toml,
diagrams/ListPodSandboxStats.toml).

iSulad: ``PodSandboxManagerService::PodSandboxStats``: the pod's cgroup
(CPU, memory, processes), its network interfaces, and its containers' stats.
Without cgroups (the unprivileged tiers) the cgroup figures are left out
rather than invented; the ``pod_cgroup`` decision says which way it went.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..api.api_pb2 import UInt64Value  # CRI's own wrapper, not protobuf's
from ..errors import NotFound
from ..manager.sandbox import InterfaceUsage, Sandbox, SandboxManager
from ..runtime import cgroups
from ..trace.tracer import branch, decide, quiet, step
from ._rpc import rpc
from .container_stats import fill_container_stats

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("PodSandboxStats")
async def PodSandboxStats(
    svc: RuntimeService, request: api_pb2.PodSandboxStatsRequest, context: Context
) -> api_pb2.PodSandboxStatsResponse:
    manager = svc.sandboxes()
    sandbox = manager.sandbox_manager_get_sandbox(request.pod_sandbox_id)
    if not decide("sandbox_found", sandbox is not None):
        raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
    assert sandbox is not None
    return api_pb2.PodSandboxStatsResponse(stats=await pod_sandbox_stats(manager, sandbox))


async def pod_sandbox_stats(manager: SandboxManager, sandbox: Sandbox) -> api_pb2.PodSandboxStats:
    parent, pid = manager.get_cgroup_parent_and_sandbox_key(sandbox)
    annotations = manager.sandbox_get_annotations(sandbox)
    usage = None
    if decide("pod_cgroup", cgroups.exists(parent)):
        usage = manager.get_pod_sandbox_cgroup_metrics(parent)
    interfaces = manager.get_pod_sandbox_network_metrics(pid)
    stats = pod_sandbox_stats_to_grpc(sandbox, annotations, usage, interfaces)
    if usage is not None:
        stats.linux.cpu.usage_nano_cores.value = manager.sandbox_update_cpu_metrics(
            sandbox.id, usage.timestamp, usage.cpu_usage_ns
        )
    else:
        manager.sandbox_update_cpu_metrics(sandbox.id, 0, 0)
    for figures in await manager.container_manager_service_list_container_stats(sandbox):
        fill_container_stats(stats.linux.containers.add(), figures)
    return stats


@step("pod_sandbox_stats_to_grpc")
def pod_sandbox_stats_to_grpc(
    sandbox: Sandbox,
    annotations: dict[str, str],
    usage: cgroups.CgroupStats | None,
    interfaces: list[InterfaceUsage],
) -> api_pb2.PodSandboxStats:
    config = sandbox.config
    linux = api_pb2.LinuxPodSandboxStats()
    if usage is not None:
        t = usage.timestamp
        linux.cpu.CopyFrom(
            api_pb2.CpuUsage(
                timestamp=t, usage_core_nano_seconds=UInt64Value(value=usage.cpu_usage_ns)
            )
        )
        memory = api_pb2.MemoryUsage(
            timestamp=t,
            working_set_bytes=UInt64Value(value=usage.memory_working_set),
            usage_bytes=UInt64Value(value=usage.memory_usage),
        )
        if usage.memory_limit is not None:
            memory.available_bytes.value = max(0, usage.memory_limit - usage.memory_working_set)
        linux.memory.CopyFrom(memory)
        linux.process.CopyFrom(
            api_pb2.ProcessUsage(timestamp=t, process_count=UInt64Value(value=usage.pids))
        )
    if interfaces:
        as_grpc = [
            api_pb2.NetworkInterfaceUsage(
                name=i.name,
                rx_bytes=UInt64Value(value=i.rx_bytes),
                rx_errors=UInt64Value(value=i.rx_errors),
                tx_bytes=UInt64Value(value=i.tx_bytes),
                tx_errors=UInt64Value(value=i.tx_errors),
            )
            for i in interfaces
        ]
        default = next((i for i in as_grpc if i.name == "eth0"), as_grpc[0])
        linux.network.CopyFrom(
            api_pb2.NetworkUsage(
                timestamp=usage.timestamp if usage else 0,
                default_interface=default,
                interfaces=as_grpc,
            )
        )
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=sandbox.id,
            metadata=config.metadata,
            labels=dict(config.labels),
            annotations=annotations,
        ),
        linux=linux,
    )


@rpc("ListPodSandboxStats")
async def ListPodSandboxStats(
    svc: RuntimeService, request: api_pb2.ListPodSandboxStatsRequest, context: Context
) -> api_pb2.ListPodSandboxStatsResponse:
    manager = svc.sandboxes()
    wanted = request.filter
    sandboxes = [
        s
        for s in sandbox_manager_list_all_sandboxes(manager)
        if s.id.startswith(wanted.id)
        and all(s.config.labels.get(k) == v for k, v in wanted.label_selector.items())
    ]
    out = api_pb2.ListPodSandboxStatsResponse()
    for sandbox in sandboxes:
        branch("for_each_pod_sandbox_id", "next")
        out.stats.append(await pod_sandbox_stats_step(manager, sandbox))
    else:
        branch("for_each_pod_sandbox_id", "end")
    return out


@step("sandbox_manager_list_all_sandboxes")
def sandbox_manager_list_all_sandboxes(manager: SandboxManager) -> list[Sandbox]:
    return manager.all()


@step("pod_sandbox_stats")
async def pod_sandbox_stats_step(
    manager: SandboxManager, sandbox: Sandbox
) -> api_pb2.PodSandboxStats:
    """One pod's stats; its own steps are PodSandboxStats's chart, not this one."""

    with quiet():
        return await pod_sandbox_stats(manager, sandbox)
