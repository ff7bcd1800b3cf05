"""StopContainer and RemoveContainer (charts: diagrams/StopContainer.toml,
diagrams/RemoveContainer.toml).

Both idempotent, as CRI requires (iSulad answers NOT_FOUND for an unknown id).
Stop gives the stop signal ``timeout`` seconds, then SIGKILL; Remove is forced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("StopContainer")
async def StopContainer(
    svc: RuntimeService, request: api_pb2.StopContainerRequest, context: Context
) -> api_pb2.StopContainerResponse:
    await svc.containers().stop(request.container_id, int(request.timeout))
    return api_pb2.StopContainerResponse()


@rpc("RemoveContainer")
async def RemoveContainer(
    svc: RuntimeService, request: api_pb2.RemoveContainerRequest, context: Context
) -> api_pb2.RemoveContainerResponse:
    await svc.containers().remove(request.container_id)
    return api_pb2.RemoveContainerResponse()
