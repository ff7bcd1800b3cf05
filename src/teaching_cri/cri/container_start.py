"""StartContainer (chart: diagrams/StartContainer.toml).

The seed: GetRealContainerOrSandboxID, ``m_cb->container.start``, then
CreateContainerLogSymlink, which we do not need: the shim writes the CRI log
at the kubelet's path itself (the chart's note says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("StartContainer")
async def StartContainer(
    svc: RuntimeService, request: api_pb2.StartContainerRequest, context: Context
) -> api_pb2.StartContainerResponse:
    await svc.containers().start(request.container_id)
    return api_pb2.StartContainerResponse()
