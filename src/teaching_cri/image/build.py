"""Build real OCI images, offline, into an OCI image layout directory.

An image is three kinds of blob (image-spec ``spec.md``):

* **layers**: tar archives of filesystem changes, usually compressed. Applied
  in order, each on top of the last, they make the container's root
  filesystem. A layer deletes a file of a lower layer with a *whiteout*, an
  empty file named ``.wh.<name>`` beside it, and hides a whole directory of the
  layers below with an *opaque* marker ``<dir>/.wh..wh..opq`` (``layer.md``).
* a **config**: JSON saying how to run the image (``config.Cmd``, ``Env``, ...)
  and, in ``rootfs.diff_ids``, the digest of each layer's *uncompressed* tar.
  Layer blobs are named by the digest of their compressed bytes (that is what a
  registry stores) but the same tar can be compressed many ways; the diff_id
  names the content itself, so an unpacker can check what it extracted.
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

Everything here is deterministic: entries sorted, mtimes 0, owners 0 unless
given, gzip without timestamp or file name, JSON in one canonical form. The
same inputs give the same digests on any machine, which makes test
expectations stable and shows that a digest is purely a function of bytes.

Writing is in the first half of this module, reading a layout back (as
``push.py`` does) in the second; ``busybox_layers`` at the end makes a small
runnable root filesystem from the host's static busybox.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from teaching_cri.errors import FailedPrecondition, InvalidArgument, NotFound
from teaching_cri.fsutil import atomic_write

from .oci import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    OCI_LAYER_MEDIA_TYPE,
    Compression,
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

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

EntryKind = Literal["file", "dir", "symlink", "hardlink", "whiteout", "opaque"]
_KINDS: frozenset[str] = frozenset({"file", "dir", "symlink", "hardlink", "whiteout", "opaque"})

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


class BusyboxUnavailable(FailedPrecondition):
    """No usable static busybox to build the test image from."""


# --- Layer input ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry of a layer tar.

    ``path`` is inside the image (``/bin/sh`` and ``bin/sh`` are the same).
    For ``file``: ``content`` or ``source`` (a host file to copy). For
    ``symlink``/``hardlink``: ``target``. ``whiteout`` deletes ``path`` from the
    layers below; ``opaque`` hides everything below the directory ``path``.
    ``mode`` defaults to 0644 for files (the source's mode when copying), 0755
    for directories, 0777 for symlinks.
    """

    path: str
    kind: EntryKind = "file"
    content: bytes | None = None
    source: Path | None = None
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str | None = None


def file_entry(
    path: str,
    content: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
) -> Entry:
    """A regular file with ``content``."""
    return Entry(path, "file", content=content, mode=mode, uid=uid, gid=gid)


def copy_entry(
    path: str, source: Path, *, mode: int | None = None, uid: int = 0, gid: int = 0
) -> Entry:
    """A regular file copied from the host file ``source`` (its mode unless given)."""
    return Entry(path, "file", source=source, mode=mode, uid=uid, gid=gid)


def dir_entry(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    """A directory."""
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid)


def symlink_entry(path: str, target: str, *, uid: int = 0, gid: int = 0) -> Entry:
    """A symbolic link; ``target`` is stored as given (relative or absolute)."""
    return Entry(path, "symlink", target=target, uid=uid, gid=gid)


def hardlink_entry(path: str, target: str) -> Entry:
    """A hard link to ``target``, a path in the image (this layer or one below)."""
    return Entry(path, "hardlink", target=target)


def whiteout_entry(path: str) -> Entry:
    """Delete ``path`` of a lower layer: stored as ``dir/.wh.name``."""
    return Entry(path, "whiteout")


def opaque_entry(path: str) -> Entry:
    """Hide what lower layers have below directory ``path``: ``path/.wh..wh..opq``."""
    return Entry(path, "opaque")


@dataclass(frozen=True)
class LayerSpec:
    """What a layer contains and how to compress it.

    With ``add_parents`` (the default) every missing parent directory is added
    as root-owned 0755, so that extraction never has to invent one. Turn it off
    for a layer that must not touch a lower layer's directories (one made only
    of whiteouts, say), since a directory entry also sets its mode.
    """

    entries: Sequence[Entry]
    compression: Compression = "gzip"
    created_by: str = ""
    add_parents: bool = True


@dataclass(frozen=True)
class LayerInfo:
    """A layer as the manifest and config see it."""

    media_type: str
    digest: str  # of the blob as stored (compressed)
    diff_id: str  # of the uncompressed tar
    size: int  # of the blob

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)


@dataclass(frozen=True)
class BuiltLayer:
    """A layer built in memory: the blob and what identifies it."""

    info: LayerInfo
    blob: bytes
    created_by: str = ""


def _clean_path(path: str, *, what: str = "path") -> str:
    """An image path as stored in a tar: relative, normalized, no ``..``."""
    if not isinstance(path, str) or "\x00" in path:
        raise InvalidArgument(f"invalid {what} {path!r}")
    parts = [p for p in PurePosixPath("/" + path).parts[1:] if p != "."]
    if ".." in parts:
        raise InvalidArgument(f"invalid {what} {path!r}: '..' would leave the root filesystem")
    return "/".join(parts)


def _tar_name(entry: Entry) -> str:
    path = _clean_path(entry.path)
    if not path:
        raise InvalidArgument(f"{entry.kind} entry needs a path below '/'")
    name = PurePosixPath(path).name
    if name.startswith(WHITEOUT_PREFIX):
        raise InvalidArgument(
            f"{entry.path!r}: names starting with {WHITEOUT_PREFIX!r} are reserved"
        )
    if entry.kind == "whiteout":
        parent = str(PurePosixPath(path).parent)
        return WHITEOUT_PREFIX + name if parent == "." else f"{parent}/{WHITEOUT_PREFIX}{name}"
    if entry.kind == "opaque":
        return f"{path}/{OPAQUE_MARKER}"
    return path


def _tarinfo(name: str, entry: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    data: bytes | None = None
    if entry.kind == "file":
        if entry.content is not None and entry.source is not None:
            raise InvalidArgument(f"{entry.path!r}: give content or source, not both")
        if entry.source is not None:
            try:
                data = entry.source.read_bytes()
                default_mode = entry.source.stat().st_mode & 0o7777
            except OSError as e:
                raise InvalidArgument(f"{entry.path!r}: cannot read {entry.source}: {e}") from e
        else:
            data, default_mode = entry.content or b"", 0o644
        info.type, info.size = tarfile.REGTYPE, len(data)
        info.mode = default_mode if entry.mode is None else entry.mode
    elif entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755 if entry.mode is None else entry.mode
    elif entry.kind in ("symlink", "hardlink"):
        if not entry.target:
            raise InvalidArgument(f"{entry.kind} {entry.path!r} needs a target")
        if entry.kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, entry.target
            info.mode = 0o777 if entry.mode is None else entry.mode
        else:
            target = _clean_path(entry.target, what="hardlink target")
            if not target:
                raise InvalidArgument(f"hardlink {entry.path!r} cannot point at '/'")
            info.type, info.linkname = tarfile.LNKTYPE, target
            info.mode = 0o644 if entry.mode is None else entry.mode
    elif entry.kind in ("whiteout", "opaque"):
        info.type, info.size, info.mode, data = tarfile.REGTYPE, 0, 0o644, b""
    else:
        raise InvalidArgument(f"{entry.path!r}: unknown entry kind {entry.kind!r}")
    if not 0 <= info.mode <= 0o7777:
        raise InvalidArgument(f"{entry.path!r}: mode {info.mode:o} is not a permission mode")
    if entry.uid < 0 or entry.gid < 0:
        raise InvalidArgument(f"{entry.path!r}: negative uid/gid")
    return info, data


def make_tar(entries: Iterable[Entry], *, add_parents: bool = True) -> bytes:
    """The uncompressed, deterministic tar of ``entries`` (PAX format).

    Sorted by path so that a directory comes before what it contains; hard
    links come last, after the files they point at, because an extractor can
    only link to something that already exists.
    """
    by_name: dict[str, Entry] = {}
    for entry in entries:
        if entry.kind not in _KINDS:
            raise InvalidArgument(f"{entry.path!r}: unknown entry kind {entry.kind!r}")
        name = _tar_name(entry)
        if name in by_name:
            raise InvalidArgument(f"{entry.path!r} appears twice in one layer")
        by_name[name] = entry
    if add_parents:
        for name in list(by_name):
            for parent in PurePosixPath(name).parents:
                p = str(parent)
                if p != "." and p not in by_name:
                    by_name[p] = dir_entry(p)
                elif p in by_name and by_name[p].kind != "dir":
                    raise InvalidArgument(f"{p!r} is a {by_name[p].kind}, but {name!r} is below it")

    def key(name: str) -> tuple[bool, tuple[str, ...]]:
        return (by_name[name].kind == "hardlink", tuple(name.split("/")))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(by_name, key=key):
            entry = by_name[name]
            if entry.kind == "hardlink":
                target = by_name.get(_clean_path(entry.target or ""))
                if target is not None and target.kind != "file":
                    raise InvalidArgument(
                        f"hardlink {entry.path!r} must point at a regular file, not a {target.kind}"
                    )
            info, data = _tarinfo(name, entry)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(tar: bytes, compression: Compression) -> bytes:
    """Compress a layer tar reproducibly (gzip with no timestamp or name)."""
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard  # optional: only zstd layers need it

        return zstandard.ZstdCompressor(level=3).compress(tar)
    if compression == "none":
        return tar
    raise InvalidArgument(f"unknown compression {compression!r}")


def decompress(blob: bytes, compression: Compression) -> bytes:
    """Undo ``compress`` (for any producer's blob, not only ours)."""
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(blob) as reader:
            return reader.read()
    if compression == "none":
        return blob
    raise InvalidArgument(f"unknown compression {compression!r}")


def build_layer(spec: LayerSpec | Sequence[Entry]) -> BuiltLayer:
    """Tar, compress and digest one layer, in memory."""
    if not isinstance(spec, LayerSpec):
        spec = LayerSpec(list(spec))
    tar = make_tar(spec.entries, add_parents=spec.add_parents)
    blob = compress(tar, spec.compression)
    info = LayerInfo(
        media_type=OCI_LAYER_MEDIA_TYPE[spec.compression],
        digest=sha256_digest(blob),
        diff_id=sha256_digest(tar),
        size=len(blob),
    )
    return BuiltLayer(info, blob, spec.created_by)


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
    """Whole or not at all; readable by all, as the rest of a layout is."""
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


# --- ELF inspection and busybox -----------------------------------------------

_PT_INTERP = 3
_ELF_MACHINES = {
    3: "386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "amd64",
    183: "arm64",
    243: "riscv64",
    258: "loong64",
}


@dataclass(frozen=True)
class ElfInfo:
    """What the ELF header says about an executable."""

    static: bool  # no PT_INTERP: the kernel runs it without a dynamic loader
    architecture: str | None  # Go name, None if unknown
    bits: int
    little_endian: bool
    interpreter: str | None = None


def inspect_elf(path: Path) -> ElfInfo:
    """Read an ELF header and program headers (``man 5 elf``).

    A dynamically linked program names its loader (``/lib64/ld-linux-x86-64.so.2``)
    in a ``PT_INTERP`` program header; inside a minimal image that loader and
    the libraries it would load do not exist, so only a static binary runs.
    """
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 52 or header[:4] != b"\x7fELF":
            raise InvalidArgument(f"{path} is not an ELF executable")
        bits = {1: 32, 2: 64}.get(header[4])
        little = {1: True, 2: False}.get(header[5])
        if bits is None or little is None:
            raise InvalidArgument(f"{path}: unknown ELF class or byte order")
        end = "<" if little else ">"
        (machine,) = struct.unpack_from(end + "H", header, 18)
        if bits == 64:
            (phoff,) = struct.unpack_from(end + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 54)
        else:
            (phoff,) = struct.unpack_from(end + "I", header, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 42)
        interpreter: str | None = None
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            if len(ph) < phentsize or len(ph) < (56 if bits == 64 else 32):
                raise InvalidArgument(f"{path}: truncated ELF program headers")
            (p_type,) = struct.unpack_from(end + "I", ph, 0)
            if p_type != _PT_INTERP:
                continue
            if bits == 64:
                (offset,) = struct.unpack_from(end + "Q", ph, 8)
                (filesz,) = struct.unpack_from(end + "Q", ph, 32)
            else:
                offset, filesz = struct.unpack_from(end + "I8xI", ph, 4)
            f.seek(offset)
            interpreter = f.read(min(filesz, 4096)).rstrip(b"\x00").decode(errors="replace")
    arch = _ELF_MACHINES.get(machine)
    if arch == "ppc64" and little:
        arch = "ppc64le"
    return ElfInfo(interpreter is None, arch, bits, little, interpreter)


BUSYBOX_APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "ps",
    "top",
    "wc",
    "head",
    "mkdir",
    "rm",
    "hostname",
    # For the notebooks' terminal: an editor, the tty's size, following a log.
    "vi",
    "stty",
    "tail",
    "touch",
    "test",
)
BUSYBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_CONFIG: Mapping[str, Any] = {"Cmd": ["sh"], "Env": [f"PATH={BUSYBOX_PATH}"]}

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"


def check_busybox(busybox: Path = Path("/bin/busybox")) -> ElfInfo:
    """Raise BusyboxUnavailable unless ``busybox`` is a static ELF executable."""
    hint = "install Debian's busybox-static (apt-get install busybox-static)"
    if not busybox.is_file():
        raise BusyboxUnavailable(f"{busybox} not found: {hint}")
    try:
        elf = inspect_elf(busybox)
    except (InvalidArgument, OSError) as e:
        raise BusyboxUnavailable(f"{busybox} is not a usable executable ({e}): {hint}") from e
    if not elf.static:
        raise BusyboxUnavailable(
            f"{busybox} is dynamically linked (it needs {elf.interpreter}), so it cannot run "
            f"in an image without libraries: {hint}"
        )
    return elf


def busybox_layers(
    busybox: Path = Path("/bin/busybox"), *, compression: Compression = "gzip"
) -> list[LayerSpec]:
    """A minimal runnable root filesystem, as two layers.

    1. the base: ``/etc/passwd`` and ``/etc/group`` (root and nobody), empty
       ``/tmp`` (1777), ``/root``, and the mount points ``/proc``, ``/sys``,
       ``/dev`` that the runtime mounts over;
    2. ``/bin/busybox`` and a symlink per applet (``/bin/sh`` → ``busybox``):
       busybox looks at the name it was started as to know what to be.

    Raises BusyboxUnavailable if ``busybox`` is missing or not static.
    """
    check_busybox(busybox)
    base = [
        *(dir_entry(d) for d in ("bin", "dev", "etc", "proc", "sys", "usr/bin", "var")),
        dir_entry("root", mode=0o700),
        dir_entry("tmp", mode=0o1777),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    applets = [
        copy_entry("bin/busybox", busybox, mode=0o755),
        *(symlink_entry(f"bin/{name}", "busybox") for name in BUSYBOX_APPLETS),
        symlink_entry("usr/bin/env", "../../bin/busybox"),
    ]
    return [
        LayerSpec(base, compression, created_by="teaching-cri: base filesystem"),
        LayerSpec(applets, compression, created_by=f"teaching-cri: COPY {busybox} /bin/busybox"),
    ]


HOST_BINARIES = ("sh", "ls", "cat", "echo", "sleep", "env", "id", "true", "false", "mkdir", "rm")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the dynamic loader) ``binary`` needs, from
    ``ldd``: what must travel with a dynamically linked program into an image."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FailedPrecondition(f"ldd {binary}: {exc}") from None
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        raise FailedPrecondition(f"ldd {binary}: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        parts = line.split("=>")
        candidate = (parts[1] if len(parts) == 2 else parts[0]).strip().split(" (")[0].strip()
        if candidate.startswith("/"):
            libs.append(Path(candidate))
    return libs


def host_binaries_layers(
    names: Sequence[str] = HOST_BINARIES, *, compression: Compression = "gzip"
) -> list[LayerSpec]:
    """A runnable root filesystem from this host's own programs and the shared
    libraries they link, for a machine without a static busybox. Each program
    is copied to ``/bin``; each library to the path the dynamic loader
    expects, with symlinks resolved (the image holds real files)."""
    programs = {}
    for name in names:
        found = shutil.which(name, path="/usr/bin:/bin")
        if found:
            programs[name] = Path(found).resolve()
    if "sh" not in programs:
        raise FailedPrecondition("no /bin/sh on this host to build an image from")
    libraries: dict[str, Path] = {}
    for program in programs.values():
        for lib in shared_libraries(program):
            libraries.setdefault(str(lib).lstrip("/"), lib.resolve())
    base = [
        *(dir_entry(d) for d in ("bin", "dev", "etc", "proc", "sys", "var")),
        dir_entry("root", mode=0o700),
        dir_entry("tmp", mode=0o1777),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    files = [copy_entry(f"bin/{name}", path, mode=0o755) for name, path in programs.items()]
    files += [copy_entry(inside, host) for inside, host in sorted(libraries.items())]
    return [
        LayerSpec(base, compression, created_by="teaching-cri: base filesystem"),
        LayerSpec(files, compression, created_by="teaching-cri: host programs and libraries"),
    ]


def build_host_binaries_image(
    layout_dir: Path, *, ref_name: str | None = "latest", compression: Compression = "gzip"
) -> ImageInfo:
    """The fallback of ``images build-local`` where busybox-static is missing."""
    return build_image(
        layout_dir,
        host_binaries_layers(compression=compression),
        config=BUSYBOX_CONFIG,
        platform=host_platform(),
        ref_name=ref_name,
    )


def build_busybox_image(
    layout_dir: Path,
    *,
    ref_name: str | None = "latest",
    platform: Platform | None = None,
    busybox: Path = Path("/bin/busybox"),
    compression: Compression = "gzip",
) -> ImageInfo:
    """The busybox image in a layout; its platform is the binary's unless given."""
    layers = busybox_layers(busybox, compression=compression)
    if platform is None:
        arch = check_busybox(busybox).architecture
        host = host_platform()
        platform = host if arch in (None, host.architecture) else Platform("linux", arch)
    return build_image(
        layout_dir, layers, config=BUSYBOX_CONFIG, platform=platform, ref_name=ref_name
    )


# The pod's infra ("pause") process, when no pause image can be had.
CATATONIT = Path("/usr/bin/catatonit")


def infra_layers(compression: Compression = "gzip") -> list[LayerSpec]:
    """An image of one static program that holds a pod's namespaces and reaps
    its zombies: Debian's catatonit (podman's pause, ``-P``), or else the
    static busybox running a shell that waits forever (a shell as PID 1 reaps
    the orphans re-parented to it when it ``wait``s)."""
    base = [
        *(dir_entry(d) for d in ("dev", "etc", "proc", "sys")),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    if CATATONIT.is_file():
        program = [copy_entry("pause", CATATONIT, mode=0o755)]
    else:
        check_busybox()
        program = [copy_entry("bin/busybox", Path("/bin/busybox"), mode=0o755)]
        program.append(symlink_entry("bin/sh", "busybox"))
        program.append(symlink_entry("bin/sleep", "busybox"))
    return [LayerSpec([*base, *program], compression, created_by="teaching-cri: infra")]


def infra_config() -> dict[str, Any]:
    if CATATONIT.is_file():
        return {"Entrypoint": ["/pause", "-P"], "StopSignal": "SIGTERM"}
    loop = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"
    return {"Entrypoint": ["/bin/sh", "-c", loop], "Env": ["PATH=/bin"], "StopSignal": "SIGTERM"}


def build_infra_image(layout_dir: Path, *, ref_name: str | None = None) -> ImageInfo:
    """The built-in infra image (``teaching-cri.local/pause``) for offline machines."""
    return build_image(
        layout_dir,
        infra_layers(),
        config=infra_config(),
        platform=host_platform(),
        ref_name=ref_name,
    )
