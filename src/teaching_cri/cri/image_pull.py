"""PullImage (chart: diagrams/PullImage.toml).

The servicer converts the request (the reference and CRI's AuthConfig), asks
the image manager to pull (iSulad's ``m_cb->image.pull``; its steps are traced
inside it), and answers with ``image_ref``: since CRI v1.36 this must be the
same identifier as ``Image.id`` and ``ContainerStatus.image_id``, the config
digest, not the name that was asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, api_pb2
from ..image.registry import Credentials
from ..image.store import ImageRecord
from ..trace.tracer import step
from ._rpc import rpc

if TYPE_CHECKING:
    from .image_service import ImageService


@rpc("PullImage")
async def PullImage(
    svc: ImageService, request: api_pb2.PullImageRequest, context: Context
) -> api_pb2.PullImageResponse:
    name, credentials = pull_image_request_from_grpc(request)
    record = await svc.images.pull(name, credentials)
    return pull_image_response_to_grpc(record)


@step("pull_image_request_from_grpc")
def pull_image_request_from_grpc(request: api_pb2.PullImageRequest) -> tuple[str, Credentials]:
    a = request.auth
    return request.image.image, Credentials.from_auth(
        a.username, a.password, a.auth, a.identity_token, a.registry_token
    )


@step("pull_image_response_to_grpc")
def pull_image_response_to_grpc(record: ImageRecord) -> api_pb2.PullImageResponse:
    return api_pb2.PullImageResponse(image_ref=record.id)
