"""Build the book: stage the sources, generate what is generated, run Jupyter Book.

    python book/build.py [--out DIR] [--no-execute] [--traces DIR ...]

Steps, in order:

1. Copy the hand-written pages (``book/*.md``, ``_config.yml``, ``_toc.yml``)
   into ``DIR/source`` (``DIR`` is ``book/_build`` by default), so that nothing the
   build makes lands beside them in the repository.
2. One page per chart of ``diagrams/*.toml`` (``generated/charts/NAME.md``):
   the chart drawn by :func:`teaching_cri.trace.render.to_dot` with each golden
   path of ``tests/golden/NAME/`` laid over it, the node table, the notes, and
   the fidelity figures when trace files are given (``--traces``, or
   ``$TEACHING_CRI_TRACE_DIR``, where the test suite leaves its servers'
   traces).
3. The frame diagrams of the streaming chapter (:mod:`frames`).
4. Every notebook of ``notebooks/`` executed with nbclient, top to bottom, in
   this interpreter's kernel: each starts its own teaching-cri server in its
   first cell (runc as root) and stops it when its kernel ends. The executed
   copies go to ``generated/notebooks/``; a cell that fails stops the build,
   naming the notebook and the cell. Without notebooks a page says so.
5. ``jupyter-book build -W -n --keep-going``: any warning (a missing file, a
   broken cross-reference, an image that is not there) fails the build. The
   HTML is in ``DIR/html``: ``book/_build/html`` by default.

No step reaches the network: the theme and its assets come from the installed
packages, and the configuration turns off everything that would load a script
from elsewhere (see ``_config.yml``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BOOK = Path(__file__).resolve().parent
REPO = BOOK.parent
sys.path.insert(0, str(BOOK))

from frames import write_frame_diagrams  # noqa: E402  (beside this file)

from teaching_cri.trace.charts import Chart, ChartSet, Node  # noqa: E402
from teaching_cri.trace.events import EventKind  # noqa: E402
from teaching_cri.trace.fidelity import (  # noqa: E402
    ENV_TRACE_DIR,
    ChartFidelity,
    Report,
    report_from_files,
    trace_files,
)
from teaching_cri.trace.render import Overlay, Visit, to_dot  # noqa: E402

GOLDEN = REPO / "tests" / "golden"
NOTEBOOKS = REPO / "notebooks"
HAND_WRITTEN = ("*.md", "_config.yml", "_toc.yml")
NOT_PAGES = {"README.md"}
# A notebook's mime types the static page cannot show: a widget's view needs
# its JavaScript (from a CDN, which the book does not load). Every widget of
# teaching_cri.notebook also leaves an SVG or HTML rendering, which is shown.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "widgets"


# --- golden paths ---------------------------------------------------------------------

_EVENT = re.compile(r"^(begin|step|branch|end|error) (\S+)(?: \[(.*?)\])?(?: \((.*)\))?$")


@dataclass
class GoldenEvent:
    kind: EventKind
    node: str
    label: str = ""
    code: str = ""


@dataclass
class GoldenSpan:
    """One span of a golden file: its chart and its events, in order."""

    chart: str
    events: list[GoldenEvent] = field(default_factory=list)


def parse_golden(text: str) -> list[GoldenSpan]:
    """The spans of a golden file (``tests/test_golden_paths.py`` writes them:
    a chart's name, then its events indented by two, children by four more)."""
    spans: list[GoldenSpan] = []
    open_at: dict[int, GoldenSpan] = {}  # indent of a span's events -> the span
    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        match = _EVENT.match(line)
        if match and indent in open_at:
            kind, node, label, code = match.groups()
            open_at[indent].events.append(
                GoldenEvent(EventKind(kind), node, label or "", code or "")
            )
        else:
            span = GoldenSpan(line)
            spans.append(span)
            open_at = {k: v for k, v in open_at.items() if k <= indent}
            open_at[indent + 2] = span
    return spans


@dataclass
class Scenario:
    """A golden path to draw on a chart's page."""

    name: str  # the file's stem
    file: Path
    span: GoldenSpan
    spans_of_chart: int  # how many spans of the drawn chart the file holds
    drawn: Chart  # the chart the path is drawn on: the page's, or the one the scenario walks


def scenarios_for(chart: Chart, golden: Path, charts: ChartSet) -> list[Scenario]:
    """The chart's own golden files (the runc tier's: ``*.txt`` without a tier
    suffix); a file there with no span of this chart (a request refused before
    the chart's work begins) is drawn on the chart of its first span. For a
    chart with no files of its own, the first golden file of another chart
    that holds a span of it (a runtime chart is a child span of an RPC's)."""

    def found(path: Path, fallback: bool) -> Scenario | None:
        spans = parse_golden(path.read_text())
        mine = [s for s in spans if s.chart == chart.name]
        if mine:
            return Scenario(path.stem, path, mine[0], len(mine), chart)
        if fallback and spans and spans[0].chart in charts:
            first = spans[0]
            same = sum(1 for s in spans if s.chart == first.chart)
            return Scenario(path.stem, path, first, same, charts[first.chart])
        return None

    own = sorted(p for p in (golden / chart.name).glob("*.txt") if p.stem.count(".") == 0)
    result = [s for s in (found(p, True) for p in own) if s is not None]
    if result or not golden.is_dir():
        return result
    for path in sorted(golden.glob("*/*.txt")):
        if path.stem.count(".") == 0 and (s := found(path, False)) is not None:
            return [s]
    return []


def overlay_of(chart: Chart, span: GoldenSpan) -> Overlay:
    """A golden span as a render overlay: visits numbered in order, the edges
    taken found as :func:`teaching_cri.trace.render.overlay` finds them. A
    golden file has no times, so every visit has none."""
    ov = Overlay(chart)
    for i, event in enumerate(span.events):
        ov.visits.append(Visit(i + 1, event.node, event.kind, event.label, 0, event.code))
        if event.kind is EventKind.ERROR:
            ov.error_node = event.node
            continue
        if i == 0:
            continue
        prev = span.events[i - 1]
        label = prev.label if prev.kind is EventKind.BRANCH else ""
        for edge in chart.path_between(prev.node, event.node, label) or ():
            ov.edges.setdefault((edge.source, edge.target), []).append(i + 1)
    return ov


def path_svg(scenario: Scenario) -> str:
    """The chart with the scenario's path drawn over it. The renderer's labels
    carry each visit's time; a golden path has none, so the visited nodes'
    labels are restated without (a later DOT statement for a node wins)."""
    chart = scenario.drawn
    ov = overlay_of(chart, scenario.span)
    dot = to_dot(chart, ov)
    dot.attr(label=f"{chart.title}\ngolden path: {scenario.name}")
    for node in chart.flow_nodes():
        visits = ov.orders(node.id)
        if not visits:
            continue
        label = node.label + ("  (+ ours)" if node.ours else "")
        for v in visits:
            mark = "✗ " if v.kind is EventKind.ERROR else ""
            label += f"\n{mark}#{v.order}" + (f" {v.label}" if v.label else "")
            label += f" ({v.error})" if v.error else ""
        dot.node(node.id, label)
    svg: bytes = dot.pipe(format="svg")
    return svg.decode("utf-8")


def plain_svg(chart: Chart) -> str:
    svg: bytes = to_dot(chart).pipe(format="svg")
    return svg.decode("utf-8")


# --- a chart's page --------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def path_words(chart: Chart, span: GoldenSpan) -> str:
    """The path as words, for alt text: labels and the branches taken."""
    parts = []
    for e in span.events:
        node = chart.nodes.get(e.node)
        name = node.label if node else e.node
        if e.kind is EventKind.BRANCH and e.label:
            name += f" [{e.label}]"
        if e.kind is EventKind.ERROR:
            name = f"error at {name}" + (f" ({e.code})" if e.code else "")
        parts.append(name)
    return " → ".join(parts)


def node_status(node: Node) -> str:
    if node.ours:
        return "ours (teaching-cri adds it)"
    if node.absent:
        return f"iSulad's, absent here: {node.absent}"
    return "iSulad's, present"


def fidelity_section(fid: ChartFidelity, report: Report | None) -> list[str]:
    counts = (
        f"{len(fid.original)} original nodes (iSulad's): {len(fid.present)} present, "
        f"{len(fid.absent)} absent with a reason; {len(fid.ours)} of ours."
    )
    if report is None:
        return [
            "## Fidelity",
            "",
            f"The chart has {counts} This build was given no trace files, so there are no "
            "visit counts: the test suite leaves its servers' traces in "
            "`$TEACHING_CRI_TRACE_DIR`, and a build with that variable set (or "
            "`--traces DIR`) shows here which nodes those traces reached.",
            "",
        ]
    lines = [
        "## Fidelity",
        "",
        f"The chart has {counts} In {report.files} trace file(s) there are {fid.spans} "
        f"span(s) of it, {fid.nonconforming} of them not following the chart (their visits "
        "do not count):",
        "",
        "| | count |",
        "|---|---|",
        f"| present original nodes visited | {len(fid.visited(fid.present))} "
        f"of {len(fid.present)} |",
        f"| absent original nodes (with a reason) | {len(fid.absent)} |",
        f"| our nodes visited | {len(fid.visited(fid.ours))} of {len(fid.ours)} |",
        f"| **honest: visited or absent with a reason** | **{fid.honest} of "
        f"{len(fid.original)}** |",
        "",
    ]
    never = fid.never_visited()
    if never:
        lines += ["Never visited in these traces:", ""]
        lines += [f"- {_code(n.id)}: {fid.why_unvisited(n)}" for n in never]
        lines.append("")
    return lines


def chart_page(
    chart: Chart,
    scenarios: Sequence[Scenario],
    out: Path,
    fid: ChartFidelity,
    report: Report | None,
) -> None:
    """Write ``out/NAME.md`` and its SVGs."""
    name = chart.name
    lines = [
        f"({name.lower()}-chart)=",
        f"# {name}",
        "",
        f"**{chart.title}**",
        "",
        chart.summary.strip(),
        "",
        f"Follows: {chart.source}. Source of truth: `diagrams/{name}.toml`; draw it yourself "
        f"with `teaching-cri charts {name} --format svg`.",
        "",
    ]
    flow = list(chart.flow_nodes())
    if scenarios:
        for sc in scenarios:
            svg = f"{name}.{sc.name}.svg"
            (out / svg).write_text(path_svg(sc))
            rel = sc.file.relative_to(REPO)
            drawn = sc.drawn.name
            if drawn != name:
                intro = (
                    f"The test suite's scenario `{sc.name}` (`{rel}`) is refused before this "
                    f"chart's work begins: its path runs through {drawn}'s chart only, drawn "
                    f"here ([{drawn}'s page]({drawn}.md) has the chart's own scenarios)."
                )
            else:
                where = (
                    f", a child span of a {sc.file.parent.name} call"
                    if sc.file.parent.name != name
                    else ""
                )
                intro = f"The path the test suite's scenario `{sc.name}` takes (`{rel}`{where})."
            lines += [
                f"## Golden path: {sc.name}",
                "",
                intro + " `tests/test_golden_paths.py` checks it against a live server. Visited "
                "nodes are blue and numbered in order, the edges taken thick; an error node is red."
                + (
                    f" The scenario runs {sc.spans_of_chart} spans of this chart; "
                    "the first is drawn."
                    if sc.spans_of_chart > 1
                    else ""
                ),
                "",
                f"```{{figure}} {svg}",
                f":alt: Flow chart {drawn} ({len(list(sc.drawn.flow_nodes()))} nodes) with the "
                f"golden path '{sc.name}' highlighted: {_cell(path_words(sc.drawn, sc.span))}",
                f":name: {name.lower()}-{sc.name.replace('_', '-')}",
                "",
                f"{drawn}, golden path `{sc.name}`.",
                "```",
                "",
            ]
    else:
        svg = f"{name}.svg"
        (out / svg).write_text(plain_svg(chart))
        lines += [
            "## The chart",
            "",
            "No golden path of the test suite walks this chart yet; it is drawn bare.",
            "",
            f"```{{figure}} {svg}",
            f":alt: Flow chart {name} ({len(flow)} nodes), no path highlighted.",
            "",
            f"{name}.",
            "```",
            "",
        ]
    lines += [
        "## Nodes",
        "",
        "Every node of the chart, in the file's order. *iSulad's* nodes are the "
        "original chart's; an absent one has no counterpart in our code, and says why. "
        "*Ours* are steps teaching-cri adds.",
        "",
        "| node | id | kind | whose |",
        "|---|---|---|---|",
    ]
    for node in flow:
        lines.append(
            f"| {_cell(node.label)} | {_code(node.id)} | {node.kind.value}"
            + (" (error end)" if node.error else "")
            + f" | {_cell(node_status(node))} |"
        )
    lines.append("")
    notes = list(chart.notes())
    if notes:
        lines += ["## Notes: where and why we differ", ""]
        for note in notes:
            about = ", ".join(_code(a) for a in note.about)
            lines.append(f"- {_cell(note.label)}" + (f" (about {about})" if about else ""))
        lines.append("")
    lines += fidelity_section(fid, report)
    (out / f"{name}.md").write_text("\n".join(lines).rstrip() + "\n")


def charts_table(charts: ChartSet, report: Report | None) -> str:
    rows = ["| chart | title | original nodes | absent | ours |", "|---|---|---|---|---|"]
    for chart in charts.values():
        original = [n for n in chart.flow_nodes() if not n.ours]
        rows.append(
            f"| [{chart.name}](generated/charts/{chart.name}.md) | {_cell(chart.title)} | "
            f"{len(original)} | {sum(1 for n in original if n.absent)} | "
            f"{sum(1 for n in chart.flow_nodes() if n.ours)} |"
        )
    text = "\n".join(rows) + "\n"
    if report is not None:
        text += (
            f"\nFidelity over {report.files} trace file(s): over the seed's charts "
            f"{report.figure(True)[0]} of {report.figure(True)[1]} original nodes were visited "
            f"by a span that follows its chart or are absent with a reason "
            f"({report.percent(True):.1f} %); over every chart {report.percent(False):.1f} %.\n"
        )
    else:
        text += (
            "\nThis build was given no trace files, so the chart pages show no visit counts "
            "(see each page's *Fidelity* section).\n"
        )
    return text


def generate_charts(source: Path, traces: Sequence[Path]) -> int:
    charts = ChartSet.load()
    files = trace_files(traces)
    report = report_from_files(files, charts) if files else None
    per_chart = {
        f.chart.name: f for f in (report.charts if report else report_from_files([], charts).charts)
    }
    out = source / "generated" / "charts"
    out.mkdir(parents=True, exist_ok=True)
    for chart in charts.values():
        chart_page(chart, scenarios_for(chart, GOLDEN, charts), out, per_chart[chart.name], report)
    (source / "generated" / "charts-table.md").write_text(charts_table(charts, report))
    return len(charts)


# --- notebooks ---------------------------------------------------------------------------


def execute_notebooks(notebooks: Iterable[Path], out: Path, timeout: int) -> list[str]:
    """Run each notebook top to bottom and write the executed copy to ``out``.
    Returns the failures (notebook and cell), empty when all ran."""
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    out.mkdir(parents=True, exist_ok=True)
    failures = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        started = time.monotonic()
        with _scratch_dir(out.parent / "run" / path.stem) as cwd:
            client = nbclient.NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
            )
            client.km = client.create_kernel_manager()
            # This interpreter's kernel, the one with teaching_cri installed.
            client.km.kernel_spec.argv[0] = sys.executable
            try:
                client.execute()
            except CellExecutionError as exc:
                failures.append(f"{path.name}: {str(exc).strip().splitlines()[-1]}")
                print(f"book: {path.name} FAILED:\n{exc}", file=sys.stderr)
                continue
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if WIDGET_VIEW in data and len(data) > 1:
                    del data[WIDGET_VIEW]
        nb.metadata.pop(WIDGET_STATE, None)
        nbformat.write(nb, out / path.name)
        print(f"book: executed {path.name} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return failures


class _scratch_dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def stage_notebooks(source: Path, execute: bool, timeout: int) -> list[str]:
    out = source / "generated" / "notebooks"
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not found:
        out.mkdir(parents=True, exist_ok=True)
        (out / "none.md").write_text(
            "# No notebooks yet\n\nThis checkout has no `notebooks/*.ipynb`; "
            "the book lists them here once they exist.\n"
        )
        return []
    if execute:
        return execute_notebooks(found, out, timeout)
    out.mkdir(parents=True, exist_ok=True)
    for path in found:
        shutil.copy2(path, out / path.name)
    return []


# --- the whole build ----------------------------------------------------------------------


def stage(source: Path) -> None:
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for pattern in HAND_WRITTEN:
        for path in BOOK.glob(pattern):
            if path.name not in NOT_PAGES:
                shutil.copy2(path, source / path.name)
    if (BOOK / "_static").is_dir():
        shutil.copytree(BOOK / "_static", source / "_static")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BOOK / "_build", help="build directory")
    parser.add_argument(
        "--no-execute",
        action="store_true",
        help="include the notebooks as committed (no outputs) instead of executing them",
    )
    parser.add_argument(
        "--traces",
        type=Path,
        action="append",
        default=[],
        help="JSONL trace files or directories for the fidelity figures "
        f"(default: ${ENV_TRACE_DIR})",
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds per notebook cell")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    source = out / "source"
    traces: list[Path] = args.traces
    if not traces and os.environ.get(ENV_TRACE_DIR):
        traces = [Path(os.environ[ENV_TRACE_DIR])]
    traces = [t for t in traces if t.exists()]

    started = time.monotonic()
    stage(source)
    count = generate_charts(source, traces)
    print(
        f"book: {count} chart pages" + (f" (traces: {traces})" if traces else ""), file=sys.stderr
    )
    write_frame_diagrams(source / "generated" / "frames")
    failures = stage_notebooks(source, execute=not args.no_execute, timeout=args.timeout)
    if failures:
        print("book: notebooks failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    html = out / "html"
    jb_out = out / "jb"  # Jupyter Book writes jb/_build/html (and its doctrees beside it)
    for old in (html, jb_out / "_build" / "html"):
        if old.exists():
            shutil.rmtree(old)  # a page left from an earlier build must not hide a missing one
    command = [
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(source),
        "--path-output",
        str(jb_out),
        "--builder",
        "html",
        "--warningiserror",
        "--nitpick",
        "--keep-going",
        "--all",
    ]
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    rc = subprocess.call(command, env=env)
    if rc != 0:
        print(f"book: jupyter-book failed (exit {rc}): see the warnings above", file=sys.stderr)
        return rc
    shutil.move(jb_out / "_build" / "html", html)
    print(f"book: {html} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
