"""How much each container has written: its writable layer's bytes and inodes.

ContainerStats and ListContainerStats carry a ``writable_layer``
(FilesystemUsage); the kubelet adds it to a container's ephemeral-storage use
(and evicts on it), and ``crictl stats`` shows it as DISK. Counting it means
walking every file the container wrote, which for a container that writes
many files takes far longer than a stats call may, and the kubelet asks for
every container every few seconds. So the figures are samples, as containerd's
snapshot syncer keeps them (``stats_collect_period``, 10 s): a stats call
answers with the last sample of each container and its timestamp, and when a
sample is older than the period it has it taken again in the background, one
walk at a time, for the next call. A container's first sample is taken in
the call itself (a new container has written next to nothing), so that the
figure is there from the first stats on.

iSulad's ContainerStatsToGRPC fills the same field (PackContainerStatsFilesystemUsage)
from its own image layer store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..image.snapshot import SnapshotStore
from ..runtime.cgroups import CgroupStats
from ..store.container import Container

PERIOD = 10.0  # s: containerd's default stats_collect_period


@dataclass(frozen=True)
class LayerSample:
    timestamp: int  # ns since the epoch, when the walk began
    used_bytes: int
    inodes_used: int
    mountpoint: str  # the fs_id: ImageFsInfo's container file system


# What ContainerStats reports of a container: it, its cgroup figures (None if
# they could not be read) and its writable layer's last sample.
ContainerFigures = tuple[Container, CgroupStats | None, LayerSample | None]


class WritableLayers:
    """The last sample of each container's writable layer, by container id."""

    def __init__(self, snapshots: SnapshotStore, period: float = PERIOD) -> None:
        self.snapshots = snapshots
        self.period = period
        self._samples: dict[str, LayerSample] = {}
        self._refresh: asyncio.Task[None] | None = None

    async def samples(self, container_ids: Iterable[str]) -> dict[str, LayerSample]:
        """The last sample of each container (taken now for one that has none);
        stale ones are taken again in the background for the next call."""
        ids = list(container_ids)
        missing = [c for c in ids if c not in self._samples]
        if missing:
            await asyncio.to_thread(self._measure, missing)
        deadline = time.time_ns() - int(self.period * 1e9)
        stale = [c for c in ids if c in self._samples and self._samples[c].timestamp < deadline]
        if stale and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(asyncio.to_thread(self._measure, stale))
        return {c: self._samples[c] for c in ids if c in self._samples}

    def _measure(self, container_ids: list[str]) -> None:
        """The walks (in a thread): one container after another."""
        for container_id in container_ids:
            started = time.time_ns()
            used, inodes = self.snapshots.writable_usage(container_id)
            mountpoint = str(self.snapshots.active)
            self._samples[container_id] = LayerSample(started, used, inodes, mountpoint)

    def forget(self, kept: Iterable[str]) -> None:
        """Drop the samples of containers not in ``kept`` (removed since)."""
        keep = set(kept)
        for gone in [c for c in self._samples if c not in keep]:
            del self._samples[gone]

    async def close(self) -> None:
        if self._refresh is not None:
            with contextlib.suppress(Exception):
                await self._refresh
            self._refresh = None
