"""The chart files: every one loads and is a valid flow chart; bad ones are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from teaching_cri.trace.charts import ChartError, ChartSet, NodeKind, node_id, parse_chart

REQUIRED_NOW = {"Version", "Status", "UpdateRuntimeConfig", "RuntimeConfig"}


def test_every_chart_in_diagrams_loads(charts: ChartSet) -> None:
    assert set(charts) >= REQUIRED_NOW
    for chart in charts.values():
        assert chart.start in chart.nodes
        assert chart.ends
        assert chart.source, f"{chart.name}: say where the chart comes from"
        for node in chart.flow_nodes():
            assert node.id == node_id(node.label)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("GetRealContainerOrSandboxID", "get_real_container_or_sandbox_id"),
        ("m_cb->container.stop", "m_cb_container_stop"),
        ("get container ID ?", "get_container_id"),
        ("VersionResponseToGRPC", "version_response_to_grpc"),
        ("m_pluginManager->Status", "m_plugin_manager_status"),
    ],
)
def test_node_ids_are_labels_in_snake_case(label: str, expected: str) -> None:
    assert node_id(label) == expected


def _chart(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "T",
        "nodes": [
            {"label": "T", "kind": "start"},
            {"label": "ok ?", "kind": "decision"},
            {"label": "do it", "kind": "action"},
            {"label": "done", "kind": "end"},
        ],
        "edges": ["t -> ok", "ok -> do_it : Y", "ok -> done : N", "do_it -> done"],
    }
    data.update(changes)
    return data


def test_a_minimal_chart_parses() -> None:
    chart = parse_chart(_chart())
    assert chart.start == "t" and chart.ends == {"done"}
    assert chart.nodes["ok"].kind is NodeKind.DECISION
    assert dict(chart.effective)["ok"] == (("Y", "do_it"), ("N", "done"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"edges": ["t -> ok", "ok -> do_it : Y", "ok -> done : N", "do_it -> nowhere"]},
            "unknown node 'nowhere'",
        ),
        ({"edges": ["t -> ok", "ok -> do_it", "ok -> done", "do_it -> done"]}, "distinct labels"),
        ({"edges": ["t -> ok", "ok -> done : Y", "ok -> done : N"]}, "leads nowhere"),
        ({"edges": ["t ->"]}, "is not 'a -> b'"),
        (
            {
                "nodes": [
                    {"label": "T", "kind": "start"},
                    {"label": "done", "kind": "end"},
                    {"label": "x", "kind": "start"},
                ],
                "edges": ["t -> done", "x -> done"],
            },
            "exactly one start",
        ),
        (
            {
                "nodes": [
                    {"label": "T", "kind": "start"},
                    {"id": "other", "label": "done", "kind": "end"},
                ],
                "edges": ["t -> other"],
            },
            "must be the label in snake_case",
        ),
        (
            {
                "nodes": [
                    {"label": "T", "kind": "start"},
                    {"label": "done", "kind": "end"},
                    {"label": "lost", "kind": "action"},
                ],
                "edges": ["t -> done", "lost -> done"],
            },
            "not reachable",
        ),
        (
            {"nodes": [{"label": "T", "kind": "start"}, {"label": "done", "kind": "bogus"}]},
            "unknown kind",
        ),
        ({"colour": "red"}, "unknown keys"),
        (
            {
                "nodes": [
                    {"label": "T", "kind": "start"},
                    {"label": "done", "kind": "action", "error": True},
                    {"label": "end", "kind": "end"},
                ],
                "edges": ["t -> done", "done -> end"],
            },
            "only an end node can be an error end",
        ),
        (
            {
                "nodes": [
                    {"label": "T", "kind": "start"},
                    {"label": "return error", "kind": "end"},
                ],
                "edges": ["t -> return_error"],
            },
            "one end node that is not an error end",
        ),
    ],
)
def test_invalid_charts_are_refused_naming_the_problem(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ChartError, match=message):
        parse_chart(_chart(**changes))


def test_error_ends_are_marked_or_named_and_never_where_a_span_finishes() -> None:
    chart = parse_chart(
        _chart(
            nodes=[
                {"label": "T", "kind": "start"},
                {"label": "ok ?", "kind": "decision"},
                {"label": "do it", "kind": "action"},
                {"label": "done", "kind": "end"},
                {"label": "return error", "kind": "end"},
                {"label": "gave up", "kind": "end", "error": True},
            ],
            edges=[
                "t -> ok",
                "ok -> do_it : Y",
                "ok -> return_error : N",
                "do_it -> done",
                "do_it -> gave_up : timeout",
            ],
        )
    )
    assert chart.error_ends == {"return_error", "gave_up"}
    assert chart.end_after("do_it") == "done"  # the error edge beside it does not count
    assert chart.error_exits("do_it") == ["gave_up"]
    assert chart.error_exits("ok", "N") == ["return_error"]
    assert chart.error_exits("ok", "Y") == []


def test_absent_nodes_are_passed_through() -> None:
    chart = parse_chart(
        _chart(
            nodes=[
                {"label": "T", "kind": "start"},
                {
                    "label": "lock mutex",
                    "kind": "action",
                    "absent": "asyncio runs one step at a time",
                },
                {"label": "done", "kind": "end"},
            ],
            edges=["t -> lock_mutex", "lock_mutex -> done"],
        )
    )
    assert dict(chart.effective)["t"] == (("", "done"),)
    path = chart.path_between("t", "done")
    assert path is not None and [e.target for e in path] == ["lock_mutex", "done"]


def test_file_name_must_match_chart_name(tmp_path: Path) -> None:
    bad = tmp_path / "Other.toml"
    bad.write_text(
        'name = "T"\nedges = ["t -> done"]\n[[nodes]]\nlabel = "T"\nkind = "start"\n'
        '[[nodes]]\nlabel = "done"\nkind = "end"\n'
    )
    with pytest.raises(ChartError, match="must equal the file name"):
        ChartSet.load(tmp_path)
    (tmp_path / "Other.toml").write_text("name = [")
    with pytest.raises(ChartError, match="not valid TOML"):
        ChartSet.load(tmp_path)
