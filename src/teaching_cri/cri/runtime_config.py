"""UpdateRuntimeConfig and RuntimeConfig (charts: diagrams/UpdateRuntimeConfig.toml,
diagrams/RuntimeConfig.toml): configuration passed between kubelet and runtime,
one way each."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..trace.tracer import decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("UpdateRuntimeConfig")
async def UpdateRuntimeConfig(
    svc: RuntimeService,
    request: api_pb2.UpdateRuntimeConfigRequest,
    context: Context,
) -> api_pb2.UpdateRuntimeConfigResponse:
    pod_cidr = request.runtime_config.network_config.pod_cidr
    if decide("pod_cidr_set", bool(pod_cidr)):
        cidrs = svc.runtime.validate_pod_cidr(pod_cidr)
        # fsync off the event loop, so other RPCs and Follow streams go on meanwhile
        await asyncio.to_thread(svc.runtime.persist, cidrs)
        svc.runtime.pod_cidr_changed(cidrs)  # m_pluginManager->Event(POD_CIDR_CHANGE)
    return api_pb2.UpdateRuntimeConfigResponse()


@rpc("RuntimeConfig")
async def RuntimeConfig(
    svc: RuntimeService, request: api_pb2.RuntimeConfigRequest, context: Context
) -> api_pb2.RuntimeConfigResponse:
    driver = svc.runtime.cgroup_driver()
    return set_linux_cgroup_driver(driver)


@step("set_linux_cgroup_driver")
def set_linux_cgroup_driver(driver: str) -> api_pb2.RuntimeConfigResponse:
    value = api_pb2.CgroupDriver.Value(driver.upper())
    return api_pb2.RuntimeConfigResponse(
        linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=value)  # type: ignore[arg-type]
    )
