from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_BEGIN: _ClassVar[EventKind]
    EVENT_KIND_STEP: _ClassVar[EventKind]
    EVENT_KIND_BRANCH: _ClassVar[EventKind]
    EVENT_KIND_END: _ClassVar[EventKind]
    EVENT_KIND_ERROR: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_BEGIN: EventKind
EVENT_KIND_STEP: EventKind
EVENT_KIND_BRANCH: EventKind
EVENT_KIND_END: EventKind
EVENT_KIND_ERROR: EventKind

class TraceFilter(_message.Message):
    __slots__ = ("charts", "container_id", "sandbox_id", "trace_id", "since_unix_nano")
    CHARTS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    charts: _containers.RepeatedScalarFieldContainer[str]
    container_id: str
    sandbox_id: str
    trace_id: str
    since_unix_nano: int
    def __init__(self, charts: _Optional[_Iterable[str]] = ..., container_id: _Optional[str] = ..., sandbox_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., since_unix_nano: _Optional[int] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: TraceFilter
    def __init__(self, filter: _Optional[_Union[TraceFilter, _Mapping]] = ...) -> None: ...

class RecentRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: TraceFilter
    def __init__(self, filter: _Optional[_Union[TraceFilter, _Mapping]] = ...) -> None: ...

class RecentResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TraceEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TraceEvent, _Mapping]]] = ...) -> None: ...

class TraceEvent(_message.Message):
    __slots__ = ("trace_id", "span_id", "parent_span_id", "monotonic_ns", "unix_nano", "chart", "node", "kind", "label", "attributes", "sequence", "dropped_before")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    MONOTONIC_NS_FIELD_NUMBER: _ClassVar[int]
    UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    CHART_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    parent_span_id: str
    monotonic_ns: int
    unix_nano: int
    chart: str
    node: str
    kind: EventKind
    label: str
    attributes: _containers.ScalarMap[str, str]
    sequence: int
    dropped_before: int
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., parent_span_id: _Optional[str] = ..., monotonic_ns: _Optional[int] = ..., unix_nano: _Optional[int] = ..., chart: _Optional[str] = ..., node: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., label: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., sequence: _Optional[int] = ..., dropped_before: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SinkStats(_message.Message):
    __slots__ = ("name", "delivered", "dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    delivered: int
    dropped: int
    def __init__(self, name: _Optional[str] = ..., delivered: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("emitted", "subscribers", "sinks")
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    SINKS_FIELD_NUMBER: _ClassVar[int]
    emitted: int
    subscribers: int
    sinks: _containers.RepeatedCompositeFieldContainer[SinkStats]
    def __init__(self, emitted: _Optional[int] = ..., subscribers: _Optional[int] = ..., sinks: _Optional[_Iterable[_Union[SinkStats, _Mapping]]] = ...) -> None: ...
