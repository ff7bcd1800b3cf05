"""Snapshots: image layers unpacked, ready to become a container's root file system.

Each prefix of an image's layers is a snapshot named by its chain id
(:func:`teaching_cri.image.store.chain_ids`), so two images that share their
lower layers share those snapshots, as in containerd's snapshotters.

Two ways, chosen once per server:

- **overlay** (root): a snapshot holds only its own layer, in overlayfs form
  (whiteouts as 0/0 character devices, opaque directories marked by an
  xattr). A container's root is an overlay mount of all its image's layers
  as read-only lower directories plus its own upper and work directories.
- **copy** (anyone): a snapshot holds the whole file system up to its layer:
  the parent snapshot copied, then the layer applied on top. It costs disk
  space and time, but needs no privilege at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import FailedPrecondition
from ..fsutil import mount, umount
from .store import disk_usage
from .unpack import apply_layer, in_user_namespace


@dataclass(frozen=True)
class LayerToApply:
    blob: Path
    media_type: str
    chain_id: str


def _hex(chain_id: str) -> str:
    return chain_id.removeprefix("sha256:")


def overlay_supported() -> bool:
    """overlayfs needs (namespaced) root and the kernel module. Root in a user
    namespace, as in a rootless setup (``unshare -Urm teaching-cri serve``),
    counts: Linux 5.11+ mounts overlay there, with the ``userxattr`` option."""
    if os.geteuid() != 0:
        return False
    try:
        return "overlay" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


class SnapshotStore:
    def __init__(self, root: Path, mode: str | None = None) -> None:
        self.root = root
        self.mode = mode or ("overlay" if overlay_supported() else "copy")
        self.layers = root / self.mode
        self.active = root / "active"
        for d in (self.layers, self.active):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.layers / _hex(chain_id)

    def has(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def ensure(self, layers: Sequence[LayerToApply]) -> int:
        """Unpack every layer whose snapshot is missing, bottom up; returns how
        many were unpacked. Each appears under its name only when complete."""
        made = 0
        parent: LayerToApply | None = None
        for layer in layers:
            if not self.has(layer.chain_id):
                self._unpack(layer, parent)
                made += 1
            parent = layer
        return made

    def _unpack(self, layer: LayerToApply, parent: LayerToApply | None) -> None:
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.layers))
        try:
            fs = staging / "fs"
            if self.mode == "copy":
                if parent is not None:
                    shutil.copytree(self.path(parent.chain_id), fs, symlinks=True)
                else:
                    fs.mkdir()
                apply_layer(layer.blob, fs, media_type=layer.media_type, mode="merge")
            else:
                fs.mkdir()
                apply_layer(layer.blob, fs, media_type=layer.media_type, mode="overlay")
            try:
                os.replace(fs, self.path(layer.chain_id))
            except OSError:
                # Another pull of an image sharing this layer finished it first:
                # same chain id, same content, so theirs is as good as ours.
                if not self.has(layer.chain_id):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def lower_dirs(self, chain_ids: Sequence[str]) -> list[Path]:
        """The snapshots a container of an image with these chain ids needs,
        topmost first, as overlayfs's lowerdir wants them."""
        if self.mode == "copy":
            return [self.path(chain_ids[-1])]
        return [self.path(c) for c in reversed(chain_ids)]

    def mount_view(self, chain_ids: Sequence[str], key: str) -> Path:
        """A writable root file system for ``key`` (a container) on top of the
        image's layers: an overlay mount, or a copy of the top snapshot."""
        base = self.active / key
        if base.exists():
            raise FailedPrecondition(f"snapshot {key!r} exists already")
        merged = base / "rootfs"
        if self.mode == "copy":
            base.mkdir(parents=True)
            shutil.copytree(self.path(chain_ids[-1]), merged, symlinks=True)
            return merged
        for d in ("upper", "work", "rootfs"):
            (base / d).mkdir(parents=True)
        lower = ":".join(str(p) for p in self.lower_dirs(chain_ids))
        options = f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}"
        if in_user_namespace():
            options += ",userxattr"  # read user.overlay.* (see unpack.overlay_opaque_xattr)
        try:
            mount("overlay", merged, "overlay", options)
        except OSError as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise FailedPrecondition(f"overlay mount for {key!r} failed: {exc.strerror}") from None
        return merged

    def writable_usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) of what ``key``'s container has written: its overlay
        upper directory; in copy mode its whole copy (as containerd's native
        snapshotter counts an active snapshot), the image's files included."""
        base = self.active / key
        return disk_usage(base / ("rootfs" if self.mode == "copy" else "upper"))

    def remove_view(self, key: str) -> None:
        base = self.active / key
        if not base.exists():
            return
        merged = base / "rootfs"
        if self.mode == "overlay" and os.path.ismount(merged):
            with contextlib.suppress(OSError):
                umount(merged)
        shutil.rmtree(base, ignore_errors=True)

    def remove(self, chain_id: str) -> None:
        shutil.rmtree(self.path(chain_id), ignore_errors=True)
