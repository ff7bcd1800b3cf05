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
    validate_exec_request(container, request)
    return api_pb2.ExecResponse(url=generate_url(svc, "exec", request))


@rpc("Attach")
async def Attach(
    svc: RuntimeService, request: api_pb2.AttachRequest, context: Context
) -> api_pb2.AttachResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    await validate_attach_request(manager, container, request)
    return api_pb2.AttachResponse(url=generate_url(svc, "attach", request))


@step("inspect_container_state")
async def inspect_container_state(manager: ContainerManager, container: Container) -> None:
    await manager.refresh(container)


def validate_exec_request(container: Container, request: api_pb2.ExecRequest) -> None:
    """The seed's ValidateExecRequest: running first (FAILED_PRECONDITION, as
    there is nothing to run in), then the request itself (INVALID_ARGUMENT);
    the branch taken is the chart's edge label."""
    problem = "cmd is empty" if not request.cmd else stream_problem(request)
    if container.state != RUNNING:
        branch("validate_exec_request", "not running")
        raise not_running(container)
    elif problem:
        branch("validate_exec_request", "invalid")
        raise InvalidArgument(problem)
    else:
        branch("validate_exec_request", "success")


async def validate_attach_request(
    manager: ContainerManager, container: Container, request: api_pb2.AttachRequest
) -> None:
    """The seed's ValidateAttachRequest, with the running check the seed marks
    as missing ('bug: check container running?'): the state is read from the
    runtime here, because this decision is the one that uses it (the chart has
    no InspectContainerState of its own)."""
    await manager.refresh(container)
    problem = stream_problem(request)
    if not problem and request.stdin and not container.config.stdin:
        problem = "stdin: the container was created without stdin"
    if container.state != RUNNING:
        branch("validate_attach_request", "not running")
        raise not_running(container)
    elif problem:
        branch("validate_attach_request", "invalid")
        raise InvalidArgument(problem)
    else:
        branch("validate_attach_request", "success")


def stream_problem(request: api_pb2.ExecRequest | api_pb2.AttachRequest) -> str:
    """What is wrong with the streams a request asks for, if anything: the
    checks ValidateExecRequest and ValidateAttachRequest share."""
    if not (request.stdin or request.stdout or request.stderr):
        return "one of stdin, stdout and stderr must be set"
    if request.tty and request.stderr:
        return "tty and stderr cannot both be set (a terminal has one output)"
    return ""


def not_running(container: Container) -> FailedPrecondition:
    return FailedPrecondition(f"container {container.id[:12]} is not running")


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
