"""The content store and the image records: what a pull leaves on disk.

Layout under ``<root>/images`` (persistent: images survive restarts and reboots,
so they live under ``--root``, as containerd keeps them in /var/lib/containerd)::

    blobs/sha256/<hex>       every blob (manifest, config, layer) by its digest
    ingest/<random>          blobs being downloaded; never read, removed if stale
    records/<hex>.json       one image record per image id

A blob is written to ``ingest/``, its sha256 computed while it streams in,
compared with the digest it was asked for, and only then renamed to its name:
a rename is atomic, so a blob under ``blobs/`` is always complete and correct.
An image record is written last, after every blob it names is committed and
its layers are unpacked; until then the image does not exist for any RPC. An
interrupted pull therefore leaves nothing visible, and a later pull finds the
blobs that did complete and fetches only the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InvalidArgument
from ..fsutil import atomic_write_json
from .oci import DigestMismatch


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"digest {digest!r}: expected sha256:<64 lowercase hex>")
    return hexpart


class BlobWriter:
    """Streams one blob into ``ingest/``; :meth:`commit` verifies and publishes it."""

    def __init__(self, store: ContentStore, digest: str, expected_size: int | None) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = expected_size
        self.path = store.ingest / f"{_hex(digest)[:16]}-{secrets.token_hex(6)}"
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in commit/abort
        self._hash = hashlib.sha256()
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest}: more than the {self.expected_size} bytes its descriptor says"
            )

    def commit(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        actual = f"sha256:{self._hash.hexdigest()}"
        if actual != self.digest:
            self.abort()
            raise DigestMismatch(f"blob {self.digest}: content hashes to {actual}; not stored")
        if self.expected_size is not None and self.written != self.expected_size:
            self.abort()
            raise DigestMismatch(
                f"blob {self.digest}: {self.written} bytes, descriptor says {self.expected_size}"
            )
        target = self.store.path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        return target

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None or not self._file.closed:
            self.abort()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest = root / "ingest"
        for d in (self.blobs, self.ingest):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.ingest.iterdir():  # left by a pull that was killed
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def writer(self, digest: str, expected_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, digest, expected_size)

    def put(self, data: bytes) -> str:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has(digest):
            with self.writer(digest, len(data)) as w:
                w.write(data)
                w.commit()
        return digest

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for p in self.blobs.iterdir():
            yield f"sha256:{p.name}"


@dataclass
class LayerRecord:
    digest: str
    media_type: str
    size: int
    diff_id: str
    chain_id: str


@dataclass
class ImageRecord:
    """What the runtime knows about one image; ``id`` is the config digest,
    the identifier CRI names Image.id, image_ref and ContainerStatus.image_id."""

    id: str
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    chain_id: str
    size: int
    layers: list[LayerRecord]
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the image config's "config" object
    created: str = ""
    pinned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        data = dict(data)
        data["layers"] = [LayerRecord(**layer) for layer in data.get("layers", [])]
        return cls(**data)


class ImageStore:
    """Image records by id, with the name index (tag or digest → id) derived
    from them: persisted as one JSON file per image, rebuilt on start."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "records"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._images: dict[str, ImageRecord] = {}
        for path in sorted(self.dir.glob("*.json")):
            record = ImageRecord.from_dict(json.loads(path.read_text()))
            self._images[record.id] = record

    def get(self, image_id: str) -> ImageRecord | None:
        return self._images.get(image_id)

    def list(self) -> list[ImageRecord]:
        with self._lock:  # RemoveImage changes the records from a thread
            records = list(self._images.values())
        return sorted(records, key=lambda r: (r.repo_tags[:1], r.id))

    def by_name(self, name: str) -> ImageRecord | None:
        with self._lock:
            records = list(self._images.values())
        for record in records:
            if name in record.repo_tags or name in record.repo_digests:
                return record
        return None

    def save(self, record: ImageRecord) -> None:
        """Add or replace ``record``; a tag moves to it from any other image.
        An image left without tags stays, known by its id and digests (a
        ``<none>`` image), as in containerd: a container may still use it."""
        with self._lock:
            for other in list(self._images.values()):
                if other.id == record.id:
                    continue
                moved = [t for t in other.repo_tags if t in record.repo_tags]
                if moved:
                    other.repo_tags = [t for t in other.repo_tags if t not in moved]
                    self._write(other)
            self._write(record)
            self._images[record.id] = record

    def remove(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            return self._remove(image_id)

    def _remove(self, image_id: str) -> ImageRecord | None:
        record = self._images.pop(image_id, None)
        if record is not None:
            (self.dir / f"{_hex(image_id)}.json").unlink(missing_ok=True)
        return record

    def _write(self, record: ImageRecord) -> None:
        atomic_write_json(self.dir / f"{_hex(record.id)}.json", record.to_dict())


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI image-spec config.md: ChainID(L0) = DiffID(L0); ChainID(L0|..|Ln) =
    sha256(ChainID(L0|..|Ln-1) + " " + DiffID(Ln)). A snapshot of layers 0..n
    is named by its chain id, so images sharing lower layers share snapshots."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            digest = hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
            chain.append(f"sha256:{digest}")
    return chain


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) used by ``path`` and all under it, as ``du -x`` counts
    them: blocks allocated, hard links once, and nothing on another file system (a
    container's overlay mount under the snapshots would count its image's
    layers again, which are counted where they are)."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    device = top.st_dev
    seen = {top.st_ino}
    used, inodes = top.st_blocks * 512, 1
    for dirpath, dirnames, filenames in os.walk(path):
        for name in list(dirnames):
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                dirnames.remove(name)
                continue
            if st.st_dev != device:
                dirnames.remove(name)  # a mount point: not walked, not counted
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                inodes += 1
                used += st.st_blocks * 512
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                inodes += 1
                used += st.st_blocks * 512
    return used, inodes
