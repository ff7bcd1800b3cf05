"""The wire API: stubs generated from ``proto/`` (do not edit them by hand).

``api_pb2`` is the CRI ``runtime.v1`` package; ``trace_pb2`` is teaching-cri's
own ``teachingcri.trace.v1``. Regenerate with ``python -m teaching_cri.api.generate``.
"""
