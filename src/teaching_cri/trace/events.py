"""The trace event: one step of one call through one flow chart.

An event names a node of a chart in ``diagrams/`` and says what happened there
(``kind``). Events of one call share a ``span_id``; calls made on behalf of
another (a callback inside an RPC) open child spans with ``parent_span_id`` set,
and all spans of one kubelet request share a ``trace_id``. The shape follows
W3C trace context ids so traces can later be exported to common tools.
"""

from __future__ import annotations

import enum
import json
import json.encoder
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EMPTY_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})
_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


class EventKind(enum.Enum):
    """What happened at a node (the ``kind`` of the issue's event)."""

    BEGIN = "begin"  # the span opened at the chart's start node
    STEP = "step"  # an action node was reached
    BRANCH = "branch"  # a decision node was reached and ``label``'s edge taken
    END = "end"  # the span closed at one of the chart's end nodes
    ERROR = "error"  # the span failed at ``node``; attribute "error" says why


@dataclass(slots=True)
class TraceEvent:
    """Treated as immutable once emitted; not frozen only because a frozen
    dataclass's ``__init__`` costs several times more, on every step of every RPC."""

    trace_id: str
    span_id: str
    parent_span_id: str
    monotonic_ns: int
    unix_nano: int
    chart: str
    node: str
    kind: EventKind
    label: str = ""
    attributes: Mapping[str, str] = field(default_factory=lambda: EMPTY_ATTRIBUTES)
    sequence: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "monotonic_ns": self.monotonic_ns,
            "unix_nano": self.unix_nano,
            "chart": self.chart,
            "node": self.node,
            "kind": self.kind.value,
            "label": self.label,
            "attributes": dict(self.attributes),
            "sequence": self.sequence,
        }

    def to_json(self) -> str:
        """One compact JSON object, keys in a fixed order. Written by hand
        around the C string encoder because the JSONL sink serialises every
        event and ``json.dumps(self.to_dict())`` costs several times more."""
        enc = _encode_str
        attrs = self.attributes
        attributes = (
            "{" + ",".join(f"{enc(k)}:{enc(v)}" for k, v in attrs.items()) + "}" if attrs else "{}"
        )
        return (
            f'{{"trace_id":{enc(self.trace_id)},"span_id":{enc(self.span_id)},'
            f'"parent_span_id":{enc(self.parent_span_id)},"monotonic_ns":{self.monotonic_ns:d},'
            f'"unix_nano":{self.unix_nano:d},"chart":{enc(self.chart)},"node":{enc(self.node)},'
            f'"kind":"{self.kind.value}","label":{enc(self.label)},"attributes":{attributes},'
            f'"sequence":{self.sequence:d}}}'
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceEvent:
        return cls(
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_span_id=str(data.get("parent_span_id", "")),
            monotonic_ns=int(data["monotonic_ns"]),
            unix_nano=int(data["unix_nano"]),
            chart=str(data["chart"]),
            node=str(data["node"]),
            kind=EventKind(data["kind"]),
            label=str(data.get("label", "")),
            attributes={str(k): str(v) for k, v in dict(data.get("attributes", {})).items()},
            sequence=int(data.get("sequence", 0)),
        )


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Which events a subscriber wants; set fields are ANDed (TraceService.Follow)."""

    charts: frozenset[str] = frozenset()
    container_id: str = ""
    sandbox_id: str = ""
    trace_id: str = ""
    since_unix_nano: int = 0

    def matches(self, event: TraceEvent) -> bool:
        if self.charts and event.chart not in self.charts:
            return False
        if self.trace_id and event.trace_id != self.trace_id:
            return False
        if self.container_id and event.attributes.get("container_id") != self.container_id:
            return False
        if self.sandbox_id and event.attributes.get("sandbox_id") != self.sandbox_id:
            return False
        return event.unix_nano >= self.since_unix_nano
