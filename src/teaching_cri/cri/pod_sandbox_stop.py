"""StopPodSandbox and RemovePodSandbox (charts: diagrams/StopPodSandbox.toml,
diagrams/RemovePodSandbox.toml).

iSulad: ``PodSandboxManagerService::StopPodSandbox`` and ``RemovePodSandbox``.
Both are idempotent, as CRI requires: an unknown id is success (iSulad
answers NOT_FOUND; the charts' notes say why we do not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("StopPodSandbox")
async def StopPodSandbox(
    svc: RuntimeService, request: api_pb2.StopPodSandboxRequest, context: Context
) -> api_pb2.StopPodSandboxResponse:
    await svc.sandboxes().stop(request.pod_sandbox_id)
    return api_pb2.StopPodSandboxResponse()


@rpc("RemovePodSandbox")
async def RemovePodSandbox(
    svc: RuntimeService, request: api_pb2.RemovePodSandboxRequest, context: Context
) -> api_pb2.RemovePodSandboxResponse:
    await svc.sandboxes().remove(request.pod_sandbox_id)
    return api_pb2.RemovePodSandboxResponse()
