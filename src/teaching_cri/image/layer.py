"""The layers of an image, built in memory from a list of entries.

A **layer** (image-spec ``layer.md``) is a tar archive of filesystem changes,
usually compressed. Applied in order, each on top of the last, the layers make
the container's root filesystem. A layer deletes a file of a lower layer with a
*whiteout*, an empty file named ``.wh.<name>`` beside it, and hides a whole
directory of the layers below with an *opaque* marker ``<dir>/.wh..wh..opq``.

A layer has two digests. Its blob is named by the digest of its compressed
bytes (that is what a registry stores), but the same tar can be compressed many
ways; the *diff_id*, the digest of the uncompressed tar, names the content
itself, so an unpacker can check what it extracted. The image's config lists
the diff_ids.

Everything here is deterministic: entries sorted, mtimes 0, owners 0 unless
given, gzip without timestamp or file name. The same entries give the same
digests on any machine, which makes test expectations stable and shows that a
digest is purely a function of bytes.

Nothing here writes to disk: ``layout.py`` stores the blobs ``build_layer``
returns, and ``unpack.py`` goes the other way, applying a layer to a directory.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from teaching_cri.errors import InvalidArgument

from .oci import OCI_LAYER_MEDIA_TYPE, Compression, Descriptor, sha256_digest
from .unpack import OPAQUE_WHITEOUT, WHITEOUT_PREFIX  # the names unpacking reads

EntryKind = Literal["file", "dir", "symlink", "hardlink", "whiteout", "opaque"]
_KINDS: frozenset[str] = frozenset({"file", "dir", "symlink", "hardlink", "whiteout", "opaque"})


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
        return f"{path}/{OPAQUE_WHITEOUT}"
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
