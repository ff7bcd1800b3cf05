"""PodSandboxStatus and ListPodSandbox (charts: diagrams/PodSandboxStatus.toml,
diagrams/ListPodSandbox.toml).

iSulad: ``PodSandboxManagerService::PodSandboxStatus`` and ``ListPodSandbox``:
the sandbox manager's records, converted to CRI's messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import NotFound
from ..manager.sandbox import Sandbox, SandboxManager, State
from ..trace.tracer import decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@rpc("PodSandboxStatus")
async def PodSandboxStatus(
    svc: RuntimeService, request: api_pb2.PodSandboxStatusRequest, context: Context
) -> api_pb2.PodSandboxStatusResponse:
    manager = svc.sandboxes()
    sandbox = manager.sandbox_manager_get_sandbox(request.pod_sandbox_id)
    if not decide("sandbox_found", sandbox is not None):
        raise NotFound(f"pod sandbox {request.pod_sandbox_id!r} not found")
    assert sandbox is not None
    state = await manager.sandbox_status(sandbox)
    network = set_sandbox_status_network(sandbox)
    response = api_pb2.PodSandboxStatusResponse(
        status=pod_sandbox_status_to_grpc(sandbox, state, network)
    )
    if decide("verbose", request.verbose):
        response.info.update(build_verbose_info(manager, sandbox))
    return response


@step("set_sandbox_status_network")
def set_sandbox_status_network(sandbox: Sandbox) -> api_pb2.PodSandboxNetworkStatus:
    ips = sandbox.ips
    return api_pb2.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "",
        additional_ips=[api_pb2.PodIP(ip=ip) for ip in ips[1:]],
    )


@step("pod_sandbox_status_to_grpc")
def pod_sandbox_status_to_grpc(
    sandbox: Sandbox, state: State, network: api_pb2.PodSandboxNetworkStatus
) -> api_pb2.PodSandboxStatus:
    config = sandbox.config
    return api_pb2.PodSandboxStatus(
        id=sandbox.id,
        metadata=config.metadata,
        state=state,
        created_at=sandbox.created_at,
        network=network,
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(options=config.linux.security_context.namespace_options)
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=sandbox.runtime_handler,
    )


@step("build_verbose_info")
def build_verbose_info(manager: SandboxManager, sandbox: Sandbox) -> dict[str, str]:
    return manager.verbose_info(sandbox)


@rpc("ListPodSandbox")
async def ListPodSandbox(
    svc: RuntimeService, request: api_pb2.ListPodSandboxRequest, context: Context
) -> api_pb2.ListPodSandboxResponse:
    manager = svc.sandboxes()
    wanted = list_pod_sandbox_from_grpc(request)
    sandboxes = sandbox_manager_list_all_sandboxes(manager)
    states = {s.id: await manager.current_state(s) for s in sandboxes}
    if decide("filter_set", wanted is not None):
        assert wanted is not None
        sandboxes = match_id_state_and_labels(sandboxes, states, wanted)
    return list_pod_sandbox_to_grpc(sandboxes, states)


@step("list_pod_sandbox_from_grpc")
def list_pod_sandbox_from_grpc(
    request: api_pb2.ListPodSandboxRequest,
) -> api_pb2.PodSandboxFilter | None:
    return request.filter if request.HasField("filter") else None


@step("sandbox_manager_list_all_sandboxes")
def sandbox_manager_list_all_sandboxes(manager: SandboxManager) -> list[Sandbox]:
    return manager.all()


@step("match_id_state_and_labels")
def match_id_state_and_labels(
    sandboxes: list[Sandbox], states: dict[str, State], wanted: api_pb2.PodSandboxFilter
) -> list[Sandbox]:
    """Every filter that is set must match (AND); the id may be a unique prefix."""
    out = []
    for s in sandboxes:
        if wanted.id and not s.id.startswith(wanted.id):
            continue
        if wanted.HasField("state") and states[s.id] != wanted.state.state:
            continue
        labels = s.config.labels
        if any(labels.get(k) != v for k, v in wanted.label_selector.items()):
            continue
        out.append(s)
    return out


@step("list_pod_sandbox_to_grpc")
def list_pod_sandbox_to_grpc(
    sandboxes: list[Sandbox], states: dict[str, State]
) -> api_pb2.ListPodSandboxResponse:
    items = []
    for s in sandboxes:
        config = s.config
        items.append(
            api_pb2.PodSandbox(
                id=s.id,
                metadata=config.metadata,
                state=states[s.id],
                created_at=s.created_at,
                labels=dict(config.labels),
                annotations=dict(config.annotations),
                runtime_handler=s.runtime_handler,
            )
        )
    return api_pb2.ListPodSandboxResponse(items=items)
