"""The renderer: a Status trace drawn as SVG/PNG and as text shows the same path."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.events import EventKind, TraceEvent
from teaching_cri.trace.render import (
    ERROR,
    ERROR_EDGE,
    VISITED,
    render_png,
    render_svg,
    render_text,
)
from teaching_cri.trace.sinks import RingBufferSink
from teaching_cri.trace.tracer import Tracer, decide, step

SVG = "{http://www.w3.org/2000/svg}"


def status_trace(charts: ChartSet, *, network_ready: bool, fail: bool = False) -> list[TraceEvent]:
    """Walk the Status chart with the real tracer (the steps as the servicer names them)."""
    ring = RingBufferSink()
    tracer = Tracer(charts, [ring])
    try:
        with tracer.span("Status"):
            for node in (
                "new_runtime_status",
                "add_runtime_ready_condition",
                "add_network_ready_condition",
                "m_cb_container_version",
                "probe_runtime_backend",
            ):
                with step(node):
                    pass
            decide("runtime_ready", True)
            with step("m_plugin_manager_status"):
                if fail:
                    raise OSError("conf dir unreadable")
            if not decide("network_plugin_ready", network_ready):
                with step("set_network_plugin_not_ready_reason"):
                    pass
            decide("verbose", False)
    except OSError:
        pass
    return ring.snapshot()


def node_fills(svg: str) -> dict[str, str]:
    """node id -> fill colour of its shape, read from graphviz's SVG."""
    fills = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        if g.get("class") == "node":
            title = g.find(f"{SVG}title")
            shape = next(c for c in g if c.tag in (f"{SVG}polygon", f"{SVG}path", f"{SVG}ellipse"))
            assert title is not None and title.text
            fills[title.text] = (shape.get("fill") or "").lower()
    return fills


def test_svg_highlights_exactly_the_visited_path(charts: ChartSet) -> None:
    events = status_trace(charts, network_ready=False)
    fills = node_fills(render_svg(charts["Status"], events))
    visited = {e.node for e in events}
    assert visited and "set_runtime_not_ready_reason" not in visited
    for node in charts["Status"].flow_nodes():
        highlighted = fills[node.id] == VISITED.lower()
        assert highlighted == (node.id in visited), node.id


def test_svg_numbers_the_steps_and_thickens_taken_edges(charts: ChartSet) -> None:
    svg = render_svg(charts["Status"], status_trace(charts, network_ready=True))
    root = ET.fromstring(svg)
    taken = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "edge":
            path = g.find(f"{SVG}path")
            if path is not None and path.get("stroke-width") == "3":
                title = g.find(f"{SVG}title")
                assert title is not None and title.text
                taken.append(title.text.replace("&#45;", "-"))
    assert "runtime_ready->m_plugin_manager_status" in taken
    assert "network_plugin_ready->verbose" in taken
    assert "runtime_ready->set_runtime_not_ready_reason" not in taken
    assert re.search(r">#7 Y\b", svg)  # the branch's step number and label on its node


def test_error_node_is_red_in_svg_and_text(charts: ChartSet) -> None:
    events = status_trace(charts, network_ready=True, fail=True)
    assert events[-1].kind is EventKind.ERROR
    fills = node_fills(render_svg(charts["Status"], events))
    assert fills["m_plugin_manager_status"] == ERROR.lower()
    text = render_text(charts["Status"], events)
    line = next(x for x in text.splitlines() if "m_pluginManager->Status" in x)
    assert line.lstrip().startswith("✗") and "OSError: conf dir unreadable" in line


def test_text_shows_the_same_path_as_the_svg(charts: ChartSet) -> None:
    events = status_trace(charts, network_ready=False)
    text = render_text(charts["Status"], events)
    chart = charts["Status"]
    marked = {
        line.split()[2] if line.split()[1] in "◇▶■" else line.split()[1]
        for line in text.splitlines()[1:-1]
        if line.lstrip().startswith("●")
    }
    # compare by label's first word: every visited node's line is marked, no other
    visited_labels = {chart.nodes[e.node].label.split()[0] for e in events}
    assert marked == visited_labels
    path = text.splitlines()[-1]
    assert path.startswith("path: Status → new RuntimeStatus")
    assert "network plugin ready ? [N] → set NetworkPluginNotReady reason" in path
    assert path.endswith("StatusResponse")
    fills = node_fills(render_svg(chart, events))
    assert {n for n, f in fills.items() if f == VISITED.lower()} == {e.node for e in events}


def test_png_and_an_empty_overlay(charts: ChartSet) -> None:
    png = render_png(charts["Version"], [])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    text = render_text(charts["Version"])
    assert text.splitlines()[-1] == "(no trace)"
    assert all(line.lstrip()[0] == "○" for line in text.splitlines()[1:-1])


def test_error_ends_and_the_edges_into_them_are_drawn_red(charts: ChartSet) -> None:
    chart = charts["CreateContainer"]
    root = ET.fromstring(render_svg(chart))
    outlines, dashed = {}, set()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        shape = next((c for c in g if c.tag in (f"{SVG}polygon", f"{SVG}path")), None)
        if title is None or not title.text or shape is None:
            continue
        if g.get("class") == "node":
            outlines[title.text] = (shape.get("stroke") or "").lower()
        elif g.get("class") == "edge" and shape.get("stroke-dasharray"):
            dashed.add(title.text.replace("&#45;", "-"))
    assert outlines["return_error"] == ERROR_EDGE.lower()
    assert outlines["return_response_id"] != ERROR_EDGE.lower()
    assert "get_pod_id->return_error" in dashed
    assert "mailbox_publish->return_response_id" not in dashed
