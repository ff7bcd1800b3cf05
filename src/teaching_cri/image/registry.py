"""A client for the OCI distribution API: how a runtime gets images.

The protocol (opencontainers/distribution-spec, spec.md) is plain HTTP:

1. ``GET /v2/`` tells whether the registry wants credentials: 200, or 401 with
   a ``WWW-Authenticate`` challenge. ``Bearer realm=…,service=…`` means "get a
   token from realm for this scope"; ``Basic`` means "send username:password".
2. ``GET /v2/<name>/manifests/<tag or digest>`` with an ``Accept`` header
   listing the manifest types we understand. An *index* (OCI) or *manifest
   list* (Docker) names one manifest per platform; we pick the host's.
3. ``GET /v2/<name>/blobs/<digest>`` for the config and each layer, usually
   answered by a redirect to blob storage (followed; the credentials are not
   sent to another host).

Every byte is checked against its digest before it is stored
(:mod:`teaching_cri.image.store`). Which hosts are asked comes from the
registry configuration: mirrors first, in order, then the registry itself;
plain HTTP only for hosts configured as insecure (and loopback by default).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from ..errors import CRIError, FailedPrecondition, InvalidArgument, NotFound
from .oci import (
    IMAGE_MANIFEST_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_ACCEPT,
    Platform,
    load_json_object,
)
from .reference import Reference
from .store import BlobWriter

# httpcore asks ``import sniffio`` which async library it runs under each time
# it sets up a lock: some twenty times a pull. anyio 4 no longer needs sniffio,
# so it is often not installed, and Python does not remember that an import
# failed: each attempt searches the whole of sys.path again. None in
# sys.modules is Python's own way of saying "this module is not there": the
# import then fails at once, and httpcore takes the asyncio it runs under.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

INDEX_TYPES = tuple(sorted(INDEX_MEDIA_TYPES))
MANIFEST_TYPES = tuple(sorted(IMAGE_MANIFEST_MEDIA_TYPES))

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # manifests are small; refuse to buffer a huge one


class RegistryError(CRIError):
    """A registry that answered wrongly or not at all (gRPC UNKNOWN, with the URL)."""


class RegistryUnavailable(CRIError):
    """The registry could not be reached, or the connection broke."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthorized(FailedPrecondition):
    """The registry refused our credentials (or wanted some we do not have)."""


@dataclass(frozen=True)
class RegistryConfig:
    """``[registry]`` in the TOML config: mirrors per host, and insecure hosts."""

    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: tuple[str, ...] = ()

    def endpoints(self, domain: str) -> list[str]:
        """Base URLs to try for ``domain``: its mirrors in order, then itself."""
        urls = list(self.mirrors.get(domain, ()))
        if domain == DOCKER_HUB_DOMAIN:
            urls.append(DOCKER_HUB_ENDPOINT)
        else:
            host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
            plain = host in LOOPBACK_HOSTS or domain in self.insecure or host in self.insecure
            urls.append(f"{'http' if plain else 'https'}://{domain}")
        return urls


@dataclass(frozen=True)
class Credentials:
    """CRI's AuthConfig, converted: at most one way of proving who we are."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @classmethod
    def from_auth(
        cls, username: str, password: str, auth: str, identity_token: str, registry_token: str
    ) -> Credentials:
        if auth and not username:
            try:
                username, _, password = base64.b64decode(auth).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("auth: not base64 of username:password") from None
        for name, token in (
            ("identity_token", identity_token),
            ("registry_token", registry_token),
        ):
            # A token travels in an HTTP header (RFC 6750's b64token): printable ASCII.
            if not (token.isascii() and token.isprintable()):
                raise InvalidArgument(f"auth.{name}: a token must be printable ASCII")
        return cls(username, password, identity_token, registry_token)

    @property
    def basic(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(self.username, self.password) if self.username else None


def select_platform(index: Mapping[str, Any], want: Platform) -> Mapping[str, Any]:
    """The descriptor of ``want``'s manifest in an index: os and architecture
    must match; an exact variant wins over a normalised match (arm64 images
    rarely say v8), as containerd's platform matcher ranks them."""
    candidates = []
    for desc in index.get("manifests", []):
        offered = Platform.from_json(desc.get("platform") or {"os": "", "architecture": ""})
        if offered.os == want.os and offered.architecture == want.architecture:
            if offered.variant == want.variant:
                return desc  # type: ignore[no-any-return]
            if offered.matches(want):
                candidates.append(desc)
    if not candidates:
        offered_all = sorted(
            str(Platform.from_json(d.get("platform") or {"os": "?", "architecture": "?"}))
            for d in index.get("manifests", [])
        )
        raise NotFound(f"no manifest for {want}; the index offers {', '.join(offered_all)}")
    return candidates[0]  # type: ignore[no-any-return]


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE.findall(rest))


Progress = Callable[[int], Awaitable[None] | None]


async def report_progress(progress: Progress | None, written: int) -> None:
    """Tell a (sync or async) progress callback how many bytes have arrived."""
    if progress is not None:
        maybe = progress(written)
        if maybe is not None:
            await maybe


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def _reason(response: httpx.Response) -> str:
    """The registry's own words, from its JSON error body, briefly."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    detail = body.get("error_description") or body.get("details") or body.get("error")
    return f": {str(detail)[:200]}" if detail else ""


@dataclass
class Manifest:
    digest: str
    media_type: str
    body: bytes
    doc: dict[str, Any]


class Repository:
    """One repository at one endpoint, with the authorization it has earned."""

    def __init__(
        self, client: httpx.AsyncClient, base: str, path: str, credentials: Credentials
    ) -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.path = path
        self.credentials = credentials
        self._authorization: str | None = (
            f"Bearer {credentials.registry_token}" if credentials.registry_token else None
        )

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    async def _authorize(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not self.credentials.username:
                raise Unauthorized(f"{self.base}: the registry wants a username and password")
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            self._authorization = f"Basic {base64.b64encode(raw).decode()}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise Unauthorized(f"{self.base}: unsupported authentication challenge {challenge!r}")
        scope = params.get("scope") or f"repository:{self.path}:pull"
        query = {"service": params.get("service", ""), "scope": scope}
        if self.credentials.identity_token:  # docker's OAuth2 refresh-token grant
            response = await self.client.post(
                params["realm"],
                data={
                    **query,
                    "grant_type": "refresh_token",
                    "client_id": "teaching-cri",
                    "refresh_token": self.credentials.identity_token,
                },
            )
        else:
            response = await self.client.get(
                params["realm"],
                params=query,
                auth=self.credentials.basic or httpx.USE_CLIENT_DEFAULT,
            )
        if response.status_code in (401, 403):
            raise Unauthorized(
                f"{params['realm']}: token refused ({response.status_code}){_reason(response)}"
            )
        if response.status_code == 400 and _oauth_error(response) in (
            "invalid_grant",
            "invalid_client",
            "unauthorized_client",
        ):
            raise Unauthorized(f"{params['realm']}: identity token refused{_reason(response)}")
        if response.status_code != 200:
            raise RegistryError(f"{params['realm']}: token request failed: {response.status_code}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"{params['realm']}: no token in the answer")
        self._authorization = f"Bearer {token}"

    async def _get(
        self, url: str, headers: Mapping[str, str], stream: bool = False
    ) -> httpx.Response:
        """GET with one retry after answering an authentication challenge."""
        for attempt in (1, 2):
            request = self.client.build_request("GET", url, headers=self._headers(headers))
            response = await self.client.send(request, stream=stream, follow_redirects=True)
            if response.status_code != 401 or attempt == 2:
                return response
            await response.aclose()
            await self._authorize(response.headers.get("www-authenticate", ""))
        raise AssertionError("unreachable")

    def _denied(self, url: str, response: httpx.Response) -> Unauthorized:
        """Why the registry said no, and whose fault it probably is."""
        _, challenge = _parse_challenge(response.headers.get("www-authenticate", ""))
        who = (
            f"the credentials given do not allow pulling {self.path}"
            if self.credentials.username
            or self.credentials.identity_token
            or self.credentials.registry_token
            else "no credentials were given"
        )
        error = f", {challenge['error']}" if "error" in challenge else ""
        return Unauthorized(
            f"{url}: access denied ({response.status_code}{error}){_reason(response)}; {who}"
        )

    async def manifest(self, reference: str) -> Manifest:
        url = f"{self.base}/v2/{self.path}/manifests/{reference}"
        response = await self._get(url, {"Accept": MANIFEST_ACCEPT}, stream=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"{url}: manifest unknown")
            if response.status_code in (401, 403):
                await response.aread()
                raise self._denied(url, response)
            if response.status_code != 200:
                raise RegistryError(f"{url}: {response.status_code} {response.reason_phrase}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:  # never buffer an endless answer
                    raise FailedPrecondition(f"{url}: manifest larger than {MAX_MANIFEST_BYTES}")
        finally:
            await response.aclose()
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if ":" in reference and digest != reference:
            raise FailedPrecondition(f"{url}: manifest hashes to {digest}, not {reference}")
        try:
            doc = load_json_object(body, what=f"{url}: manifest")
        except InvalidArgument as exc:
            raise FailedPrecondition(str(exc)) from None
        media_type = doc.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
        if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
            raise FailedPrecondition(f"{url}: unsupported manifest type {media_type!r}")
        return Manifest(digest, media_type, body, doc)

    async def blob(
        self,
        digest: str,
        size: int,
        writer: BlobWriter,
        progress: Progress | None = None,
    ) -> None:
        url = f"{self.base}/v2/{self.path}/blobs/{digest}"
        response = await self._get(url, {}, stream=True)
        try:
            if response.status_code == 404:
                raise NotFound(f"{url}: blob unknown")
            if response.status_code in (401, 403):
                raise self._denied(url, response)
            if response.status_code != 200:
                raise RegistryError(f"{url}: {response.status_code} {response.reason_phrase}")
            async for chunk in response.aiter_bytes(1 << 20):
                writer.write(chunk)
                await report_progress(progress, writer.written)
        finally:
            await response.aclose()


async def open_repository(
    client: httpx.AsyncClient,
    config: RegistryConfig,
    ref: Reference,
    credentials: Credentials,
    reference: str,
) -> tuple[Repository, Manifest]:
    """The first endpoint (mirror or registry) that has the manifest, and the manifest.
    An endpoint that is down or lacks the image is skipped; the last error is raised."""
    error: Exception | None = None
    for base in config.endpoints(ref.domain):
        repo = Repository(client, base, ref.path, credentials)
        try:
            return repo, await repo.manifest(reference)
        except (httpx.HTTPError, NotFound, RegistryError) as exc:
            error = exc
            continue
    if isinstance(error, CRIError):
        raise error
    if isinstance(error, httpx.TransportError):  # refused, unresolvable, timed out
        raise RegistryUnavailable(f"{ref.repository}: no registry reachable: {error!r}")
    raise RegistryError(f"{ref.repository}: no registry answered: {error}")
