"""ExecSync (chart: diagrams/ExecSync.toml).

The seed: the container must be running, the command is converted
(ExecSyncFromGRPC), ``m_cb->container.exec`` runs it with string writers for
stdout and stderr (ours: the shim, at most 16 MiB each), and a timeout kills
the process (the shim SIGKILLs its process group: nothing is left behind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..runtime.backend import ExecResult
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("ExecSync")
async def ExecSync(
    svc: RuntimeService, request: api_pb2.ExecSyncRequest, context: Context
) -> api_pb2.ExecSyncResponse:
    result = await svc.containers().exec_sync(
        request.container_id, list(request.cmd), int(request.timeout)
    )
    return set_exit_code(result)


@step("set_exit_code")
def set_exit_code(result: ExecResult) -> api_pb2.ExecSyncResponse:
    return api_pb2.ExecSyncResponse(
        stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
    )
