"""The floor for a unary CRI call: a bare ``grpc.aio`` server that answers
``Version`` and nothing else, on a unix socket. No tracing, no request cache, no
state: what is left of a call here is gRPC, protobuf and the unix socket, so a
status call of a real server can come no nearer to this on the same machine.

``vs_containerd.py`` starts it as a subprocess (a server of its own, as the two
under test are), times ``Version`` against it beside theirs, and stops it::

    python benchmarks/_floor.py SOCKET
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from teaching_cri.api import api_pb2, api_pb2_grpc


class Floor(api_pb2_grpc.RuntimeServiceServicer):
    async def Version(
        self, request: api_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="floor", runtime_version="0", runtime_api_version="v1"
        )


async def serve(path: str) -> None:
    server = grpc.aio.server()
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
