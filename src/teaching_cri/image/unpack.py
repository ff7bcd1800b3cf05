"""Applying OCI image layers to a directory, correctly and safely.

What a layer is
---------------
An image's root filesystem is not shipped as one tree but as an ordered list of
*layers*. Each layer is a tar archive (often gzip- or zstd-compressed; the media
type in the manifest says which) holding a *changeset*: the files that the step
which built it added or modified, plus markers for the files it deleted. Applying
the layers one after another, bottom first, rebuilds the tree the image author
saw. (OCI image spec, ``layer.md``, "Change Types" and "Applying Changesets".)

Additions and modifications look the same in the tar: the entry in its entirety.
When an entry lands on a path that already exists, the spec says a directory over
a directory only takes the new attributes, and anything else is removed and
recreated ("Changeset over existing files").

Whiteouts
---------
Tar has no way to say "this file was deleted", so the spec borrows AUFS's
convention ("Whiteouts"): an empty entry named ``.wh.<name>`` means "``<name>``,
in this directory, is gone". A directory whose lower contents were all removed
(``rm -rf dir/*``, or a directory deleted and created again) carries the *opaque
whiteout* ``dir/.wh..wh..opq`` ("Opaque Whiteout"). Whiteouts only ever hide
what the *lower* layers hold; files of the same layer survive, and the opaque
whiteout applies first "regardless of the ordering in which the whiteout file was
encountered". That ordering rule is why this module reads the whole layer before
it changes anything (see "Two passes" below).

Merge versus overlay
--------------------
A runtime can turn layers into a root filesystem in two ways, and this module
does both:

* ``mode="merge"`` (a *copy* snapshotter): ``target`` already holds the union of
  the lower layers, and the layer is applied to it in place. A whiteout is an
  ``unlink``/``rm -rf``; an opaque whiteout empties the directory. Works for any
  user, on any filesystem, but costs a full copy per layer.
* ``mode="overlay"``: every layer is extracted into its own empty directory and
  the kernel's overlayfs stacks them at mount time. Nothing below is touched, so
  whiteouts must be translated into overlayfs's own markers: a character device
  with device number 0/0 for a deleted path, and the ``trusted.overlay.opaque=y``
  extended attribute for an opaque directory. Both need root (``mknod`` of a
  device and the ``trusted.`` xattr namespace), which is why rootless runtimes
  fall back to merging.

Attacks this code refuses
-------------------------
A layer comes from a registry, so it is untrusted input to a process that often
runs as root. The classic mistakes, all seen in real CVEs:

* **Tar slip**: an entry named ``../../etc/cron.d/x`` or ``/etc/passwd`` writes
  outside the target (Python's own ``tarfile.extractall``, CVE-2007-4559). We
  refuse names that are absolute or hold a ``..`` component.
* **Symlink, then write through it**: entry 1 is ``etc -> /etc`` (legal: a
  symlink may point anywhere, it is resolved inside the container later), entry 2
  is ``etc/passwd``. A naive ``open(target/"etc/passwd", "w")`` follows the
  symlink and overwrites the *host's* file. containerd's CVE-2021-32760 was a
  ``chmod`` through such a link; Docker's CVE-2018-15664 was a race on the same
  idea. We never resolve a symlink on the host: every directory on the way to an
  entry is opened with ``O_NOFOLLOW`` relative to its parent (``openat``
  style), and the plan refuses any entry whose parent is a symlink. (containerd
  instead *resolves* such links inside the root, as ``chroot`` would; refusing is
  simpler and just as safe.)
* **Hard links** to ``../../etc/shadow`` would make the host file appear (and be
  writable) inside the container; a hard link's target must be a non-directory
  already inside the tree, reached without crossing a symlink.
* **Whiteouts** name a path to delete, so they get the same name checks, and are
  never followed through a symlink either (a whiteout under a lower symlink
  deletes nothing).
* CVE-2019-14271 (``docker cp`` loading the container's ``libnss`` into its
  root-running tar helper) is the cousin of these: never let content from the
  image decide what the host process does.

Two passes
----------
A merge changes an existing directory in place, and a ``..`` entry discovered
halfway would otherwise leave the snapshot half-written. So :func:`apply_layer`
works like a careful installer:

1. **Validate** (nothing is written to ``target``): decompress the *whole*
   stream once, into a private spool file (a corrupt or truncated gzip/zstd
   stream is only detectable at its end, by its checksum); parse every tar
   header from the spool, noting where each entry's data lies, and check that
   all data is really there and that a damaged header does not pass for the end
   of the archive. The archive may end where Go's archive/tar (containerd's,
   CRI-O's, docker's reader) lets it: right after the last entry's data, unpadded
   and without end-of-archive blocks, as some image builders write layers; not
   inside an entry's data or inside a header. Check every name, then simulate
   the layer against the current tree (``lstat`` only, never following
   symlinks) to refuse writes through symlinks, dangling or escaping hard
   links, and unsupported entries. Last, a rough check that the files fit on
   the disk.
2. **Apply**: perform exactly the planned changes, copying each file's bytes
   from the spool at the offset pass 1 noted (no second decompression, no second
   header parse: that halves the work on layers of many small files); deletions
   from whiteouts first (they only ever concern lower layers), then the entries
   in archive order, then directory attributes deepest first (so creating a file
   does not spoil its directory's mtime, and a read-only directory is made
   read-only only once it is full). Directories are opened once each, with
   ``O_NOFOLLOW``, and kept open while their entries are written; files that the
   plan knows are new are created with ``O_EXCL`` without a removal first. An
   uncompressed layer is read in place rather than spooled; its headers are
   re-checked just before their data is copied, so a blob that changes between
   the passes is noticed.

A refused layer therefore leaves ``target`` exactly as it was. Only an
*environmental* failure in pass 2 (disk full, I/O error, an uncompressed blob
changing under us) can leave a merge target half-applied; the copy
snapshotter's answer is to throw that snapshot away. Overlay mode also extracts
into a temporary directory next to ``target`` and renames it into place only on
success. Large files are copied in chunks; nothing holds a whole file in memory.

Choices worth knowing
---------------------
* Ownership (numeric uid/gid; ``uname``/``gname`` are ignored, as containerd does)
  is applied only with ``same_owner`` (default: when running as root). Setuid and
  setgid bits are kept only then too, so a layer cannot mint setuid-*root*
  binaries by being extracted without its owners.
* Character and block devices are created only as root; otherwise they are
  skipped and counted in :attr:`LayerStats.skipped`, as rootless containerd does.
  FIFOs need no privilege and are always created.
* Extended attributes from PAX ``SCHILY.xattr.*`` records are set as root, best
  effort; ``trusted.overlay.*``/``user.overlay.*`` ones are dropped, since they
  would let a layer steer overlayfs (redirects, opaque flags) directly.
* ``.wh..wh.``-prefixed names other than the opaque marker (AUFS bookkeeping),
  and anything inside a ``.wh.``-prefixed directory, are skipped. No file is ever
  created with a ``.wh.`` name: by the spec such files cannot exist.
* In overlay mode a whiteout of a path this same layer creates as a directory
  ("deleted, then made again") becomes an opaque directory, and a hard link must
  point into this layer (the lower layers are not in ``target``).
* Not root (merge only): a lower directory the layer must change has to be
  writable by us, or the layer is refused in pass 1 rather than failing midway.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Final, Literal, cast

from teaching_cri.errors import FailedPrecondition

__all__ = [
    "MEDIA_TYPES",
    "OPAQUE_WHITEOUT",
    "OVERLAY_OPAQUE_XATTR",
    "WHITEOUT_PREFIX",
    "Compression",
    "LayerError",
    "LayerStats",
    "apply_layer",
    "compression_of",
]

Compression = Literal["tar", "gzip", "zstd"]

WHITEOUT_PREFIX: Final = ".wh."
OPAQUE_WHITEOUT: Final = ".wh..wh..opq"
_WHITEOUT_META_PREFIX: Final = ".wh..wh."
OVERLAY_OPAQUE_XATTR: Final = "trusted.overlay.opaque"

MEDIA_TYPES: Final[Mapping[str, Compression]] = MappingProxyType(
    {
        # OCI image spec, layer.md / media-types.md.
        "application/vnd.oci.image.layer.v1.tar": "tar",
        "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
        # Deprecated, but "implementations are expected to support" them.
        "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
        # Docker image manifest v2 schema 2 (and the names containerd gives them).
        "application/vnd.docker.image.rootfs.diff.tar": "tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar": "tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    }
)

# How each compression announces itself in its first bytes (plain tar has no magic at 0).
_MAGIC: Final[Mapping[str, bytes]] = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}

_CHUNK: Final = 1 << 20
_NS: Final = 1_000_000_000
_NAME_MAX: Final = 255  # bytes in one path component (Linux)
_SYMLINK_MAX: Final = 4095  # bytes in a symlink's target (PATH_MAX - 1)
_ID_LIMIT: Final = 2**32 - 1  # uid/gid 0xffffffff means "leave unchanged" to chown(2)
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_IMPLICIT_DIR_MODE: Final = 0o755

# What a path holds, in the plan and in messages.
_DIR: Final = "directory"
_FILE: Final = "file"
_SYMLINK: Final = "symlink"
_DEVICE: Final = "device"
_FIFO: Final = "fifo"
_WHITEOUT_DEVICE: Final = "whiteout"


class LayerError(FailedPrecondition):
    """A layer that cannot be applied (corrupt, unsupported, or unsafe); the message says
    which entry and why."""


@dataclass(frozen=True)
class LayerStats:
    """What applying one layer did."""

    entries: int  # tar entries read, of every kind
    bytes: int  # file content bytes written
    whiteouts: int  # whiteout and opaque-whiteout entries in the layer
    skipped: int = 0  # entries left out: devices when not root, AUFS ``.wh..wh.`` metadata


def compression_of(media_type: str) -> Compression:
    """The compression of a layer blob, from its media type; LayerError if not a layer we apply."""
    try:
        return MEDIA_TYPES[media_type]
    except KeyError:
        pass
    if "+encrypted" in media_type:
        reason = "encrypted layers (ocicrypt) are not supported"
    elif media_type.startswith(("application/vnd.oci.image.layer.", "application/vnd.docker.")):
        reason = "unsupported layer media type (compression or variant not handled)"
    else:
        reason = "not a layer media type"
    raise LayerError(f"media type {media_type!r}: {reason}")


def _refuse(raw: str, reason: str) -> LayerError:
    return LayerError(f"layer entry {raw!r}: {reason}")


def _running_as_root() -> bool:
    return os.geteuid() == 0


def in_user_namespace() -> bool:
    """Are we root only inside a user namespace (rootless), not on the host?
    The initial namespace maps all 2^32 ids onto themselves."""
    try:
        first = Path("/proc/self/uid_map").read_text().split("\n")[0].split()
    except OSError:
        return False
    return first != ["0", "0", "4294967295"]


def overlay_opaque_xattr() -> str:
    """Opaque directories are marked with a trusted.* xattr, which only the
    host's root may set; inside a user namespace overlayfs (mounted with
    ``userxattr``, Linux 5.11+) reads the user.* name instead."""
    return "user.overlay.opaque" if in_user_namespace() else OVERLAY_OPAQUE_XATTR


def _writable(path: Path) -> bool:
    """Can this (non-root) process add and remove entries in directory ``path``?"""
    return os.access(path, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------------------------
# Reading: the source, decompression, and the entries of the archive.
# --------------------------------------------------------------------------------------------


class _Source:
    """The layer blob, readable twice (once per pass).

    A path is opened once (so the file cannot be swapped between passes); a seekable stream is
    rewound; anything else is first spooled to a temporary file.
    """

    def __init__(self, source: Path | BinaryIO, stack: ExitStack) -> None:
        self._start = 0
        if isinstance(source, str | os.PathLike):
            try:
                self._file: BinaryIO = stack.enter_context(open(source, "rb"))  # noqa: SIM115
            except OSError as e:
                raise LayerError(f"cannot open layer blob {source}: {e}") from e
            return
        try:
            seekable = source.seekable()
            self._start = source.tell() if seekable else 0
        except (OSError, ValueError):
            seekable = False
        if seekable:
            self._file = source
            return
        spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        try:
            shutil.copyfileobj(source, spool, _CHUNK)
        except OSError as e:
            raise LayerError(f"cannot read layer stream: {e}") from e
        self._file = spool

    def rewind(self) -> BinaryIO:
        self._file.seek(self._start)
        return self._file


def _zstandard_decompressor(media_type: str) -> Callable[[BinaryIO], BinaryIO]:
    try:
        import zstandard
    except ImportError as e:
        raise LayerError(
            f"media type {media_type!r} is zstd-compressed, which needs the 'zstandard' "
            "package (pip install zstandard)"
        ) from e

    def open_reader(raw: BinaryIO) -> BinaryIO:
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False
        )

    return open_reader


def _read_errors(compression: Compression) -> tuple[type[Exception], ...]:
    """What a corrupt or truncated blob raises while we read it."""
    errors: tuple[type[Exception], ...] = (tarfile.TarError, EOFError, zlib.error, OSError)
    if compression == "zstd":
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def _check_magic(raw: BinaryIO, compression: Compression, media_type: str) -> None:
    """The blob must start the way its media type says (the position is left unchanged)."""
    head = raw.read(4)
    raw.seek(-len(head), os.SEEK_CUR)
    found = next((name for name, magic in _MAGIC.items() if head.startswith(magic)), "tar")
    if found != compression:
        looks = "uncompressed (or unknown)" if found == "tar" else f"{found}-compressed"
        raise LayerError(
            f"media type {media_type!r} says {compression}, but the blob looks {looks}"
        )


def _decompressed(raw: BinaryIO, compression: Compression, media_type: str) -> Iterator[bytes]:
    """The decompressed blob, in chunks of at most ``_CHUNK`` bytes."""
    if compression == "gzip":
        yield from _gunzip(raw)
    elif compression == "zstd":
        with _zstandard_decompressor(media_type)(raw) as reader:
            while chunk := reader.read(_CHUNK):
                yield chunk
    else:
        while chunk := raw.read(_CHUNK):
            yield chunk


def _gunzip(raw: BinaryIO) -> Iterator[bytes]:
    """gzip with zlib directly, in big steps (the GIL is released while zlib works).

    A gzip file may hold several members one after another (and zero padding after one);
    ``wbits=31`` makes zlib read each member's header and check its CRC32 and length trailer.
    ``max_length`` bounds each output chunk, so a "zip bomb" never sits in memory whole.
    """
    unzip = zlib.decompressobj(wbits=31)
    in_member = False
    while data := raw.read(_CHUNK):
        while data:
            if not in_member:  # between members: skip the padding, then start the next
                data = data.lstrip(b"\0")
                if not data:
                    break
                unzip, in_member = zlib.decompressobj(wbits=31), True
            if chunk := unzip.decompress(data, _CHUNK):
                yield chunk
            if unzip.eof:
                data, in_member = unzip.unused_data, False
            else:
                data = unzip.unconsumed_tail
    if in_member:
        while chunk := unzip.decompress(b"", _CHUNK):  # output held back by max_length
            yield chunk
        if not unzip.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")


class _Archive:
    """The uncompressed tar, seekable: parsed once by pass 1, read by offset in pass 2.

    A compressed blob is decompressed, whole, into a private temporary file (the *spool*), so
    pass 2 reads exactly the bytes pass 1 checked and nothing is decompressed twice. A plain
    tar is read where it is (a stream that cannot seek was already spooled by
    :class:`_Source`); since someone else may change that file between the passes, pass 2
    checks each entry's header against what pass 1 read (:meth:`_Applier.check_header`).
    """

    def __init__(self, file: BinaryIO, *, private: bool) -> None:
        self.file = file
        self.start = file.tell()
        self.private = private

    def goto(self, offset: int) -> None:
        # Seek only when not there already: pass 2 mostly reads on from where it stopped.
        if self.file.tell() != offset:
            self.file.seek(offset)

    def read_at(self, offset: int, size: int) -> bytes:
        self.goto(offset)
        return self.file.read(size)

    def size(self) -> int:
        return self.file.seek(0, os.SEEK_END)


def _unpacked(
    source: _Source, compression: Compression, media_type: str, stack: ExitStack
) -> _Archive:
    """The blob as a seekable tar: itself if plain, else decompressed into a spool. A corrupt
    or truncated stream fails here, at its checksum, before any entry is looked at."""
    raw = source.rewind()
    _check_magic(raw, compression, media_type)
    if compression == "tar":
        return _Archive(raw, private=False)
    spool: BinaryIO = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
    try:
        for chunk in _decompressed(raw, compression, media_type):
            spool.write(chunk)
    except _read_errors(compression) as e:
        raise LayerError(f"layer is corrupt or truncated ({media_type}): {e}") from e
    spool.seek(0)
    return _Archive(spool, private=True)


class _ZeroTail:
    """The archive as tarfile is given it: the real bytes, then zeros up to the next block
    boundary and two blocks more (the padding and end-of-archive blocks a writer may leave
    out). tarfile refuses an archive whose last entry is not padded ("unexpected end of
    data"); Go's archive/tar, and with it containerd, CRI-O and docker, accepts it. The zeros
    stand for nothing that was there: :func:`_check_complete` and :func:`_check_end` judge the
    real bytes, by Go's rules, afterwards."""

    def __init__(self, archive: _Archive, end: int) -> None:
        self._archive = archive
        self._end = end
        self._zeros_end = archive.start + _round_up(end - archive.start) + 2 * tarfile.BLOCKSIZE
        self._pos = archive.start

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._zeros_end}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self._zeros_end - self._pos)
        data = b""
        if self._pos < self._end:
            data = self._archive.read_at(self._pos, min(size, self._end - self._pos))
        after = self._pos + len(data)
        if after >= self._end:  # zeros only past the real end, never in place of real bytes
            data += bytes(max(0, min(size - len(data), self._zeros_end - after)))
        self._pos += len(data)
        return data


def _round_up(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _open_tar(archive: _Archive, end: int) -> tarfile.TarFile:
    """Seekable mode ("r:"): tarfile reads each header and seeks over the data."""
    return tarfile.open(
        fileobj=cast(BinaryIO, _ZeroTail(archive, end)),  # read, seek and tell: all tarfile uses
        mode="r:",
        encoding="utf-8",
        errors="surrogateescape",
    )


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's headers in order, without TarFile keeping every one of them in memory."""
    while (member := tar.next()) is not None:
        yield member
        # In stream mode TarFile appends each header to its (undeclared) ``members`` list;
        # we keep our own, smaller record of the entries.
        tar.members.clear()  # type: ignore[attr-defined]


def _normalise(raw: str, name: str, what: str = "name") -> str:
    """``name`` as a relative path with no empty or ``.`` components; refuse escapes."""
    if "\x00" in name:
        raise _refuse(raw, f"{what} contains a NUL byte")
    if name.startswith("/"):
        raise _refuse(raw, f"{what} {name!r} is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(raw, f"{what} {name!r} has a '..' component")
    for part in parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise _refuse(raw, f"{what} has a component longer than {_NAME_MAX} bytes")
    return "/".join(parts)


def _mtime_ns(raw: str, member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")  # keeps the nanoseconds a float would round
    try:
        ns = int(Decimal(text) * _NS) if text is not None else int(member.mtime) * _NS
    except (ArithmeticError, ValueError) as e:
        raise _refuse(raw, f"bad mtime: {e}") from e
    if not -(2**63) <= ns < 2**63:
        raise _refuse(raw, "mtime out of range")
    return ns


def _xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    found = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key.removeprefix("SCHILY.xattr.")
        if name and not name.startswith(("trusted.overlay.", "user.overlay.")):
            # tarfile decoded the value with surrogateescape; this gives the raw bytes back.
            found.append((name, value.encode("utf-8", "surrogateescape")))
    return tuple(found)


@dataclass(slots=True)
class _Entry:
    """One tar header, as pass 1 understood it; pass 2 acts on these, not on the headers."""

    raw: str  # the name as written in the archive, for messages
    type: bytes  # the tar type flag, to check pass 2 reads the same archive
    kind: str  # file, directory, symlink, hardlink, char, block, fifo, whiteout, opaque, meta
    path: str  # normalised; "" is the layer root; for whiteouts, the path they delete
    link: str = ""  # symlink text, or the normalised target of a hard link
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    chksum: int = 0  # of its (last) header block, just before the data: see check_header
    data_offset: int = 0  # where its data starts: pass 2 copies files from there
    # A sparse file's data is stored as pieces: (offset in the file, length), in order.
    pieces: tuple[tuple[int, int], ...] = ()
    # PAX 1.0 sparse files keep a map between header and data: no header there to re-check.
    sparse: bool = False
    skip: bool = False  # decided by the plan
    fresh: bool = False  # decided by the plan: nothing is at ``path`` when pass 2 gets to it


def _entry(member: tarfile.TarInfo) -> _Entry:
    raw = member.name
    if member.isreg():  # includes contiguous and (GNU) sparse files
        kind = "file"
    elif member.isdir():
        kind = "directory"
    elif member.issym():
        kind = "symlink"
    elif member.islnk():
        kind = "hardlink"
    elif member.ischr():
        kind = "char"
    elif member.isblk():
        kind = "block"
    elif member.isfifo():
        kind = "fifo"
    else:
        raise _refuse(raw, f"unsupported entry type {member.type!r}")
    path = _normalise(raw, raw)
    parent, _, base = path.rpartition("/")
    link = ""
    if any(part.startswith(WHITEOUT_PREFIX) for part in parent.split("/")):
        kind = "meta"  # inside AUFS bookkeeping such as .wh..wh.plnk/: never applied
    elif base.startswith(WHITEOUT_PREFIX):
        if base == OPAQUE_WHITEOUT:
            kind, path = "opaque", parent
        elif base.startswith(_WHITEOUT_META_PREFIX):
            kind = "meta"
        else:
            hidden = base.removeprefix(WHITEOUT_PREFIX)
            if hidden in ("", ".", ".."):
                raise _refuse(raw, "whiteout of an invalid name")
            kind, path = "whiteout", f"{parent}/{hidden}" if parent else hidden
    elif not path and kind != "directory":
        raise _refuse(raw, f"the layer root must be a directory, not a {kind}")
    elif kind == "symlink":
        link = member.linkname
        if not link or "\x00" in link or len(os.fsencode(link)) > _SYMLINK_MAX:
            raise _refuse(raw, "empty, overlong or NUL-containing symlink target")
    elif kind == "hardlink":
        link = _normalise(raw, member.linkname, "hard link target")
    return _Entry(
        raw=raw,
        type=member.type,
        kind=kind,
        path=path,
        link=link,
        size=member.size if kind == "file" else 0,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        mtime_ns=_mtime_ns(raw, member),
        devmajor=member.devmajor,
        devminor=member.devminor,
        xattrs=_xattrs(member),
        chksum=member.chksum,
        data_offset=member.offset_data,
        pieces=_pieces(member) if kind == "file" else (),
        sparse=getattr(member, "sparse", None) is not None,
    )


def _pieces(member: tarfile.TarInfo) -> tuple[tuple[int, int], ...]:
    """Where the stored data goes in the file: all of it at 0, unless the file is sparse."""
    # typeshed leaves ``sparse`` out: a list of (offset, length), or None if not sparse.
    sparse: list[tuple[int, int]] | None = getattr(member, "sparse", None)
    if sparse is None:
        return ((0, member.size),)
    return tuple((offset, length) for offset, length in sparse)


def _scan(archive: _Archive, media_type: str) -> list[_Entry]:
    """Pass 1a: read and check every header of the decompressed archive; nothing written."""
    end = archive.size()
    entries: list[_Entry] = []
    tar: tarfile.TarFile | None = None
    try:
        with _open_tar(archive, end) as tar:
            for member in _members(tar):
                entries.append(_entry(member))
            after = tar.offset  # the block boundary after the last entry's data
    except LayerError:
        raise
    except (tarfile.TarError, OSError) as e:
        # tarfile leaves its offset at the header it failed to finish.
        resume = _after_meta_headers(archive, tar.offset if tar is not None else 0, end)
        if resume is None:
            _check_complete(entries, end, media_type)  # the clearer message, if it applies
            raise LayerError(f"layer is corrupt or truncated ({media_type}): {e}") from e
        after = resume
    _check_complete(entries, end, media_type)
    _check_end(archive, after, end, media_type, entries[-1].raw if entries else None)
    return entries


_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def _after_meta_headers(archive: _Archive, start: int, end: int) -> int | None:
    """Where the next header would be, if only meta headers (PAX, GNU long name or
    link), each with all its data, stand from ``start`` to the end of the archive or
    to a zero block; else None. Go's reader.go reads the header such a meta header
    is for and meets EOF ("EOF is okay here") or a zero block: the archive ends
    there, the meta header for nothing. tarfile calls that a damaged archive."""
    offset = start
    while offset + tarfile.BLOCKSIZE <= end:
        block = archive.read_at(offset, tarfile.BLOCKSIZE)
        if not block.strip(b"\0"):
            break
        if block[156:157] not in _META_TYPES:
            return None
        try:
            size = tarfile.nti(block[124:136])  # type: ignore[attr-defined]
        except tarfile.HeaderError:
            return None
        if offset + tarfile.BLOCKSIZE + size > end:
            return None  # its data cut short: io.ErrUnexpectedEOF in Go
        offset += tarfile.BLOCKSIZE + _round_up(size)
    return offset if offset > start else None


def _truncated(media_type: str, what: str) -> LayerError:
    return LayerError(f"layer is corrupt or truncated ({media_type}): {what}")


def _check_complete(entries: list[_Entry], end: int, media_type: str) -> None:
    """Every header, and every byte of data its size promises, must be in the archive (Go:
    io.ErrUnexpectedEOF). Only the padding after the data may be missing; tarfile skips data
    unread and saw zeros past the end, so this is checked here, on the real length."""
    for entry in entries:
        if entry.data_offset > end:
            raise _truncated(media_type, f"the header of {entry.raw!r} is cut short")
        want = sum(length for _, length in entry.pieces)
        if entry.data_offset + want > end:
            raise _truncated(
                media_type,
                f"the data of {entry.raw!r} is cut short: {end - entry.data_offset} of its "
                f"{want} bytes are there",
            )


def _check_end(archive: _Archive, after: int, end: int, media_type: str, last: str | None) -> None:
    """What follows the last entry, by the rules of Go's archive/tar (reader.go ``next`` and
    ``readHeader``): the archive may end anywhere in the last entry's padding, or after it,
    or after one zero block, or after two (then anything may follow). It may not end inside
    a block (a header or end block cut short), and a block that is not zeros is a damaged
    header (tarfile takes one for the end of the archive without a word)."""
    for block_start in (after, after + tarfile.BLOCKSIZE):
        if end <= block_start:
            return
        block = archive.read_at(block_start, tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            raise _truncated(
                media_type,
                f"the archive ends {len(block)} bytes into the block at offset {block_start}: "
                "a tar header (or end-of-archive block) cut short",
            )
        if block.strip(b"\0"):
            zero_before = block_start != after
            raise LayerError(
                f"layer is corrupt ({media_type}): damaged tar header at offset {block_start}, "
                + ("after a zero block" if zero_before else f"after entry {last!r}")
            )


# --------------------------------------------------------------------------------------------
# Planning (pass 1b): simulate the layer against the tree; refuse anything unsafe.
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    entries: list[_Entry]
    delete: list[str]  # merge: lower paths to remove first (explicit whiteouts)
    empty: list[str]  # merge: lower directories to empty first (opaque whiteouts)
    devices: list[str]  # overlay: 0/0 character devices to create at the end
    opaque: set[str]  # overlay: directories to mark trusted.overlay.opaque=y
    dir_meta: dict[str, _Entry]  # directories whose attributes are set at the end
    content_bytes: int


class _Planner:
    """A model of the tree while the layer is applied, built without changing anything.

    ``layer`` holds what this layer has created so far (path -> kind; directories created
    implicitly as parents included). Below it is the lower tree (merge mode: ``target`` as it
    is now, looked at with ``lstat`` one component at a time), minus what whiteouts and
    replacements removed: ``gone`` paths with everything under them, and the children of the
    ``emptied`` directories.
    """

    def __init__(
        self,
        lower: Path | None,
        *,
        devices: bool,
        check_ids: bool,
        writable: Callable[[Path], bool] | None,
    ) -> None:
        self.lower = lower
        self.devices_allowed = devices
        self.check_ids = check_ids
        self.writable = writable
        self.layer: dict[str, str] = {"": _DIR}
        self.gone: set[str] = set()
        self.emptied: set[str] = set()
        self.dir_meta: dict[str, _Entry] = {}
        self.devices: list[str] = []
        self.opaque: set[str] = set()
        self._lower: dict[str, str | None] = {"": _DIR}
        self._checked_writable: set[str] = set()
        self._skipped: set[str] = set()  # paths of entries left out, so links to them are too

    # The view -----------------------------------------------------------------------------

    def _lstat_kind(self, path: str) -> str | None:
        assert self.lower is not None
        try:
            mode = os.lstat(self.lower / path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise LayerError(f"cannot inspect {path!r} in {self.lower}: {e}") from e
        if stat.S_ISDIR(mode):
            return _DIR
        if stat.S_ISLNK(mode):
            return _SYMLINK
        if stat.S_ISREG(mode):
            return _FILE
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return _DEVICE
        if stat.S_ISFIFO(mode):
            return _FIFO
        return "special file"

    def lower_kind(self, path: str) -> str | None:
        """What the lower tree holds at ``path``: only below real directories, never via links."""
        if self.lower is None:
            return None
        kind: str | None = _DIR
        prefix = ""
        for name in path.split("/") if path else ():
            prefix = f"{prefix}/{name}" if prefix else name
            if prefix not in self._lower:
                self._lower[prefix] = self._lstat_kind(prefix) if kind == _DIR else None
            kind = self._lower[prefix]
        return kind

    def _hidden(self, path: str) -> bool:
        """Has this layer removed the lower tree's ``path`` (whiteout, opaque, replacement)?"""
        if not path or not (self.gone or self.emptied):
            return False
        prefix = ""
        for name in path.split("/"):
            if prefix in self.emptied:
                return True
            prefix = f"{prefix}/{name}" if prefix else name
            if prefix in self.gone:
                return True
        return False

    def kind(self, path: str) -> str | None:
        if path in self.layer:
            return self.layer[path]
        return None if self._hidden(path) else self.lower_kind(path)

    def _lower_dir_on_disk(self, path: str) -> bool:
        return self.lower is not None and not self._hidden(path) and self.lower_kind(path) == _DIR

    def _need_writable(self, entry: _Entry, directory: str) -> None:
        """Not root: a lower directory we must change has to be writable, or pass 2 would fail."""
        if self.writable is None or directory in self._checked_writable:
            return
        if not self._lower_dir_on_disk(directory):
            return
        assert self.lower is not None
        if not self.writable(self.lower / directory):
            raise _refuse(
                entry.raw,
                f"directory {directory or '.'!r} of the lower layers is not writable by this "
                "user, so a rootless merge cannot change it",
            )
        self._checked_writable.add(directory)

    # Checks and changes -------------------------------------------------------------------

    def _ensure_parents(self, entry: _Entry, path: str, *, create: bool, what: str) -> None:
        """Every directory above ``path`` must be a real directory, or (``create``) missing."""
        parts = path.split("/")
        changed = ""  # the deepest existing directory: the one that gains a child
        creating = False
        for i in range(1, len(parts)):
            ancestor = "/".join(parts[:i])
            kind = self.kind(ancestor)
            if kind is None:
                if not create:
                    raise _refuse(entry.raw, f"{what}: {ancestor!r} does not exist")
                self.layer[ancestor] = _DIR
                creating = True
            elif kind != _DIR:
                raise _refuse(
                    entry.raw,
                    f"{what}: {ancestor!r} is a {kind}, not a directory; "
                    "nothing is written through it",
                )
            elif not creating:
                changed = ancestor
        if create:
            self._need_writable(entry, changed)

    def _forget_subtree(self, path: str) -> None:
        prefix = f"{path}/"
        for key in [key for key in self.layer if key.startswith(prefix)]:
            del self.layer[key]
            self.dir_meta.pop(key, None)

    def _place(self, entry: _Entry, kind: str) -> None:
        """``entry`` creates ``kind`` at its path: merge with a directory, or replace."""
        path = entry.path
        current = self.kind(path)
        entry.fresh = current is None  # pass 2 need not remove anything first
        if current is not None and not (kind == _DIR and current == _DIR):
            if current == _DIR:
                self._forget_subtree(path)
            self.dir_meta.pop(path, None)
            self.gone.add(path)  # whatever the lower tree had there is removed
        self.layer[path] = kind
        if kind == _DIR:
            self.dir_meta[path] = entry

    def _ensure_dir(self, entry: _Entry, path: str) -> None:
        """An opaque whiteout's directory exists afterwards (created like a parent if need be)."""
        if path:
            self._ensure_parents(entry, path, create=True, what="parent")
        kind = self.kind(path)
        if kind is None:
            self.layer[path] = _DIR
        elif kind != _DIR:
            raise _refuse(entry.raw, f"opaque whiteout in {path!r}, which is a {kind}")

    def _simulate(self, entry: _Entry) -> None:
        kind = entry.kind
        if kind == "meta":
            entry.skip = True
            return
        if kind == "whiteout":  # merge: removed up front; overlay: a device at the end
            return
        if kind == "opaque":
            self._ensure_dir(entry, entry.path)
            return
        if self.check_ids and not (0 <= entry.uid < _ID_LIMIT and 0 <= entry.gid < _ID_LIMIT):
            raise _refuse(entry.raw, f"uid/gid {entry.uid}/{entry.gid} out of range")
        if (kind in ("char", "block") and not self.devices_allowed) or (
            kind == "hardlink" and entry.link in self._skipped
        ):
            entry.skip = True
            self._skipped.add(entry.path)
            return
        if not entry.path:  # the root directory: only its attributes
            self.dir_meta[""] = entry
            return
        if kind == "hardlink":
            node = self._link_target_kind(entry)
        else:
            node = {"file": _FILE, "directory": _DIR, "symlink": _SYMLINK, "fifo": _FIFO}.get(
                kind, _DEVICE
            )
        self._ensure_parents(entry, entry.path, create=True, what="parent")
        self._place(entry, node)
        self._skipped.discard(entry.path)

    def _link_target_kind(self, entry: _Entry) -> str:
        target = entry.link
        if not target:
            raise _refuse(entry.raw, "hard link to the layer root")
        if target == entry.path or target.startswith(f"{entry.path}/"):
            raise _refuse(entry.raw, "hard link to itself (or to something it replaces)")
        what = f"hard link target {target!r}"
        self._ensure_parents(entry, target, create=False, what=what)
        kind = self.kind(target)
        if kind is None:
            where = "in this layer" if self.lower is None else "in this layer or below it"
            raise _refuse(entry.raw, f"{what} does not exist {where}")
        if kind == _DIR:
            raise _refuse(entry.raw, f"{what} is a directory")
        return kind

    def _under_whiteout(self, path: str) -> bool:
        parts = path.split("/")
        return any(
            self.layer.get("/".join(parts[:i])) == _WHITEOUT_DEVICE for i in range(1, len(parts))
        )

    def _overlay_whiteouts(self, entries: list[_Entry]) -> None:
        """Overlay mode: turn whiteouts into overlayfs markers, now the whole layer is known."""
        explicit = [e for e in entries if e.kind == "whiteout"]
        for entry in sorted(explicit, key=lambda e: e.path.count("/")):
            current = self.layer.get(entry.path)
            if current == _DIR:
                # Deleted and re-created in the same layer: a fresh directory hides the lower.
                self.opaque.add(entry.path)
            elif current is None and not self._under_whiteout(entry.path):
                self._ensure_parents(entry, entry.path, create=True, what="parent")
                self.layer[entry.path] = _WHITEOUT_DEVICE
                self.devices.append(entry.path)
            # else: this layer's own non-directory already hides the lower path.
        for entry in (e for e in entries if e.kind == "opaque"):
            if self.layer.get(entry.path) == _WHITEOUT_DEVICE or self._under_whiteout(entry.path):
                continue  # the whole directory is whited out anyway
            self._ensure_dir(entry, entry.path)
            self.opaque.add(entry.path)

    def plan(self, entries: list[_Entry]) -> _Plan:
        delete: list[str] = []
        empty: list[str] = []
        if self.lower is not None:
            # Whiteouts concern the lower layers only, so they all happen before any entry.
            for entry in entries:
                if entry.kind == "whiteout":
                    delete.append(entry.path)
                    if self.lower_kind(entry.path) is not None:
                        self._need_writable(entry, entry.path.rpartition("/")[0])
                elif entry.kind == "opaque":
                    empty.append(entry.path)
                    if self.lower_kind(entry.path) == _DIR:
                        self._need_writable(entry, entry.path)
            self.gone.update(delete)
            self.emptied.update(empty)
        for entry in entries:
            self._simulate(entry)
        if self.lower is None:
            self._overlay_whiteouts(entries)
        return _Plan(
            entries=entries,
            delete=delete,
            empty=empty,
            devices=self.devices,
            opaque=self.opaque,
            dir_meta=self.dir_meta,
            content_bytes=sum(e.size for e in entries if e.kind == "file"),
        )


# --------------------------------------------------------------------------------------------
# Applying (pass 2): file-descriptor-relative operations that never follow a symlink.
# --------------------------------------------------------------------------------------------


def _open_dir(root_fd: int, path: str, *, create: bool) -> int | None:
    """Open directory ``path`` below ``root_fd`` one component at a time with ``O_NOFOLLOW``.

    Missing components are created (mode 0755) when ``create``; otherwise a missing component
    gives None, as does a component that is not a real directory (a symlink, a file).
    """
    fd = os.dup(root_fd)
    try:
        for name in path.split("/") if path else ():
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(name, 0o700, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(child, _IMPLICIT_DIR_MODE)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if create:  # the plan saw a directory here: the tree changed under us
                    raise LayerError(
                        f"{name!r} on the way to {path!r} is no longer a real directory"
                    ) from e
                return None
            os.close(fd)
            fd = child
        opened, fd = fd, -1
        return opened
    finally:
        if fd >= 0:
            os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str) -> bool:
    """Remove ``name`` in ``dir_fd`` whatever it is; a directory with everything below it.
    True if it was a directory."""
    st = _lstat(dir_fd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # symlink-attack resistant on Linux
        return True
    os.unlink(name, dir_fd=dir_fd)
    return False


def _open_child_dir(parent_fd: int, name: str, path: str) -> int:
    """Open (creating it if missing, mode 0755) the directory ``name`` in ``parent_fd``."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        # The plan saw a directory (or nothing) here: the tree changed under us.
        raise LayerError(f"{name!r} on the way to {path!r} is no longer a real directory") from e
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    os.fchmod(fd, _IMPLICIT_DIR_MODE)
    return fd


class _DirCache:
    """Open directory fds by path, so that each directory is opened once, not once per entry.

    Every fd was opened by us, one component at a time with ``O_NOFOLLOW``, so it is the real
    directory the plan checked; it stays valid however the path is renamed later. When pass 2
    removes a directory, :meth:`forget` drops the fds of it and of everything below it. At
    most about ``_LIMIT`` fds stay open: :meth:`tidy`, called between entries (never while an
    fd from :meth:`get` is still in use), closes them all once there are more.
    """

    _LIMIT: Final = 512

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._fds: dict[str, int] = {}
        self._loose: list[int] = []  # opened beyond the limit; closed by the next tidy()

    def get(self, path: str) -> int:
        """The open directory ``path`` (created as needed; "" is the root)."""
        if not path:
            return self._root_fd
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        parent, _, name = path.rpartition("/")
        parent_fd = self._nearest_open(parent)
        fd = _open_child_dir(parent_fd, name, path)
        if len(self._fds) < self._LIMIT:
            self._fds[path] = fd
        else:
            self._loose.append(fd)
        return fd

    def _nearest_open(self, path: str) -> int:
        """Like :meth:`get`, but without recursion, for however deep a path."""
        names = path.split("/") if path else []
        known = len(names)
        while known and "/".join(names[:known]) not in self._fds:
            known -= 1
        fd = self._fds["/".join(names[:known])] if known else self._root_fd
        for i in range(known, len(names)):
            here = "/".join(names[: i + 1])
            fd = _open_child_dir(fd, names[i], here)
            if len(self._fds) < self._LIMIT:
                self._fds[here] = fd
            else:
                self._loose.append(fd)
        return fd

    def forget(self, path: str) -> None:
        """``path`` (a directory, or "" for everything) is gone: close its fds and those below."""
        prefix = f"{path}/" if path else ""
        for key in [key for key in self._fds if key == path or key.startswith(prefix)]:
            os.close(self._fds.pop(key))

    def tidy(self) -> None:
        while self._loose:
            os.close(self._loose.pop())
        if len(self._fds) >= self._LIMIT:
            self.forget("")

    def close(self) -> None:
        self._loose.extend(self._fds.values())
        self._fds.clear()
        self.tidy()


class _Applier:
    def __init__(
        self, root: Path, plan: _Plan, archive: _Archive, *, same_owner: bool, xattrs: bool
    ) -> None:
        self.plan = plan
        self.archive = archive
        self.same_owner = same_owner
        self.xattrs = xattrs
        # Setuid/setgid only with their owner: never mint setuid-root files.
        self.mode_mask = 0o7777 if same_owner else 0o1777
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs = _DirCache(self.root_fd)
        self.written = 0
        self.skipped = 0

    def close(self) -> None:
        self.dirs.close()
        os.close(self.root_fd)

    def _parent(self, path: str) -> tuple[int, str]:
        """The open parent directory of ``path`` (created as needed) and ``path``'s last name."""
        parent, _, base = path.rpartition("/")
        return self.dirs.get(parent), base

    def _remove(self, path: str) -> None:
        """Remove whatever is at ``path``, and forget the fds of a directory removed."""
        pfd, base = self._parent(path)
        if _remove(pfd, base):
            self.dirs.forget(path)

    # Whiteouts first (merge) --------------------------------------------------------------

    def delete_lower(self) -> None:
        """Runs before any directory is cached, so there is nothing to forget here."""
        for path in self.plan.delete:
            parent, _, base = path.rpartition("/")
            fd = _open_dir(self.root_fd, parent, create=False)
            if fd is None:  # missing, or under a symlink: nothing of the lower tree there
                continue
            try:
                _remove(fd, base)
            finally:
                os.close(fd)
        for path in self.plan.empty:
            fd = _open_dir(self.root_fd, path, create=False)
            if fd is None:
                continue
            try:
                for name in os.listdir(fd):
                    _remove(fd, name)
            finally:
                os.close(fd)

    # Entries ------------------------------------------------------------------------------

    def _owner_and_mode(self, entry: _Entry, fd: int) -> None:
        if self.same_owner:  # before chmod: chown clears setuid/setgid
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode & self.mode_mask)

    def _set_xattrs(self, entry: _Entry, target: int | str) -> None:
        if not self.xattrs:
            return
        for name, value in entry.xattrs:
            # Best effort: the filesystem or the namespace may not allow it. A path (symlinks,
            # devices) is never followed; an fd needs no such flag.
            with suppress(OSError):
                os.setxattr(target, name, value, follow_symlinks=not isinstance(target, str))

    def check_header(self, index: int, entry: _Entry) -> None:
        """A plain tar is read in place: is the header before the data still the one pass 1
        read? (Its type and checksum, a byte sum that changes with any field.)"""
        if self.archive.private or entry.sparse:
            return
        block = self.archive.read_at(entry.data_offset - tarfile.BLOCKSIZE, tarfile.BLOCKSIZE)
        try:
            header = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            header = None
        if header is None or (header.chksum, header.type) != (entry.chksum, entry.type):
            raise _changed(f"entry {index} is no longer {entry.raw!r}")

    def apply(self, index: int, entry: _Entry) -> None:
        self.dirs.tidy()
        self.check_header(index, entry)
        kind = entry.kind
        if entry.skip or kind == "whiteout":
            return
        if kind == "opaque":
            self.dirs.get(entry.path)
            return
        if not entry.path:  # the root: attributes at the end
            return
        pfd, base = self._parent(entry.path)
        if kind == "directory":
            st = None if entry.fresh else _lstat(pfd, base)
            if st is None or not stat.S_ISDIR(st.st_mode):
                if st is not None:
                    self._remove(entry.path)
                os.mkdir(base, 0o700, dir_fd=pfd)  # attributes at the end
            return
        if not entry.fresh:
            self._remove(entry.path)
        if kind == "file":
            self._write_file(entry, pfd, base)
        elif kind == "hardlink":
            self._link(entry, pfd, base)
        else:
            self._make_node(entry, pfd, base)

    def _write_file(self, entry: _Entry, pfd: int, base: str) -> None:
        fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            self._copy_data(entry, fd)
            self.written += entry.size
            self._owner_and_mode(entry, fd)
            self._set_xattrs(entry, fd)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _copy_data(self, entry: _Entry, fd: int) -> None:
        """Copy the file's data from the archive, in chunks (big files never sit in memory)."""
        source = entry.data_offset
        for file_offset, length in entry.pieces:
            done = 0
            while done < length:
                chunk = self.archive.read_at(source + done, min(_CHUNK, length - done))
                if not chunk:  # only a plain tar read in place can shrink under us
                    raise _changed(f"the data of {entry.raw!r} is cut short")
                done += os.pwrite(fd, chunk, file_offset + done)
            source += length
        if len(entry.pieces) != 1:  # sparse: a hole at the end still counts in the size
            os.ftruncate(fd, entry.size)

    def _link(self, entry: _Entry, pfd: int, base: str) -> None:
        parent, _, target_base = entry.link.rpartition("/")
        tfd = self.dirs.get(parent)
        os.link(target_base, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _make_node(self, entry: _Entry, pfd: int, base: str) -> None:
        if entry.kind == "symlink":
            os.symlink(entry.link, base, dir_fd=pfd)
        elif entry.kind == "fifo":
            os.mkfifo(base, 0o600, dir_fd=pfd)
        else:
            file_type = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
            device = os.makedev(entry.devmajor, entry.devminor)
            try:
                os.mknod(base, file_type | 0o600, device, dir_fd=pfd)
            except PermissionError:  # root in a user namespace: as if not root
                self.skipped += 1
                return
        if self.same_owner:
            os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if entry.kind != "symlink":  # Linux symlinks have no mode of their own
            # We just created this node and it is not a symlink, so following is harmless.
            os.chmod(base, entry.mode & self.mode_mask, dir_fd=pfd)
        self._set_xattrs(entry, f"/proc/self/fd/{pfd}/{base}")
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    # The end ------------------------------------------------------------------------------

    def finish(self) -> None:
        for path in self.plan.devices:
            self.dirs.tidy()
            self._remove(path)
            pfd, base = self._parent(path)
            os.mknod(base, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        # Deepest first: setting a directory's attributes must come after all changes in it.
        paths = set(self.plan.dir_meta) | self.plan.opaque
        for path in sorted(paths, key=lambda p: (p.count("/") + bool(p), p), reverse=True):
            self.dirs.tidy()
            fd = self.dirs.get(path)
            if path in self.plan.opaque:
                try:
                    os.setxattr(fd, overlay_opaque_xattr(), b"y")
                except OSError as e:
                    raise LayerError(f"cannot mark {path or '.'!r} opaque: {e}") from e
            entry = self.plan.dir_meta.get(path)
            if entry is not None:
                self._owner_and_mode(entry, fd)
                self._set_xattrs(entry, fd)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _changed(cause: object) -> LayerError:
    return LayerError(f"the layer blob changed between validation and apply: {cause}")


def _apply(
    archive: _Archive,
    root: Path,
    plan: _Plan,
    *,
    same_owner: bool,
    xattrs: bool,
    merge: bool,
) -> LayerStats:
    """Pass 2: carry out the plan, entry by entry, copying file data from the archive."""
    entries = plan.entries
    applier = _Applier(root, plan, archive, same_owner=same_owner, xattrs=xattrs)
    try:
        if merge:
            applier.delete_lower()
        for index, entry in enumerate(entries):
            applier.apply(index, entry)
        applier.finish()
    finally:
        applier.close()
    return LayerStats(
        entries=len(entries),
        bytes=applier.written,
        whiteouts=sum(e.kind in ("whiteout", "opaque") for e in entries),
        skipped=sum(e.skip for e in entries) + applier.skipped,
    )


# --------------------------------------------------------------------------------------------
# The entry point.
# --------------------------------------------------------------------------------------------


def apply_layer(
    source: Path | BinaryIO,
    target: Path,
    *,
    media_type: str,
    mode: str = "merge",
    same_owner: bool | None = None,
) -> LayerStats:
    """Apply one layer blob (``source``: a path or a binary stream) to ``target``.

    ``mode="merge"``: ``target`` is a directory holding the lower layers, changed in place.
    ``mode="overlay"``: ``target`` is empty (or missing) and becomes one overlayfs lower
    directory; needs root. ``same_owner`` (default: running as root) applies the archive's
    uid/gid. The layer is validated in full before anything changes, so a LayerError leaves
    ``target`` as it was; see the module docstring.
    """
    if mode not in ("merge", "overlay"):
        raise ValueError(f"mode must be 'merge' or 'overlay', not {mode!r}")
    compression = compression_of(media_type)
    if compression == "zstd":
        _zstandard_decompressor(media_type)  # fail now if the module is missing
    root = _running_as_root()
    if same_owner is None:
        same_owner = root
    if mode == "overlay" and not root:
        raise LayerError(
            "overlay layers need root: whiteouts become 0/0 character devices (mknod) and "
            f"opaque directories the {OVERLAY_OPAQUE_XATTR} xattr; use mode='merge'"
        )
    if same_owner and not root:
        raise LayerError("same_owner=True needs root (chown to other users)")
    target = Path(target)
    merge = mode == "merge"
    if merge and not target.is_dir():
        raise LayerError(f"merge target {target} is not a directory")
    if not merge:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise LayerError(f"overlay target {target} is not a directory")
        if target.exists() and any(target.iterdir()):
            raise LayerError(f"overlay target {target} is not empty")
        if not target.parent.is_dir():
            raise LayerError(f"the parent of overlay target {target} does not exist")

    with ExitStack() as stack:
        archive = _unpacked(_Source(source, stack), compression, media_type, stack)
        entries = _scan(archive, media_type)
        plan = _Planner(
            target if merge else None,
            devices=root,
            check_ids=same_owner,
            writable=None if root else _writable,
        ).plan(entries)
        where = target if merge else target.parent
        free = shutil.disk_usage(where).free
        if plan.content_bytes > free:
            raise LayerError(
                f"the layer holds {plan.content_bytes} bytes of files; {where} has {free} free"
            )

        def run(root_dir: Path) -> LayerStats:
            return _apply(
                archive,
                root_dir,
                plan,
                same_owner=same_owner,
                xattrs=root,
                merge=merge,
            )

        if merge:
            return run(target)

        old_mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else _IMPLICIT_DIR_MODE
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            stats = run(partial)
            if "" not in plan.dir_meta:
                partial.chmod(old_mode)
            os.rename(partial, target)  # replaces an empty directory atomically
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return stats
