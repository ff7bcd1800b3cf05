"""RemoveImage and ImageFsInfo (charts: diagrams/RemoveImage.toml, diagrams/ImageFsInfo.toml).

RemoveImage is idempotent, as CRI requires: removing an image that is not
there succeeds. An image is one config digest, whatever names it was pulled
by; removing it by any one of them (a tag or digest, of any repository or
registry, or its id) removes the image with all its names, as containerd's
RemoveImage deletes every reference of the image it resolves and critest's
"removing image from one registry should remove all tags from other
registries" expects. An image a container uses is refused with
FAILED_PRECONDITION. The blobs and snapshots no other image shares go with
it: the blobs deleted, the snapshots renamed aside, their files deleted by a
collector thread once the call has answered (``ImageManager._delete_unreferenced``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..image.manager import FsUsage
from ..image.store import ImageRecord
from ..trace.tracer import decide, step
from ._rpc import rpc
from .image_status import check_image_spec

if TYPE_CHECKING:
    from .image_service import ImageService


@rpc("RemoveImage")
async def RemoveImage(
    svc: ImageService, request: api_pb2.RemoveImageRequest, context: Context
) -> api_pb2.RemoveImageResponse:
    name = check_image_spec(request.image)
    record = find_image(svc, name)
    if decide("image_found", record is not None):
        assert record is not None
        # File system work (unlinks, renames) that a busy disk can stall: off
        # the event loop, so the kubelet's other calls go on meanwhile.
        await asyncio.to_thread(m_cb_image_remove, svc, record)
    return api_pb2.RemoveImageResponse()


@step("find_image")
def find_image(svc: ImageService, name: str) -> ImageRecord | None:
    return svc.images.resolve(name)


@step("m_cb_image_remove")
def m_cb_image_remove(svc: ImageService, record: ImageRecord) -> None:
    svc.images.remove(record)


@rpc("ImageFsInfo")
async def ImageFsInfo(
    svc: ImageService, request: api_pb2.ImageFsInfoRequest, context: Context
) -> api_pb2.ImageFsInfoResponse:
    # Walking the stores touches every file: in a thread, not on the event loop.
    images = await asyncio.to_thread(measure_image_store, svc)
    containers = await asyncio.to_thread(measure_container_snapshots, svc)
    now = time.time_ns()
    return api_pb2.ImageFsInfoResponse(
        image_filesystems=[usage_to_grpc(images, now)],
        container_filesystems=[usage_to_grpc(containers, now)],
    )


@step("measure_image_store")
def measure_image_store(svc: ImageService) -> FsUsage:
    return svc.images.image_fs_usage()


@step("measure_container_snapshots")
def measure_container_snapshots(svc: ImageService) -> FsUsage:
    return svc.images.container_fs_usage()


def usage_to_grpc(usage: FsUsage, now: int) -> api_pb2.FilesystemUsage:
    return api_pb2.FilesystemUsage(
        timestamp=now,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.path),
        used_bytes=api_pb2.UInt64Value(value=usage.bytes),
        inodes_used=api_pb2.UInt64Value(value=usage.inodes),
    )
