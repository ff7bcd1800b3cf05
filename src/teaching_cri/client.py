"""A client for tests and notebooks: typed stubs on the server's unix socket.

from teaching_cri.client import connect
with connect() as cri:
    print(cri.runtime.Version(api_pb2.VersionRequest()))
    for event in cri.follow(charts=["Version"]):
        ...
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from .api import admin_pb2_grpc, api_pb2_grpc, trace_pb2, trace_pb2_grpc
from .config import MAX_MESSAGE_BYTES, default_socket
from .trace.events import TraceEvent
from .trace.wire import event_from_pb

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass
class Client:
    channel: grpc.Channel
    socket: Path
    runtime: api_pb2_grpc.RuntimeServiceStub = field(init=False)
    image: api_pb2_grpc.ImageServiceStub = field(init=False)
    trace: trace_pb2_grpc.TraceServiceStub = field(init=False)
    admin: admin_pb2_grpc.AdminServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)
        self.trace = trace_pb2_grpc.TraceServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def follow(
        self,
        *,
        charts: Iterable[str] = (),
        container_id: str = "",
        sandbox_id: str = "",
        trace_id: str = "",
        since_unix_nano: int = 0,
    ) -> Iterator[tuple[TraceEvent, int]]:
        """Live events as (event, events dropped before it); cancel with ``close``."""
        request = trace_pb2.FollowRequest(
            filter=trace_pb2.TraceFilter(
                charts=list(charts),
                container_id=container_id,
                sandbox_id=sandbox_id,
                trace_id=trace_id,
                since_unix_nano=since_unix_nano,
            )
        )
        for msg in self.trace.Follow(request):
            yield event_from_pb(msg), msg.dropped_before

    def recent(
        self, *, charts: Iterable[str] = (), trace_id: str = "", since_unix_nano: int = 0
    ) -> list[TraceEvent]:
        response = self.trace.Recent(
            trace_pb2.RecentRequest(
                filter=trace_pb2.TraceFilter(
                    charts=list(charts), trace_id=trace_id, since_unix_nano=since_unix_nano
                )
            )
        )
        return [event_from_pb(e) for e in response.events]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(socket: str | Path | None = None, *, wait: float | None = 10.0) -> Client:
    """Connect to a server's socket (the default one if None) and, unless
    ``wait`` is None, wait up to ``wait`` seconds for it to answer."""
    path = Path(socket) if socket else default_socket()
    channel = grpc.insecure_channel(f"unix://{path.absolute()}", options=CHANNEL_OPTIONS)
    client = Client(channel, path)
    if wait is not None:
        try:
            client.wait_ready(wait)
        except grpc.FutureTimeoutError:
            channel.close()
            raise ConnectionError(f"no teaching-cri server answers on {path}") from None
    return client


def wait_for_socket(path: Path, timeout: float = 10.0) -> None:
    """Wait until a server listens on ``path`` (for tests that spawn one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                connect(path, wait=min(1.0, max(0.1, deadline - time.monotonic()))).close()
                return
            except ConnectionError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"no server on {path} after {timeout} s")
