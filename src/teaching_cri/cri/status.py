"""Status (chart: diagrams/Status.toml).

iSulad's ``RuntimeManagerService::Status``: start with both conditions true,
then turn RuntimeReady false if the daemon does not answer, and NetworkReady
false if the network plugin manager is not ready. The kubelet marks the node
NotReady when either is false, so each false condition carries a reason and a
message that say what to fix.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..api import Context, api_pb2
from ..manager.network import NetworkStatus
from ..runtime.backends import BackendProbe
from ..runtime.spec import recursive_read_only_supported
from ..trace.tracer import decide, step
from ._rpc import rpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService

RUNTIME_READY = "RuntimeReady"  # k8s.io/cri-api/pkg/apis/runtime/v1/constants.go
NETWORK_READY = "NetworkReady"


@rpc("Status")
async def Status(
    svc: RuntimeService, request: api_pb2.StatusRequest, context: Context
) -> api_pb2.StatusResponse:
    status = new_runtime_status()
    runtime_ready = add_runtime_ready_condition(status)
    network_ready = add_network_ready_condition(status)
    svc.runtime.version()  # m_cb->container.version: the manager answers
    backend = svc.runtime.probe_backend()
    if not decide("runtime_ready", backend.available):
        set_runtime_not_ready_reason(runtime_ready, backend)
    network = svc.runtime.network_status()  # m_pluginManager->Status
    if not decide("network_plugin_ready", network.ready):
        set_network_plugin_not_ready_reason(network_ready, network)
    info: dict[str, str] = {}
    if decide("verbose", request.verbose):
        info = build_verbose_info(svc, backend, network)
    return api_pb2.StatusResponse(
        status=status,
        info=info,
        # One handler, the default (""): RuntimeClass handlers arrive with the runtime backends.
        runtime_handlers=[api_pb2.RuntimeHandler(name="", features=handler_features(backend))],
        features=api_pb2.RuntimeFeatures(),
    )


def handler_features(backend: BackendProbe) -> api_pb2.RuntimeHandlerFeatures:
    """What the kubelet may ask of the handler. A pod asking for
    ``recursiveReadOnly: Enabled`` is refused by the kubelet unless this says
    the runtime makes such mounts: runc's ``rro`` does, on Linux 5.12 and later
    (``spec.recursive_read_only_supported``), in both runc tiers; the processes
    tier makes no mounts at all. User namespaces for pods are not built."""
    runc = backend.available and backend.details.get("tier") in ("runc", "rootless-runc")
    return api_pb2.RuntimeHandlerFeatures(
        recursive_read_only_mounts=runc and recursive_read_only_supported(),
        user_namespaces=False,
    )


@step("new_runtime_status")
def new_runtime_status() -> api_pb2.RuntimeStatus:
    return api_pb2.RuntimeStatus()


@step("add_runtime_ready_condition")
def add_runtime_ready_condition(status: api_pb2.RuntimeStatus) -> api_pb2.RuntimeCondition:
    return status.conditions.add(type=RUNTIME_READY, status=True)


@step("add_network_ready_condition")
def add_network_ready_condition(status: api_pb2.RuntimeStatus) -> api_pb2.RuntimeCondition:
    return status.conditions.add(type=NETWORK_READY, status=True)


@step("set_runtime_not_ready_reason")
def set_runtime_not_ready_reason(cond: api_pb2.RuntimeCondition, backend: BackendProbe) -> None:
    cond.status = False
    cond.reason = backend.reason or "RuntimeNotReady"
    cond.message = f"runtime backend {backend.name!r} is not ready: {backend.message}"


@step("set_network_plugin_not_ready_reason")
def set_network_plugin_not_ready_reason(cond: api_pb2.RuntimeCondition, net: NetworkStatus) -> None:
    cond.status = False
    cond.reason = "NetworkPluginNotReady"
    cond.message = f"teaching-cri: network plugin is not ready: {net.message}"


@step("build_verbose_info")
def build_verbose_info(
    svc: RuntimeService, backend: BackendProbe, network: NetworkStatus
) -> dict[str, str]:
    """Each value is one JSON document: crictl ``info`` decodes them."""
    facts: dict[str, Any] = svc.runtime.info()
    facts["backend"] = {
        "requested": backend.requested,
        "name": backend.name,
        "available": backend.available,
        "reason": backend.reason,
        "message": backend.message,
        "details": backend.details,
        "not_isolated": list(backend.not_isolated),
    }
    facts["network"] = facts.get("network", {}) | {
        "ready": network.ready,
        "message": network.message,
        "config_file": network.config_file,
    }
    facts["trace"] = svc.trace_stats()
    return {key: json.dumps(value, sort_keys=True) for key, value in facts.items()}
