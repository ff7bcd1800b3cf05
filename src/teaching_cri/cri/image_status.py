"""ImageStatus and ListImages (charts: diagrams/ImageStatus.toml, diagrams/ListImages.toml).

CRI: a missing image is not an error for ImageStatus, just an empty response;
that is how the kubelet asks "do I need to pull?".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..errors import InvalidArgument
from ..image.store import ImageRecord
from ..trace.tracer import decide, step
from ._rpc import rpc
from .image_convert import image_to_grpc

if TYPE_CHECKING:
    from .image_service import ImageService


@rpc("ImageStatus")
async def ImageStatus(
    svc: ImageService, request: api_pb2.ImageStatusRequest, context: Context
) -> api_pb2.ImageStatusResponse:
    name = check_image_spec(request.image)
    record = m_cb_image_status(svc, name)
    if not decide("image_found", record is not None):
        return api_pb2.ImageStatusResponse()
    assert record is not None
    response = api_pb2.ImageStatusResponse(image=image_to_grpc_step(record))
    if decide("verbose", request.verbose):
        response.info.update(build_verbose_info(record))
    return response


@rpc("ListImages")
async def ListImages(
    svc: ImageService, request: api_pb2.ListImagesRequest, context: Context
) -> api_pb2.ListImagesResponse:
    records = m_cb_image_list(svc)
    if decide("filter_set", bool(request.filter.image.image)):
        records = filter_by_image(svc, records, request.filter.image.image)
    return api_pb2.ListImagesResponse(images=images_to_grpc(records))


@step("check_image_spec")
def check_image_spec(spec: api_pb2.ImageSpec) -> str:
    if not spec.image:
        raise InvalidArgument("image.image is empty: name the image (reference or id)")
    return spec.image


@step("m_cb_image_status")
def m_cb_image_status(svc: ImageService, name: str) -> ImageRecord | None:
    return svc.images.resolve(name)


@step("image_to_grpc")
def image_to_grpc_step(record: ImageRecord) -> api_pb2.Image:
    return image_to_grpc(record)


@step("build_verbose_info")
def build_verbose_info(record: ImageRecord) -> dict[str, str]:
    """crictl ``inspecti`` decodes the ``info`` key: one JSON document."""
    info = {
        "chainID": record.chain_id,
        "manifestDigest": record.manifest_digest,
        "manifestMediaType": record.manifest_media_type,
        "configDigest": record.config_digest,
        "created": record.created,
        "imageSpec": {"config": record.config},
        "layers": [vars(layer) for layer in record.layers],
    }
    return {"info": json.dumps(info, sort_keys=True)}


@step("m_cb_image_list")
def m_cb_image_list(svc: ImageService) -> list[ImageRecord]:
    return svc.images.images.list()


@step("filter_by_image")
def filter_by_image(svc: ImageService, records: list[ImageRecord], name: str) -> list[ImageRecord]:
    wanted = svc.images.resolve(name)
    return [r for r in records if wanted is not None and r.id == wanted.id]


@step("image_to_grpc_for_each")
def images_to_grpc(records: list[ImageRecord]) -> list[api_pb2.Image]:
    return [image_to_grpc(r) for r in records]
