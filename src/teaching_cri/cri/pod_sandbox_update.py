"""UpdatePodSandboxResources (chart: diagrams/UpdatePodSandboxResources.toml).

CRI v1.33's notice of an in-place pod resize; iSulad has none. The pod's
cgroup level is ours (``/teaching-cri/<pod>``), so the new limits go there
when there are cgroups, and are recorded, not enforced, when there are not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("UpdatePodSandboxResources")
async def UpdatePodSandboxResources(
    svc: RuntimeService, request: api_pb2.UpdatePodSandboxResourcesRequest, context: Context
) -> api_pb2.UpdatePodSandboxResourcesResponse:
    await svc.sandboxes().update_resources(
        request.pod_sandbox_id, request.resources, request.overhead
    )
    return api_pb2.UpdatePodSandboxResourcesResponse()
