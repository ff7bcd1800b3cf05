"""``runtime.v1.ImageService``: each RPC's handler lives in its own module
(image_pull.py, image_status.py, image_remove.py); this class gathers them, as
iSulad's ``RuntimeV1ImageServiceImpl`` gathers its image manager's calls."""

from __future__ import annotations

from ..api import api_pb2, api_pb2_grpc
from ..image.manager import ImageManager
from ..trace.tracer import Tracer
from . import image_pull, image_remove, image_status
from .unimplemented import fill_unimplemented

IMAGE_SERVICE = api_pb2.DESCRIPTOR.services_by_name["ImageService"]


@fill_unimplemented(IMAGE_SERVICE)
class ImageService(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageManager, tracer: Tracer) -> None:
        self.images = images
        self.tracer = tracer

    PullImage = image_pull.PullImage
    ImageStatus = image_status.ImageStatus
    ListImages = image_status.ListImages
    RemoveImage = image_remove.RemoveImage
    ImageFsInfo = image_remove.ImageFsInfo
