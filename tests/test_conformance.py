"""The conformance helper: accepts traces that follow the chart, explains the rest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from teaching_cri.errors import CRIError
from teaching_cri.runtime.backend import CreateRequest
from teaching_cri.runtime.runc import RuncBackend
from teaching_cri.trace.charts import ChartSet, parse_chart
from teaching_cri.trace.conformance import (
    ENV_UPDATE_GOLDEN,
    assert_conforms,
    assert_golden_path,
    check_trace,
    path_lines,
    spans,
)
from teaching_cri.trace.events import EventKind, TraceEvent
from teaching_cri.trace.sinks import RingBufferSink
from teaching_cri.trace.tracer import Tracer, step


def ev(
    seq: int,
    node: str,
    kind: str = "step",
    label: str = "",
    chart: str = "Status",
    span: str = "s1",
    parent: str = "",
) -> TraceEvent:
    return TraceEvent(
        "t" * 32, span, parent, seq * 1000, seq * 1000, chart, node, EventKind(kind), label, {}, seq
    )


STATUS_PATH = [
    ("status", "begin", ""),
    ("new_runtime_status", "step", ""),
    ("add_runtime_ready_condition", "step", ""),
    ("add_network_ready_condition", "step", ""),
    ("m_cb_container_version", "step", ""),
    ("probe_runtime_backend", "step", ""),
    ("runtime_ready", "branch", "Y"),
    ("m_plugin_manager_status", "step", ""),
    ("network_plugin_ready", "branch", "Y"),
    ("verbose", "branch", "N"),
    ("status_response", "end", ""),
]


def status_events(path: list[tuple[str, str, str]] = STATUS_PATH) -> list[TraceEvent]:
    return [ev(i + 1, n, k, lab) for i, (n, k, lab) in enumerate(path)]


def test_a_trace_along_the_chart_conforms(charts: ChartSet) -> None:
    assert check_trace(status_events(), charts) == []
    assert_conforms(status_events(), charts)


def test_a_skipped_node_fails_with_the_allowed_edges(charts: ChartSet) -> None:
    path = [p for p in STATUS_PATH if p[0] != "probe_runtime_backend"]
    with pytest.raises(AssertionError) as err:
        assert_conforms(status_events(path), charts)
    text = str(err.value)
    assert "no edge 'm_cb_container_version' -> 'runtime_ready'" in text
    assert "the chart allows: probe_runtime_backend" in text
    assert "path taken:" in text


def test_the_branch_label_decides_the_next_edge(charts: ChartSet) -> None:
    path = list(STATUS_PATH)
    path[6] = ("runtime_ready", "branch", "N")  # but then goes straight to the plugin manager
    problems = check_trace(status_events(path), charts)
    assert problems and "-[N]->" in problems[0] and "set_runtime_not_ready_reason" in problems[0]


def test_unknown_nodes_wrong_start_and_events_after_end(charts: ChartSet) -> None:
    bad_node = [*status_events()[:3], ev(4, "no_such_step")]
    assert "has no node 'no_such_step'" in check_trace(bad_node, charts)[0]
    bad_start = [ev(1, "new_runtime_status", "begin")]
    assert "must open with begin 'status'" in check_trace(bad_start, charts)[0]
    after_end = [*status_events(), ev(99, "status_response")]
    assert "nothing may follow end" in check_trace(after_end, charts)[0]
    decision_as_step = [*status_events()[:6], ev(7, "runtime_ready")]
    assert "recorded with branch()" in check_trace(decision_as_step, charts)[0]


# A chart with the three ways out of a failing call: a decision's error branch,
# an action's error edge, and an error edge through a node our code lacks.
FAILING = parse_chart(
    {
        "name": "Fetch",
        "nodes": [
            {"label": "Fetch", "kind": "start"},
            {"label": "found ?", "kind": "decision"},
            {"label": "download", "kind": "action"},
            {"label": "verify", "kind": "action"},
            {"label": "log it", "kind": "action", "absent": "no log in our code"},
            {"label": "store", "kind": "action"},
            {"label": "done", "kind": "end"},
            {"label": "return error", "kind": "end"},
            {"label": "gave up", "kind": "end", "error": True},
        ],
        "edges": [
            "fetch -> found",
            "found -> download : Y",
            "found -> return_error : N",
            "download -> verify",
            "download -> gave_up : timeout",
            "verify -> log_it : corrupt",
            "verify -> store",
            "log_it -> return_error",
            "store -> done",
        ],
    }
)


def fetch_events(*path: tuple[str, str, str]) -> list[TraceEvent]:
    return [ev(i + 1, n, k, lab, chart="Fetch") for i, (n, k, lab) in enumerate(path)]


def test_an_error_leaves_by_an_error_edge_the_chart_draws() -> None:
    charts = {"Fetch": FAILING}
    begin, found = ("fetch", "begin", ""), ("found", "branch", "Y")
    not_found = fetch_events(begin, ("found", "branch", "N"), ("found", "error", ""))
    timed_out = fetch_events(begin, found, ("download", "step", ""), ("download", "error", ""))
    corrupt = fetch_events(begin, found, ("download", "step", ""), ("verify", "step", ""))
    corrupt.append(ev(5, "verify", "error", chart="Fetch"))
    assert check_trace(not_found, charts) == []  # the decision's error branch
    assert check_trace(timed_out, charts) == []  # an action's own error edge
    assert check_trace(corrupt, charts) == []  # through the absent "log it"
    assert FAILING.error_ends == {"return_error", "gave_up"}  # by label, or error = true


def test_an_error_at_a_node_with_no_error_exit_fails_naming_it() -> None:
    charts = {"Fetch": FAILING}
    begin, found = ("fetch", "begin", ""), ("found", "branch", "Y")
    at_store = fetch_events(begin, found, ("download", "step", ""), ("verify", "step", ""))
    at_store += [ev(5, "store", chart="Fetch"), ev(6, "store", "error", chart="Fetch")]
    problems = check_trace(at_store, charts)
    assert len(problems) == 1
    assert "no error exit from 'store'" in problems[0]
    assert "gave_up, return_error" in problems[0]
    # After a decision the branch taken decides: Y leads on, not out.
    wrong_branch = fetch_events(begin, found, ("found", "error", ""))
    assert "no edge from its branch [Y]" in check_trace(wrong_branch, charts)[0]
    with pytest.raises(AssertionError, match="no error exit from 'store'"):
        assert_conforms(at_store, charts)


def test_an_error_must_be_at_a_node_already_reached() -> None:
    charts = {"Fetch": FAILING}
    begin, found = ("fetch", "begin", ""), ("found", "branch", "Y")
    outer = fetch_events(begin, found, ("download", "step", ""), ("verify", "step", ""))
    outer.append(ev(5, "download", "error", chart="Fetch"))
    assert check_trace(outer, charts) == []  # an outer step failing after an inner one
    ahead = fetch_events(begin, found, ("download", "error", ""))
    ahead[-1] = ev(3, "verify", "error", chart="Fetch")
    assert "such as the current one 'found'" in check_trace(ahead, charts)[0]


def test_a_call_that_succeeds_never_ends_at_an_error_end() -> None:
    ended = fetch_events(
        ("fetch", "begin", ""), ("found", "branch", "N"), ("return_error", "end", "")
    )
    assert "is an error end" in check_trace(ended, {"Fetch": FAILING})[0]


def test_an_end_node_is_only_reached_by_end(charts: ChartSet) -> None:
    bad = [*status_events()[:9], ev(10, "verbose", "branch", "N"), ev(11, "status_response")]
    assert "reached with end, not step" in check_trace(bad, charts)[0]


def test_absent_nodes_are_passed_through_by_the_checker() -> None:
    chart = parse_chart(
        {
            "name": "Lock",
            "nodes": [
                {"label": "Lock", "kind": "start"},
                {
                    "label": "lock mutex",
                    "kind": "action",
                    "absent": "asyncio runs one step at a time",
                },
                {"label": "work", "kind": "action"},
                {"label": "unlock mutex", "kind": "action", "absent": "no mutex"},
                {"label": "done", "kind": "end"},
            ],
            "edges": [
                "lock -> lock_mutex",
                "lock_mutex -> work",
                "work -> unlock_mutex",
                "unlock_mutex -> done",
            ],
        }
    )
    events = [
        ev(1, "lock", "begin", chart="Lock"),
        ev(2, "work", chart="Lock"),
        ev(3, "done", "end", chart="Lock"),
    ]
    assert check_trace(events, {"Lock": chart}) == []
    visiting_absent = [ev(1, "lock", "begin", chart="Lock"), ev(2, "lock_mutex", chart="Lock")]
    assert "marked absent" in check_trace(visiting_absent, {"Lock": chart})[0]


def test_an_unfinished_span_is_reported(charts: ChartSet) -> None:
    with pytest.raises(AssertionError, match="did not end"):
        assert_conforms(status_events()[:4], charts)
    assert_conforms(status_events()[:4], charts, complete=False)


def test_path_lines_indent_child_spans() -> None:
    events = [
        ev(1, "version", "begin", chart="Version"),
        ev(2, "status", "begin", span="s2", parent="s1"),
        ev(3, "m_cb_container_version", chart="Version"),
    ]
    assert path_lines(events) == [
        "Version: begin version",
        "  Status: begin status",
        "Version: step m_cb_container_version",
    ]


def test_golden_path_mismatch_shows_a_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    golden = tmp_path / "status.path"
    monkeypatch.setenv(ENV_UPDATE_GOLDEN, "1")
    assert_golden_path(status_events(), golden)
    monkeypatch.delenv(ENV_UPDATE_GOLDEN)
    assert_golden_path(status_events(), golden)  # same path: passes
    path = list(STATUS_PATH)
    path[8] = ("network_plugin_ready", "branch", "N")
    path.insert(9, ("set_network_plugin_not_ready_reason", "step", ""))
    with pytest.raises(AssertionError) as err:
        assert_golden_path(status_events(path), golden)
    text = str(err.value)
    assert "-Status: branch network_plugin_ready [Y]" in text
    assert "+Status: branch network_plugin_ready [N]" in text
    assert "+Status: step set_network_plugin_not_ready_reason" in text


async def test_the_runtimes_refusals_are_child_spans_that_leave_by_their_error_edges(
    charts: ChartSet, tmp_path: Path
) -> None:
    """The runtime's own charts, walked by the real backend (the processes tier:
    no root, no runc needed for a refusal): each refusal is a child span of the
    caller's, ending at the node that refused, by an edge the chart draws."""
    ring = RingBufferSink()
    tracer = Tracer(charts, [ring])
    backend = RuncBackend(tmp_path, tier="processes")
    try:
        with tracer.span("CreateContainer") as parent:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: backend.create(CreateRequest("../escape", {})),
                lambda: backend.start("no-such-container"),
                lambda: backend.exec("no-such-container", ["true"]),
            ]
            for call in calls:
                with pytest.raises(CRIError), step("m_cb_container_create"):
                    await call()
    finally:
        await backend.close()
    children = [es for es in spans(ring.snapshot()).values() if es[0].chart != "CreateContainer"]
    assert [(es[0].chart, es[-1].kind, es[-1].node) for es in children] == [
        ("RuntimeCreate", EventKind.ERROR, "valid_id"),
        ("RuntimeStart", EventKind.ERROR, "runtime_start"),
        ("RuntimeExec", EventKind.ERROR, "runtime_exec"),
    ]
    assert all(es[0].parent_span_id == parent.span_id for es in children)
    assert "INVALID_ARGUMENT" in children[0][-1].attributes["code"]
    for es in children:
        assert check_trace(es, charts) == []
