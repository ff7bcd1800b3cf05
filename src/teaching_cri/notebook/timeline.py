"""Timeline: spans on a time axis, a call above the calls it made.

A span is one call through one chart (an RPC, a streaming callback); spans
made on behalf of another carry its id as their parent. The timeline draws
each as a bar from its BEGIN to its END, one lane per chart and depth, so a
call's children sit under it and a kubelet-like loop (relist every second,
a probe now and then) reads as a rhythm of bars.

The drawing is SVG made here, in Python, and it is the same for the live
widget (sent at most ten times a second) and for the static fallback.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import traitlets

from ..client import Client
from ..trace.events import EventKind, TraceEvent
from .base import FollowingWidget

STATIC = Path(__file__).parent / "static"
MAX_SPANS = 2000  # the oldest go first: a loop left running stays drawable


@dataclass
class Span:
    span_id: str
    parent: str
    chart: str
    start_ns: int
    end_ns: int = 0
    error: str = ""

    @property
    def done(self) -> bool:
        return self.end_ns > 0


def depth(span: Span, spans: dict[str, Span]) -> int:
    d, seen = 0, set()
    while span.parent in spans and span.parent not in seen:
        seen.add(span.parent)
        span = spans[span.parent]
        d += 1
    return d


def draw(spans: dict[str, Span], width: int = 900, now_ns: int = 0) -> str:
    """The timeline as SVG."""
    if not spans:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="20"></svg>'
    t0 = min(s.start_ns for s in spans.values())
    t1 = max(max(s.end_ns, s.start_ns) for s in spans.values())
    t1 = max(t1, now_ns, t0 + 1_000_000)
    lanes: dict[tuple[int, str], int] = {}
    for s in sorted(spans.values(), key=lambda s: s.start_ns):
        lanes.setdefault((depth(s, spans), s.chart), len(lanes))
    label_w, lane_h, top = 190, 18, 22
    scale = (width - label_w - 10) / (t1 - t0)
    height = top + lane_h * len(lanes) + 6
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width: {width}px" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<text x="{label_w}" y="12" fill="#444">0 ms</text>',
        f'<text x="{width - 10}" y="12" fill="#444" text-anchor="end">'
        f"{(t1 - t0) / 1e6:.1f} ms</text>",
    ]
    for (d, chart), row in lanes.items():
        y = top + row * lane_h
        out.append(
            f'<text x="{4 + 12 * d}" y="{y + 12}" fill="#222">{html.escape(chart)}</text>'
            f'<line x1="{label_w}" x2="{width - 10}" y1="{y + lane_h - 1}" '
            f'y2="{y + lane_h - 1}" stroke="#eee"/>'
        )
    for s in spans.values():
        y = top + lanes[(depth(s, spans), s.chart)] * lane_h + 2
        end = s.end_ns if s.done else t1
        x = label_w + (s.start_ns - t0) * scale
        w = max(2.0, (end - s.start_ns) * scale)
        fill = "#f8b4b4" if s.error else ("#1f6fd1" if s.done else "#9cc3f0")
        took = f"{(end - s.start_ns) / 1e6:.3f} ms" + ("" if s.done else " so far")
        tip = html.escape(f"{s.chart} {took}" + (f": {s.error}" if s.error else ""))
        out.append(
            f'<rect class="span" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 5}" '
            f'rx="2" fill="{fill}"><title>{tip}</title></rect>'
        )
    out.append("</svg>")
    return "".join(out)


class Timeline(FollowingWidget):
    """The spans of one trace (``trace_id``) or of a running filter, live."""

    _esm = STATIC / "timeline.js"
    svg = traitlets.Unicode("").tag(sync=True)
    summary = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        client: Client | None = None,
        *,
        trace_id: str = "",
        charts: Iterable[str] = (),
        container_id: str = "",
        since_unix_nano: int = 0,
        interval: float = 0.1,
    ) -> None:
        super().__init__()
        self.spans: dict[str, Span] = {}
        self._follow(
            client,
            self._apply,
            self._publish,
            interval,
            trace_id=trace_id,
            charts=tuple(charts),
            container_id=container_id,
            since_unix_nano=since_unix_nano,
        )

    def _apply(self, events: list[TraceEvent]) -> None:
        with self._lock:
            for e in events:
                span = self.spans.get(e.span_id)
                if span is None:
                    span = Span(e.span_id, e.parent_span_id, e.chart, e.monotonic_ns)
                    self.spans[e.span_id] = span
                    if len(self.spans) > MAX_SPANS:
                        del self.spans[next(iter(self.spans))]
                if e.kind in (EventKind.END, EventKind.ERROR):
                    span.end_ns = max(e.monotonic_ns, span.start_ns + 1)
                    span.error = e.attributes.get("error", "") if e.kind is EventKind.ERROR else ""

    def _publish(self) -> None:
        with self._lock:
            svg, summary = draw(self.spans), self.text()
        with self.hold_sync():
            self.svg, self.summary = svg, summary

    def text(self) -> str:
        by_chart: dict[str, list[Span]] = {}
        for s in self.spans.values():
            by_chart.setdefault(s.chart, []).append(s)
        lines = [f"{len(self.spans)} spans"]
        for chart, spans in by_chart.items():
            done = [s.end_ns - s.start_ns for s in spans if s.done]
            errors = sum(1 for s in spans if s.error)
            mean = f", mean {sum(done) / len(done) / 1e6:.3f} ms" if done else ""
            lines.append(
                f"  {chart}: {len(spans)}{mean}" + (f", {errors} failed" if errors else "")
            )
        return "\n".join(lines)

    def fallback(self) -> dict[str, str]:
        self._coalescer.flush()  # what has arrived, not what the last tick had
        with self._lock:
            return {"text/plain": self.text(), "image/svg+xml": draw(self.spans)}
