"""A container's writable layer in ContainerStats: what it wrote, counted as
``du -x`` counts (blocks, hard links once, no other file system), sampled as
containerd samples it (the last figure and its timestamp; a stale one taken
again in the background for the next call; a container's first in the call).

The samples are tested on a real snapshot store in copy mode (any user); the
figures a real server gives, through ContainerStats, ListContainerStats and
ImageFsInfo, in ``test_containers.py`` (runc, root) and ``test_fake_backend.py``
(any user).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from teaching_cri.image.snapshot import SnapshotStore
from teaching_cri.image.store import disk_usage
from teaching_cri.manager.writable_layers import WritableLayers

MIB = 1 << 20


def a_container_wrote(store: SnapshotStore, key: str, name: str, size: int) -> None:
    rootfs = store.active / key / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    (rootfs / name).write_bytes(os.urandom(size))


def test_a_first_sample_is_taken_in_the_call_and_a_stale_one_in_the_background(
    tmp_path: Path,
) -> None:
    store = SnapshotStore(tmp_path, "copy")
    a_container_wrote(store, "c1", "a", MIB)

    async def scenario() -> None:
        layers = WritableLayers(store, period=0.2)
        first = (await layers.samples(["c1", "gone"]))["c1"]
        assert first.used_bytes >= MIB and first.inodes_used == 2  # the rootfs and the file
        assert abs(first.timestamp - time.time_ns()) < 5e9
        a_container_wrote(store, "c1", "b", 2 * MIB)
        again = (await layers.samples(["c1"]))["c1"]
        assert again == first, "a sample younger than the period is the answer"
        await asyncio.sleep(0.3)
        stale = (await layers.samples(["c1"]))["c1"]
        assert stale == first, "a stale sample is still the answer, while it is taken again"
        await layers.close()  # the walk under way ends
        fresh = (await layers.samples(["c1"]))["c1"]
        assert fresh.used_bytes >= 3 * MIB and fresh.timestamp > first.timestamp
        layers.forget(["other"])
        assert "c1" not in layers._samples

    asyncio.run(scenario())


def test_a_container_without_a_layer_has_an_empty_one(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, "overlay")
    assert store.writable_usage("nobody") == (0, 0)


def test_disk_usage_counts_blocks_and_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * (MIB + 1))
    os.link(tmp_path / "d" / "f", tmp_path / "d" / "same")
    used, inodes = disk_usage(tmp_path)
    blocks = sum(
        os.lstat(p).st_blocks * 512 for p in (tmp_path, tmp_path / "d", tmp_path / "d" / "f")
    )
    assert (used, inodes) == (blocks, 3), "the top, the dir, the file (once)"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_usage_does_not_cross_into_another_file_system(tmp_path: Path) -> None:
    """A container's overlay mount lies under the snapshots' directory: its
    image's files must not be counted again as the containers' usage."""
    mounted = tmp_path / "rootfs"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "image-file").write_bytes(b"x" * (4 * MIB))
        used, inodes = disk_usage(tmp_path)
        top = os.lstat(tmp_path).st_blocks * 512
        assert (used, inodes) == (top, 1), "the mount point and all in it left out"
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
