"""GetContainerEvents (chart: diagrams/GetContainerEvents.toml; ours, after
iSulad's mailbox): a server stream of CREATED, STARTED, STOPPED and DELETED
events, each with the container's status, for the kubelet's evented PLEG.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..api import Context, api_pb2
from ..errors import CRIError, ResourceExhausted, Unavailable
from ..manager.container import Container
from ..manager.events import Mailbox, Subscriber
from ..trace.tracer import MAX_ERROR_CHARS, branch, clip, current_span, quiet, step
from ._rpc import _trace_id
from .container_list import container_status_to_grpc

if TYPE_CHECKING:
    from .runtime_service import RuntimeService


async def GetContainerEvents(
    svc: RuntimeService, request: api_pb2.GetEventsRequest, context: Context
) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    mailbox = svc.containers().mailbox
    try:
        attributes = {"rpc": "GetContainerEvents"}
        with svc.tracer.span(
            "GetContainerEvents", trace_id=_trace_id(context), attributes=attributes
        ):
            subscriber = mailbox_subscribe(mailbox)
            writing = False  # where a cancel finds us: waiting for a message, or writing one
            try:
                while True:
                    message = await message_subscriber_pop(subscriber)
                    if message is Mailbox.SHUTDOWN:
                        if subscriber.overflowed:
                            branch("next_message", "overflowed")
                            raise ResourceExhausted(
                                "this subscriber fell too far behind and was cut off"
                            )
                        branch("next_message", "shutdown")
                        raise Unavailable("the server is shutting down")
                    branch("next_message", "event")
                    kind, container = message
                    response = generate_cri_container_event(kind, container)
                    writing = True
                    with step("writer_write"):
                        yield response
                    writing = False
            except (asyncio.CancelledError, GeneratorExit):
                if not writing:
                    branch("next_message", "cancelled")
                mailbox_unsubscribe(mailbox, subscriber)
                span = current_span()
                if span is not None:
                    span.finish("end_of_stream")
                raise
            finally:
                mailbox.unsubscribe(subscriber)
    except CRIError as exc:
        await context.abort(exc.code, clip(f"GetContainerEvents: {exc}", MAX_ERROR_CHARS))


@step("mailbox_subscribe")
def mailbox_subscribe(mailbox: Mailbox) -> Subscriber:
    return mailbox.subscribe()


@step("message_subscriber_pop")
async def message_subscriber_pop(subscriber: Subscriber) -> Any:
    return await subscriber.queue.get()


@step("generate_cri_container_event")
def generate_cri_container_event(kind: str, container: Container) -> api_pb2.ContainerEventResponse:
    with quiet():  # folds ContainerStatus's flow: here the conversion is this one step
        status = container_status_to_grpc(container)
    return api_pb2.ContainerEventResponse(
        container_id=container.id,
        container_event_type=kind,
        created_at=container.created_at,
        containers_statuses=[status],
    )


@step("mailbox_unsubscribe")
def mailbox_unsubscribe(mailbox: Mailbox, subscriber: Subscriber) -> None:
    mailbox.unsubscribe(subscriber)
