"""UpdateContainerResources (chart: diagrams/UpdateContainerResources.toml).

The seed: GenerateHostConfig turns CRI's LinuxContainerResources into the
runtime's, ``m_cb->container.update`` applies them (``runc update``).
Transactional: if the update fails, what was there is put back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..api import Context, api_pb2
from ..errors import InvalidArgument
from ..runtime.spec import resources as spec_resources
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("UpdateContainerResources")
async def UpdateContainerResources(
    svc: RuntimeService, request: api_pb2.UpdateContainerResourcesRequest, context: Context
) -> api_pb2.UpdateContainerResourcesResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    resources = generate_hostconfig(request.linux)
    await manager.update(container, resources)
    return api_pb2.UpdateContainerResourcesResponse()


@step("generate_hostconfig")
def generate_hostconfig(linux: api_pb2.LinuxContainerResources) -> dict[str, Any]:
    """Every field the seed lists, checked (spec.validate_resources names the
    field at fault); 0 and "" leave a value as it is."""
    config = api_pb2.ContainerConfig(linux=api_pb2.LinuxContainerConfig(resources=linux))
    converted = spec_resources(config)
    converted.pop("devices", None)
    if not converted:
        raise InvalidArgument("resources: nothing to update")
    return converted
