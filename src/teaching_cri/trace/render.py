"""Draw a chart with a trace laid over it: SVG/PNG through graphviz, and text.

The overlay marks every visited node with its step number(s) and the time
spent there (from reaching it to reaching the next node), draws the edges
taken thick and numbered, and paints the node where an error happened red.
Nodes we added are drawn with a ``+`` badge, iSulad nodes our code has no
counterpart for are dashed and grey, notes hang off their nodes; error ends
have a red outline and the edges into them are dashed red.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import graphviz

from .charts import Chart, Node, NodeKind
from .conformance import spans
from .events import EventKind, TraceEvent

VISITED = "#cfe8ff"
VISITED_EDGE = "#1f6fd1"
ERROR = "#f8b4b4"
ERROR_EDGE = "#c81e1e"
ABSENT = "#9a9a9a"


@dataclass(slots=True)
class Visit:
    order: int
    node: str
    kind: EventKind
    label: str
    duration_ns: int
    error: str = ""


@dataclass(slots=True)
class Overlay:
    """One span's walk, ready to draw."""

    chart: Chart
    visits: list[Visit] = field(default_factory=list)
    edges: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    error_node: str = ""
    total_ns: int = 0
    trace_id: str = ""
    span_id: str = ""

    def orders(self, node: str) -> list[Visit]:
        return [v for v in self.visits if v.node == node]


def overlay(chart: Chart, events: Sequence[TraceEvent]) -> Overlay:
    """The overlay of one span's events (all of the same chart)."""
    events = sorted(events, key=lambda e: e.sequence)
    ov = Overlay(chart)
    if not events:
        return ov
    ov.trace_id, ov.span_id = events[0].trace_id, events[0].span_id
    ov.total_ns = events[-1].monotonic_ns - events[0].monotonic_ns
    for i, event in enumerate(events):
        nxt = events[i + 1].monotonic_ns if i + 1 < len(events) else event.monotonic_ns
        error = event.attributes.get("error", "") if event.kind is EventKind.ERROR else ""
        ov.visits.append(
            Visit(i + 1, event.node, event.kind, event.label, nxt - event.monotonic_ns, error)
        )
        if error:
            ov.error_node = event.node
        if i == 0 or event.kind is EventKind.ERROR:
            continue
        prev = events[i - 1]
        label = prev.label if prev.kind is EventKind.BRANCH else ""
        for edge in chart.path_between(prev.node, event.node, label) or ():
            ov.edges.setdefault((edge.source, edge.target), []).append(i + 1)
    return ov


def overlay_for(chart: Chart, events: Iterable[TraceEvent]) -> Overlay:
    """The overlay of the last span of ``chart`` among ``events``."""
    mine = [es for es in spans(events).values() if es[0].chart == chart.name]
    return overlay(chart, mine[-1] if mine else [])


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms" if ns < 10_000_000_000 else f"{ns / 1e9:.1f} s"


_SHAPES = {
    NodeKind.START: ("box", "rounded,filled"),
    NodeKind.END: ("box", "rounded,filled"),
    NodeKind.ACTION: ("box", "filled"),
    NodeKind.DECISION: ("diamond", "filled"),
    NodeKind.NOTE: ("note", "filled"),
}


def _node_label(node: Node, ov: Overlay | None) -> str:
    label = textwrap.fill(node.label, 60) if node.kind is NodeKind.NOTE else node.label
    text = label + ("  (+ ours)" if node.ours else "")
    if node.absent:
        text += f"\n(absent: {node.absent})"
    if ov is not None:
        for v in ov.orders(node.id):
            text += "\n" + ("✗ " if v.kind is EventKind.ERROR else "") + f"#{v.order}"
            text += f" {v.label}" if v.label else ""
            timed = v.kind not in (EventKind.END, EventKind.ERROR)
            text += f"  {_ms(v.duration_ns)}" if timed else ""
            if v.error:
                text += f"\n{v.error[:80]}"
    return text


def to_dot(chart: Chart, ov: Overlay | None = None) -> graphviz.Digraph:
    title = chart.title
    if ov is not None and ov.visits:
        title += f"\ntrace {ov.trace_id[:8]}…  {_ms(ov.total_ns)}"
    dot = graphviz.Digraph(
        chart.name,
        graph_attr={"label": title, "labelloc": "t", "fontname": "Helvetica", "rankdir": "TB"},
    )
    dot.attr("node", fontname="Helvetica", fontsize="11")
    dot.attr("edge", fontname="Helvetica", fontsize="10")
    for node in chart.nodes.values():
        shape, style = _SHAPES[node.kind]
        fill = "white" if node.kind is not NodeKind.NOTE else "#fff8d6"
        color, fontcolor, penwidth = "black", "black", "1"
        if node.absent:
            style += ",dashed"
            color = fontcolor = ABSENT
        if node.error:
            color = ERROR_EDGE
        if ov is not None and ov.orders(node.id):
            fill, penwidth = VISITED, "2"
        if ov is not None and node.id == ov.error_node:
            fill, color = ERROR, ERROR_EDGE
        dot.node(
            node.id,
            _node_label(node, ov),
            shape=shape,
            style=style,
            fillcolor=fill,
            color=color,
            fontcolor=fontcolor,
            penwidth=penwidth,
        )
        for target in node.about:
            dot.edge(node.id, target, style="dashed", arrowhead="none", color=ABSENT)
    for edge in chart.edges:
        taken = ov.edges.get((edge.source, edge.target)) if ov is not None else None
        label = edge.label
        attrs = {}
        if edge.target in chart.error_ends:
            attrs = {"color": ERROR_EDGE, "style": "dashed", "fontcolor": ERROR_EDGE}
        if taken:
            label = (label + " " if label else "") + " ".join(f"#{n}" for n in taken)
            attrs = {"color": VISITED_EDGE, "penwidth": "3", "fontcolor": VISITED_EDGE}
        dot.edge(edge.source, edge.target, label=label, **attrs)
    return dot


def render_svg(chart: Chart, events: Iterable[TraceEvent] = ()) -> str:
    ov = overlay_for(chart, events)
    svg: bytes = to_dot(chart, ov if ov.visits else None).pipe(format="svg")
    return svg.decode("utf-8")


def render_png(chart: Chart, events: Iterable[TraceEvent] = ()) -> bytes:
    ov = overlay_for(chart, events)
    png: bytes = to_dot(chart, ov if ov.visits else None).pipe(format="png")
    return png


def render_text(chart: Chart, events: Iterable[TraceEvent] = (), *, color: bool = False) -> str:
    """A terminal rendering: every node of the chart in order, the visited ones
    marked with their step numbers and times, then the path as one line."""
    ov = overlay_for(chart, events)
    bold, red, dim, reset = ("\033[1m", "\033[31m", "\033[2m", "\033[0m") if color else ("",) * 4
    head = f"{chart.title}"
    if ov.visits:
        head += f"   [trace {ov.trace_id[:8]}, {_ms(ov.total_ns)}]"
    lines = [bold + head + reset]
    width = max((len(n.label) for n in chart.flow_nodes()), default=10)
    for node in chart.flow_nodes():
        visits = ov.orders(node.id)
        if node.id == ov.error_node:
            mark = "✗"
        elif visits:
            mark = "●"
        else:
            mark = "○"
        shape = {"decision": "◇ ", "start": "▶ ", "end": "■ "}.get(node.kind.value, "  ")
        steps = ",".join(
            ("✗" if v.kind is EventKind.ERROR else "")
            + f"#{v.order}"
            + (f"[{v.label}]" if v.label else "")
            for v in visits
        )
        time_ = _ms(sum(v.duration_ns for v in visits if v.kind is not EventKind.END))
        tag = " (+ ours)" if node.ours else (f" (absent: {node.absent})" if node.absent else "")
        line = f" {mark} {shape}{node.label:<{width}}  {steps:<14}"
        line += f" {time_:>10}" if visits and node.kind is not NodeKind.END else ""
        line += tag
        if node.id == ov.error_node:
            err = next(v.error for v in visits if v.error)
            line = red + line + f"  error: {err}" + reset
        elif not visits:
            line = dim + line + reset
        lines.append(line.rstrip())
    if ov.visits:
        parts: list[str] = []
        for v in ov.visits:
            if v.kind is EventKind.ERROR:
                parts[-1] += " ✗ error"
                continue
            parts.append(chart.nodes[v.node].label + (f" [{v.label}]" if v.label else ""))
        lines.append("path: " + " → ".join(parts))
    else:
        lines.append("(no trace)")
    return "\n".join(lines)
