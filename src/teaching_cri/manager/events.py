"""The container lifecycle mailbox: iSulad's ``mailbox_publish`` with
subscribers, behind CRI's GetContainerEvents.

Publishing never waits: each subscriber has a bounded queue, and one that
falls too far behind is cut off (its stream ends with RESOURCE_EXHAUSTED)
rather than slowing the runtime, which publishes from inside its RPCs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

MAX_QUEUED = 1000


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))
    overflowed: bool = False
    closed: bool = False


class Mailbox:
    SHUTDOWN = object()

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, message: Any) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                subscriber.overflowed = True
                self.subscribers.discard(subscriber)
                with_room(subscriber)

    def close(self) -> None:
        """The server stops: every stream ends."""
        for subscriber in list(self.subscribers):
            subscriber.closed = True
            with_room(subscriber)
        self.subscribers.clear()


def with_room(subscriber: Subscriber) -> None:
    """Wake a waiting reader with the end marker, making room for it if need be."""
    if subscriber.queue.full():
        subscriber.queue.get_nowait()
    subscriber.queue.put_nowait(Mailbox.SHUTDOWN)
