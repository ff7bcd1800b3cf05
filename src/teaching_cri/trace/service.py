"""``teachingcri.trace.v1.TraceService``: watch a live server from another process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..api import Context, trace_pb2, trace_pb2_grpc
from .events import TraceFilter
from .sinks import FanOutSink, RingBufferSink
from .tracer import Tracer
from .wire import event_to_pb, filter_from_pb


class TraceService(trace_pb2_grpc.TraceServiceServicer):
    def __init__(self, tracer: Tracer, ring: RingBufferSink, fanout: FanOutSink) -> None:
        self.tracer = tracer
        self.ring = ring
        self.fanout = fanout

    async def _filter(self, msg: trace_pb2.TraceFilter, context: Context) -> TraceFilter:
        unknown = [c for c in msg.charts if c not in self.tracer.charts]
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown chart(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(self.tracer.charts))}",
            )
        if msg.since_unix_nano < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"since_unix_nano must not be negative, got {msg.since_unix_nano}",
            )
        return filter_from_pb(msg)

    async def Follow(
        self, request: trace_pb2.FollowRequest, context: Context
    ) -> AsyncIterator[trace_pb2.TraceEvent]:
        flt = await self._filter(request.filter, context)
        replay = self.ring.snapshot(flt) if flt.since_unix_nano else []
        sub = self.fanout.subscribe(flt, replay)
        try:
            while True:
                item = await sub.get()
                if item is None:  # the server is shutting down
                    return
                event, dropped = item
                yield event_to_pb(event, dropped)
        finally:
            self.fanout.unsubscribe(sub)

    async def Recent(
        self, request: trace_pb2.RecentRequest, context: Context
    ) -> trace_pb2.RecentResponse:
        flt = await self._filter(request.filter, context)
        return trace_pb2.RecentResponse(events=[event_to_pb(e) for e in self.ring.snapshot(flt)])

    async def Stats(
        self, request: trace_pb2.StatsRequest, context: Context
    ) -> trace_pb2.StatsResponse:
        return trace_pb2.StatsResponse(
            emitted=self.tracer.emitted,
            subscribers=self.fanout.subscribers,
            sinks=[
                trace_pb2.SinkStats(name=s.name, delivered=d, dropped=x)
                for s in self.tracer.sinks
                for d, x in [s.counts()]
            ],
        )

    def stats(self) -> dict[str, Any]:
        """The same figures, for Status's verbose info."""
        return {
            "enabled": self.tracer.enabled,
            "emitted": self.tracer.emitted,
            "subscribers": self.fanout.subscribers,
            "sinks": {
                s.name: dict(zip(("delivered", "dropped"), s.counts(), strict=True))
                for s in self.tracer.sinks
            },
        }
