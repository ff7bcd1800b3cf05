"""The fidelity report: which chart nodes the traces honestly visited.

Small charts written here make the counting rules visible (original, absent,
ours, visits by conforming spans only); then the real thing: a live server's
JSONL trace read by ``teaching-cri fidelity``, in text and as SVG heat maps.
"""

from __future__ import annotations

import contextvars
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.cli import main
from teaching_cri.trace.charts import ChartSet, parse_chart
from teaching_cri.trace.events import EventKind, TraceEvent
from teaching_cri.trace.fidelity import (
    build_report,
    check_events,
    format_text,
    heat_color,
    heat_svg,
    is_seed_chart,
)
from teaching_cri.trace.sinks import JsonlFileSink
from teaching_cri.trace.tracer import Tracer, step

from conftest import check_trace_file, start_server

# An original chart of four steps: one absent, one decision, one node of ours.
SEED = parse_chart(
    {
        "name": "Toy",
        "title": "Toy",
        "source": "iSulad's container design: Toy.svg (cri_container_manager_design.md)",
        "edges": [
            "toy -> check",
            "check -> work : Y",
            "check -> refuse : N",
            "work -> gone",
            "gone -> ours_extra",
            "ours_extra -> done",
            "refuse -> done",
        ],
        "nodes": [
            {"label": "Toy", "kind": "start"},
            {"label": "check", "kind": "decision"},
            {"label": "work"},
            {"label": "refuse"},
            {"label": "gone", "absent": "iSulad frees memory by hand; Python does not"},
            {"label": "ours extra", "ours": True},
            {"label": "done", "kind": "end"},
        ],
    }
)
OURS = parse_chart(
    {
        "name": "Mine",
        "source": "ours: nothing like it in iSulad",
        "edges": ["mine -> finish"],
        "nodes": [{"label": "Mine", "kind": "start"}, {"label": "finish", "kind": "end"}],
    }
)
CHARTS = {"Toy": SEED, "Mine": OURS}


def walk(span: str, chart: str, *steps: tuple[EventKind, str, str]) -> list[TraceEvent]:
    return [
        TraceEvent("t" * 32, span, "", i, i, chart, node, kind, label, {}, i)
        for i, (kind, node, label) in enumerate(steps, start=1)
    ]


B, S, BR, E = EventKind.BEGIN, EventKind.STEP, EventKind.BRANCH, EventKind.END
YES_PATH = walk(
    "a" * 16,
    "Toy",
    (B, "toy", ""),
    (BR, "check", "Y"),
    (S, "work", ""),
    (S, "ours_extra", ""),
    (E, "done", ""),
)


def test_the_seed_charts_are_the_ones_from_the_container_design_document() -> None:
    assert is_seed_chart(SEED) and not is_seed_chart(OURS)
    real = ChartSet.load()
    seed = sorted(name for name, chart in real.items() if is_seed_chart(chart))
    # The seed's thirteen charts (docs/design/CRI/*_Flow_Chart.excalidraw.svg).
    assert seed == sorted(
        [
            "Attach",
            "ContainerStatus",
            "CreateContainer",
            "Exec",
            "ExecSync",
            "ListContainers",
            "RemoveContainer",
            "StartContainer",
            "StopContainer",
            "UpdateContainerResources",
            "Websocket",
            "WebsocketServer",
            "WebsocketStream",
        ]
    )


def test_original_absent_ours_and_honest_visits_are_counted_apart() -> None:
    report = build_report(check_events(YES_PATH, CHARTS), CHARTS, files=1)
    toy = next(c for c in report.charts if c.chart.name == "Toy")
    assert [n.id for n in toy.original] == ["toy", "check", "work", "refuse", "gone", "done"]
    assert [n.id for n in toy.absent] == ["gone"]
    assert [n.id for n in toy.ours] == ["ours_extra"]
    assert [n.id for n in toy.never_visited()] == ["refuse"]
    # toy, check, work, done visited + gone absent: 5 of the 6 original nodes.
    assert toy.honest == 5
    assert report.figure(seed_only=True) == (5, 6)
    # Mine has two original nodes and no trace: 5 of 8 over every chart.
    assert report.figure(seed_only=False) == (5, 8)
    assert report.percent() == pytest.approx(100 * 5 / 6)
    assert "no trace took this path (1 spans of this chart)" in toy.why_unvisited(
        SEED.nodes["refuse"]
    )
    mine = next(c for c in report.charts if c.chart.name == "Mine")
    assert mine.why_unvisited(OURS.nodes["finish"]) == "no trace reached this chart"


def test_a_span_that_breaks_its_chart_visits_nothing() -> None:
    """A step the chart cannot reach from where the span was (refuse after the
    Y branch) makes the whole span dishonest: none of its visits count."""
    broken = walk(
        "b" * 16,
        "Toy",
        (B, "toy", ""),
        (BR, "check", "Y"),
        (S, "refuse", ""),
        (E, "done", ""),
    )
    checked = check_events(broken, CHARTS)
    assert [c.conforms for c in checked] == [False]
    report = build_report(checked, CHARTS)
    toy = next(c for c in report.charts if c.chart.name == "Toy")
    assert toy.nonconforming == 1 and not toy.visits
    assert toy.honest == 1, "only the absent node"
    assert "reached only by spans that break the chart" in toy.why_unvisited(SEED.nodes["refuse"])
    text = format_text(report)
    assert "1 span(s) do not follow their chart" in text
    assert "no edge 'check' -[Y]-> 'refuse'" in text


def test_the_text_names_every_absent_and_unvisited_node_and_the_figures() -> None:
    text = format_text(build_report(check_events(YES_PATH, CHARTS), CHARTS, files=1))
    assert "Toy (seed chart): 1 spans, 0 off-chart" in text
    assert "original 6: present 5, absent 1; ours 1" in text
    assert "absent  gone: iSulad frees memory by hand; Python does not" in text
    assert "never   refuse: never visited" in text
    assert (
        "seed charts: 5/6 original nodes honestly visited or absent with a reason: 83.3 %" in text
    )
    assert "all charts:  5/8 original nodes: 62.5 %" in text


def test_heat_colours_darken_with_visits() -> None:
    shades = [heat_color(n, 100) for n in (1, 3, 10, 30, 100)]
    assert shades[0] != shades[-1]
    assert heat_color(0, 100) == "#ffffff"
    assert len(set(shades)) >= 4


def test_the_heat_map_shows_counts_and_marks_the_unvisited() -> None:
    report = build_report(check_events(YES_PATH, CHARTS), CHARTS)
    toy = next(c for c in report.charts if c.chart.name == "Toy")
    svg = heat_svg(toy)
    root = ET.fromstring(svg)
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "1 visits" in texts and "0 visits" in texts
    assert "#c81e1e" in svg, "a never-visited node has a red border"


def traced_version_file(path: Path) -> Path:
    """A JSONL trace as a server writes it: the real tracer and file sink, one
    Version span through the real chart."""
    sink = JsonlFileSink(path)
    tracer = Tracer(ChartSet.load(), [sink])
    with tracer.span("Version"):
        with step("m_cb_container_version"):
            version = "0.1.0"
        with step("version_response_to_grpc"):
            api_pb2.VersionResponse(runtime_version=version)
    tracer.close()
    return path


def test_the_cli_reports_a_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = traced_version_file(tmp_path / "t.jsonl")
    assert main(["fidelity", "--trace-file", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "Chart fidelity from 1 spans in 1 trace file(s)" in out
    assert "Version (chart): 1 spans, 0 off-chart" in out
    assert "visited: 4/4 present original" in out
    assert "seed charts:" in out and "all charts:" in out


def test_the_cli_fails_under_a_threshold_and_draws_heat_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traced_version_file(tmp_path / "traces" / "t.jsonl")
    out_dir = tmp_path / "svg"
    code = main(
        [
            "fidelity",
            "--trace-file",
            str(tmp_path / "traces"),  # a directory: every *.jsonl in it
            "--format",
            "svg",
            "-o",
            str(out_dir),
            "--fail-under",
            "95",
        ]
    )
    assert code == 1, "one Version span cannot visit 95 % of the seed charts"
    charts = ChartSet.load()
    assert sorted(p.stem for p in out_dir.glob("*.svg")) == sorted(charts)
    assert "1 visits" in (out_dir / "Version.svg").read_text()
    assert f"{len(charts)} heat maps in {out_dir}" in capsys.readouterr().out


def test_the_cli_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fidelity", "--trace-file", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert main(["fidelity", "--trace-file", str(tmp_path)]) == 2
    assert "no *.jsonl in" in capsys.readouterr().err


def test_a_live_servers_trace_is_reported(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The test fixtures give every server a trace file; after a Version call
    and a clean stop, the report sees that Version span, and it conforms."""
    srv = start_server(short_tmp / "f", "--runtime", "unprivileged")
    try:
        srv.client().runtime.Version(api_pb2.VersionRequest())
    finally:
        srv.stop()
    assert srv.trace_file is not None and srv.trace_file.exists()
    assert main(["fidelity", "--trace-file", str(srv.trace_file)]) == 0
    out = capsys.readouterr().out
    version = out.split("Version (chart):", 1)[1].split("\n\n")[0]
    assert version.startswith(" 1 spans, 0 off-chart"), version
    assert "visited: 4/4 present original" in version


def test_the_suites_guard_names_the_span_the_chart_and_the_step(tmp_path: Path) -> None:
    """What a test sees when its server's trace leaves a chart: the span, its
    chart, the offending event and the path it took; and, after a clean exit,
    a span that never ended."""
    path = tmp_path / "t.jsonl"
    sink = JsonlFileSink(path)
    tracer = Tracer(ChartSet.load(), [sink])
    # Straight to the conversion, past m_cb->container.version.
    with tracer.span("Version", rpc="Version"), step("version_response_to_grpc"):
        api_pb2.VersionResponse(runtime_api_version="v1")
    unended = tracer.span("Status", rpc="Status")
    # Entered in a copy of the context: the span stays open without staying
    # current for the tests that run after this one.
    contextvars.copy_context().run(unended.__enter__)
    tracer.close()
    problems = check_trace_file(path, ChartSet.load(), complete=True)
    assert len(problems) == 2
    version, status = sorted(problems, key=lambda p: "of chart Status" in p)
    assert "of chart Version (rpc=Version)" in version
    assert "no edge 'version' -> 'version_response_to_grpc'" in version
    assert "path taken:" in version and "Version: step version_response_to_grpc" in version
    assert "of chart Status (rpc=Status)" in status
    assert "the span never ended (last: begin 'status')" in status
    # A server that was killed leaves spans open: only the chart is checked then.
    assert len(check_trace_file(path, ChartSet.load(), complete=False)) == 1


def test_an_error_visits_the_error_end_it_leaves_by() -> None:
    """An error event names the step where it arose; the span leaves by that
    step's error edge, so the error end it leads to counts as visited."""
    chart = parse_chart(
        {
            "name": "Fails",
            "source": "iSulad's container design: Fails.svg (cri_container_manager_design.md)",
            "edges": ["fails -> work", "work -> done", "work -> return_error"],
            "nodes": [
                {"label": "Fails", "kind": "start"},
                {"label": "work"},
                {"label": "done", "kind": "end"},
                {"label": "return error", "kind": "end"},
            ],
        }
    )
    failed = walk(
        "c" * 16,
        "Fails",
        (B, "fails", ""),
        (S, "work", ""),
        (EventKind.ERROR, "work", ""),
    )
    checked = check_events(failed, {"Fails": chart})
    assert [c.problems for c in checked] == [[]]
    fid = build_report(checked, {"Fails": chart}).charts[0]
    assert [n.id for n in fid.never_visited()] == ["done"]
