"""ContainerStats, ListContainerStats and ReopenContainerLog (charts:
diagrams/ContainerStats.toml, diagrams/ListContainerStats.toml,
diagrams/ReopenContainerLog.toml; ours, after iSulad's code).

Stats come from the container's cgroup (v1 or v2), or from /proc where there
are no cgroups; ReopenContainerLog asks the shim for a fresh file at the
same path after the kubelet has rotated the old one away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..manager.container import RUNNING, Container, ContainerManager
from ..manager.writable_layers import ContainerFigures
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("ContainerStats")
async def ContainerStats(
    svc: RuntimeService, request: api_pb2.ContainerStatsRequest, context: Context
) -> api_pb2.ContainerStatsResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    stats = await m_cb_container_stats(manager, [container])
    return api_pb2.ContainerStatsResponse(stats=container_stats_to_grpc(stats).stats[0])


@rpc("ListContainerStats")
async def ListContainerStats(
    svc: RuntimeService, request: api_pb2.ListContainerStatsRequest, context: Context
) -> api_pb2.ListContainerStatsResponse:
    manager = svc.containers()
    wanted = pack_container_stats_filter(manager, request.filter)
    stats = await m_cb_container_stats(manager, wanted)
    forget_removed(manager)
    return container_stats_to_grpc(stats)


@step("pack_container_stats_filter")
def pack_container_stats_filter(
    manager: ContainerManager, f: api_pb2.ContainerStatsFilter
) -> list[Container]:
    """Running containers matching every filter that is set."""
    return [
        c
        for c in manager.containers.list()
        if c.state == RUNNING
        and c.id.startswith(f.id)
        and c.sandbox_id.startswith(f.pod_sandbox_id)
        and all(c.config.labels.get(k) == v for k, v in f.label_selector.items())
    ]


@step("m_cb_container_stats")
async def m_cb_container_stats(
    manager: ContainerManager, containers: list[Container]
) -> list[ContainerFigures]:
    """Each container's cgroup, read now, and its writable layer's last sample."""
    return await manager.figures(containers)


# A container's attributes never change (its config is fixed at create), so each
# is built once and copied into every answer: ListContainerStats runs every few
# seconds for every container of the node. Keyed by id, and valid while it is the
# same config object (a record loaded again is a new one); ListContainerStats
# drops those of containers removed since.
_ATTRIBUTES: dict[str, tuple[api_pb2.ContainerConfig, api_pb2.ContainerAttributes]] = {}


def attributes(c: Container) -> api_pb2.ContainerAttributes:
    """id, metadata, labels and annotations, as ContainerStatus gives them."""
    config = c.config
    cached = _ATTRIBUTES.get(c.id)
    if cached is not None and cached[0] is config:
        return cached[1]
    made = api_pb2.ContainerAttributes(
        id=c.id,
        metadata=config.metadata,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
    )
    _ATTRIBUTES[c.id] = (config, made)
    return made


# The CPU sample each container's last stats were read with: usage_nano_cores is
# the CPU time used since then over the time since then (as PodSandboxStats's
# sandbox_update_cpu_metrics, iSulad's UpdateCPUMetrics); the first has none.
_CPU_SAMPLES: dict[str, tuple[int, int]] = {}  # id → (timestamp ns, CPU time ns)


def usage_nano_cores(container_id: str, timestamp: int, usage: int) -> int:
    last = _CPU_SAMPLES.get(container_id)
    _CPU_SAMPLES[container_id] = (timestamp, usage)
    if last is None or timestamp <= last[0] or usage < last[1]:
        return 0
    return (usage - last[1]) * 1_000_000_000 // (timestamp - last[0])


def forget_removed(manager: ContainerManager) -> None:
    """Drop what is kept of containers the manager no longer has."""
    for kept in (_ATTRIBUTES, _CPU_SAMPLES):
        for gone in [i for i in kept if i not in manager.containers]:
            del kept[gone]
    manager.writable_layers.forget(c.id for c in manager.containers.list())


@step("container_stats_to_grpc")
def container_stats_to_grpc(
    stats: list[ContainerFigures],
) -> api_pb2.ListContainerStatsResponse:
    out = api_pb2.ListContainerStatsResponse()
    for figures in stats:
        fill_container_stats(out.stats.add(), figures)
    return out


def fill_container_stats(item: api_pb2.ContainerStats, figures: ContainerFigures) -> None:
    """One container's message (ContainerStatsToGRPC's, and PodSandboxStats'
    for each of the pod's containers), filled in place: a list's items are
    made in it, not copied into it."""
    c, s, layer = figures
    item.attributes.CopyFrom(attributes(c))
    if layer is not None:
        fs = item.writable_layer
        fs.timestamp = layer.timestamp
        fs.fs_id.mountpoint = layer.mountpoint
        fs.used_bytes.value = layer.used_bytes
        fs.inodes_used.value = layer.inodes_used
    if s is not None:
        cpu, memory = item.cpu, item.memory
        cpu.timestamp = s.timestamp
        cpu.usage_core_nano_seconds.value = s.cpu_usage_ns
        cpu.usage_nano_cores.value = usage_nano_cores(c.id, s.timestamp, s.cpu_usage_ns)
        memory.timestamp = s.timestamp
        memory.working_set_bytes.value = s.memory_working_set
        memory.usage_bytes.value = s.memory_usage
        if s.memory_limit is not None:
            memory.available_bytes.value = max(0, s.memory_limit - s.memory_working_set)


@rpc("ReopenContainerLog")
async def ReopenContainerLog(
    svc: RuntimeService, request: api_pb2.ReopenContainerLogRequest, context: Context
) -> api_pb2.ReopenContainerLogResponse:
    await svc.containers().reopen_log(request.container_id)
    return api_pb2.ReopenContainerLogResponse()
