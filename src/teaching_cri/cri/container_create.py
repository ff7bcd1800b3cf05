"""CreateContainer (chart: diagrams/CreateContainer.toml).

The seed: ``ContainerManagerService::CreateContainer`` finds the sandbox with
GetRealContainerOrSandboxID, builds the create request (GenerateCreateContainerRequest,
MakeContainerName, MakeLabels, MakeAnnotations, GenerateMountBindings, the
devices and security context packed into the host config) and calls
``m_cb->container.create``. Those steps are the container manager's
(``manager/container.py``); this module converts and calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import InvalidArgument
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("CreateContainer")
async def CreateContainer(
    svc: RuntimeService, request: api_pb2.CreateContainerRequest, context: Context
) -> api_pb2.CreateContainerResponse:
    if not request.HasField("config"):
        raise InvalidArgument("CreateContainerRequest.config is missing")
    container_id = await svc.containers().create(
        request.pod_sandbox_id, request.config, request.sandbox_config
    )
    return api_pb2.CreateContainerResponse(container_id=container_id)
