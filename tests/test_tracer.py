"""The tracer API: spans, steps, branches and errors, across asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from teaching_cri.trace.charts import ChartSet, parse_chart
from teaching_cri.trace.conformance import assert_conforms, check_span, spans
from teaching_cri.trace.events import EventKind, TraceEvent
from teaching_cri.trace.sinks import RingBufferSink
from teaching_cri.trace.tracer import Tracer, annotate, child_span, current_span, decide, step

CHART: dict[str, Any] = {
    "name": "Pull",
    "nodes": [
        {"label": "Pull", "kind": "start"},
        {"label": "resolve", "kind": "action"},
        {"label": "cached ?", "kind": "decision"},
        {"label": "fetch", "kind": "action"},
        {"label": "unpack", "kind": "action"},
        {"label": "done", "kind": "end"},
        {"label": "return error", "kind": "end"},
    ],
    "edges": [
        "pull -> resolve",
        "resolve -> cached",
        "resolve -> return_error : bad name",
        "cached -> done : Y",
        "cached -> fetch : N",
        "fetch -> unpack",
        "unpack -> done",
        "unpack -> return_error : bad layer",
    ],
}
CHILD: dict[str, Any] = {
    "name": "Child",
    "nodes": [
        {"label": "Child", "kind": "start"},
        {"label": "work", "kind": "action"},
        {"label": "child done", "kind": "end"},
        {"label": "child failed", "kind": "end", "error": True},
    ],
    "edges": ["child -> work", "work -> child_done", "work -> child_failed"],
}


@pytest.fixture
def traced() -> tuple[Tracer, RingBufferSink]:
    ring = RingBufferSink()
    return Tracer(ChartSet([parse_chart(CHART), parse_chart(CHILD)]), [ring]), ring


@step("resolve")
def resolve(name: str) -> str:
    return name.upper()


@step("fetch")
async def fetch(delay: float) -> int:
    await asyncio.sleep(delay)
    return 3


@step("unpack")
def unpack(fail: bool) -> None:
    if fail:
        raise ValueError("layer escapes its root")


async def pull(
    tracer: Tracer, name: str, cached: bool, delay: float = 0.0, fail: bool = False
) -> str:
    with tracer.span("Pull", image=name):
        resolved = resolve(name)
        if not decide("cached", cached):
            annotate(layers=str(await fetch(delay)))
            unpack(fail)
        return resolved


def kinds(events: list[TraceEvent]) -> list[tuple[str, str, str]]:
    return [(e.kind.value, e.node, e.label) for e in events]


async def test_a_span_emits_begin_steps_branch_end(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    assert await pull(tracer, "busybox", cached=False) == "BUSYBOX"
    events = ring.snapshot()
    assert kinds(events) == [
        ("begin", "pull", ""),
        ("step", "resolve", ""),
        ("branch", "cached", "N"),
        ("step", "fetch", ""),
        ("step", "unpack", ""),
        ("end", "done", ""),
    ]
    assert len({e.span_id for e in events}) == 1 and len({e.trace_id for e in events}) == 1
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert all(e.attributes["image"] == "busybox" for e in events)
    assert events[-1].attributes["layers"] == "3"  # annotate() reaches later events only
    assert "layers" not in events[1].attributes
    assert all(e.monotonic_ns > 0 and e.unix_nano > 0 for e in events)
    assert_conforms(events, tracer.charts)


async def test_the_end_node_follows_from_the_last_step(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    await pull(tracer, "busybox", cached=True)
    assert kinds(ring.snapshot())[-2:] == [("branch", "cached", "Y"), ("end", "done", "")]


async def test_an_error_is_recorded_once_at_its_step(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    with pytest.raises(ValueError, match="escapes"):
        await pull(tracer, "busybox", cached=False, fail=True)
    events = ring.snapshot()
    assert kinds(events)[-2:] == [("step", "unpack", ""), ("error", "unpack", "")]
    assert events[-1].attributes["error"] == "ValueError: layer escapes its root"
    assert_conforms(events, tracer.charts)


async def test_concurrent_spans_do_not_mix(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    # Interleave three pulls on one loop: each task's steps must land in its own span.
    await asyncio.gather(
        *(pull(tracer, f"img{i}", cached=False, delay=0.01 * (3 - i)) for i in range(3))
    )
    grouped = spans(ring.snapshot())
    assert len(grouped) == 3
    for events in grouped.values():
        assert len({e.attributes["image"] for e in events}) == 1
        assert [e.node for e in events] == ["pull", "resolve", "cached", "fetch", "unpack", "done"]
    assert_conforms(ring.snapshot(), tracer.charts)
    interleaved = [e.attributes["image"] for e in sorted(ring.snapshot(), key=lambda e: e.sequence)]
    assert interleaved != sorted(interleaved), "the pulls should really have interleaved"


async def test_child_spans_share_the_trace_and_name_their_parent(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    with tracer.span("Pull") as outer:
        resolve("x")
        with tracer.span("Child") as inner, step("work"):
            assert current_span() is inner
        assert current_span() is outer
        decide("cached", True)
    events = ring.snapshot()
    child = [e for e in events if e.chart == "Child"]
    assert {e.parent_span_id for e in child} == {outer.span_id}
    assert {e.trace_id for e in events} == {outer.trace_id}
    assert current_span() is None
    assert_conforms(events, tracer.charts)


def test_steps_outside_a_span_are_silent(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    assert resolve("quiet") == "QUIET"
    assert decide("cached", False) is False
    assert ring.snapshot() == [] and tracer.emitted == 0


def test_a_given_trace_id_is_kept(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    with tracer.span("Child", trace_id="ab" * 16), step("work"):
        pass
    assert {e.trace_id for e in ring.snapshot()} == {"ab" * 16}
    assert all(e.kind is not EventKind.ERROR for e in ring.snapshot())


def test_a_failing_child_span_ends_its_parent_with_an_error(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    with pytest.raises(ValueError), tracer.span("Pull"):
        resolve("x")
        with tracer.span("Child"), step("work"):
            raise ValueError("child failed")
    events = ring.snapshot()
    assert [(e.chart, e.kind.value, e.node) for e in events if e.kind is EventKind.ERROR] == [
        ("Child", "error", "work"),
        ("Pull", "error", "resolve"),
    ]
    assert_conforms(events, tracer.charts)


def test_a_caught_step_failure_does_not_end_the_span(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    with tracer.span("Pull"):
        with contextlib.suppress(AttributeError):  # handled: the flow goes on
            resolve(None)  # type: ignore[arg-type]  # raises AttributeError in the step
        decide("cached", True)
    events = ring.snapshot()
    assert [e.kind.value for e in events] == ["begin", "step", "branch", "end"]
    assert_conforms(events, tracer.charts)


def test_the_end_after_a_branch_is_the_one_its_label_leads_to() -> None:
    chart = parse_chart(
        {
            "name": "Two",
            "nodes": [
                {"label": "Two", "kind": "start"},
                {"label": "ok ?", "kind": "decision"},
                {"label": "done", "kind": "end"},
                {"label": "failed", "kind": "end"},
            ],
            "edges": ["two -> ok", "ok -> done : Y", "ok -> failed : N"],
        }
    )
    ring = RingBufferSink()
    tracer = Tracer(ChartSet([chart]), [ring])
    for answer in (True, False):
        with tracer.span("Two"):
            decide("ok", answer)
    assert [e.node for e in ring.snapshot() if e.kind is EventKind.END] == ["done", "failed"]
    with tracer.span("Two"):
        pass  # two end nodes follow the start: the span cannot tell, and says so
    last = ring.snapshot()[-1]
    assert last.kind is EventKind.ERROR and "no single end node" in last.attributes["error"]


def test_long_values_are_clipped(traced: tuple[Tracer, RingBufferSink]) -> None:
    tracer, ring = traced
    with pytest.raises(ValueError), tracer.span("Pull", image="x" * 100_000):
        raise ValueError("y" * 100_000)
    for event in ring.snapshot():
        assert len(event.attributes["image"]) <= 512
    assert len(ring.snapshot()[-1].attributes["error"]) <= 2048


def test_an_error_is_recorded_where_it_arose_not_at_the_outer_steps(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    with pytest.raises(ValueError), tracer.span("Pull"), step("resolve"):
        unpack(True)  # an inner step raises through the outer one
    with pytest.raises(LookupError), tracer.span("Pull"), step("resolve"):
        if not decide("cached", False):
            raise LookupError("not cached")  # raised on the branch just taken
    errors = [(e.node, e.label) for e in ring.snapshot() if e.kind is EventKind.ERROR]
    assert errors == [("unpack", ""), ("cached", "")]
    # The checker then reads the branch taken: Pull draws no error edge for N.
    second = list(spans(ring.snapshot()).values())[1]
    problems = check_span(second, tracer.charts["Pull"])
    assert problems == [problems[0]] and "no edge from its branch [N]" in problems[0]


@child_span("Child")
async def child_work() -> str:
    with step("work"):
        return "done"


async def test_a_child_span_opens_under_the_current_span_and_only_there(
    traced: tuple[Tracer, RingBufferSink],
) -> None:
    tracer, ring = traced
    assert await child_work() == "done"  # no span: untraced, as in a unit test
    assert ring.snapshot() == []
    go_on = asyncio.Event()
    with tracer.span("Pull") as outer:
        resolve("x")
        await child_work()
        # A task started here copies the context: it outlives the span (a watcher).
        outliving = asyncio.create_task(_later(go_on))
        decide("cached", True)
    go_on.set()
    assert await outliving == "done"
    events = ring.snapshot()
    child = [e for e in events if e.chart == "Child"]
    assert [(e.kind.value, e.node) for e in child] == [
        ("begin", "child"),
        ("step", "work"),
        ("end", "child_done"),
    ]
    assert {e.parent_span_id for e in child} == {outer.span_id}
    assert len(spans(events)) == 2  # nothing from the call made after the span ended
    assert_conforms(events, tracer.charts)


async def _later(go_on: asyncio.Event) -> str:
    await go_on.wait()
    return await child_work()
