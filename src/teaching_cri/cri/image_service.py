"""``runtime.v1.ImageService``: PullImage, ImageStatus, ListImages, RemoveImage,
ImageFsInfo. None is implemented yet: each answers UNIMPLEMENTED naming itself."""

from __future__ import annotations

from ..api import api_pb2, api_pb2_grpc
from ..trace.tracer import Tracer
from .unimplemented import fill_unimplemented

IMAGE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ImageService"]


@fill_unimplemented(IMAGE_SERVICE)
class ImageService(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
