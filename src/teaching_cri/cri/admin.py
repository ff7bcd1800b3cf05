"""``teachingcri.admin.v1.AdminService``: teaching-cri's own calls beside CRI's
(charts: diagrams/ImportImage.toml, diagrams/BuildLocalImage.toml)."""

from __future__ import annotations

from pathlib import Path

from ..api import Context, admin_pb2, admin_pb2_grpc
from ..errors import InvalidArgument
from ..image.manager import ImageManager
from ..trace.tracer import Tracer
from ._rpc import rpc


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, images: ImageManager, tracer: Tracer) -> None:
        self.images = images
        self.tracer = tracer

    @rpc("ImportImage")
    async def ImportImage(
        self, request: admin_pb2.ImportImageRequest, context: Context
    ) -> admin_pb2.ImportImageResponse:
        path = Path(request.path)
        if not path.is_absolute():
            raise InvalidArgument(f"path {request.path!r}: must be absolute (the server reads it)")
        record = await self.images.import_archive(path, request.name)
        return admin_pb2.ImportImageResponse(image_ref=record.id, repo_tags=record.repo_tags)

    @rpc("BuildLocalImage")
    async def BuildLocalImage(
        self, request: admin_pb2.BuildLocalImageRequest, context: Context
    ) -> admin_pb2.BuildLocalImageResponse:
        if not request.name:
            raise InvalidArgument("name is empty: say what to call the image")
        record = await self.images.build_local(request.name)
        return admin_pb2.BuildLocalImageResponse(image_ref=record.id, repo_tags=record.repo_tags)
