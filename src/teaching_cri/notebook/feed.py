"""The part every live widget shares: events in from TraceService.Follow, at
most a few updates a second out to the page.

A server can emit thousands of trace events a second (a kubelet-like loop, a
stream of websocket frames). Sending one widget message per event would queue
more work than a browser can draw and freeze the page, so events are only
*collected* as they arrive; a pump thread turns what was collected into one
state update at most every ``interval`` seconds (10 a second by default). The
cost of an event in the kernel is an append under a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import grpc

from ..api import trace_pb2
from ..client import Client
from ..trace.events import TraceEvent
from ..trace.wire import event_from_pb

UPDATES_PER_SECOND = 10


class Coalescer:
    """Collects events and calls ``apply(events)`` then ``publish()`` at most
    ``1 / interval`` times a second, from its own thread.

    ``apply`` folds a batch into the widget's model (in Python, cheap);
    ``publish`` sends the model to the page (one comm message)."""

    def __init__(
        self,
        apply: Callable[[list[TraceEvent]], None],
        publish: Callable[[], None],
        interval: float = 1 / UPDATES_PER_SECOND,
    ) -> None:
        self._apply = apply
        self._publish = publish
        self.interval = interval
        self._pending: list[TraceEvent] = []
        self._lock = threading.Condition()
        self._closed = False
        self.received = 0
        self.updates = 0  # how many times publish() ran: what the page had to draw
        self._thread = threading.Thread(target=self._pump, name="widget-pump", daemon=True)
        self._thread.start()

    def feed(self, events: Iterable[TraceEvent]) -> None:
        with self._lock:
            before = len(self._pending)
            self._pending.extend(events)
            self.received += len(self._pending) - before
            self._lock.notify()

    def flush(self) -> None:
        """Apply and publish what is pending now, on the caller's thread."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._apply(batch)
            self.updates += 1
            self._publish()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=5)
        self.flush()

    def _pump(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
            self.flush()
            time.sleep(self.interval)  # the rate limit: later events wait and merge


class Follower:
    """A TraceService.Follow stream read by a thread, handing events to ``sink``.
    ``stop()`` cancels the stream; ``error`` says why it ended early, if it did."""

    def __init__(
        self,
        client: Client,
        sink: Callable[[list[TraceEvent]], None],
        *,
        charts: Iterable[str] = (),
        trace_id: str = "",
        container_id: str = "",
        sandbox_id: str = "",
        since_unix_nano: int = 0,
    ) -> None:
        request = trace_pb2.FollowRequest(
            filter=trace_pb2.TraceFilter(
                charts=list(charts),
                trace_id=trace_id,
                container_id=container_id,
                sandbox_id=sandbox_id,
                since_unix_nano=since_unix_nano,
            )
        )
        self._call = client.trace.Follow(request)
        self._sink = sink
        self.dropped = 0
        self.error = ""
        self._stopping = False
        self._thread = threading.Thread(target=self._read, name="trace-follow", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for msg in self._call:
                self.dropped += msg.dropped_before
                self._sink([event_from_pb(msg)])
        except grpc.RpcError as exc:
            if not self._stopping and exc.code() is not grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"

    def stop(self) -> None:
        self._stopping = True
        self._call.cancel()
        self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
