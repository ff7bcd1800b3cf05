"""``runtime.v1.RuntimeService``: each RPC's handler lives in its own module.

Read the module named after an RPC to see its flow chart in code; this class
only gathers them, as iSulad's ``RuntimeV1RuntimeServiceImpl`` gathers its
versioner, container, pod sandbox and runtime manager services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api import api_pb2, api_pb2_grpc
from ..errors import FailedPrecondition
from ..manager.container import ContainerManager
from ..manager.runtime_manager import RuntimeManager
from ..manager.sandbox import SandboxManager
from ..streaming.request_cache import RequestCache
from ..trace.tracer import Tracer
from . import (
    container_create,
    container_events,
    container_exec,
    container_list,
    container_start,
    container_stats,
    container_stop,
    container_stream,
    container_update,
    pod_port_forward,
    pod_sandbox_run,
    pod_sandbox_stats,
    pod_sandbox_status,
    pod_sandbox_stop,
    pod_sandbox_update,
    runtime_config,
    status,
    version,
)
from .unimplemented import fill_unimplemented

RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]


@fill_unimplemented(RUNTIME_SERVICE)
class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(
        self, runtime: RuntimeManager, tracer: Tracer, trace_stats: Callable[[], dict[str, Any]]
    ) -> None:
        self.runtime = runtime
        self.tracer = tracer
        self.trace_stats = trace_stats
        self.request_cache = RequestCache()
        host, port = runtime.config.stream_host_port
        self.stream_base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def streams(self) -> RequestCache:
        """The streaming server's cache (the server shares it when it runs)."""
        return self.request_cache

    def sandboxes(self) -> SandboxManager:
        if self.runtime.sandboxes is None:
            raise FailedPrecondition("pod sandboxes are not available: no runtime backend")
        return self.runtime.sandboxes

    def containers(self) -> ContainerManager:
        if self.runtime.containers is None:
            raise FailedPrecondition("containers are not available: no runtime backend")
        return self.runtime.containers

    Version = version.Version
    Status = status.Status
    UpdateRuntimeConfig = runtime_config.UpdateRuntimeConfig
    RuntimeConfig = runtime_config.RuntimeConfig
    RunPodSandbox = pod_sandbox_run.RunPodSandbox
    StopPodSandbox = pod_sandbox_stop.StopPodSandbox
    RemovePodSandbox = pod_sandbox_stop.RemovePodSandbox
    PodSandboxStatus = pod_sandbox_status.PodSandboxStatus
    ListPodSandbox = pod_sandbox_status.ListPodSandbox
    PodSandboxStats = pod_sandbox_stats.PodSandboxStats
    ListPodSandboxStats = pod_sandbox_stats.ListPodSandboxStats
    UpdatePodSandboxResources = pod_sandbox_update.UpdatePodSandboxResources
    CreateContainer = container_create.CreateContainer
    StartContainer = container_start.StartContainer
    StopContainer = container_stop.StopContainer
    RemoveContainer = container_stop.RemoveContainer
    ListContainers = container_list.ListContainers
    ContainerStatus = container_list.ContainerStatus
    UpdateContainerResources = container_update.UpdateContainerResources
    ExecSync = container_exec.ExecSync
    ContainerStats = container_stats.ContainerStats
    ListContainerStats = container_stats.ListContainerStats
    ReopenContainerLog = container_stats.ReopenContainerLog
    GetContainerEvents = container_events.GetContainerEvents
    Exec = container_stream.Exec
    Attach = container_stream.Attach
    PortForward = pod_port_forward.PortForward
