"""The OCI image layout: an image's blobs on disk, written and read back.

An image is three kinds of blob (image-spec ``spec.md``):

* **layers**: tar archives of filesystem changes, built by ``layer.py``.
* a **config**: JSON saying how to run the image (``config.Cmd``, ``Env``, ...)
  and, in ``rootfs.diff_ids``, the digest of each layer's *uncompressed* tar.
* a **manifest**: JSON naming the config and the layer blobs by descriptor.
  Its digest is the image's identity (``busybox@sha256:...``). For several
  platforms, an **index** names one manifest per platform.

An *OCI image layout* (``image-layout.md``) is those blobs on disk::

    layout/
      oci-layout              {"imageLayoutVersion": "1.0.0"}
      index.json              an image index: the entry points, with names
      blobs/sha256/<hex>      every blob, its file name its digest

``index.json`` is the only mutable file and the only one not named by its
content. An entry in it may carry the annotation
``org.opencontainers.image.ref.name`` ("latest"), the layout's version of a tag.

Configs and manifests are deterministic, as the layers are: JSON in one
canonical form, created at the epoch unless told otherwise. The same layers
and config give the same manifest digest on any machine.

Writing is in the first half of this module, reading a layout back (as
``push.py`` does) in the second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teaching_cri.errors import InvalidArgument, NotFound
from teaching_cri.fsutil import atomic_write

from .layer import BuiltLayer, Entry, LayerInfo, LayerSpec, build_layer
from .oci import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
    host_platform,
    is_image_manifest,
    is_index,
    load_json_object,
    sha256_digest,
    split_digest,
    verify_digest,
)

OCI_LAYOUT_VERSION = "1.0.0"
# Fixed creation time for reproducible configs (the Unix epoch, like
# SOURCE_DATE_EPOCH=0).
EPOCH = "1970-01-01T00:00:00Z"

# The keys image-spec config.md defines under "config"; anything else is a typo.
_CONFIG_KEYS: dict[str, type] = {
    "User": str,
    "ExposedPorts": dict,
    "Env": list,
    "Entrypoint": list,
    "Cmd": list,
    "Volumes": dict,
    "WorkingDir": str,
    "Labels": dict,
    "StopSignal": str,
    "ArgsEscaped": bool,
}

# image-layout.md: the grammar of a ref name.
_REF_NAME_RE = re.compile(
    r"^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$"
)


# --- Writing a layout ----------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What ``build_image`` wrote: enough to find, push and check the image."""

    manifest_digest: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[LayerInfo, ...]
    platform: Platform
    ref_name: str | None = None
    media_type: str = MEDIA_TYPE_OCI_MANIFEST

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def descriptor(self, *, with_platform: bool = True) -> Descriptor:
        """The manifest's descriptor, as an index or index.json lists it."""
        return Descriptor(
            self.media_type,
            self.manifest_digest,
            self.manifest_size,
            platform=self.platform if with_platform else None,
        )


def blob_path(layout_dir: Path, digest: str) -> Path:
    """Where a blob lives in a layout: ``blobs/<algorithm>/<hex>``."""
    algorithm, encoded = split_digest(digest)
    return Path(layout_dir) / "blobs" / algorithm / encoded


def _atomic_write(path: Path, data: bytes) -> None:
    """Whole or not at all, readable by all; no fsync: a layout is rebuilt from its inputs."""
    atomic_write(path, data, durable=False, mode=0o644)


def init_layout(layout_dir: Path) -> Path:
    """Create an empty layout (or check an existing one); returns its path."""
    layout_dir = Path(layout_dir)
    marker = layout_dir / "oci-layout"
    if marker.exists():
        version = load_json_object(marker.read_bytes(), what=str(marker)).get("imageLayoutVersion")
        if version != OCI_LAYOUT_VERSION:
            raise InvalidArgument(f"{marker}: unsupported imageLayoutVersion {version!r}")
    else:
        (layout_dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        _atomic_write(marker, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    if not (layout_dir / "index.json").exists():
        _write_layout_index(layout_dir, [])
    return layout_dir


def write_blob(layout_dir: Path, data: bytes) -> Descriptor:
    """Store ``data`` under its digest (once); returns an untyped descriptor."""
    digest = sha256_digest(data)
    path = blob_path(layout_dir, digest)
    if not (path.exists() and path.stat().st_size == len(data)):
        _atomic_write(path, data)
    return Descriptor("application/octet-stream", digest, len(data))


def _write_layout_index(layout_dir: Path, manifests: Sequence[Descriptor]) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [d.to_json() for d in manifests],
    }
    # index.json is for people too, and is not content-addressed: indent it.
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(layout_dir) / "index.json", text.encode())


def _check_ref_name(ref_name: str) -> str:
    if not _REF_NAME_RE.match(ref_name):
        raise InvalidArgument(f"invalid ref name {ref_name!r} (image-layout.md grammar)")
    return ref_name


def add_to_layout_index(
    layout_dir: Path, descriptor: Descriptor, ref_name: str | None = None
) -> Descriptor:
    """List ``descriptor`` in index.json, named ``ref_name`` if given.

    A name moves like a tag: an older entry with the same name is dropped.
    """
    entries = read_layout_index(layout_dir)
    annotations = dict(descriptor.annotations)
    if ref_name is not None:
        annotations[ANNOTATION_REF_NAME] = _check_ref_name(ref_name)
        entries = [d for d in entries if d.ref_name != ref_name]
    elif any(d.digest == descriptor.digest and d.ref_name is None for d in entries):
        return descriptor
    entry = Descriptor(
        descriptor.media_type,
        descriptor.digest,
        descriptor.size,
        descriptor.platform,
        annotations,
        descriptor.urls,
    )
    _write_layout_index(layout_dir, [*entries, entry])
    return entry


def _image_config(
    config: Mapping[str, Any] | None,
    platform: Platform,
    layers: Sequence[BuiltLayer],
    created: str | None,
) -> dict[str, Any]:
    run_config: dict[str, Any] = dict(config or {})
    for key, value in run_config.items():
        want = _CONFIG_KEYS.get(key)
        if want is None:
            known = ", ".join(sorted(_CONFIG_KEYS))
            raise InvalidArgument(f"unknown image config key {key!r} (known: {known})")
        if value is not None and not isinstance(value, want):
            raise InvalidArgument(f"image config {key} must be a {want.__name__}: {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"image config {key} must be a list of strings: {value!r}")
    for env in run_config.get("Env") or []:
        if "=" not in env:
            raise InvalidArgument(f"image config Env entry {env!r} is not NAME=VALUE")
    history: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        item: dict[str, Any] = {"created_by": layer.created_by or f"teaching-cri layer {i}"}
        if created is not None:
            item["created"] = created
        history.append(item)
    doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.info.diff_id for layer in layers]},
        "history": history,
    }
    if platform.variant:
        doc["variant"] = platform.variant
    if created is not None:
        doc["created"] = created
    return doc


def build_image(
    layout_dir: Path,
    layers: Sequence[LayerSpec | BuiltLayer | Sequence[Entry]],
    *,
    config: Mapping[str, Any] | None = None,
    platform: Platform | None = None,
    ref_name: str | None = None,
    created: str | None = EPOCH,
    annotations: Mapping[str, str] | None = None,
) -> ImageInfo:
    """Build an image into the layout at ``layout_dir`` (created if needed).

    ``config`` is the run configuration (``Cmd``, ``Entrypoint``, ``Env``,
    ``WorkingDir``, ``User``, ...: image-spec config.md, keys as spelled
    there). The manifest is listed in index.json with its platform (the host's
    by default) and, if given, ``ref_name``.
    """
    layout_dir = init_layout(Path(layout_dir))
    platform = platform or host_platform()
    built = [layer if isinstance(layer, BuiltLayer) else build_layer(layer) for layer in layers]
    for layer in built:
        write_blob(layout_dir, layer.blob)
    config_bytes = canonical_json(_image_config(config, platform, built, created))
    config_desc = write_blob(layout_dir, config_bytes)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": Descriptor(MEDIA_TYPE_OCI_CONFIG, config_desc.digest, config_desc.size).to_json(),
        "layers": [layer.info.descriptor().to_json() for layer in built],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_desc = write_blob(layout_dir, canonical_json(manifest))
    info = ImageInfo(
        manifest_digest=manifest_desc.digest,
        manifest_size=manifest_desc.size,
        config_digest=config_desc.digest,
        config_size=config_desc.size,
        layers=tuple(layer.info for layer in built),
        platform=platform,
        ref_name=ref_name,
    )
    add_to_layout_index(layout_dir, info.descriptor(), ref_name)
    return info


def build_index(
    layout_dir: Path,
    manifests: Sequence[ImageInfo | Descriptor],
    *,
    ref_name: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Write an image index over ``manifests`` (one per platform); returns its digest.

    Each manifest must already be in the layout and say its platform. The
    index replaces the children's unnamed entries in index.json (they stay
    reachable through it); entries with a ref name are left alone.
    """
    layout_dir = init_layout(Path(layout_dir))
    children: list[Descriptor] = []
    for m in manifests:
        desc = m.descriptor() if isinstance(m, ImageInfo) else m
        if desc.platform is None:
            raise InvalidArgument(f"index entry {desc.digest} needs a platform")
        if not blob_path(layout_dir, desc.digest).exists():
            raise NotFound(f"manifest {desc.digest} is not in the layout {layout_dir}")
        children.append(Descriptor(desc.media_type, desc.digest, desc.size, desc.platform))
    if not children:
        raise InvalidArgument("an index needs at least one manifest")
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [c.to_json() for c in children],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    desc = write_blob(layout_dir, canonical_json(index))
    child_digests = {c.digest for c in children}
    kept = [d for d in read_layout_index(layout_dir) if d.digest not in child_digests or d.ref_name]
    _write_layout_index(layout_dir, kept)
    add_to_layout_index(
        layout_dir, Descriptor(MEDIA_TYPE_OCI_INDEX, desc.digest, desc.size), ref_name
    )
    return desc.digest


# --- Reading a layout ----------------------------------------------------------


def read_layout_index(layout_dir: Path) -> list[Descriptor]:
    """The entries of ``index.json``, after checking ``oci-layout``."""
    layout_dir = Path(layout_dir)
    marker = layout_dir / "oci-layout"
    try:
        layout = load_json_object(marker.read_bytes(), what=str(marker))
        index = load_json_object((layout_dir / "index.json").read_bytes(), what="index.json")
    except FileNotFoundError as e:
        raise NotFound(f"{layout_dir} is not an OCI image layout: {e.filename} is missing") from e
    if layout.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
        raise InvalidArgument(f"{marker}: unsupported imageLayoutVersion")
    entries = index.get("manifests")
    if index.get("schemaVersion") != 2 or not isinstance(entries, list):
        raise InvalidArgument(f"{layout_dir}/index.json is not an image index")
    return [Descriptor.from_json(d) for d in entries]


def read_blob(layout_dir: Path, digest: str, *, verify: bool = True) -> bytes:
    """A blob's bytes; checked against its digest unless ``verify`` is false."""
    path = blob_path(layout_dir, digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"blob {digest} is not in the layout {layout_dir}") from None
    if verify:
        verify_digest(data, digest, what=str(path))
    return data


def find_in_layout(layout_dir: Path, name: str | None = None) -> Descriptor:
    """Pick an index.json entry by ref name or digest; without ``name``, the only one."""
    entries = read_layout_index(layout_dir)
    if name is None:
        if len(entries) == 1:
            return entries[0]
        listed = ", ".join(d.ref_name or d.digest for d in entries) or "nothing"
        raise InvalidArgument(f"{layout_dir} lists {listed}: say which image to use")
    found = [d for d in entries if name in (d.ref_name, d.digest)]
    if not found:
        raise NotFound(f"{layout_dir} has no image named {name!r}")
    return found[-1]


def read_manifest(layout_dir: Path, descriptor: Descriptor) -> dict[str, Any]:
    """Read and parse the manifest or index that ``descriptor`` points at."""
    if not (is_image_manifest(descriptor.media_type) or is_index(descriptor.media_type)):
        raise InvalidArgument(f"{descriptor.digest} is a {descriptor.media_type}, not a manifest")
    data = read_blob(layout_dir, descriptor.digest)
    if len(data) != descriptor.size:
        raise InvalidArgument(f"{descriptor.digest}: size {len(data)} != {descriptor.size}")
    doc = load_json_object(data, what=f"manifest {descriptor.digest}")
    declared = doc.get("mediaType")
    if declared is not None and declared != descriptor.media_type:
        raise InvalidArgument(
            f"{descriptor.digest} says it is a {declared}, its descriptor a {descriptor.media_type}"
        )
    return doc
