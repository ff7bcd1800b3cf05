"""Exec and Attach (charts: diagrams/Exec.toml, diagrams/Attach.toml).

The seed: find the container, check the request (ValidateExecRequest /
ValidateAttachRequest: the container runs, at least one stream, no stderr
with a tty), then GenerateURL: the request waits in the streaming server's
cache under a fresh token, and the answer is the URL where the client
redeems it. Serving that URL (websocket now, SPDY after) is the streaming
server's part (``streaming/``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..manager.container import RUNNING, Container, ContainerManager
from ..streaming.request_cache import build_url as url_for
from ..trace.tracer import branch, decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("Exec")
async def Exec(
    svc: RuntimeService, request: api_pb2.ExecRequest, context: Context
) -> api_pb2.ExecResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    await inspect_container_state(manager, container)
    if not decide("get_container_state", container.id in manager.containers):
        raise NotFound(f"container {request.container_id!r} was removed meanwhile")
    validate("validate_exec_request", container, request, needs_cmd=True)
    return api_pb2.ExecResponse(url=generate_url(svc, "exec", request))


@rpc("Attach")
async def Attach(
    svc: RuntimeService, request: api_pb2.AttachRequest, context: Context
) -> api_pb2.AttachResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    await manager.refresh(container)
    validate("validate_attach_request", container, request, needs_cmd=False)
    return api_pb2.AttachResponse(url=generate_url(svc, "attach", request))


@step("inspect_container_state")
async def inspect_container_state(manager: ContainerManager, container: Container) -> None:
    await manager.refresh(container)


def validate(
    node: str,
    container: Container,
    request: api_pb2.ExecRequest | api_pb2.AttachRequest,
    *,
    needs_cmd: bool,
) -> None:
    """The seed's checks; the branch taken is the chart's edge label."""
    if container.state != RUNNING:
        branch(node, "not running")
        raise FailedPrecondition(f"container {container.id[:12]} is not running")
    problem = ""
    if needs_cmd and isinstance(request, api_pb2.ExecRequest) and not request.cmd:
        problem = "cmd is empty"
    elif not (request.stdin or request.stdout or request.stderr):
        problem = "one of stdin, stdout and stderr must be set"
    elif request.tty and request.stderr:
        problem = "tty and stderr cannot both be set (a terminal has one output)"
    elif (
        isinstance(request, api_pb2.AttachRequest) and request.stdin and not container.config.stdin
    ):
        problem = "stdin: the container was created without stdin"
    if problem:
        branch(node, "invalid")
        raise InvalidArgument(problem)
    branch(node, "success")


@step("generate_url")
def generate_url(
    svc: RuntimeService,
    method: str,
    request: api_pb2.ExecRequest | api_pb2.AttachRequest | api_pb2.PortForwardRequest,
) -> str:
    token = svc.streams().insert(method, request)
    return build_url(svc.stream_base, method, token)


@step("build_url")
def build_url(base: str, method: str, token: str) -> str:
    return url_for(base, method, token)
