"""ChartView: a call's flow chart that lights up as its steps arrive.

The chart is drawn once by graphviz (the same drawing as ``teaching-cri charts``)
and sent to the page as SVG; what changes is a small *state*: for each node,
its step numbers and the time spent there, whether it failed, and for each
edge the steps that took it. The page colours the SVG's nodes and edges from
it (``static/chart.js``), so an update costs a few hundred bytes, not a new
drawing.

A view shows one span at a time, the *current* one: with ``trace_id`` the
call's root span (the call you made); with a running filter (``charts``,
``container_id``, ``sandbox_id``) the latest span to begin, while ``hits``
counts how often each node was reached by all of them (a kubelet's relist
loop, the websocket callbacks of a session).

Where no widget front end runs (nbclient, a terminal IPython, the book),
``_repr_mimebundle_`` also carries the chart as SVG with the path drawn and
as text: what the renderer draws for ``teaching-cri trace show``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import traitlets

from ..client import Client
from ..trace.charts import ChartSet
from ..trace.events import EventKind, TraceEvent
from ..trace.render import overlay, render_svg, render_text, to_dot
from .base import FollowingWidget

STATIC = Path(__file__).parent / "static"


@cache
def chart_set() -> ChartSet:
    return ChartSet.load()


@cache
def plain_svg(chart: str) -> str:
    """The chart without a trace: the page lays the trace over it."""
    svg: bytes = to_dot(chart_set()[chart]).pipe(format="svg")
    return svg.decode("utf-8")


def ms(ns: int) -> float:
    return round(ns / 1e6, 3)


class ChartView(FollowingWidget):
    """A live chart of one call (``trace_id``) or of a running filter."""

    _esm = STATIC / "chart.js"
    _css = STATIC / "chart.css"
    chart = traitlets.Unicode("").tag(sync=True)
    svg = traitlets.Unicode("").tag(sync=True)
    state = traitlets.Dict().tag(sync=True)

    def __init__(
        self,
        client: Client | None = None,
        *,
        charts: Iterable[str] = (),
        trace_id: str = "",
        container_id: str = "",
        sandbox_id: str = "",
        since_unix_nano: int = 0,
        interval: float = 0.1,
    ) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.charts = tuple(charts)
        unknown = [c for c in self.charts if c not in chart_set()]
        if unknown:
            raise ValueError(f"no chart named {', '.join(unknown)} (see `teaching-cri charts`)")
        self._spans: dict[str, list[TraceEvent]] = {}  # the current span's events
        self._current = ""
        self._hits: Counter[str] = Counter()
        self._spans_seen = 0
        self._done = threading.Event()
        self._follow(
            client,
            self._apply,
            self._publish,
            interval,
            charts=self.charts,
            trace_id=trace_id,
            container_id=container_id,
            sandbox_id=sandbox_id,
            since_unix_nano=since_unix_nano,
        )

    # -- in: events ------------------------------------------------------------

    def _apply(self, events: list[TraceEvent]) -> None:
        with self._lock:
            for event in events:
                self._take(event)

    def _take(self, event: TraceEvent) -> None:
        if event.chart not in chart_set():
            return
        mine = self.trace_id and event.trace_id == self.trace_id
        if mine and event.parent_span_id:
            return  # a child span: the timeline shows those
        if event.kind is EventKind.BEGIN:
            self._spans_seen += 1
            self._current = event.span_id
            self._spans = {event.span_id: []}
        if event.span_id != self._current:
            return
        self._spans[event.span_id].append(event)
        self._hits[event.node] += 1
        if mine and event.kind in (EventKind.END, EventKind.ERROR):
            self._done.set()

    # -- out: the page and the static renderings -----------------------------------

    def _events(self) -> list[TraceEvent]:
        return list(self._spans.get(self._current, []))

    def _publish(self) -> None:
        with self._lock:
            events = self._events()
            hits = dict(self._hits)
            seen = self._spans_seen
        if not events:
            return
        name = events[0].chart
        ov = overlay(chart_set()[name], events)
        nodes: dict[str, dict[str, Any]] = {}
        for v in ov.visits:
            n = nodes.setdefault(v.node, {"steps": [], "ms": 0.0, "error": ""})
            n["steps"].append(f"#{v.order}" + (f" {v.label}" if v.label else ""))
            if v.kind not in (EventKind.END, EventKind.ERROR):
                n["ms"] = round(n["ms"] + ms(v.duration_ns), 3)
            if v.error:
                n["error"] = v.error[:200]
        state = {
            "nodes": nodes,
            "edges": {f"{a}->{b}": orders for (a, b), orders in ov.edges.items()},
            "hits": hits if not self.trace_id else {},
            "title": f"trace {ov.trace_id[:8]}  {ms(ov.total_ns)} ms",
            "spans": seen,
            "dropped": self._follower.dropped if self._follower else 0,
            "done": events[-1].kind in (EventKind.END, EventKind.ERROR),
        }
        with self.hold_sync():
            if self.chart != name:
                self.svg = plain_svg(name)
                self.chart = name
            self.state = state

    @property
    def events(self) -> list[TraceEvent]:
        with self._lock:
            return self._events()

    def wait_done(self, timeout: float = 10.0) -> bool:
        """Wait for the call's span to end (``trace_id`` views); then flush."""
        done = self._done.wait(timeout)
        self._coalescer.flush()
        return done

    def text(self) -> str:
        events = self.events
        if not events:
            return f"(no step of {' or '.join(self.charts) or 'this call'} yet)"
        return render_text(chart_set()[events[0].chart], events)

    def static_svg(self) -> str:
        events = self.events
        name = events[0].chart if events else (self.charts[0] if self.charts else "")
        return render_svg(chart_set()[name], events) if name else ""

    def fallback(self) -> dict[str, str]:
        self._coalescer.flush()  # what has arrived, not what the last tick had
        svg = self.static_svg()
        return {"text/plain": self.text(), **({"image/svg+xml": svg} if svg else {})}
