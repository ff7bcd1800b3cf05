"""Images from files instead of registries: OCI layout archives and ``docker save``.

An *OCI image layout* (image-spec image-layout.md) is a directory with an
``oci-layout`` marker, an ``index.json`` naming the images, and every blob
under ``blobs/sha256/<hex>``: exactly what a registry serves, as files. Tar it
and you have what ``docker save`` writes since Docker 25 and what
``skopeo copy … oci-archive:`` writes. Older ``docker save`` archives instead
have a ``manifest.json`` listing each image's config file, tags and
uncompressed layer tars; we turn those into a layout first.

:class:`LayoutSource` then answers the same two questions a registry does
(a manifest by reference, a blob by digest), so importing an image walks the
same steps as pulling one: every blob verified as it is copied into the
content store, layers unpacked, the record committed last.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tarfile
from pathlib import Path

from ..errors import InvalidArgument, NotFound
from .layout import add_to_layout_index, find_in_layout, init_layout, read_layout_index, write_blob
from .oci import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    canonical_json,
    load_json_object,
    sha256_digest,
)
from .registry import Manifest, Progress, report_progress
from .store import BlobWriter

# Docker and containerd record the full image name in this annotation; the
# OCI ref name is often only the tag.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` (tar, optionally gzip-compressed) into ``dest`` and
    return the OCI layout in it, converting a legacy ``docker save`` archive."""
    if not archive.is_file():
        raise NotFound(f"{archive}: no such file")
    try:
        with tarfile.open(archive, "r:*") as tar:
            _safe_extract(tar, dest, archive)
    except (tarfile.TarError, OSError) as exc:
        raise InvalidArgument(f"{archive}: not a readable tar archive: {exc}") from None
    if (dest / "oci-layout").is_file():
        return dest
    if (dest / "manifest.json").is_file():
        return _docker_save_to_layout(dest, dest / "oci")
    raise InvalidArgument(
        f"{archive}: neither an OCI image layout (oci-layout) nor a docker save (manifest.json)"
    )


def _safe_extract(tar: tarfile.TarFile, dest: Path, archive: Path) -> None:
    """Regular files and directories, inside ``dest``; nothing else. Image
    archives hold only blobs and JSON, so symlinks, hard links and devices are
    refused outright: a symlink could redirect a later entry (or a blob read)
    to anywhere on the host. (tarfile's ``filter="data"`` would help from
    Python 3.11.4 on; Debian 12 ships 3.11.2.)"""
    dest.mkdir(parents=True, exist_ok=True)
    for member in tar:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            raise InvalidArgument(f"{archive}: entry {member.name!r} points outside the archive")
        target = dest.joinpath(*parts) if parts else dest
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            # O_NOFOLLOW|O_EXCL: never through, or over, anything already there.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with source, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        else:
            raise InvalidArgument(
                f"{archive}: entry {member.name!r} is not a regular file or directory"
            )


def _inside(src: Path, name: object, what: str) -> Path:
    """A path named inside a ``docker save`` manifest.json, checked to stay in the archive."""
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in Path(name).parts:
        raise InvalidArgument(f"docker archive: {what} {name!r} is not a path inside the archive")
    path = src / name
    if not path.is_file():
        raise InvalidArgument(f"docker archive: {what} {name!r} is missing")
    return path


def _docker_save_to_layout(src: Path, layout: Path) -> Path:
    try:
        images = json.loads((src / "manifest.json").read_text())
    except ValueError:
        raise InvalidArgument("manifest.json of the docker archive is not JSON") from None
    if not isinstance(images, list) or not images:
        raise InvalidArgument("manifest.json of the docker archive lists no image")
    init_layout(layout)
    for image in images:
        if not isinstance(image, dict):
            raise InvalidArgument("docker archive: manifest.json entries must be objects")
        config = write_blob(layout, _inside(src, image.get("Config"), "config").read_bytes())
        layers = []
        for layer_path in image.get("Layers") or []:
            data = _inside(src, layer_path, "layer").read_bytes()
            layers.append(
                Descriptor(MEDIA_TYPE_OCI_LAYER, write_blob(layout, data).digest, len(data))
            )
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": Descriptor(MEDIA_TYPE_OCI_CONFIG, config.digest, config.size).to_json(),
                "layers": [d.to_json() for d in layers],
            }
        )
        desc = write_blob(layout, manifest)
        tags = image.get("RepoTags") or [None]
        for tag in tags:
            annotations = {ANNOTATION_IMAGE_NAME: tag} if tag else {}
            add_to_layout_index(
                layout,
                Descriptor(
                    MEDIA_TYPE_OCI_MANIFEST, desc.digest, len(manifest), annotations=annotations
                ),
                ref_name=None,
            )
    return layout


def recorded_name(layout: Path, descriptor: Descriptor) -> str:
    """The image name the layout records for ``descriptor``, or ''."""
    full = descriptor.annotations.get(ANNOTATION_IMAGE_NAME, "")
    if full:
        return full
    ref = descriptor.annotations.get(ANNOTATION_REF_NAME, "")
    return ref if ("/" in ref or ":" in ref) else ""


def pick_image(layout: Path) -> Descriptor:
    entries = read_layout_index(layout)
    if not entries:
        raise InvalidArgument(f"{layout}: the archive's index.json lists no image")
    return entries[0] if len({e.digest for e in entries}) == 1 else find_in_layout(layout)


class LayoutSource:
    """A local OCI layout that answers like a registry repository."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        path = self.layout / "blobs" / algo / hexpart
        if not path.is_file():
            raise NotFound(f"blob {digest} is missing from the archive")
        return path

    async def manifest(self, reference: str) -> Manifest:
        body = self._blob_path(reference).read_bytes()
        digest = sha256_digest(body)
        if digest != reference:
            raise InvalidArgument(f"manifest {reference} in the archive hashes to {digest}")
        doc = load_json_object(body, what=f"manifest {reference} in the archive")
        return Manifest(digest, str(doc.get("mediaType", MEDIA_TYPE_OCI_MANIFEST)), body, doc)

    async def blob(
        self,
        digest: str,
        size: int,
        writer: BlobWriter,
        progress: Progress | None = None,
    ) -> None:
        path = self._blob_path(digest)

        def copy() -> None:  # reading and hashing a layer: in a thread, off the event loop
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    writer.write(chunk)

        await asyncio.to_thread(copy)
        await report_progress(progress, writer.written)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
