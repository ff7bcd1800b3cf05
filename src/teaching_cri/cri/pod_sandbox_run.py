"""RunPodSandbox (chart: diagrams/RunPodSandbox.toml).

iSulad: ``PodSandboxManagerService::RunPodSandbox``. The steps, from the
pause image to CNI and the lifecycle event, are the sandbox manager's
(``manager/sandbox.py``); this module converts and calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import InvalidArgument
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("RunPodSandbox")
async def RunPodSandbox(
    svc: RuntimeService, request: api_pb2.RunPodSandboxRequest, context: Context
) -> api_pb2.RunPodSandboxResponse:
    if not request.HasField("config"):
        raise InvalidArgument("RunPodSandboxRequest.config is missing")
    sandbox_id = await svc.sandboxes().run(request.config, request.runtime_handler)
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)
