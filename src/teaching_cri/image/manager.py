"""The image callbacks (iSulad's ``m_cb->image.*``): pull, status, list, remove, fs info.

A pull walks diagrams/PullImage.toml: resolve the manifest (choosing the
host's platform from an index), fetch the config and every layer into the
content store (each verified against its digest), unpack the layers into
snapshots, and only then commit the image record. Two pulls of the same
reference at the same time share one download.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..errors import FailedPrecondition, InvalidArgument
from ..trace.tracer import annotate, current_span, decide, step
from .archive import LayoutSource, cleanup, extract_archive, pick_image, recorded_name
from .hostimages import (
    BusyboxUnavailable,
    build_busybox_image,
    build_host_binaries_image,
    build_infra_image,
)
from .oci import host_platform, load_json_object
from .reference import Reference, is_image_id, parse_reference
from .registry import (
    INDEX_TYPES,
    Credentials,
    Manifest,
    RegistryConfig,
    RegistryUnavailable,
    Repository,
    open_repository,
    select_platform,
)
from .snapshot import LayerToApply, SnapshotStore
from .store import (
    BlobWriter,
    ContentStore,
    ImageRecord,
    ImageStore,
    LayerRecord,
    chain_ids,
    disk_usage,
)

_ID_PREFIX = re.compile(r"(sha256:)?[0-9a-f]{12,63}")
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # an image config is a small JSON document
ImageConfig = dict[str, Any]  # the parsed image config (OCI image-spec config.md)
PROGRESS_STEPS = 10  # progress events per layer, at most: enough for a progress bar
_RETIRED = ".removed-"  # a snapshot being deleted: renamed aside first


@dataclass(frozen=True)
class FsUsage:
    path: str
    bytes: int
    inodes: int


class ImageManager:
    def __init__(
        self, root: Path, registry: RegistryConfig | None = None, snapshot_mode: str | None = None
    ) -> None:
        self.root = root
        self.registry = registry or RegistryConfig()
        self.content = ContentStore(root / "content")
        self.images = ImageStore(root / "content")
        self.snapshots = SnapshotStore(root / "snapshots", snapshot_mode)
        self._pulls: dict[str, asyncio.Task[ImageRecord]] = {}
        self._tls: ssl.SSLContext | None = None  # built at the first pull: see tls()
        # Blobs and snapshots that pulls and imports under way rely on, before
        # any record names them: RemoveImage must not delete them (containerd
        # calls this a lease).
        self._leased: Counter[str] = Counter()
        # Taking or dropping a lease, and deciding what is unreferenced and deleting
        # it, exclude each other: RemoveImage (in a thread) cannot delete a blob in the
        # moment between a pull committing its record and dropping its lease.
        self._gc_lock = threading.Lock()
        # Which images containers use: the container store answers this once it exists.
        self.in_use: Callable[[str], bool] = lambda image_id: False
        # Deletes the snapshot trees RemoveImage renamed aside, after it has answered
        # (see _delete_unreferenced). One thread: they are deleted in the order retired.
        self._collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-collector")
        self.collect_garbage()

    def close(self) -> None:
        """Wait until the snapshot trees removals retired are deleted (the server
        calls this as it stops). A server killed first leaves them renamed aside,
        and its next start deletes them (:meth:`collect_garbage`)."""
        self._collector.shutdown(wait=True)

    def collect_garbage(self) -> int:
        """Delete blobs and snapshots no image record names and no pull holds:
        what failed or killed pulls left behind. Returns how many went."""
        keep_blobs, keep_chains = self._referenced()
        gone = 0
        for leftover in self.snapshots.layers.glob(f"{_RETIRED}*"):  # a removal cut short
            shutil.rmtree(leftover, ignore_errors=True)
        for digest in list(self.content.digests()):
            if digest not in keep_blobs and not self._leased[digest]:
                self.content.delete(digest)
                gone += 1
        for chain_dir in list(self.snapshots.layers.iterdir()):
            chain = f"sha256:{chain_dir.name}"
            if (
                not chain_dir.name.startswith(".")
                and chain not in keep_chains
                and not self._leased[chain]
            ):
                self.snapshots.remove(chain)
                gone += 1
        return gone

    def _referenced(self) -> tuple[set[str], set[str]]:
        records = self.images.list()
        return {d for r in records for d in blobs_of(r)}, {
            x.chain_id for r in records for x in r.layers
        }

    def _delete_unreferenced(self, blobs: set[str], chains: list[str]) -> None:
        """Of these blobs and snapshots, delete those no image record names and no
        pull or import holds. A blob is one unlink. A snapshot is a tree of files,
        which takes longer to delete than the rest of a RemoveImage together
        (two-thirds of it for busybox): it is only renamed aside here, under the
        lock, and the collector thread deletes the tree after the call has
        answered, as containerd leaves deletion to its garbage collector. That is
        as safe as deleting it here: the rename is atomic, so the snapshot is gone
        from its name at once and a pull of the same layers unpacks it anew beside
        the tree being deleted; and a ``.removed-`` tree left by a server that
        stopped first is deleted at its next start (:meth:`collect_garbage`)."""
        retired: list[Path] = []
        with self._gc_lock:
            keep_blobs, keep_chains = self._referenced()
            for digest in blobs:
                if digest not in keep_blobs and not self._leased[digest]:
                    self.content.delete(digest)
            for chain in chains:
                if chain not in keep_chains and not self._leased[chain]:
                    aside = self.snapshots.layers / f"{_RETIRED}{secrets.token_hex(8)}"
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(self.snapshots.path(chain), aside)
                        retired.append(aside)
        for path in retired:
            try:
                self._collector.submit(shutil.rmtree, path, ignore_errors=True)
            except RuntimeError:  # closed: the server is stopping, so delete it here
                shutil.rmtree(path, ignore_errors=True)

    # -- lookups -------------------------------------------------------------------
    def resolve(self, name: str) -> ImageRecord | None:
        """An image by id (``sha256:…`` or bare hex), by a unique id prefix, or by
        any name it is known by (normalised first: ``busybox`` finds
        ``docker.io/library/busybox:latest``)."""
        if not name:
            raise InvalidArgument("image name is empty")
        if is_image_id(name):
            return self.images.get(name if name.startswith("sha256:") else f"sha256:{name}")
        found: ImageRecord | None = None
        try:
            found = self.images.by_name(parse_reference(name).name)
        except InvalidArgument:
            if not _ID_PREFIX.fullmatch(name):
                raise
        if found is None and _ID_PREFIX.fullmatch(name):
            # Like docker's short ids: 12 hex digits at least, so that a name
            # such as "cafe" never finds an unrelated image by accident.
            prefix = name.removeprefix("sha256:")
            matches = [r for r in self.images.list() if r.id[7:].startswith(prefix)]
            if len(matches) > 1:
                raise InvalidArgument(
                    f"image id prefix {name!r} is ambiguous: {len(matches)} images"
                )
            found = matches[0] if matches else None
        return found

    # -- pull ----------------------------------------------------------------------
    async def pull(self, name: str, credentials: Credentials) -> ImageRecord:
        """The download runs as a task of its own that every caller awaits
        through ``shield``: a kubelet that gives up (a deadline, a cancel) stops
        waiting, but the download goes on for whoever else is waiting for it."""
        ref = check_image_reference(name)
        if decide("pull_in_progress", ref.name in self._pulls):
            return await wait_for_the_other_pull(self._pulls[ref.name])
        task = asyncio.create_task(self._pull(ref, credentials))
        self._pulls[ref.name] = task
        task.add_done_callback(lambda t: self._finished(ref.name, t))
        return await asyncio.shield(task)

    def _finished(self, name: str, task: asyncio.Task[ImageRecord]) -> None:
        if self._pulls.get(name) is task:
            del self._pulls[name]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning if nobody waited

    def tls(self) -> ssl.SSLContext:
        """The TLS settings every pull's HTTP client shares. Left to itself, httpx
        builds them for each client it makes, loading the CA bundle again: some
        20 ms of parsing certificates, a quarter of a small pull from a local
        registry. The bundle is the same for every pull and an SSLContext may
        serve any number of connections, so one is built, at the first pull, with
        the very defaults the client would use (``SSL_CERT_FILE`` and
        ``SSL_CERT_DIR`` honoured). The client itself stays one per pull: its
        pooled connections belong to the event loop that opened them, and are
        closed when the pull ends."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    async def _pull(self, ref: Reference, credentials: Credentials) -> ImageRecord:
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout, verify=self.tls()) as client:
            try:
                repo, top = await self.resolve_manifest(client, ref, credentials)
                return await self._fetch_and_commit(repo, top, ref)
            except httpx.HTTPError as exc:
                raise RegistryUnavailable(f"{ref.domain}: {type(exc).__name__}: {exc}") from None

    async def _fetch_and_commit(
        self, source: BlobSource, top: Manifest, ref: Reference | None
    ) -> ImageRecord:
        """The part of the chart a pull and an import share: from the manifest
        (or index) to the committed image record."""
        leased: list[str] = []
        try:
            return await self._fetch_and_commit_leased(source, top, ref, leased)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A manifest or config of the wrong shape: the image's fault, not ours.
            raise FailedPrecondition(f"malformed image: {type(exc).__name__}: {exc}") from None
        finally:
            with self._gc_lock:
                self._leased.subtract(leased)
                self._leased += Counter()  # drop the zeros

    def _lease(self, leased: list[str], *names: str) -> None:
        with self._gc_lock:
            leased.extend(names)
            self._leased.update(names)

    async def _fetch_and_commit_leased(
        self, source: BlobSource, top: Manifest, ref: Reference | None, leased: list[str]
    ) -> ImageRecord:
        manifest = top
        if decide("is_index", top.media_type in INDEX_TYPES):
            manifest = await self.select_platform_manifest(source, top)
        layers = manifest.doc.get("layers", [])
        self._lease(
            leased,
            top.digest,
            manifest.digest,
            manifest.doc["config"]["digest"],
            *(d["digest"] for d in layers),
        )
        for m in {top.digest: top, manifest.digest: manifest}.values():
            self.content.put(m.body)
        config = await self.fetch_config(source, manifest)
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(layers):
            raise FailedPrecondition(
                f"{ref.name if ref else manifest.digest}: manifest has {len(layers)} layers, "
                f"config {len(diff_ids)} diff_ids"
            )
        for i, desc in enumerate(layers):
            await self.fetch_layer(source, desc, i, len(layers))
            if not decide("more_layers", i + 1 < len(layers)):
                break
        chains = chain_ids(diff_ids)
        self._lease(leased, *chains)
        records = [
            LayerRecord(d["digest"], d.get("mediaType", ""), int(d.get("size", 0)), diff, chain)
            for d, diff, chain in zip(layers, diff_ids, chains, strict=True)
        ]
        await self.unpack_layers(records)
        return self.commit_image_record(ref, top, manifest, config, records)

    # -- import (no registry) --------------------------------------------------------
    async def import_archive(self, path: Path, name: str = "") -> ImageRecord:
        """Load an image from an OCI layout archive or a ``docker save`` archive
        (diagrams/ImportImage.toml)."""
        ref = parse_reference(name) if name else None
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.root))
        try:
            layout = await extract_archive_step(path, staging / "x")
            return await self.import_layout(layout, ref)
        finally:
            cleanup(staging)

    async def import_layout(self, layout: Path, ref: Reference | None) -> ImageRecord:
        source, top, recorded = await read_index(layout)
        if ref is None and recorded:
            ref = parse_reference(recorded)
        return await self._fetch_and_commit(source, top, ref)

    async def build_local(self, name: str) -> ImageRecord:
        """A small real image from the host's static busybox, imported under
        ``name``: an image to run with no network at all."""
        ref = parse_reference(name)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self.root))
        try:
            layout = await build_busybox_layout(staging / "layout")
            return await self.import_layout(layout, ref)
        finally:
            cleanup(staging)

    async def build_infra(self, name: str) -> ImageRecord:
        """The built-in infra image (a pod's pause process), for machines that
        cannot pull the pause image."""
        ref = parse_reference(name)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self.root))
        try:
            layout = staging / "layout"
            await asyncio.to_thread(build_infra_image, layout)
            return await self.import_layout(layout, ref)
        finally:
            cleanup(staging)

    @step("resolve_manifest")
    async def resolve_manifest(
        self, client: httpx.AsyncClient, ref: Reference, credentials: Credentials
    ) -> tuple[Repository, Manifest]:
        return await open_repository(client, self.registry, ref, credentials, ref.digest or ref.tag)

    @step("select_platform_manifest")
    async def select_platform_manifest(self, repo: BlobSource, index: Manifest) -> Manifest:
        desc = select_platform(index.doc, host_platform())
        return await repo.manifest(desc["digest"])

    @step("fetch_config")
    async def fetch_config(self, repo: BlobSource, manifest: Manifest) -> ImageConfig:
        desc = manifest.doc.get("config") or {}
        digest, size = desc.get("digest", ""), desc.get("size")
        if not isinstance(size, int) or not 0 < size <= MAX_CONFIG_BYTES:
            raise FailedPrecondition(f"config {digest}: size {size!r} is missing or too large")
        if not self.content.has(digest):
            with self.content.writer(digest, size) as writer:
                await repo.blob(digest, size, writer)
                await asyncio.to_thread(writer.commit)  # fsync: off the event loop
        config: ImageConfig = load_json_object(self.content.read(digest), what=f"config {digest}")
        return config

    async def fetch_layer(
        self, repo: BlobSource, desc: dict[str, Any], index: int, count: int
    ) -> None:
        """One step per layer, then one per tenth of its bytes: the progress
        a notebook draws as a bar (the chart's ``fetch layer`` loop)."""
        digest, size = desc["digest"], int(desc.get("size", 0))
        attrs = {"layer": digest, "index": f"{index + 1}/{count}", "size": size}
        with step("fetch_layer", **attrs, bytes=0):
            if self.content.has(digest):
                mark_progress(attrs, size, cached=True)
                return
            next_report = size // PROGRESS_STEPS

            def progress(written: int) -> None:
                nonlocal next_report
                if size and written >= next_report and written < size:
                    mark_progress(attrs, written)
                    next_report = written + max(1, size // PROGRESS_STEPS)

            with self.content.writer(digest, size) as writer:
                await repo.blob(digest, size, writer, progress)
                await asyncio.to_thread(writer.commit)  # fsync: off the event loop
            mark_progress(attrs, size)

    @step("unpack_layers")
    async def unpack_layers(self, layers: list[LayerRecord]) -> None:
        todo = [LayerToApply(self.content.path(r.digest), r.media_type, r.chain_id) for r in layers]
        await asyncio.to_thread(self.snapshots.ensure, todo)

    @step("commit_image_record")
    def commit_image_record(
        self,
        ref: Reference | None,
        top: Manifest,
        manifest: Manifest,
        config: dict[str, Any],
        layers: list[LayerRecord],
    ) -> ImageRecord:
        config_digest = manifest.doc["config"]["digest"]
        existing = self.images.get(config_digest)
        tags = list(existing.repo_tags) if existing else []
        digests = list(existing.repo_digests) if existing else []
        if ref is not None and ref.tag:
            tag = str(Reference(ref.domain, ref.path, ref.tag, ""))
            if tag not in tags:
                tags.append(tag)
        if ref is not None:
            repo_digest = ref.with_digest(top.digest).name
            if repo_digest not in digests:
                digests.append(repo_digest)
        record = ImageRecord(
            id=config_digest,
            manifest_digest=manifest.digest,
            manifest_media_type=manifest.media_type,
            config_digest=config_digest,
            chain_id=layers[-1].chain_id if layers else "",
            size=sum(r.size for r in layers) + int(manifest.doc["config"].get("size", 0)),
            layers=layers,
            repo_tags=tags,
            repo_digests=digests,
            config=config.get("config") or {},
            created=str(config.get("created", "")),
        )
        self.images.save(record)
        if existing is not None:
            # The same image through another manifest (another registry's, another
            # compression): what only the old manifest named is no one's now.
            self._delete_unreferenced(blobs_of(existing), [])
        return record

    # -- remove --------------------------------------------------------------------
    def remove(self, record: ImageRecord) -> None:
        """Remove the image (all its names, as CRI says), then the blobs and
        snapshots no other image needs (the snapshots' files just after: see
        :meth:`_delete_unreferenced`)."""
        if self.in_use(record.id):
            raise FailedPrecondition(f"image {record.id} is in use by a container")
        self.images.remove(record.id)
        self._delete_unreferenced(blobs_of(record), [x.chain_id for x in record.layers])

    # -- fs info -------------------------------------------------------------------
    def image_fs_usage(self) -> FsUsage:
        used, inodes = disk_usage(self.root)
        return FsUsage(str(self.root), used, inodes)

    def container_fs_usage(self) -> FsUsage:
        used, inodes = disk_usage(self.snapshots.active)
        return FsUsage(str(self.snapshots.active), used, inodes)


class BlobSource(Protocol):
    """Where manifests and blobs come from: a registry repository, or a layout."""

    async def manifest(self, reference: str) -> Manifest: ...

    async def blob(
        self,
        digest: str,
        size: int,
        writer: BlobWriter,
        progress: Callable[[int], Awaitable[None] | None] | None = None,
    ) -> None: ...


def blobs_of(record: ImageRecord) -> set[str]:
    """Every blob an image record names: its manifest, config and layers, and the
    manifest or index each of its digested names (``repo@sha256:…``) was pulled by."""
    blobs = {record.manifest_digest, record.config_digest, *(x.digest for x in record.layers)}
    return blobs | {d.rsplit("@", 1)[1] for d in record.repo_digests if "@" in d}


@step("extract_archive")
async def extract_archive_step(path: Path, dest: Path) -> Path:
    return await asyncio.to_thread(extract_archive, path, dest)


@step("read_index")
async def read_index(layout: Path) -> tuple[LayoutSource, Manifest, str]:
    descriptor = pick_image(layout)
    source = LayoutSource(layout)
    return source, await source.manifest(descriptor.digest), recorded_name(layout, descriptor)


@step("build_busybox_layout")
async def build_busybox_layout(layout: Path) -> Path:
    """Debian's static busybox if present; else this host's own programs with
    the shared libraries they need."""
    try:
        await asyncio.to_thread(build_busybox_image, layout, ref_name=None)
        annotate(built_from="busybox")
    except BusyboxUnavailable:
        await asyncio.to_thread(build_host_binaries_image, layout, ref_name=None)
        annotate(built_from="host binaries")
    return layout


@step("check_image_reference")
def check_image_reference(name: str) -> Reference:
    ref = parse_reference(name)
    if ref.digest and not ref.digest.startswith("sha256:"):
        raise InvalidArgument(f"image {name!r}: only sha256 digests are supported")
    return ref


@step("wait_for_the_other_pull")
async def wait_for_the_other_pull(future: asyncio.Task[ImageRecord]) -> ImageRecord:
    return await asyncio.shield(future)


def mark_progress(attrs: dict[str, Any], written: int, cached: bool = False) -> None:
    span = current_span()
    if span is not None:
        span.visit("fetch_layer", {**attrs, "bytes": written, "cached": cached})
