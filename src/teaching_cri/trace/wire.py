"""Conversions between trace events and their protobuf form (trace.proto)."""

from __future__ import annotations

from ..api import trace_pb2
from .events import EventKind, TraceEvent, TraceFilter

_KIND_TO_PB = {
    EventKind.BEGIN: trace_pb2.EVENT_KIND_BEGIN,
    EventKind.STEP: trace_pb2.EVENT_KIND_STEP,
    EventKind.BRANCH: trace_pb2.EVENT_KIND_BRANCH,
    EventKind.END: trace_pb2.EVENT_KIND_END,
    EventKind.ERROR: trace_pb2.EVENT_KIND_ERROR,
}
_PB_TO_KIND = {v: k for k, v in _KIND_TO_PB.items()}


def event_to_pb(event: TraceEvent, dropped_before: int = 0) -> trace_pb2.TraceEvent:
    return trace_pb2.TraceEvent(
        trace_id=event.trace_id,
        span_id=event.span_id,
        parent_span_id=event.parent_span_id,
        monotonic_ns=event.monotonic_ns,
        unix_nano=event.unix_nano,
        chart=event.chart,
        node=event.node,
        kind=_KIND_TO_PB[event.kind],
        label=event.label,
        attributes=dict(event.attributes),
        sequence=event.sequence,
        dropped_before=dropped_before,
    )


def event_from_pb(msg: trace_pb2.TraceEvent) -> TraceEvent:
    return TraceEvent(
        trace_id=msg.trace_id,
        span_id=msg.span_id,
        parent_span_id=msg.parent_span_id,
        monotonic_ns=msg.monotonic_ns,
        unix_nano=msg.unix_nano,
        chart=msg.chart,
        node=msg.node,
        kind=_PB_TO_KIND[msg.kind],
        label=msg.label,
        attributes=dict(msg.attributes),
        sequence=msg.sequence,
    )


def filter_from_pb(msg: trace_pb2.TraceFilter) -> TraceFilter:
    return TraceFilter(
        charts=frozenset(msg.charts),
        container_id=msg.container_id,
        sandbox_id=msg.sandbox_id,
        trace_id=msg.trace_id,
        since_unix_nano=msg.since_unix_nano,
    )
