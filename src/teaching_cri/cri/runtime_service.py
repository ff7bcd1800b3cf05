"""``runtime.v1.RuntimeService``: each RPC's handler lives in its own module.

Read the module named after an RPC to see its flow chart in code; this class
only gathers them, as iSulad's ``RuntimeV1RuntimeServiceImpl`` gathers its
versioner, container, pod sandbox and runtime manager services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..api import api_pb2, api_pb2_grpc
from ..manager.runtime_manager import RuntimeManager
from ..trace.tracer import Tracer
from . import runtime_config, status, version
from .unimplemented import fill_unimplemented

RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]


@fill_unimplemented(RUNTIME_SERVICE)
class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(
        self, runtime: RuntimeManager, tracer: Tracer, trace_stats: Callable[[], dict[str, Any]]
    ) -> None:
        self.runtime = runtime
        self.tracer = tracer
        self.trace_stats = trace_stats

    Version = version.Version
    Status = status.Status
    UpdateRuntimeConfig = runtime_config.UpdateRuntimeConfig
    RuntimeConfig = runtime_config.RuntimeConfig
