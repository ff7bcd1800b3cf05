"""Does a trace follow its chart? The check every test can use.

Rules, per span (one walk through one chart):

1. the first event is BEGIN at the chart's start node;
2. every later event's node exists in the chart and is reached from the
   previous node along one edge of the chart (an edge into a node marked
   *absent* continues through it, since our code has no step for it);
3. after a BRANCH, the next node is reached along the edge with the branch's label;
4. ERROR happens at a node the span has reached (normally the current one)
   and leaves by an edge the chart draws: one from that node into an error
   end (``error = true``), and after a decision at that node, the edge of
   the branch taken;
5. END, and only END, at an end node, never at an error end; nothing
   follows END or ERROR.

Pytest use::

    from teaching_cri.trace.conformance import assert_conforms
    assert_conforms(events, charts)          # every span against its chart

Trace-based regression tests compare the *path* (:func:`path_lines`) with a
golden file and fail with a unified diff (:func:`assert_golden_path`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .charts import Chart
from .events import EventKind, TraceEvent

ENV_UPDATE_GOLDEN = "TEACHING_CRI_UPDATE_GOLDEN"


def spans(events: Iterable[TraceEvent]) -> dict[str, list[TraceEvent]]:
    """Events grouped by span, each in emission order; spans in order of their first event."""
    grouped: dict[str, list[TraceEvent]] = {}
    for event in sorted(events, key=lambda e: e.sequence):
        grouped.setdefault(event.span_id, []).append(event)
    return grouped


def _describe(e: TraceEvent) -> str:
    return f"{e.kind.value} {e.node!r}" + (f" [{e.label}]" if e.label else "")


def check_span(events: Sequence[TraceEvent], chart: Chart) -> list[str]:
    """The rules this span breaks, as sentences; empty when it conforms."""
    problems: list[str] = []
    if not events:
        return [f"{chart.name}: empty span"]
    first = events[0]
    if first.kind is not EventKind.BEGIN or first.node != chart.start:
        problems.append(
            f"{chart.name}: the span must open with begin {chart.start!r}, not {_describe(first)}"
        )
        return problems
    walked = [first.node]
    visited = {first.node}
    prev = first
    for i, event in enumerate(events[1:], start=2):
        where = f"{chart.name}: event {i} ({_describe(event)}) after {' -> '.join(walked)}"
        if prev.kind in (EventKind.END, EventKind.ERROR):
            problems.append(f"{where}: nothing may follow {prev.kind.value}")
            break
        if event.chart != chart.name:
            problems.append(f"{where}: event of chart {event.chart!r} inside this span")
            break
        if event.node not in chart.nodes or not chart.nodes[event.node].flows:
            problems.append(f"{where}: the chart has no node {event.node!r}")
            break
        node = chart.nodes[event.node]
        if node.absent:
            problems.append(f"{where}: node {event.node!r} is marked absent ({node.absent})")
            break
        if event.kind is EventKind.ERROR:
            problems += _error_exit(chart, prev, event, visited, where)
            prev = event
            continue
        if event.kind is EventKind.BEGIN:
            problems.append(f"{where}: begin only opens a span")
            break
        label = prev.label if prev.kind is EventKind.BRANCH else ""
        if chart.path_between(prev.node, event.node, label) is None:
            options = [
                f"{t}" + (f" [{lab}]" if lab else "")
                for lab, t in chart.effective.get(prev.node, ())
                if not label or lab == label
            ]
            problems.append(
                f"{where}: no edge {prev.node!r}"
                + (f" -[{label}]->" if label else " ->")
                + f" {event.node!r}; the chart allows: {', '.join(options) or 'nothing'}"
            )
            break
        if event.kind is EventKind.BRANCH:
            if node.kind.value != "decision":
                problems.append(f"{where}: {event.node!r} is not a decision")
                break
            labels = [e.label for e in chart.outgoing(event.node)]
            if event.label not in labels:
                problems.append(f"{where}: decision {event.node!r} has no edge {event.label!r}")
                break
        if event.kind is EventKind.END and event.node not in chart.ends:
            problems.append(f"{where}: {event.node!r} is not an end node")
            break
        if event.kind is EventKind.END and event.node in chart.error_ends:
            problems.append(f"{where}: {event.node!r} is an error end; it is reached by an error")
            break
        if event.kind is EventKind.STEP and node.kind.value == "decision":
            problems.append(f"{where}: a decision is recorded with branch(), not step()")
            break
        if event.kind is not EventKind.END and event.node in chart.ends:
            problems.append(f"{where}: an end node is reached with end, not {event.kind.value}")
            break
        walked.append(event.node + (f"[{event.label}]" if event.label else ""))
        visited.add(event.node)
        prev = event
    return problems


def _error_exit(
    chart: Chart, prev: TraceEvent, event: TraceEvent, visited: set[str], where: str
) -> list[str]:
    """Rule 4: an error leaves by an error edge of the node it happens at."""
    if event.node not in visited:
        return [
            f"{where}: an error happens at a node already reached, "
            f"such as the current one {prev.node!r}"
        ]
    # Right after a decision, at that decision: the branch taken must lead to an
    # error end. At a step (the current one, or an outer one still running when
    # an inner one had finished): any of its edges may.
    label = prev.label if prev.kind is EventKind.BRANCH and prev.node == event.node else ""
    if chart.error_exits(event.node, label):
        return []
    drawn = f"its branch [{label}]" if label else "it"
    return [
        f"{where}: the chart draws no error exit from {event.node!r}: "
        f"no edge from {drawn} leads to an error end"
        + (f" ({', '.join(sorted(chart.error_ends))})" if chart.error_ends else "")
    ]


def check_trace(events: Iterable[TraceEvent], charts: Mapping[str, Chart]) -> list[str]:
    problems: list[str] = []
    for span_events in spans(events).values():
        name = span_events[0].chart
        if name not in charts:
            problems.append(f"span of unknown chart {name!r}")
            continue
        problems += check_span(span_events, charts[name])
    return problems


def assert_conforms(
    events: Iterable[TraceEvent], charts: Mapping[str, Chart], *, complete: bool = True
) -> None:
    """Fail with a readable message unless every span follows its chart
    (and, with ``complete``, every span has ended or failed)."""
    events = list(events)
    if not events:
        raise AssertionError("no trace events to check")
    problems = check_trace(events, charts)
    if complete:
        for span_id, span_events in spans(events).items():
            if span_events[-1].kind not in (EventKind.END, EventKind.ERROR):
                problems.append(
                    f"{span_events[0].chart}: span {span_id} did not end "
                    f"(last: {_describe(span_events[-1])})"
                )
    if problems:
        raise AssertionError(
            "trace does not follow its chart:\n  - "
            + "\n  - ".join(problems)
            + "\n\npath taken:\n"
            + "\n".join(path_lines(events))
        )


def path_lines(events: Iterable[TraceEvent]) -> list[str]:
    """The path a scenario took, one line per event, indented by span depth:
    stable across runs (no ids, no times), so it can be kept as a golden file."""
    grouped = spans(events)
    depth: dict[str, int] = {}
    lines: list[str] = []
    for span_id, span_events in grouped.items():
        parent = span_events[0].parent_span_id
        depth[span_id] = depth[parent] + 1 if parent in depth else 0
    for event in sorted((e for es in grouped.values() for e in es), key=lambda e: e.sequence):
        pad = "  " * depth[event.span_id]
        label = f" [{event.label}]" if event.label else ""
        lines.append(f"{pad}{event.chart}: {event.kind.value} {event.node}{label}")
    return lines


def assert_golden_path(events: Iterable[TraceEvent], golden: Path) -> None:
    """Compare the path with ``golden``; a difference fails with a unified diff.
    With TEACHING_CRI_UPDATE_GOLDEN=1 (or a missing file) the golden is (re)written."""
    actual = path_lines(events)
    if os.environ.get(ENV_UPDATE_GOLDEN) == "1" or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text("\n".join(actual) + "\n")
        if os.environ.get(ENV_UPDATE_GOLDEN) != "1":
            raise AssertionError(f"golden path {golden} did not exist; recorded it, run again")
        return
    expected = golden.read_text().splitlines()
    if actual != expected:
        diff = difflib.unified_diff(
            expected, actual, fromfile=f"{golden} (golden)", tofile="this run", lineterm=""
        )
        raise AssertionError(
            "the scenario took a different path through the charts:\n"
            + "\n".join(diff)
            + f"\n(if the change is intended: {ENV_UPDATE_GOLDEN}=1 pytest ...)"
        )
