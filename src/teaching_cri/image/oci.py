"""The vocabulary of container images: media types, digests, descriptors, platforms.

Everything in an OCI image is a *blob* named by its *digest*: ``sha256:`` and
the hex SHA-256 of the blob's exact bytes. A manifest names its config and its
layers by digest, an index names its manifests by digest, and a registry stores
and serves blobs by digest. So an image is a Merkle tree: the manifest digest
alone pins every byte below it, and whoever fetches a blob can check it without
trusting the server that sent it.

That only works if the digest is taken over the bytes exactly as stored and
sent. Two JSON documents that mean the same thing (other key order, other
spacing) are *different* blobs with different digests; re-serialising a
manifest you fetched gives a document that no longer matches its digest. So we
never re-encode content we did not create. For content we *do* create (the
configs and manifests in ``layout.py``) we pick one encoding, ``canonical_json``,
so that building the same image twice gives the same digests.

How a pointer to a blob looks is fixed too: a *descriptor* (image-spec
``descriptor.md``) is ``{"mediaType", "digest", "size"}`` plus optional
``platform``, ``annotations`` and ``urls``. The media type says how to read the
blob (a manifest? a gzip'd tar?) and the size lets a reader refuse a blob that
is longer than announced before hashing all of it.

Docker's older "schema 2" formats predate OCI and have their own media types;
the documents are otherwise nearly the same, so a runtime accepts both.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from teaching_cri.errors import CRIError, InvalidArgument

# --- Media types ------------------------------------------------------------
# OCI image-spec media-types.md.
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Docker image manifest v2, schema 2 (what `docker push` has sent since 2016).
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

IMAGE_MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})

Compression = Literal["none", "gzip", "zstd"]

# How each layer media type is compressed; a layer type not here is unknown.
LAYER_COMPRESSION: Mapping[str, Compression] = {
    MEDIA_TYPE_OCI_LAYER: "none",
    MEDIA_TYPE_OCI_LAYER_GZIP: "gzip",
    MEDIA_TYPE_OCI_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: "gzip",
}
LAYER_MEDIA_TYPES = frozenset(LAYER_COMPRESSION)

# The OCI layer media type for each compression, used when we build layers.
OCI_LAYER_MEDIA_TYPE: Mapping[Compression, str] = {
    "none": MEDIA_TYPE_OCI_LAYER,
    "gzip": MEDIA_TYPE_OCI_LAYER_GZIP,
    "zstd": MEDIA_TYPE_OCI_LAYER_ZSTD,
}

# An Accept header for fetching "whatever manifest the tag names": without it a
# registry may assume an old client and answer with (or refuse to convert to) a
# legacy format.
MANIFEST_ACCEPT = ", ".join(
    (
        MEDIA_TYPE_OCI_INDEX,
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        MEDIA_TYPE_DOCKER_MANIFEST,
    )
)

# The annotation an OCI layout's index.json uses to name an image ("a tag").
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


def is_index(media_type: str) -> bool:
    """An index (a.k.a. manifest list): points at one manifest per platform."""
    return media_type in INDEX_MEDIA_TYPES


def is_image_manifest(media_type: str) -> bool:
    """An image manifest: points at one config and an ordered list of layers."""
    return media_type in IMAGE_MANIFEST_MEDIA_TYPES


def layer_compression(media_type: str) -> Compression:
    """How a layer blob of ``media_type`` is compressed; InvalidArgument if unknown."""
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise InvalidArgument(f"unsupported layer media type {media_type!r}") from None


# --- Digests -----------------------------------------------------------------
# image-spec descriptor.md: digest := algorithm ":" encoded. Only the
# registered algorithms are accepted; each fixes the length of the hex part.
_DIGEST_RE = re.compile(
    r"^(?P<algorithm>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<encoded>[a-zA-Z0-9=_-]+)$"
)
_ENCODED_LENGTH = {"sha256": 64, "sha512": 128}


class DigestMismatch(CRIError):
    """Content did not hash to the digest that named it: corrupt or tampered."""

    code = grpc.StatusCode.DATA_LOSS


def sha256_digest(data: bytes) -> str:
    """The OCI digest of ``data``: ``"sha256:"`` and 64 lowercase hex digits."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(text: str) -> str:
    """Return ``text`` if it is a well-formed digest of a registered algorithm.

    Raises InvalidArgument otherwise (wrong shape, unknown algorithm, hex part of
    the wrong length or in upper case). Validating before use matters: a digest
    becomes a file name (``blobs/sha256/<hex>``) and a URL path segment.
    """
    m = _DIGEST_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidArgument(f"invalid digest {text!r}: want ALGORITHM:HEX")
    algorithm, encoded = m["algorithm"], m["encoded"]
    if algorithm not in _ENCODED_LENGTH:
        raise InvalidArgument(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
    want = _ENCODED_LENGTH[algorithm]
    if len(encoded) != want or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidArgument(
            f"invalid digest {text!r}: {algorithm} needs {want} lowercase hex digits"
        )
    return text


def split_digest(digest: str) -> tuple[str, str]:
    """``"sha256:ab.."`` → ``("sha256", "ab..")``, validating first."""
    algorithm, _, encoded = validate_digest(digest).partition(":")
    return algorithm, encoded


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` with a registered algorithm."""
    if algorithm not in _ENCODED_LENGTH:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, digest: str, *, what: str = "blob") -> None:
    """Raise DigestMismatch unless ``data`` hashes to ``digest``."""
    algorithm, _ = split_digest(digest)
    actual = compute_digest(data, algorithm)
    if actual != digest:
        raise DigestMismatch(f"{what} should have digest {digest} but has {actual}")


# --- JSON --------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """One fixed encoding for documents we create: sorted keys, no spaces, UTF-8.

    Only for content we author. Content we receive keeps its own bytes, since
    its digest was taken over them (see the module docstring).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json_object(data: bytes, *, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object, or raise InvalidArgument naming ``what``."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return obj


# --- Platforms ---------------------------------------------------------------
# Go's GOARCH names, which images use, from the names the kernel reports
# (uname -m). The variant tells ARM generations apart.
_MACHINE_TO_GO: Mapping[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armel": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "mips64el": ("mips64le", ""),
    "loongarch64": ("loong64", ""),
}
# An empty variant means the architecture's default generation.
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    """Where an image runs: image-index.md's ``platform`` object (the part we use)."""

    os: str
    architecture: str
    variant: str = ""

    def normalized(self) -> Platform:
        """Go names for the architecture, ``vN`` variants, the default variant filled in."""
        arch, implied = _MACHINE_TO_GO.get(self.architecture.lower(), (self.architecture, ""))
        variant = self.variant.lower() or implied or _DEFAULT_VARIANT.get(arch, "")
        if variant.isdigit():
            variant = "v" + variant
        return Platform(self.os.lower(), arch, variant)

    def matches(self, other: Platform) -> bool:
        """Same OS and architecture, and same variant once both are normalized.

        Symmetric. A variant left empty on an architecture without a default
        (``amd64`` vs ``amd64/v3``) matches any variant: it says nothing.
        """
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture) != (b.os, b.architecture):
            return False
        return not a.variant or not b.variant or a.variant == b.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Platform:
        if not isinstance(obj, dict):
            raise InvalidArgument(f"platform is not a JSON object: {obj!r}")
        os_, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant", "")
        if not isinstance(os_, str) or not isinstance(arch, str) or not isinstance(variant, str):
            raise InvalidArgument(f"platform needs string os and architecture: {obj!r}")
        return cls(os_, arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``"linux/arm64/v8"`` → Platform; the form ``--platform`` flags use."""
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: want OS/ARCH[/VARIANT]")
        return cls(*parts)


def host_platform() -> Platform:
    """The platform of this machine: always ``linux`` here, Go architecture names."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_GO.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


# --- Descriptors -------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob (image-spec descriptor.md)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_digest(self.digest)
        if self.size < 0:
            raise InvalidArgument(f"descriptor {self.digest} has negative size {self.size}")

    @property
    def ref_name(self) -> str | None:
        """The ``org.opencontainers.image.ref.name`` annotation, if any."""
        return self.annotations.get(ANNOTATION_REF_NAME)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidArgument(f"descriptor is not a JSON object: {obj!r}")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise InvalidArgument(f"descriptor needs string mediaType and digest: {obj!r}")
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidArgument(f"descriptor needs an integer size: {obj!r}")
        platform = Platform.from_json(obj["platform"]) if "platform" in obj else None
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise InvalidArgument(f"descriptor annotations must map strings to strings: {obj!r}")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidArgument(f"descriptor urls must be a list of strings: {obj!r}")
        return cls(media_type, digest, size, platform, annotations, tuple(urls))
