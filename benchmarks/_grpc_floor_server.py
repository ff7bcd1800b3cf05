"""The Python servers of ``grpc_floor.py`` beside ``_floor.py``: each answers
``Version`` and nothing else, on a unix socket, with the same VersionResponse.

* ``aio-raw``: ``grpc.aio`` with a generic handler that hands back fixed bytes,
  so that protobuf is not run on either side of the server;
* ``sync``: the sync ``grpc.server`` on a pool of 4 threads, with the generated
  servicer (a VersionResponse made and serialized per call, as ``_floor.py`` does);
* ``sync-raw``: the same server with the fixed bytes.

::

    python benchmarks/_grpc_floor_server.py aio-raw|sync|sync-raw SOCKET
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from teaching_cri.api import api_pb2, api_pb2_grpc

RESPONSE = api_pb2.VersionResponse(
    version="0.1.0", runtime_name="floor", runtime_version="0", runtime_api_version="v1"
)
RESPONSE_BYTES: bytes = RESPONSE.SerializeToString()
SIGNALS = (signal.SIGINT, signal.SIGTERM)
VARIANTS = ("aio-raw", "sync", "sync-raw")


class Floor(api_pb2_grpc.RuntimeServiceServicer):
    def Version(
        self, request: api_pb2.VersionRequest, context: grpc.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="floor", runtime_version="0", runtime_api_version="v1"
        )


def _answer(request: bytes, context: grpc.ServicerContext) -> bytes:
    return RESPONSE_BYTES


async def _answer_async(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return RESPONSE_BYTES


def _raw(answer: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """``answer`` as the service's Version, with no (de)serializer: bytes in and out."""
    version: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(answer)
    return grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", {"Version": version})


async def serve_aio(path: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_raw(_answer_async),))
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    stop = asyncio.Event()
    for signum in SIGNALS:
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def serve_sync(path: str, raw: bool) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    if raw:
        server.add_generic_rpc_handlers((_raw(_answer),))
    else:
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    stop = threading.Event()
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    variant, path = sys.argv[1:]
    if variant not in VARIANTS:
        sys.exit(f"no server {variant!r}: one of {', '.join(VARIANTS)}")
    if variant == "aio-raw":
        asyncio.run(serve_aio(path))
    else:
        serve_sync(path, raw=variant == "sync-raw")
