"""How faithful are the charts to the code? A report from the traces of a run.

A chart promises two things: every node drawn is either work the code does
right there or marked *absent* with the reason, and a trace lighting a node up
means that work ran. The traces of a test run (the JSONL files a server writes
with ``--trace-file``) show which nodes the scenarios really reached. This
module counts, per chart:

- the *original* nodes (every flow node not marked ``ours``: the nodes of the
  iSulad chart the file follows), split into present and absent-with-a-reason;
- the nodes we added (``ours``);
- which were visited by a span that follows its chart, and which never were,
  with why (no span of the chart at all, spans that never passed there, or only
  spans that broke the chart's rules, whose visits do not count);

and the *honest-visit* figure: the share of original nodes that were visited
by a conforming span or are absent with a reason. The headline figure is over
the seed's charts (the ones redrawn from iSulad's container design document,
``cri_container_manager_design.md``), which is what the project promises to
reproduce; the figure over every chart is printed beside it.

``teaching-cri fidelity`` prints the report and, with ``--format svg``, draws
each chart as a heat map of its visits.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .charts import Chart, Node
from .conformance import check_span, spans
from .events import EventKind, TraceEvent
from .sinks import read_jsonl

ENV_TRACE_DIR = "TEACHING_CRI_TRACE_DIR"
# The seed's charts name the design document they were redrawn from.
SEED_DOCUMENT = "cri_container_manager_design.md"


def is_seed_chart(chart: Chart) -> bool:
    """A chart redrawn from the seed (iSulad's container design document)."""
    return SEED_DOCUMENT in chart.source and not chart.source.startswith("ours")


def trace_files(paths: Iterable[Path]) -> list[Path]:
    """The JSONL files named, a directory standing for every ``*.jsonl`` under it
    (a file's rotated backups are read with it, see :func:`read_jsonl`)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.rglob("*.jsonl"))
        else:
            found.append(path)
    return found


@dataclass
class SpanCheck:
    """One span of a trace and what it broke of its chart (nothing, if it conforms)."""

    chart: str
    events: list[TraceEvent]
    problems: list[str]
    source: str = ""  # the file it came from

    @property
    def conforms(self) -> bool:
        return not self.problems


def check_events(
    events: Sequence[TraceEvent], charts: Mapping[str, Chart], source: str = ""
) -> list[SpanCheck]:
    """Every span of ``events`` checked against its chart."""
    checked: list[SpanCheck] = []
    for span_events in spans(events).values():
        name = span_events[0].chart
        if name not in charts:
            checked.append(SpanCheck(name, span_events, [f"no chart named {name!r}"], source))
            continue
        checked.append(SpanCheck(name, span_events, check_span(span_events, charts[name]), source))
    return checked


def check_files(files: Iterable[Path], charts: Mapping[str, Chart]) -> list[SpanCheck]:
    """Every span of every file, each file's spans checked on their own (the
    sequence numbers of two server processes say nothing about each other)."""
    checked: list[SpanCheck] = []
    for path in files:
        checked += check_events(read_jsonl(path).events, charts, str(path))
    return checked


@dataclass
class ChartFidelity:
    chart: Chart
    spans: int = 0
    nonconforming: int = 0
    visits: Counter[str] = field(default_factory=Counter)  # by conforming spans
    dishonest_visits: Counter[str] = field(default_factory=Counter)  # by the others

    @property
    def seed(self) -> bool:
        return is_seed_chart(self.chart)

    @property
    def original(self) -> list[Node]:
        return [n for n in self.chart.flow_nodes() if not n.ours]

    @property
    def absent(self) -> list[Node]:
        return [n for n in self.original if n.absent]

    @property
    def present(self) -> list[Node]:
        return [n for n in self.original if not n.absent]

    @property
    def ours(self) -> list[Node]:
        return [n for n in self.chart.flow_nodes() if n.ours]

    def visited(self, nodes: Iterable[Node]) -> list[Node]:
        return [n for n in nodes if self.visits[n.id]]

    def never_visited(self) -> list[Node]:
        """Present nodes (original or ours) no conforming span reached."""
        return [n for n in self.chart.flow_nodes() if not n.absent and not self.visits[n.id]]

    def why_unvisited(self, node: Node) -> str:
        if not self.spans:
            return "no trace reached this chart"
        if self.dishonest_visits[node.id]:
            return (
                f"reached only by spans that break the chart ({self.nonconforming} such spans); "
                "their visits do not count"
            )
        return f"no trace took this path ({self.spans} spans of this chart)"

    @property
    def honest(self) -> int:
        """Original nodes visited by a conforming span or absent with a reason."""
        return len(self.visited(self.present)) + len(self.absent)


@dataclass
class Report:
    charts: list[ChartFidelity]
    files: int
    nonconforming: list[SpanCheck]

    def figure(self, seed_only: bool = True) -> tuple[int, int]:
        """(honest, original) over the seed's charts, or over every chart."""
        chosen = [c for c in self.charts if c.seed or not seed_only]
        return sum(c.honest for c in chosen), sum(len(c.original) for c in chosen)

    def percent(self, seed_only: bool = True) -> float:
        honest, original = self.figure(seed_only)
        return 100.0 * honest / original if original else 100.0


def visited_nodes(events: Sequence[TraceEvent], chart: Chart) -> set[str]:
    """The nodes a span reached: every event's node, and for an error the error
    end it left by (an error event names where it arose, and the chart's error
    edge from there is the way out it took)."""
    nodes = {e.node for e in events if e.node in chart.nodes}
    for prev, event in itertools.pairwise(events):
        if event.kind is EventKind.ERROR and event.node in chart.nodes:
            at_branch = prev.kind is EventKind.BRANCH and prev.node == event.node
            nodes.update(chart.error_exits(event.node, prev.label if at_branch else ""))
    return nodes


def build_report(
    checked: Sequence[SpanCheck], charts: Mapping[str, Chart], files: int = 0
) -> Report:
    per_chart = {name: ChartFidelity(chart) for name, chart in sorted(charts.items())}
    for span in checked:
        fid = per_chart.get(span.chart)
        if fid is None:
            continue
        fid.spans += 1
        if not span.conforms:
            fid.nonconforming += 1
        counter = fid.visits if span.conforms else fid.dishonest_visits
        counter.update(visited_nodes(span.events, fid.chart))
    return Report(list(per_chart.values()), files, [s for s in checked if not s.conforms])


def report_from_files(files: Sequence[Path], charts: Mapping[str, Chart]) -> Report:
    return build_report(check_files(files, charts), charts, len(files))


def _names(nodes: Iterable[Node]) -> str:
    return ", ".join(n.id for n in nodes)


def format_text(report: Report) -> str:
    """The report as text: one block per chart, the figures at the end."""
    total_spans = sum(c.spans for c in report.charts)
    lines = [f"Chart fidelity from {total_spans} spans in {report.files} trace file(s)", ""]
    for fid in report.charts:
        chart = fid.chart
        tag = "seed chart" if fid.seed else "chart"
        lines.append(f"{chart.name} ({tag}): {fid.spans} spans, {fid.nonconforming} off-chart")
        lines.append(
            f"  original {len(fid.original)}: present {len(fid.present)}, "
            f"absent {len(fid.absent)}; ours {len(fid.ours)}"
        )
        lines.append(
            f"  visited: {len(fid.visited(fid.present))}/{len(fid.present)} present original, "
            f"{len(fid.visited(fid.ours))}/{len(fid.ours)} ours; honest "
            f"{fid.honest}/{len(fid.original)}"
        )
        for node in fid.absent:
            lines.append(f"  absent  {node.id}: {node.absent}")
        for node in fid.never_visited():
            mark = "ours" if node.ours else "never"
            lines.append(f"  {mark:<7} {node.id}: never visited, {fid.why_unvisited(node)}")
    if report.nonconforming:
        lines += ["", f"{len(report.nonconforming)} span(s) do not follow their chart:"]
        for span in report.nonconforming[:20]:
            lines.append(f"  {span.chart} ({span.source}): {span.problems[0]}")
        if len(report.nonconforming) > 20:
            lines.append(f"  ... and {len(report.nonconforming) - 20} more")
    seed_honest, seed_original = report.figure(seed_only=True)
    all_honest, all_original = report.figure(seed_only=False)
    lines += [
        "",
        f"seed charts: {seed_honest}/{seed_original} original nodes honestly visited or "
        f"absent with a reason: {report.percent(True):.1f} %",
        f"all charts:  {all_honest}/{all_original} original nodes: {report.percent(False):.1f} %",
    ]
    return "\n".join(lines)


# Light to dark: how often a node was visited, on a log scale.
HEAT = ("#fff5d6", "#ffe08a", "#ffc04d", "#ff9a2e", "#f26b1d", "#d9480f")
NEVER = "#ffffff"
NEVER_BORDER = "#c81e1e"


def heat_color(visits: int, most: int) -> str:
    if visits <= 0:
        return NEVER
    if most <= 1:
        return HEAT[-1]
    level = math.log(visits) / math.log(most)
    return HEAT[min(len(HEAT) - 1, int(level * (len(HEAT) - 1) + 0.5))]


def heat_svg(fid: ChartFidelity) -> str:
    """The chart drawn by :func:`render.to_dot`, every present node filled by
    how often conforming spans visited it; never-visited ones get a red border."""
    from .render import to_dot

    dot = to_dot(fid.chart)
    most = max(fid.visits.values(), default=0)
    dot.attr(label=f"{fid.chart.title}\nvisits by {fid.spans} spans (darker: more)")
    for node in fid.chart.flow_nodes():
        if node.absent:
            continue
        count = fid.visits[node.id]
        # A later statement for the same node overrides these attributes in DOT.
        label = node.label + ("  (+ ours)" if node.ours else "") + f"\n{count} visits"
        if count:
            dot.node(node.id, label, fillcolor=heat_color(count, most))
        else:
            dot.node(node.id, label, fillcolor=NEVER, color=NEVER_BORDER, penwidth="2")
    svg: bytes = dot.pipe(format="svg")
    return svg.decode("utf-8")


def default_trace_paths() -> list[Path]:
    """The trace directory a test run left (``$TEACHING_CRI_TRACE_DIR``), if set."""
    env = os.environ.get(ENV_TRACE_DIR)
    return [Path(env)] if env else []
