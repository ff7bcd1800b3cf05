"""What the notebook's widgets share: a live view in JupyterLab, and a static
rendering of the same thing wherever no widget front end runs.

A Jupyter output carries several representations of one object; the page
shows the richest it can. A widget's own is only a reference to a model
that lives in the kernel, which nbclient, the book and a terminal IPython
cannot draw, so each widget adds what they can: SVG or text of what it shows
at that moment. JupyterLab with the widget manager picks the live view.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import anywidget

from ..client import Client
from ..trace.events import TraceEvent
from .feed import Coalescer, Follower


class LiveWidget(anywidget.AnyWidget):
    def fallback(self) -> dict[str, str]:
        """The static renderings, by MIME type ("text/plain" at least). Each
        widget gives its SVG or text of what it shows; this one only says what
        the output is, for a widget that has nothing better."""
        return {"text/plain": f"<{type(self).__name__}: live in JupyterLab>"}

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        live = super()._repr_mimebundle_(**kwargs)
        data, metadata = live if isinstance(live, tuple) else (live or {}, {})
        return {**data, **self.fallback()}, metadata


class FollowingWidget(LiveWidget):
    """A widget drawn from trace events: they arrive from a ``Follow`` stream
    (a thread of its own) or from ``feed``, are applied under one lock, and the
    page gets at most ten updates a second however fast they come."""

    def _follow(
        self,
        client: Client | None,
        apply: Callable[[list[TraceEvent]], None],
        publish: Callable[[], None],
        interval: float,
        **trace_filter: Any,
    ) -> None:
        """Set up the feed: ``apply`` takes a batch of events, ``publish`` sends
        the page what they made; with a client, a follower with ``trace_filter``
        (charts, trace_id, container_id, sandbox_id, since_unix_nano) feeds it."""
        self._lock = threading.Lock()
        self._coalescer = Coalescer(apply, publish, interval)
        self._follower = (
            Follower(client, self._coalescer.feed, **trace_filter) if client is not None else None
        )

    def feed(self, events: Iterable[TraceEvent]) -> None:
        """Events as they arrive (the follower's thread, or a test's)."""
        self._coalescer.feed(events)

    def flush(self) -> None:
        self._coalescer.flush()

    @property
    def updates(self) -> int:
        """How many updates were sent to the page (at most ~10 a second)."""
        return self._coalescer.updates

    def stop(self) -> None:
        """Stop following; the widget keeps what it has drawn."""
        if self._follower is not None:
            self._follower.stop()
        self._coalescer.close()
