"""The one line that makes a servicer method an instrumented CRI RPC.

``@rpc("Version")`` opens the span over the RPC's chart (so every step the
handler and the manager take is traced against it), carries the ids the
request names as span attributes (so ``trace follow --container`` finds them),
continues the caller's W3C ``traceparent`` when the client sent one, and turns
errors into gRPC statuses: a :class:`~teaching_cri.errors.CRIError` into its
code, anything else into INTERNAL with the RPC named; never a crashed server.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from ..api import Context
from ..errors import CRIError
from ..trace.tracer import MAX_ERROR_CHARS, Tracer, clip

log = logging.getLogger("teaching_cri.cri")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# Request fields whose values identify what a span is about.
_ID_FIELDS = {"container_id": "container_id", "pod_sandbox_id": "sandbox_id"}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


class Traced(Protocol):
    tracer: Tracer


def _request_attributes(request: Message) -> dict[str, str]:
    attrs = {}
    for field, attr in _ID_FIELDS.items():
        if field in request.DESCRIPTOR.fields_by_name:
            value = getattr(request, field)
            if value:
                attrs[attr] = clip(value)
    return attrs


def _trace_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            m = _TRACEPARENT.match(value)
            if m and m.group(1) != "0" * 32:
                return m.group(1)
    return ""


Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


def rpc(chart: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    def decorate(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def handler(svc: Traced, request: Req, context: Context) -> Resp:
            try:
                attributes = {"rpc": chart, **_request_attributes(request)}
                with svc.tracer.span(chart, trace_id=_trace_id(context), attributes=attributes):
                    return await fn(svc, request, context)
            except CRIError as exc:
                # Trailers are capped at 16 KiB: a message echoing a huge request
                # would turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED.
                await context.abort(exc.code, clip(f"{chart}: {exc}", MAX_ERROR_CHARS))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                log.exception("%s failed", chart)
                message = clip(f"{chart}: internal error: {exc}", MAX_ERROR_CHARS)
                await context.abort(grpc.StatusCode.INTERNAL, message)
            raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

        return handler

    return decorate
