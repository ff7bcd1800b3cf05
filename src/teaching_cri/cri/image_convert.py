"""ImageToGRPC: one image record as CRI's ``Image`` message (shared by
ImageStatus and ListImages, as iSulad's ``ImageToGRPC`` is)."""

from __future__ import annotations

from ..api import api_pb2
from ..image.store import ImageRecord


def user_of(record: ImageRecord) -> tuple[int | None, str]:
    """The image config's ``User`` as CRI wants it: a uid, or a user name
    (``1000``, ``1000:100`` → uid 1000; ``nobody``, ``nobody:nogroup`` → name)."""
    user = str(record.config.get("User", "")).split(":", 1)[0]
    if not user:
        return None, ""
    return (int(user), "") if user.isdigit() else (None, user)


def image_to_grpc(record: ImageRecord) -> api_pb2.Image:
    uid, username = user_of(record)
    image = api_pb2.Image(
        id=record.id,
        repo_tags=record.repo_tags,
        repo_digests=record.repo_digests,
        size=max(record.size, 1),  # CRI: must be > 0
        username=username,
        spec=api_pb2.ImageSpec(image=record.id),
        pinned=record.pinned,
    )
    if uid is not None:
        image.uid.value = uid
    return image
