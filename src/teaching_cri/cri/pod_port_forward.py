"""PortForward (chart: diagrams/PortForward.toml, its RPC walk; ours: iSulad
leaves it a stub). The ports it names must be ports and the pod must be ready;
the request waits in the streaming server's cache, and the answer is where to
connect. The RPC enters the chart straight from its start: the gRPC server
chose this handler, no code of ours asks whether this is the RPC."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..manager.sandbox import READY
from ..trace.tracer import decide, step
from ._rpc import rpc
from .container_stream import generate_url

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("PortForward")
async def PortForward(
    svc: RuntimeService, request: api_pb2.PortForwardRequest, context: Context
) -> api_pb2.PortForwardResponse:
    manager = svc.sandboxes()
    with step("get_real_container_or_sandbox_id"):
        sandbox = manager.find(request.pod_sandbox_id)
    if not decide("get_sandbox_id", sandbox is not None):
        raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
    assert sandbox is not None
    bad = [p for p in request.port if not 0 < p < 65536]
    if not decide("ports_in_range", not bad):
        raise InvalidArgument(f"port {bad[0]} is not in 1..65535")
    if not decide("sandbox_ready", await manager.current_state(sandbox) == READY):
        raise FailedPrecondition(f"pod sandbox {sandbox.id[:12]} is not ready")
    forward = api_pb2.PortForwardRequest(pod_sandbox_id=sandbox.id, port=request.port)
    return api_pb2.PortForwardResponse(url=generate_url(svc, "portforward", forward))
