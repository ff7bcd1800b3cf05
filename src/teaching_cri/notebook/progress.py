"""PullProgress: one bar per layer while an image arrives.

PullImage's chart loops on ``fetch layer``: the step is visited when a layer
starts and again for every tenth of its bytes, with the attributes ``layer``,
``index`` ("2/5"), ``size``, ``bytes`` and ``cached`` (already in the content
store). Those visits are the bars; BuildLocalImage walks the same step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import traitlets

from ..client import Client
from ..trace.events import EventKind, TraceEvent
from .base import FollowingWidget

STATIC = Path(__file__).parent / "static"


def bar(layer: dict[str, Any], width: int = 30) -> str:
    size, done = int(layer["size"]), int(layer["bytes"])
    filled = width * done // size if size else width
    note = " (cached)" if layer["cached"] else ""
    return (
        f"layer {layer['index']:>5} [{'#' * filled}{'.' * (width - filled)}] "
        f"{done:>11,} / {size:,} bytes{note}"
    )


class PullProgress(FollowingWidget):
    """The layers of the pulls (or local builds) of one trace, or of a filter."""

    _esm = STATIC / "progress.js"
    layers: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    outcome = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        client: Client | None = None,
        *,
        trace_id: str = "",
        since_unix_nano: int = 0,
        interval: float = 0.1,
    ) -> None:
        super().__init__()
        self._layers: dict[str, dict[str, Any]] = {}
        self._outcome = ""
        self._follow(
            client,
            self._apply,
            self._publish,
            interval,
            trace_id=trace_id,
            charts=() if trace_id else ("PullImage", "BuildLocalImage"),
            since_unix_nano=since_unix_nano,
        )

    def _apply(self, events: list[TraceEvent]) -> None:
        with self._lock:
            for e in events:
                a = e.attributes
                if e.node == "fetch_layer" and "layer" in a:
                    layer = self._layers.setdefault(
                        a["layer"],
                        {"digest": a["layer"], "index": a.get("index", "?"), "cached": False},
                    )
                    layer["size"] = int(a.get("size", "0") or 0)
                    seen = int(a.get("bytes", "0") or 0)
                    layer["bytes"] = max(seen, int(layer.get("bytes", 0)))
                    layer["cached"] = layer["cached"] or a.get("cached") == "True"
                elif e.kind is EventKind.END and e.chart in ("PullImage", "BuildLocalImage"):
                    self._outcome = "done"
                    for layer in self._layers.values():  # the last tenth is not reported
                        layer["bytes"] = layer["size"]
                elif e.kind is EventKind.ERROR and not e.parent_span_id:
                    self._outcome = "failed: " + e.attributes.get("error", "")

    def _publish(self) -> None:
        with self._lock:
            layers = [dict(v) for v in self._layers.values()]
            outcome = self._outcome
        with self.hold_sync():
            self.layers, self.outcome = layers, outcome

    def text(self) -> str:
        with self._lock:
            lines = [bar(v) for v in self._layers.values()] or ["(no layer yet)"]
            if self._outcome:
                lines.append(self._outcome)
        return "\n".join(lines)

    def fallback(self) -> dict[str, str]:
        self._coalescer.flush()  # what has arrived, not what the last tick had
        return {"text/plain": self.text()}
