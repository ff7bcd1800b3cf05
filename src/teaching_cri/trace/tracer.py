"""The tracer: one line opens a span, one line traces a step.

A *span* is one walk through one chart: an RPC handler, or a streaming
callback. It is opened with::

    with tracer.span("Version", rpc="Version"):
        ...

and each step is a function named after its chart node, traced by one
decorator (or one ``with step(...)`` line for a block)::

    @step("m_cb_container_version")
    def m_cb_container_version(...): ...

Decisions record the edge taken::

    if decide("network_plugin_ready", ok): ...

An exception escaping a step ends the span with an ERROR at that step (or at
the decision whose branch the step had just taken), as an error ends the walk
in iSulad's charts; the chart must draw the way out (an edge to an error
end). An outcome the flow goes on from is not an exception but a decision:
``decide("found", ...)``.

Work another layer does for a step is a child span of its own chart, opened
by one decorator on the function that does it::

    @child_span("RuntimeCreate")
    async def create(self, request): ...

The current span lives in a ``contextvars.ContextVar``, so concurrent RPCs on
one asyncio loop (and threads started with ``asyncio.to_thread``) never mix up
their steps. A step outside any span costs one ContextVar lookup and emits
nothing, so the same manager code runs untraced in unit tests or benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import random
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from time import monotonic_ns, time_ns
from types import MappingProxyType, TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from .charts import Chart, ChartSet
from .events import EMPTY_ATTRIBUTES, EventKind, TraceEvent

P = ParamSpec("P")
R = TypeVar("R")

_current: ContextVar[Span | None] = ContextVar("teaching_cri_span", default=None)


class Sink(Protocol):
    """Where events go. ``publish`` is called on the emitting thread and must
    never block: a sink that cannot keep up drops and counts."""

    name: str

    def publish(self, event: TraceEvent) -> None: ...

    def close(self) -> None: ...

    def counts(self) -> tuple[int, int]:
        """(delivered, dropped) so far."""
        ...


# A generator of our own: ids identify, they protect nothing, so a fast PRNG is
# enough, but not the module-level one, which a program (or hypothesis, once per
# example) may seed, making ids repeat within one process.
_ids = random.Random()


def _new_id(bits: int) -> str:
    """W3C trace-context sizes: 128-bit trace ids, 64-bit span ids."""
    return f"{_ids.getrandbits(bits):0{bits // 4}x}"


# Attribute values and error texts are capped: they travel to every follower,
# sit in the ring buffer and end up in gRPC trailers, and a request can carry
# megabytes of text.
MAX_ATTRIBUTE_CHARS = 512
MAX_ERROR_CHARS = 2048


def clip(text: str, limit: int = MAX_ATTRIBUTE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text)} chars)"


def _failed_in(exc: BaseException) -> set[str]:
    """The spans that already recorded this exception at one of their steps."""
    spans: set[str] = getattr(exc, "__teaching_cri_spans__", set())
    return spans


def _mark_failed_in(exc: BaseException, span_id: str) -> None:
    with contextlib.suppress(AttributeError):  # an exception type with __slots__
        exc.__teaching_cri_spans__ = _failed_in(exc) | {span_id}  # type: ignore[attr-defined]


def _error_attributes(exc: BaseException | str) -> dict[str, str]:
    if isinstance(exc, str):
        return {"error": clip(exc, MAX_ERROR_CHARS)}
    extra = {"error": clip(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)}
    code = getattr(exc, "code", None)
    if code is not None:
        extra["code"] = str(getattr(code, "name", code))
    return extra


class Tracer:
    """Emits events to its sinks, numbering them in emission order."""

    def __init__(
        self, charts: ChartSet, sinks: Iterable[Sink] = (), *, enabled: bool = True
    ) -> None:
        self.charts = charts
        self.sinks: list[Sink] = list(sinks)
        self.enabled = enabled
        self._counter = itertools.count(1)  # next() is atomic: no lock on the hot path
        self.emitted = 0

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, event: TraceEvent) -> TraceEvent:
        event.sequence = self.emitted = next(self._counter)
        for sink in self.sinks:
            sink.publish(event)
        return event

    def span(
        self,
        chart: str,
        *,
        trace_id: str = "",
        parent: Span | None = None,
        attributes: Mapping[str, Any] | None = None,
        **more: Any,
    ) -> Span:
        """Open a span over ``chart``; its parent is the current span, if any."""
        attrs = {**attributes, **more} if attributes else more
        return Span(self, self.charts[chart], trace_id, parent, attrs)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class Span:
    """One walk through one chart; a context manager (sync, usable in async code).

    A step that raises does not end the span at once: it leaves a *pending*
    error. If the exception leaves the span, the span ends with an ERROR at that
    step; if the code catches it and carries on, the next step clears it, so a
    handled failure (an idempotent stop of a missing container, say) does not
    cut the trace short.
    """

    __slots__ = (
        "_attrs",
        "_done",
        "_label",
        "_parent_arg",
        "_pending",
        "_token",
        "_trace_id_arg",
        "chart",
        "end_node",
        "node",
        "parent_span_id",
        "span_id",
        "started_ns",
        "trace_id",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        chart: Chart,
        trace_id: str,
        parent: Span | None,
        attributes: Mapping[str, Any],
    ) -> None:
        self.tracer = tracer
        self.chart = chart
        self._trace_id_arg = trace_id
        self._parent_arg = parent
        self._attrs: Mapping[str, str] = (
            MappingProxyType({k: clip(str(v)) for k, v in attributes.items()})
            if attributes
            else EMPTY_ATTRIBUTES
        )
        self.node = chart.start
        self._label = ""  # the label of the branch just taken, if the last event was one
        self.end_node: str | None = None
        self._done = False
        self._pending: tuple[str, dict[str, str]] | None = None
        self._token: Token[Span | None] | None = None
        self.trace_id = ""
        self.span_id = ""
        self.parent_span_id = ""
        self.started_ns = 0

    # -- the context manager -------------------------------------------------
    def __enter__(self) -> Span:
        parent = self._parent_arg or _current.get()
        self.trace_id = self._trace_id_arg or (parent.trace_id if parent else _new_id(128))
        self.parent_span_id = parent.span_id if parent else ""
        self.span_id = _new_id(64)
        self._token = _current.set(self)
        self.started_ns = monotonic_ns()
        self._emit(EventKind.BEGIN, self.chart.start)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                if self.span_id in _failed_in(exc) and self._pending is not None:
                    node, extra = self._pending
                    self._close(EventKind.ERROR, node, extra)
                else:
                    self.error(exc)
            elif not self._done:
                self.finish()
        finally:
            if self._token is not None:
                _current.reset(self._token)
                self._token = None

    # -- what steps call -----------------------------------------------------
    def annotate(self, **attributes: Any) -> None:
        """Add attributes (a container id once known, say) to this span's later events."""
        merged = dict(self._attrs)
        merged.update((k, clip(str(v))) for k, v in attributes.items())
        self._attrs = MappingProxyType(merged)

    @property
    def attributes(self) -> Mapping[str, str]:
        return self._attrs

    def visit(self, node: str, attributes: Mapping[str, Any] | None = None) -> None:
        if self._done:  # work that outlives its caller (a shared pull) stays silent
            return
        self.node, self._label, self._pending = node, "", None
        self._emit(EventKind.STEP, node, "", attributes)

    def branch(self, node: str, label: str, attributes: Mapping[str, Any] | None = None) -> None:
        if self._done:
            return
        self.node, self._label, self._pending = node, label, None
        self._emit(EventKind.BRANCH, node, label, attributes)

    def step_failed(self, node: str, exc: BaseException) -> None:
        """A step raised: remember where, in case the exception ends the span.
        The innermost place is kept: the step that raised it, or the decision
        whose branch the code had just taken when it raised (the chart draws
        that branch's edge to "return error"), not the outer steps the
        exception passes through on its way out."""
        if self._done:
            return
        if self._pending is not None and self.span_id in _failed_in(exc):
            return  # an inner step already said where
        at = self.node if self._label else node
        self._pending = (at, _error_attributes(exc))
        _mark_failed_in(exc, self.span_id)

    def finish(self, node: str | None = None) -> None:
        """Close at an end node: ``node``, or the one the chart leads to from here.
        If the chart does not say which, the span closes with an ERROR saying so
        (a tracing mistake must never fail the RPC itself)."""
        if self._done:
            return
        end = node or self.end_node or self.chart.end_after(self.node, self._label)
        if end is None:
            self.error(
                f"chart {self.chart.name}: no single end node follows {self.node!r}; "
                "the code should call span.finish(node)"
            )
            return
        self._close(EventKind.END, end, None)

    def error(self, exc: BaseException | str, node: str | None = None) -> None:
        if self._done:
            return
        if isinstance(exc, BaseException):
            _mark_failed_in(exc, self.span_id)
        self._close(EventKind.ERROR, node or self.node, _error_attributes(exc))

    def _close(self, kind: EventKind, node: str, extra: Mapping[str, Any] | None) -> None:
        self._done = True
        self.node = node
        self._emit(kind, node, "", extra)

    def _emit(
        self, kind: EventKind, node: str, label: str = "", extra: Mapping[str, Any] | None = None
    ) -> None:
        if not self.tracer.enabled:
            return
        attrs = self._attrs
        if extra:
            merged = dict(attrs)
            merged.update((k, clip(str(v), MAX_ERROR_CHARS)) for k, v in extra.items())
            attrs = MappingProxyType(merged)
        # Positional arguments: this runs for every step of every RPC, and
        # keyword arguments cost twice as much here.
        self.tracer.emit(
            TraceEvent(
                self.trace_id,
                self.span_id,
                self.parent_span_id,
                monotonic_ns(),
                time_ns(),
                self.chart.name,
                node,
                kind,
                label,
                attrs,
            )
        )


def current_span() -> Span | None:
    return _current.get()


class step:
    """Trace one chart node: a decorator for a step function, or a context manager
    for a block. An exception escaping the step is re-raised; if it also leaves
    the span, the span ends with an ERROR at this node (see :class:`Span`)."""

    __slots__ = ("attributes", "node")

    def __init__(self, node: str, **attributes: Any) -> None:
        self.node = node
        self.attributes = attributes

    def __enter__(self) -> Span | None:
        span = _current.get()
        if span is not None:
            span.visit(self.node, self.attributes)
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            span = _current.get()
            if span is not None:
                span.step_failed(self.node, exc)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self:
                return fn(*args, **kwargs)

        return cast(Callable[P, Any], wrapper)


class child_span:
    """Run a function as a walk through a chart of its own, a child span of the
    current one: the runtime's create under CreateContainer's
    ``m_cb->container.create`` is RuntimeCreate's chart, drawn beside it, not
    more nodes in it. Outside any span (a restart, a unit test) and after the
    caller's span has ended (work that outlives its caller) it is untraced."""

    __slots__ = ("chart",)

    def __init__(self, chart: str) -> None:
        self.chart = chart

    def _span(self) -> contextlib.AbstractContextManager[Span | None]:
        parent = _current.get()
        if parent is None or parent._done:
            return contextlib.nullcontext()
        return parent.tracer.span(self.chart, parent=parent)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self._span():
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self._span():
                return fn(*args, **kwargs)

        return cast(Callable[P, Any], wrapper)


def branch(node: str, label: str, **attributes: Any) -> None:
    """Record that decision ``node`` took the edge labelled ``label``."""
    span = _current.get()
    if span is not None:
        span.branch(node, label, attributes)


def decide(node: str, condition: bool, yes: str = "Y", no: str = "N") -> bool:
    """Trace a yes/no decision (iSulad's charts label them Y and N) and return it."""
    branch(node, yes if condition else no)
    return condition


def annotate(**attributes: str) -> None:
    span = _current.get()
    if span is not None:
        span.annotate(**attributes)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run a block untraced in the current span. Only where a chart
    deliberately folds another chart's flow into one of its nodes (RunPodSandbox's
    ``pull pause image`` is a whole PullImage; ListPodSandboxStats's ``PodSandboxStats``
    a whole PodSandboxStats): the folded flow's steps are not nodes of this chart.
    Each use says which flow it folds."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
