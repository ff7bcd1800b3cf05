"""The wire API: stubs generated from ``proto/`` (do not edit them by hand).

``api_pb2`` is the CRI ``runtime.v1`` package; ``trace_pb2`` is teaching-cri's
own ``teachingcri.trace.v1``. Regenerate with ``python -m teaching_cri.api.generate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import grpc

# The servicer context every handler receives (grpc.aio's is generic in the
# request and response types, which no handler here needs to name).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
