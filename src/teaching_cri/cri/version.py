"""Version (chart: diagrams/Version.toml).

iSulad: ``RuntimeVersionerService::Version`` asks the daemon for its version
through ``m_cb->container.version`` and converts the answer with
``VersionResponseToGRPC``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..manager.runtime_manager import DaemonVersion
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("Version")
async def Version(
    svc: RuntimeService, request: api_pb2.VersionRequest, context: Context
) -> api_pb2.VersionResponse:
    daemon = svc.runtime.version()  # m_cb->container.version
    return version_response_to_grpc(daemon)


@step("version_response_to_grpc")
def version_response_to_grpc(daemon: DaemonVersion) -> api_pb2.VersionResponse:
    return api_pb2.VersionResponse(
        version=daemon.kube_api_version,
        runtime_name=daemon.runtime_name,
        runtime_version=daemon.version,
        runtime_api_version=daemon.api_version,
    )
