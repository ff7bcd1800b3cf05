"""ListContainers and ContainerStatus (charts: diagrams/ListContainers.toml,
diagrams/ContainerStatus.toml).

The seed: ListContainers converts the filter, calls ``m_cb->container.list``
and converts each container; ContainerStatus inspects the container and packs
its time stamps, image, state, labels, name parts, mounts and resources. The
list reads the manager's in-memory index only: the kubelet asks every second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import InvalidArgument, NotFound
from ..manager.container import (
    EXITED,
    UNKNOWN,
    Container,
    ContainerManager,
    State,
    extract_labels,
    parse_container_name,
)
from ..trace.tracer import decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


@dataclass(frozen=True)
class Wanted:
    id: str = ""
    state: State | None = None
    sandbox_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()


@rpc("ListContainers")
async def ListContainers(
    svc: RuntimeService, request: api_pb2.ListContainersRequest, context: Context
) -> api_pb2.ListContainersResponse:
    manager = svc.containers()
    wanted = list_containers_from_grpc(request)
    found = m_cb_container_list(manager, wanted)
    return list_containers_to_grpc(found)


@step("list_containers_from_grpc")
def list_containers_from_grpc(request: api_pb2.ListContainersRequest) -> Wanted:
    """The filter, checked. An enum on the wire is any int32: a state no
    ContainerState names is refused, not looked up."""
    f = request.filter
    state = None
    if f.HasField("state"):
        if f.state.state not in api_pb2.ContainerState.values():
            raise InvalidArgument(
                f"filter.state.state {f.state.state} is not a ContainerState "
                f"({', '.join(f'{n} = {v}' for n, v in api_pb2.ContainerState.items())})"
            )
        state = f.state.state
    return Wanted(f.id, state, f.pod_sandbox_id, tuple(sorted(f.label_selector.items())))


@step("m_cb_container_list")
def m_cb_container_list(manager: ContainerManager, wanted: Wanted) -> list[Container]:
    """Every filter that is set must match (AND); ids may be unique prefixes."""
    out = []
    for c in manager.containers.list():
        if wanted.id and not c.id.startswith(wanted.id):
            continue
        if wanted.state is not None and c.state != wanted.state:
            continue
        if wanted.sandbox_id and not c.sandbox_id.startswith(wanted.sandbox_id):
            continue
        if wanted.labels:
            labels = c.config.labels
            if any(labels.get(k) != v for k, v in wanted.labels):
                continue
        out.append(c)
    return out


@step("list_containers_to_grpc")
def list_containers_to_grpc(found: list[Container]) -> api_pb2.ListContainersResponse:
    """Each record keeps its converted message (what never changes), so a list
    of a thousand is a thousand copies in C and a state each, not a thousand
    conversions: the kubelet asks every second."""
    response = api_pb2.ListContainersResponse()
    response.containers.extend(c.listing for c in found)
    for item, c in zip(response.containers, found, strict=True):
        item.state = c.state
    return response


@rpc("ContainerStatus")
async def ContainerStatus(
    svc: RuntimeService, request: api_pb2.ContainerStatusRequest, context: Context
) -> api_pb2.ContainerStatusResponse:
    manager = svc.containers()
    container = manager.get(request.container_id)
    await inspect_container(manager, container)
    if not decide("get_inspect_data", container.id in manager.containers):
        raise NotFound(f"container {request.container_id!r} was removed meanwhile")
    status = container_status_to_grpc(container)
    response = api_pb2.ContainerStatusResponse(status=status)
    if decide("verbose", request.verbose):
        response.info.update(build_verbose_info(container))
    return response


@step("inspect_container")
async def inspect_container(manager: ContainerManager, container: Container) -> None:
    await manager.refresh(container)


@step("container_status_to_grpc")
def container_status_to_grpc(c: Container) -> api_pb2.ContainerStatus:
    config = c.config
    status = api_pb2.ContainerStatus(id=c.id, metadata=config.metadata, log_path=c.log_path)
    get_container_time_stamps(c, status)
    pack_container_image_to_status(c, status)
    update_base_status_from_inspect(c, status)
    pack_labels_to_status(c, status)
    parse_container_name_step(c)
    convert_mounts_to_status(config, status)
    convert_resources_to_status(c, status)
    return status


@step("get_container_time_stamps")
def get_container_time_stamps(c: Container, status: api_pb2.ContainerStatus) -> None:
    status.created_at, status.started_at, status.finished_at = (
        c.created_at,
        c.started_at,
        c.finished_at,
    )


@step("pack_container_image_to_status")
def pack_container_image_to_status(c: Container, status: api_pb2.ContainerStatus) -> None:
    """The image id in all three (image_ref as PullImage answered it)."""
    status.image.image = c.image_id
    status.image_ref = c.image_id
    status.image_id = c.image_id


@step("update_base_status_from_inspect")
def update_base_status_from_inspect(c: Container, status: api_pb2.ContainerStatus) -> None:
    status.state = c.state
    if c.state == EXITED:
        status.exit_code = c.exit_code
    if c.state in (EXITED, UNKNOWN):  # UNKNOWN: why we cannot tell
        status.reason = c.reason
        status.message = c.message


@step("pack_labels_to_status")
def pack_labels_to_status(c: Container, status: api_pb2.ContainerStatus) -> None:
    config = c.config
    status.labels.update(extract_labels(c))
    status.annotations.update(config.annotations)


@step("parse_container_name")
def parse_container_name_step(c: Container) -> dict[str, str]:
    return parse_container_name(c.name)


@step("convert_mounts_to_status")
def convert_mounts_to_status(
    config: api_pb2.ContainerConfig, status: api_pb2.ContainerStatus
) -> None:
    status.mounts.extend(config.mounts)


@step("convert_resources_to_status")
def convert_resources_to_status(c: Container, status: api_pb2.ContainerStatus) -> None:
    r = c.resources
    cpu, memory = r.get("cpu", {}), r.get("memory", {})
    linux = status.resources.linux
    linux.cpu_period = int(cpu.get("period", 0))
    linux.cpu_quota = int(cpu.get("quota", 0))
    linux.cpu_shares = int(cpu.get("shares", 0))
    linux.cpuset_cpus = str(cpu.get("cpus", ""))
    linux.cpuset_mems = str(cpu.get("mems", ""))
    linux.memory_limit_in_bytes = int(memory.get("limit", 0))
    linux.memory_swap_limit_in_bytes = int(memory.get("swap", 0))


@step("build_verbose_info")
def build_verbose_info(c: Container) -> dict[str, str]:
    return {
        "info": json.dumps(
            {
                "id": c.id,
                "name": c.name,
                "sandbox_id": c.sandbox_id,
                "image": c.image,
                "resources": c.resources,
                "notes": c.notes,
                "labels": c.internal_labels,
            }
        )
    }
