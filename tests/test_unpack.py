"""Applying OCI layers: changesets, whiteouts, overlay markers, and refusing unsafe archives.

Every layer here is built in memory with ``tarfile`` and applied to a directory under
``tmp_path``; trees are compared as ``{path: description}`` dicts. An unsafe layer must be
refused *and* leave the target byte-for-byte (and inode-for-inode) as it was.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO

import pytest

from teaching_cri.errors import FailedPrecondition
from teaching_cri.image import unpack
from teaching_cri.image.unpack import (
    MEDIA_TYPES,
    LayerError,
    LayerStats,
    apply_layer,
    compression_of,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod, chown, trusted xattrs)")

MTIME = 1_700_000_000
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA = {"tar": OCI_TAR, "gzip": OCI_GZIP, "zstd": OCI_ZSTD}


# --- building layers -------------------------------------------------------------------------


@dataclass
class E:
    """One entry of a test layer."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    major: int = 0
    minor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def f(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> E:
    return E(name, tarfile.REGTYPE, data, mode, **kw)  # type: ignore[arg-type]


def d(name: str, mode: int = 0o755, **kw: object) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str) -> E:
    return E(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, link=target)


def wh(path: str) -> E:
    """The whiteout entry deleting ``path``."""
    parent, _, base = path.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opq(directory: str) -> E:
    return f(f"{directory}/.wh..wh..opq")


def layer(*entries: E, compression: str = "tar") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.major, e.minor
            info.pax_headers = dict(e.pax)
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if info.size else None)
    return compress(buf.getvalue(), compression)


def compress(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(raw)
    return raw


def apply(blob: bytes, target: Path, compression: str = "tar", **kw: object) -> LayerStats:
    return apply_layer(io.BytesIO(blob), target, media_type=MEDIA[compression], **kw)  # type: ignore[arg-type]


# --- looking at trees ------------------------------------------------------------------------


def describe(path: Path) -> str:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"symlink -> {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {mode:o}"
    if stat.S_ISREG(st.st_mode):
        return f"file {mode:o} {path.read_bytes()!r}"
    if stat.S_ISCHR(st.st_mode):
        return f"char {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    if stat.S_ISFIFO(st.st_mode):
        return f"fifo {mode:o}"
    return "other"


def walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            yield Path(dirpath, name)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): describe(p) for p in walk(root)}


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything that must not change when a layer is refused, the root included."""
    out: dict[str, tuple[object, ...]] = {}
    for p in [root, *walk(root)]:
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (
            describe(p),
            st.st_ino,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            st.st_nlink,
        )
    return out


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A merge target holding a small base layer."""
    root = tmp_path / "rootfs"
    root.mkdir()
    apply(
        layer(
            d("etc"),
            f("etc/hosts", b"127.0.0.1 localhost\n"),
            f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            d("usr"),
            d("usr/lib"),
            f("usr/lib/libc.so", b"ELF", 0o755),
            d("var"),
            d("var/cache"),
            f("var/cache/a", b"a"),
            d("var/cache/sub"),
            f("var/cache/sub/b", b"b"),
            f("keep", b"keep"),
        ),
        root,
    )
    return root


# --- media types -----------------------------------------------------------------------------


def test_media_types_map_to_their_compression() -> None:
    assert compression_of(OCI_TAR) == "tar"
    assert compression_of(OCI_GZIP) == "gzip"
    assert compression_of(OCI_ZSTD) == "zstd"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") == "gzip"
    assert compression_of("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == "gzip"
    assert set(MEDIA_TYPES.values()) == {"tar", "gzip", "zstd"}
    assert issubclass(LayerError, FailedPrecondition)


@pytest.mark.parametrize(
    ("media_type", "says"),
    [
        ("application/vnd.oci.image.manifest.v1+json", "not a layer media type"),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", "unsupported"),
        ("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "encrypted"),
        ("", "not a layer media type"),
    ],
)
def test_unknown_media_types_are_refused(rootfs: Path, media_type: str, says: str) -> None:
    with pytest.raises(LayerError, match=says):
        compression_of(media_type)
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match=says):
        apply_layer(io.BytesIO(layer(f("new"))), rootfs, media_type=media_type)
    assert snapshot(rootfs) == before


def test_compression_must_match_the_media_type(rootfs: Path) -> None:
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="says tar, but the blob looks gzip-compressed"):
        apply_layer(io.BytesIO(layer(f("x"), compression="gzip")), rootfs, media_type=OCI_TAR)
    with pytest.raises(LayerError, match="says gzip, but the blob looks uncompressed"):
        apply_layer(io.BytesIO(layer(f("x"))), rootfs, media_type=OCI_GZIP)
    assert snapshot(rootfs) == before


def test_zstd_without_the_module_is_a_clear_error(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = layer(f("x"), compression="zstd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    with pytest.raises(LayerError, match="needs the 'zstandard' package"):
        apply(blob, rootfs, "zstd")
    assert not (rootfs / "x").exists()


# --- applying changesets ---------------------------------------------------------------------


def test_layers_in_order_build_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    base = layer(
        d("./"),
        d("./bin"),
        f("./bin/tool", b"#!/bin/sh\necho v1\n", 0o755),
        d("./etc", 0o750),
        f("./etc/conf", b"v1", 0o600),
        sym("./etc/link", "conf"),
        sym("./abs", "/etc/conf"),
        hard("./bin/tool-again", "bin/tool"),
        E("./run", tarfile.FIFOTYPE, mode=0o640),
        f("./deep/in/side/file", b"parents made as needed"),
    )
    second = layer(
        f("bin/tool", b"#!/bin/sh\necho v2\n", 0o755),  # modified
        f("etc/new", b"added"),
        compression="gzip",
    )
    third = layer(d("opt"), f("opt/app", b"zstd!", 0o700), compression="zstd")

    s1 = apply(base, root)
    s2 = apply(second, root, "gzip")
    s3 = apply(third, root, "zstd")

    assert tree(root) == {
        "abs": "symlink -> /etc/conf",
        "bin": "dir 755",
        "bin/tool": "file 755 b'#!/bin/sh\\necho v2\\n'",
        "bin/tool-again": "file 755 b'#!/bin/sh\\necho v1\\n'",  # the old inode, unlinked
        "deep": "dir 755",
        "deep/in": "dir 755",
        "deep/in/side": "dir 755",
        "deep/in/side/file": "file 644 b'parents made as needed'",
        "etc": "dir 750",
        "etc/conf": "file 600 b'v1'",
        "etc/link": "symlink -> conf",
        "etc/new": "file 644 b'added'",
        "opt": "dir 755",
        "opt/app": "file 700 b'zstd!'",
        "run": "fifo 640",
    }
    assert s1 == LayerStats(entries=10, bytes=18 + 2 + 22, whiteouts=0)
    assert (s2.entries, s2.bytes, s3.entries, s3.bytes) == (2, 18 + 5, 2, 5)
    # Directory mtimes are set after their contents, file mtimes as archived.
    assert (root / "opt").stat().st_mtime == MTIME  # not spoilt by creating opt/app
    assert (root / "etc/conf").stat().st_mtime == MTIME
    assert os.lstat(root / "etc/link").st_mtime == MTIME


def test_hard_links_share_the_inode(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    apply(
        layer(f("a", b"same"), d("sub"), hard("sub/b", "./a"), sym("s", "a"), hard("s2", "s")), root
    )
    assert (root / "a").stat().st_ino == (root / "sub/b").stat().st_ino
    assert (root / "a").stat().st_nlink == 2
    assert os.readlink(root / "s2") == "a"  # a hard link to the symlink itself


def test_hard_link_to_a_lower_file(rootfs: Path) -> None:
    apply(layer(hard("passwd-link", "etc/passwd")), rootfs)
    assert (rootfs / "passwd-link").stat().st_ino == (rootfs / "etc/passwd").stat().st_ino


def test_pax_mtime_keeps_nanoseconds(tmp_path: Path) -> None:
    apply(layer(f("t", pax={"mtime": "1700000000.123456789"})), tmp_path)
    assert (tmp_path / "t").stat().st_mtime_ns == 1_700_000_000_123_456_789


def test_large_file_streams_from_a_non_seekable_source(tmp_path: Path) -> None:
    big = os.urandom(1 << 16) * 48  # 3 MiB, more than one chunk
    blob = layer(f("big", big), compression="gzip")

    class Pipe(io.RawIOBase):
        """A stream that can only be read forwards, like a network response."""

        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            chunk = self._data.read(min(len(b), 4096))
            b[: len(chunk)] = chunk
            return len(chunk)

    stats = apply_layer(Pipe(blob), tmp_path, media_type=OCI_GZIP)  # type: ignore[arg-type]
    assert (tmp_path / "big").read_bytes() == big
    assert stats.bytes == len(big)


def test_a_path_source_and_a_stream_positioned_mid_file(tmp_path: Path) -> None:
    blob = layer(f("from-path", b"p"), compression="zstd")
    (tmp_path / "blob").write_bytes(blob)
    (tmp_path / "root").mkdir()
    apply_layer(tmp_path / "blob", tmp_path / "root", media_type=OCI_ZSTD)
    stream: BinaryIO = io.BytesIO(b"junk" + layer(f("from-stream", b"s")))
    stream.seek(4)
    apply_layer(stream, tmp_path / "root", media_type=OCI_TAR)
    assert tree(tmp_path / "root") == {
        "from-path": "file 644 b'p'",
        "from-stream": "file 644 b's'",
    }


# --- whiteouts -------------------------------------------------------------------------------


def test_whiteouts_delete_a_lower_file_and_a_lower_directory(rootfs: Path) -> None:
    stats = apply(layer(wh("etc/hosts"), wh("var/cache"), wh("not/there")), rootfs)
    assert stats.whiteouts == 3
    t = tree(rootfs)
    assert "etc/hosts" not in t
    assert "etc/passwd" in t
    assert not any(p.startswith("var/cache") for p in t)
    assert t["var"] == "dir 755"
    assert "not" not in t  # a whiteout of nothing creates nothing
    assert not any(".wh." in p for p in t)


@pytest.mark.parametrize("marker_first", [True, False], ids=["marker-first", "marker-last"])
def test_opaque_directory_hides_lower_content_only(rootfs: Path, marker_first: bool) -> None:
    contents = [d("var/cache/fresh"), f("var/cache/fresh/x", b"x"), f("var/cache/a", b"new a")]
    marker = [opq("var/cache")]
    entries = [d("var/cache", 0o700), *(marker + contents if marker_first else contents + marker)]
    stats = apply(layer(*entries), rootfs)
    t = tree(rootfs)
    assert {p: v for p, v in t.items() if p.startswith("var/cache")} == {
        "var/cache": "dir 700",
        "var/cache/a": "file 644 b'new a'",
        "var/cache/fresh": "dir 755",
        "var/cache/fresh/x": "file 644 b'x'",
    }
    assert t["usr/lib/libc.so"] == "file 755 b'ELF'"  # elsewhere untouched
    assert stats.whiteouts == 1


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whiteout_never_deletes_its_own_layers_files(rootfs: Path, whiteout_first: bool) -> None:
    entries = [wh("etc/hosts"), f("etc/hosts", b"this layer's")]
    apply(layer(*(entries if whiteout_first else entries[::-1])), rootfs)
    assert tree(rootfs)["etc/hosts"] == 'file 644 b"this layer\'s"'


def test_a_deleted_and_recreated_directory_loses_its_lower_content(rootfs: Path) -> None:
    apply(layer(f("var/cache/new", b"n"), wh("var/cache")), rootfs)
    t = tree(rootfs)
    assert {p for p in t if p.startswith("var/cache")} == {"var/cache", "var/cache/new"}


def test_replacing_a_file_with_a_directory_and_back(rootfs: Path) -> None:
    apply(layer(d("keep"), f("keep/inside", b"i"), f("var/cache", b"now a file")), rootfs)
    t = tree(rootfs)
    assert t["keep"] == "dir 755"
    assert t["keep/inside"] == "file 644 b'i'"
    assert t["var/cache"] == "file 644 b'now a file'"
    assert not any(p.startswith("var/cache/") for p in t)
    apply(layer(f("keep", b"file again"), d("var/cache"), sym("etc", "/elsewhere")), rootfs)
    t = tree(rootfs)
    assert t["keep"] == "file 644 b'file again'"
    assert "keep/inside" not in t
    assert t["var/cache"] == "dir 755"
    assert t["etc"] == "symlink -> /elsewhere"
    assert not any(p.startswith("etc/") for p in t)


def test_a_lower_symlink_replaced_by_a_directory(tmp_path: Path) -> None:
    # overlayfs marks a directory created over a deleted path opaque, so Docker emits this.
    apply(layer(sym("lib", "/usr/lib")), tmp_path)
    apply(layer(d("lib"), opq("lib"), f("lib/own", b"o")), tmp_path)
    assert tree(tmp_path) == {"lib": "dir 755", "lib/own": "file 644 b'o'"}


def test_duplicate_entries_the_later_one_wins(tmp_path: Path) -> None:
    apply(
        layer(d("x", 0o700), f("x/a", b"a"), f("x", b"file"), f("y", b"1"), f("y", b"2")), tmp_path
    )
    assert tree(tmp_path) == {"x": "file 644 b'file'", "y": "file 644 b'2'"}


def test_an_opaque_whiteout_alone_leaves_an_empty_directory(rootfs: Path) -> None:
    apply(layer(opq("var/cache"), opq("brand/new")), rootfs)
    t = tree(rootfs)
    assert {p for p in t if p.startswith(("var/cache", "brand"))} == {
        "var/cache",
        "brand",
        "brand/new",
    }


@needs_root
def test_ids_out_of_range_are_refused_when_kept(tmp_path: Path) -> None:
    blob = layer(f("u", pax={"uid": str(2**40)}))
    with pytest.raises(LayerError, match="'u': uid/gid 1099511627776/0 out of range"):
        apply(blob, tmp_path)
    apply(blob, tmp_path, same_owner=False)
    assert (tmp_path / "u").stat().st_uid == 0


def test_aufs_metadata_is_skipped(tmp_path: Path) -> None:
    stats = apply(layer(d(".wh..wh.plnk"), f(".wh..wh.plnk/1.2", b"x"), f("real")), tmp_path)
    assert tree(tmp_path) == {"real": "file 644 b''"}
    assert stats.skipped == 2


# --- unsafe layers ---------------------------------------------------------------------------


# (entries, the entry the error must name); "OUTSIDE" stands for a directory next to the target.
UNSAFE: dict[str, tuple[list[E], str]] = {
    "dotdot": ([f("../evil", b"x")], "../evil"),
    "absolute": ([f("/etc/passwd", b"x")], "/etc/passwd"),
    "dotdot-inside": ([f("a/../../x", b"x")], "a/../../x"),
    "symlink-root-then-write": ([sym("link", "/"), f("link/etc/x", b"x")], "link/etc/x"),
    "symlink-outside-then-write": (
        [sym("link", "OUTSIDE"), f("link/planted", b"x")],
        "link/planted",
    ),
    "symlink-up-then-write": ([sym("up", ".."), f("up/x", b"x")], "up/x"),
    "symlink-then-dir": ([sym("link", "OUTSIDE"), d("link/sub")], "link/sub"),
    "symlink-then-whiteout": ([sym("link", "OUTSIDE"), opq("link")], "link/.wh..wh..opq"),
    "hardlink-escape": ([hard("shadow", "../../etc/shadow")], "shadow"),
    "hardlink-absolute": ([hard("shadow", "/etc/shadow")], "shadow"),
    "hardlink-through-symlink": (
        [sym("link", "OUTSIDE"), hard("stolen", "link/secret")],
        "stolen",
    ),
    "hardlink-to-nothing": ([hard("h", "no/such/file")], "h"),
    "hardlink-to-directory": ([hard("h", "etc")], "h"),
    "whiteout-escape": ([f("../.wh.keep")], "../.wh.keep"),
    "whiteout-dotdot-name": ([f("etc/.wh...")], "etc/.wh..."),
    "lower-file-as-parent": ([f("keep/x", b"x")], "keep/x"),
    "unsupported-type": ([E("weird", b"Z")], "weird"),
    "root-as-file": ([f("./", b"x")], "./"),
    "hardlink-to-itself": ([hard("h", "./h")], "h"),
    "hardlink-to-root": ([hard("h", "./")], "h"),
    "fifo-as-parent": ([E("p", tarfile.FIFOTYPE), f("p/x")], "p/x"),
    "name-too-long": ([f("d/" + "x" * 256)], "d/" + "x" * 256),
    "empty-symlink": ([sym("s", "")], "s"),
    "mtime-not-a-number": ([f("t", pax={"mtime": "nan"})], "t"),
}


@pytest.mark.parametrize("case", UNSAFE)
def test_unsafe_layers_are_refused_and_change_nothing(
    tmp_path: Path, rootfs: Path, case: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    entries, named = UNSAFE[case]
    bad = [E(**{**vars(e), "link": e.link.replace("OUTSIDE", str(outside))}) for e in entries]
    # Harmless work before and after the bad entry: a one-pass extractor would have done it.
    blob = layer(wh("etc/hosts"), f("usr/new", b"n"), *bad, f("after", b"a"))
    before, before_outside = snapshot(rootfs), snapshot(outside)
    with pytest.raises(LayerError) as refused:
        apply(blob, rootfs)
    assert repr(named) in str(refused.value)
    assert snapshot(rootfs) == before
    assert snapshot(outside) == before_outside


def test_a_lower_symlink_is_never_written_through(tmp_path: Path, rootfs: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    apply(layer(sym("usr/share", str(outside))), rootfs)
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="'usr/share' is a symlink"):
        apply(layer(f("usr/share/doc", b"x")), rootfs)
    assert snapshot(rootfs) == before
    assert list(outside.iterdir()) == []
    # A whiteout under that symlink deletes nothing outside either.
    (outside / "victim").write_text("v")
    apply(layer(wh("usr/share/victim")), rootfs)
    assert (outside / "victim").exists()


@pytest.mark.parametrize(
    "damage",
    ["flip-middle", "truncate", "bad-crc", "not-gzip-at-all", "empty"],
)
def test_a_corrupt_gzip_stream_is_refused(rootfs: Path, damage: str) -> None:
    blob = bytearray(
        layer(wh("etc/hosts"), f("big", os.urandom(200_000)), f("late", b"l"), compression="gzip")
    )
    if damage == "flip-middle":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        del blob[len(blob) * 3 // 4 :]
    elif damage == "bad-crc":
        blob[-8] ^= 0xFF  # the CRC32 in the trailer: only seen at the very end of the stream
    elif damage == "not-gzip-at-all":
        blob[:] = b"\x1f\x8b" + b"\x00" * 100
    else:
        blob.clear()
    before = snapshot(rootfs)
    with pytest.raises(LayerError):
        apply(bytes(blob), rootfs, "gzip")
    assert snapshot(rootfs) == before


def test_a_truncated_plain_tar_is_refused(rootfs: Path) -> None:
    blob = layer(wh("etc/hosts"), f("big", b"x" * 100_000))
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="corrupt or truncated"):
        apply(blob[:50_000], rootfs)
    assert snapshot(rootfs) == before


def test_a_damaged_header_mid_archive_is_not_taken_for_the_end(rootfs: Path) -> None:
    blob = bytearray(layer(wh("etc/hosts"), f("a", b"a"), f("b", b"b"), f("c", b"c")))
    header = blob.find(b"c\0\0\0")
    blob[header + 100] ^= 0x55  # the mode field: the header checksum no longer matches
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match=r"damaged tar header .* after entry 'b'"):
        apply(bytes(blob), rootfs)
    assert snapshot(rootfs) == before


def test_trailing_zeros_and_a_missing_end_marker_are_fine(tmp_path: Path) -> None:
    blob = layer(f("a", b"a"))
    apply(blob + b"\0" * 100_000, tmp_path)
    apply(blob[:1024], tmp_path)  # header and data of "a", no end-of-archive blocks
    assert tree(tmp_path) == {"a": "file 644 b'a'"}


# --- where an archive may end: Go's archive/tar rules -----------------------------------------
# Some image builders end a layer right after the last entry's data: no padding of the data to
# the 512-byte block, no end-of-archive blocks. Go's reader (containerd, CRI-O, docker) takes
# any end inside the padding, and after zero, one or two zero blocks, as the end of the archive
# (reader.go: tryReadFull of the padding, readHeader's "EOF is okay here"); an end inside an
# entry's data, or inside a header or end block, is io.ErrUnexpectedEOF.


def data_end(blob: bytes) -> int:
    """Where the last entry's data ends in the plain tar ``blob`` (before its padding)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        last = tar.getmembers()[-1]
    return int(last.offset_data + last.size)


def two_files() -> bytes:
    return layer(d("x"), f("x/a", b"alpha"), f("x/b", b"hello\n"))


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
@pytest.mark.parametrize(
    "cut",
    ["unpadded", "partly padded", "padded, no end blocks", "one end block", "both end blocks"],
)
def test_a_layer_may_end_where_gos_tar_reader_lets_it(
    tmp_path: Path, compression: str, cut: str
) -> None:
    raw = two_files()
    end = data_end(raw)
    keep = {
        "unpadded": end,
        "partly padded": end + 100,
        "padded, no end blocks": end + (-end % 512),
        "one end block": end + (-end % 512) + 512,
        "both end blocks": end + (-end % 512) + 1024,
    }[cut]
    stats = apply(compress(raw[:keep], compression), tmp_path, compression)
    assert tree(tmp_path) == {
        "x": "dir 755",
        "x/a": "file 644 b'alpha'",
        "x/b": "file 644 b'hello\\n'",
    }
    assert stats.entries == 3 and stats.bytes == 11


@pytest.mark.parametrize("meta", ["pax", "gnu"])
def test_a_meta_header_at_the_very_end_ends_the_archive(tmp_path: Path, meta: str) -> None:
    """A PAX extended header or a GNU long-name header that no entry follows:
    Go's reader.go reads the next header, meets EOF where "EOF is okay", and
    the archive ends; the entries before it are the layer."""
    buf = io.BytesIO()
    form = tarfile.PAX_FORMAT if meta == "pax" else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=buf, mode="w", format=form) as tar:
        first = tarfile.TarInfo("a")
        first.size = 5
        tar.addfile(first, io.BytesIO(b"alpha"))
        second = tarfile.TarInfo("b" * 120 if meta == "gnu" else "b")
        second.pax_headers = {"comment": "a meta header before it"} if meta == "pax" else {}
        second.size = 2
        tar.addfile(second, io.BytesIO(b"hi"))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        meta_end = tar.getmembers()[1].offset_data - tarfile.BLOCKSIZE  # its own header
    stats = apply(raw[:meta_end], tmp_path)
    assert tree(tmp_path) == {"a": "file 644 b'alpha'"}
    assert stats.entries == 1


def test_a_meta_header_whose_data_is_cut_short_is_refused(rootfs: Path) -> None:
    """Go: the PAX records are read in full or io.ErrUnexpectedEOF."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entry = tarfile.TarInfo("b")
        entry.pax_headers = {"comment": "x" * 300}
        tar.addfile(entry, io.BytesIO(b""))
    raw = buf.getvalue()
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="corrupt or truncated"):
        apply(raw[: tarfile.BLOCKSIZE + 100], rootfs)
    assert snapshot(rootfs) == before


def test_an_unpadded_last_entry_is_applied_in_overlay_mode_too(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("overlay mode needs root")
    raw = two_files()
    apply(raw[: data_end(raw)], tmp_path / "l", mode="overlay")
    assert (tmp_path / "l" / "x" / "b").read_bytes() == b"hello\n"


def test_an_empty_archive_is_an_empty_layer(tmp_path: Path) -> None:
    """Go reads no entries from an empty stream, and no error."""
    assert apply(b"", tmp_path).entries == 0
    assert apply(compress(b"", "gzip"), tmp_path, "gzip").entries == 0
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("compression", ["tar", "gzip"])
@pytest.mark.parametrize("missing", [1, 4, 5])
def test_an_entry_whose_data_is_cut_short_is_refused(
    rootfs: Path, compression: str, missing: int
) -> None:
    raw = two_files()
    blob = compress(raw[: data_end(raw) - missing], compression)
    before = snapshot(rootfs)
    with pytest.raises(
        LayerError,
        match=rf"corrupt or truncated .*the data of 'x/b' is cut short: {6 - missing} of its 6",
    ):
        apply(blob, rootfs, compression)
    assert snapshot(rootfs) == before


def test_data_cut_short_by_more_than_a_block_is_named_too(rootfs: Path) -> None:
    raw = layer(f("first", b"1"), f("big", b"x" * 100_000))
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match=r"the data of 'big' is cut short: \d+ of its 100000"):
        apply(raw[:50_000], rootfs)
    assert snapshot(rootfs) == before


@pytest.mark.parametrize("length", [1, 100, 200])
def test_a_header_cut_short_is_refused(rootfs: Path, length: int) -> None:
    raw = two_files()
    start = data_end(raw)
    start += -start % 512
    blob = raw[:start] + layer(f("late", b"l"))[:length]
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match=rf"ends {length} bytes into the block at offset {start}"):
        apply(blob, rootfs)
    assert snapshot(rootfs) == before


def test_a_header_cut_short_where_its_tail_was_zeros_is_refused(rootfs: Path) -> None:
    """A header whose missing part would have been zeros still parses when the reader makes
    up zeros past the end: its absence is noticed all the same."""
    header = tarfile.TarInfo("late").tobuf(tarfile.USTAR_FORMAT)
    assert not header[265:].strip(b"\0"), "no owner names, no device numbers: zeros"
    raw = layer(f("a", b"a"))
    blob = raw[:1024] + header[:300]
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="the header of 'late' is cut short"):
        apply(blob, rootfs)
    assert snapshot(rootfs) == before


def test_a_partial_end_block_is_refused(rootfs: Path) -> None:
    """Go: an end block cut short is io.ErrUnexpectedEOF, whether or not it is all zeros."""
    raw = layer(f("a", b"a"))
    with pytest.raises(LayerError, match="ends 100 bytes into the block at offset 1024"):
        apply(raw[:1024] + bytes(100), rootfs)
    with pytest.raises(LayerError, match="ends 100 bytes into the block at offset 1536"):
        apply(raw[:1536] + bytes(100), rootfs)


def test_a_zero_block_then_a_header_is_refused(rootfs: Path) -> None:
    """Go's readHeader: one zero block followed by a non-zero block is ErrHeader."""
    raw = layer(f("a", b"a"))
    blob = raw[:1024] + bytes(512) + layer(f("hidden", b"h"))
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="damaged tar header at offset 1536, after a zero block"):
        apply(blob, rootfs)
    assert snapshot(rootfs) == before


def test_a_blob_that_changes_between_the_passes_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = layer(f("a", b"a"), f("b", b"b")), layer(f("a", b"a"), f("c", b"c"))
    blobs: list[io.BytesIO] = []
    real_apply = unpack._apply

    def swap_then_apply(*args: object, **kw: object) -> LayerStats:
        """Someone rewrites the plain tar after pass 1 checked it, before pass 2 reads it."""
        blob = blobs[-1]
        blob.seek(0)
        blob.truncate()
        blob.write(second)
        return real_apply(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(unpack, "_apply", swap_then_apply)
    (tmp_path / "merged").mkdir()
    blobs.append(io.BytesIO(first))
    with pytest.raises(LayerError, match="changed between validation and apply: entry 1"):
        apply_layer(blobs[-1], tmp_path / "merged", media_type=OCI_TAR)
    # Merge mode changes the target in place, so "a" is there: the caller drops the snapshot.
    assert tree(tmp_path / "merged") == {"a": "file 644 b'a'"}
    if IS_ROOT:  # overlay mode extracts aside, and removes the attempt
        blobs.append(io.BytesIO(first))
        with pytest.raises(LayerError, match="changed between validation and apply"):
            apply_layer(blobs[-1], tmp_path / "l", media_type=OCI_TAR, mode="overlay")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_not_enough_disk_space_is_refused_up_front(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=0))
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="100 bytes of files"):
        apply(layer(wh("keep"), f("x", b"x" * 100)), rootfs)
    assert snapshot(rootfs) == before


# --- ownership, modes, devices, xattrs -------------------------------------------------------


@needs_root
def test_ownership_and_setuid_are_kept_as_root(tmp_path: Path) -> None:
    apply(
        layer(
            d("home", uid=1234, gid=1234),
            f("home/su", b"x", 0o4755, uid=1234, gid=5678),
            sym("home/l", "su"),
        ),
        tmp_path,
    )
    st = (tmp_path / "home/su").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert (tmp_path / "home").stat().st_uid == 1234
    assert os.lstat(tmp_path / "home/l").st_uid == 0  # uid 0 in the archive


@needs_root
def test_without_same_owner_files_are_ours_and_lose_setuid(tmp_path: Path) -> None:
    apply(layer(f("su", b"x", 0o6755, uid=1234, gid=1234)), tmp_path, same_owner=False)
    st = (tmp_path / "su").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o755)


@needs_root
def test_devices_are_made_as_root(tmp_path: Path) -> None:
    stats = apply(layer(E("null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3)), tmp_path)
    assert describe(tmp_path / "null") == "char 1,3"
    assert stats.skipped == 0


def test_devices_are_skipped_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack, "_running_as_root", lambda: False)
    stats = apply(
        layer(
            E("null", tarfile.CHRTYPE, major=1, minor=3),
            E("sda", tarfile.BLKTYPE, major=8, minor=0),
            hard("null2", "null"),
            E("fifo", tarfile.FIFOTYPE, mode=0o600),
            f("ok", b"ok"),
        ),
        tmp_path,
    )
    assert tree(tmp_path) == {"fifo": "fifo 600", "ok": "file 644 b'ok'"}
    assert stats.skipped == 3
    assert stats.entries == 5


def test_rootless_merge_refuses_a_read_only_lower_directory(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unpack, "_running_as_root", lambda: False)
    monkeypatch.setattr(unpack, "_writable", lambda path: path.name != "lib")
    before = snapshot(rootfs)
    with pytest.raises(LayerError, match="'usr/lib' of the lower layers is not writable"):
        apply(layer(wh("keep"), f("usr/lib/new", b"n")), rootfs)
    assert snapshot(rootfs) == before
    apply(layer(f("usr/other", b"fine")), rootfs)


@needs_root
def test_xattrs_are_applied_but_overlay_ones_dropped(tmp_path: Path) -> None:
    pax = {
        "SCHILY.xattr.user.origin": "layer",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    apply(layer(d("x", pax=pax), f("x/y", pax=pax)), tmp_path)
    for p in (tmp_path / "x", tmp_path / "x/y"):
        assert os.getxattr(p, "user.origin") == b"layer"
        assert not any(name.startswith("trusted.overlay.") for name in os.listxattr(p))


# --- overlay mode ----------------------------------------------------------------------------


def is_whiteout(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, unpack.OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


@needs_root
def test_overlay_whiteouts_become_devices_and_opaque_xattrs(tmp_path: Path) -> None:
    target = tmp_path / "layers" / "2"
    target.parent.mkdir()
    stats = apply(
        layer(
            wh("etc/hosts"),  # parent made implicitly
            d("var"),
            f("var/cache/x", b"x"),
            opq("var/cache"),  # marker after the entries
            wh("gone"),
            f("recreated/file", b"r"),
            wh("recreated"),  # deleted and recreated: opaque, not a device
            hard("recreated/link", "var/cache/x"),
            compression="gzip",
        ),
        target,
        "gzip",
        mode="overlay",
    )
    assert is_whiteout(target / "etc/hosts")
    assert is_whiteout(target / "gone")
    assert (target / "var/cache").is_dir() and opaque(target / "var/cache")
    assert not opaque(target / "var")
    assert (target / "recreated").is_dir() and opaque(target / "recreated")
    assert (target / "recreated/file").read_bytes() == b"r"
    assert (target / "recreated/link").stat().st_ino == (target / "var/cache/x").stat().st_ino
    assert (target / "var/cache/x").read_bytes() == b"x"
    assert not any(".wh." in p for p in tree(target))
    assert stats.whiteouts == 4
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["2"]


@needs_root
def test_overlay_into_an_existing_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "l"
    target.mkdir(mode=0o711)
    apply(layer(f("a", b"a")), target, mode="overlay")
    assert tree(target) == {"a": "file 644 b'a'"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o711


@needs_root
def test_overlay_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "l"
    with pytest.raises(LayerError, match="'link/x'"):
        apply(layer(f("a"), sym("link", "/"), f("link/x")), target, mode="overlay")
    with pytest.raises(LayerError, match="does not exist in this layer"):
        apply(layer(hard("h", "lower-file")), target, mode="overlay")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "junk").write_text("j")
    with pytest.raises(LayerError, match="not empty"):
        apply(layer(f("a")), target, mode="overlay")


def test_overlay_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack, "_running_as_root", lambda: False)
    with pytest.raises(LayerError, match="overlay layers need root"):
        apply(layer(f("a")), tmp_path / "l", mode="overlay")
    assert not (tmp_path / "l").exists()


def test_bad_mode_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        apply(layer(f("a")), tmp_path, mode="copy")


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_file_comes_out_whole(tmp_path: Path, fmt: str) -> None:
    """GNU tar writes the holes of a sparse file as a map, not as zeros: the
    data pieces must land at their offsets and the file keep its full size."""
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is needed to write a sparse archive")
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "sparse.bin"
    with sparse.open("wb") as f:
        f.write(b"start")
        f.seek(3_000_000)
        f.write(b"middle")
        f.truncate(6_000_000)
    layer = tmp_path / "layer.tar"
    subprocess.run(
        [tar, f"--format={fmt}", "--sparse", "-cf", str(layer), "-C", str(src), "sparse.bin"],
        check=True,
    )
    target = tmp_path / "target"
    target.mkdir()
    apply_layer(layer, target, media_type="application/vnd.oci.image.layer.v1.tar")
    assert (target / "sparse.bin").read_bytes() == sparse.read_bytes()
