"""Push an image from an OCI layout to a registry (OCI distribution-spec ``spec.md``).

A registry stores blobs and manifests per *repository* (``library/busybox``)
and names manifests by *tag* (``latest``) or digest. Pushing is bottom-up, so
that the registry never holds a manifest pointing at something it lacks (and
it checks: a manifest whose blobs are missing is refused):

1. for each blob (config, layers): ``HEAD /v2/<name>/blobs/<digest>``.
   200 means the registry has it already and the upload is skipped; this is
   why pushing a second image on the same base layers is quick.
2. if absent, open an upload session with ``POST /v2/<name>/blobs/uploads/``;
   the answer is ``202 Accepted`` and a ``Location`` header, the URL of the
   session (relative or absolute, possibly with a query of its own).
3. send the whole blob in one ``PUT <location>?digest=<digest>`` ("monolithic"
   upload; a chunked variant PATCHes pieces first). The registry hashes what
   it received and answers ``201 Created`` only if it matches the digest.
4. ``PUT /v2/<name>/manifests/<tag or digest>`` with the manifest's exact
   bytes and its media type as ``Content-Type``. The registry answers with
   ``Docker-Content-Digest``, the digest of those bytes, which is the image's
   identity from now on.

For an index, every child manifest is pushed first (by digest: a child has no
tag), then the index itself under the tag.

Authentication follows a challenge: a request without credentials gets ``401``
and a ``WWW-Authenticate`` header. ``Basic realm="..."`` asks for a user name
and password with every request. ``Bearer realm="...",service="...",scope="..."``
asks the client to fetch a token from the *realm* (an auth server), passing
``service`` and ``scope`` (``repository:busybox:pull,push``) and, if it has
them, basic credentials; the JSON answer has ``token`` (or ``access_token``),
sent afterwards as ``Authorization: Bearer <token>``. This module asks for the
push scope at once, so one token serves the whole push.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from teaching_cri.errors import InvalidArgument

from .layout import blob_path, find_in_layout, read_manifest
from .oci import Descriptor, is_image_manifest, is_index, validate_digest

Auth = tuple[str, str]
Body = Callable[[], bytes | Iterator[bytes]]

# distribution-spec: the grammar of repository names and of tags.
_NAME_RE = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
_CHALLENGE_TOKEN_RE = re.compile(
    r'\s*,?\s*([A-Za-z][A-Za-z0-9_.-]*)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?'
)
_CHUNK = 1 << 20


class PushError(Exception):
    """A push step failed; the message names the request, status and registry error."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.method, self.url, self.status = method, url, status


class AuthError(PushError):
    """The registry wants credentials we do not have, or refused the ones we sent."""


def parse_www_authenticate(values: str | Iterable[str]) -> dict[str, dict[str, str]]:
    """``Bearer realm="r",scope="a,b"`` → ``{"bearer": {"realm": "r", "scope": "a,b"}}``.

    Scheme names are lower-cased (they are case-insensitive), parameter names
    too; quoted values may contain commas and backslash escapes.
    """
    out: dict[str, dict[str, str]] = {}
    for header in [values] if isinstance(values, str) else values:
        current: dict[str, str] | None = None
        for m in _CHALLENGE_TOKEN_RE.finditer(header):
            name, value = m.group(1), m.group(2)
            if value is None:
                current = out.setdefault(name.lower(), {})
            elif current is not None:
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                current[name.lower()] = value
    return out


def _basic(auth: Auth) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def _describe(resp: httpx.Response) -> str:
    """The registry's own error text, from its JSON error body if it sent one."""
    try:
        body: Any = resp.json()
    except (ValueError, UnicodeDecodeError):
        text = resp.text.strip()
        return f": {text[:200]}" if text else ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list):
        parts = [
            f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors if isinstance(e, dict)
        ]
        return ": " + "; ".join(parts) if parts else ""
    return ""


class _Session:
    """One push: the client, where to, and the credentials worked out so far."""

    def __init__(
        self, client: httpx.Client, base_url: str, repository: str, auth: Auth | None
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.repository = repository
        self.auth = auth
        self.authorization: str | None = None  # header value to send, once known
        self.pushed: set[str] = set()

    def url(self, path: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def request(
        self,
        method: str,
        url: str,
        *,
        ok: Container[int],
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
    ) -> httpx.Response:
        """Send, answering one authentication challenge; raise PushError unless ``ok``.

        ``body`` is a function, not bytes, so the request can be sent again
        after a challenge even when the body is streamed from a file.
        """
        for attempt in (1, 2):
            sent = dict(headers or {})
            if self.authorization:
                sent["Authorization"] = self.authorization
            try:
                resp = self.client.request(
                    method, url, headers=sent, content=body() if body else None
                )
            except httpx.HTTPError as e:
                raise PushError(f"{method} {url} failed: {e}", method=method, url=url) from e
            if resp.status_code == 401 and attempt == 1 and self._answer_challenge(resp):
                continue
            break
        if resp.status_code not in ok:
            cls = AuthError if resp.status_code in (401, 403) else PushError
            raise cls(
                f"{method} {url} answered {resp.status_code} {resp.reason_phrase}{_describe(resp)}",
                method=method,
                url=url,
                status=resp.status_code,
            )
        return resp

    def _answer_challenge(self, resp: httpx.Response) -> bool:
        """Work out credentials from a 401; False if there is nothing new to try."""
        challenges = parse_www_authenticate(resp.headers.get_list("www-authenticate"))
        if "bearer" in challenges:
            self.authorization = "Bearer " + self._fetch_token(challenges["bearer"])
            return True
        if "basic" in challenges:
            realm = challenges["basic"].get("realm", "")
            if self.auth is None:
                raise AuthError(
                    f"{resp.request.method} {resp.request.url} needs a user name and password "
                    f'(Basic realm="{realm}")',
                    method=resp.request.method,
                    url=str(resp.request.url),
                    status=401,
                )
            if self.authorization == _basic(self.auth):
                return False  # already sent them: they were refused
            self.authorization = _basic(self.auth)
            return True
        return False

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise AuthError("Bearer challenge without a realm: cannot get a token")
        scopes = [f"repository:{self.repository}:pull,push"]
        if params.get("scope") and params["scope"] not in scopes:
            scopes.insert(0, params["scope"])
        query: dict[str, str | list[str]] = {}
        if params.get("service"):
            query["service"] = params["service"]
        query["scope"] = scopes
        headers = {"Authorization": _basic(self.auth)} if self.auth else {}
        try:
            resp = self.client.get(realm, params=query, headers=headers)
        except httpx.HTTPError as e:
            raise AuthError(f"GET {realm} (token) failed: {e}", method="GET", url=realm) from e
        if resp.status_code != 200:
            raise AuthError(
                f"GET {resp.url} (token) answered {resp.status_code}{_describe(resp)}",
                method="GET",
                url=str(resp.url),
                status=resp.status_code,
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"GET {resp.url} (token) gave no token", method="GET", url=realm)
        return token

    # --- the push steps -------------------------------------------------------

    def push_blob(self, layout_dir: Path, desc: Descriptor) -> None:
        """HEAD; if absent, POST an upload session and PUT the blob into it."""
        if desc.digest in self.pushed:
            return
        path = blob_path(layout_dir, desc.digest)
        if not path.is_file():
            if desc.urls:  # a "foreign" layer: fetched from its urls, not pushed
                return
            raise PushError(f"blob {desc.digest} is not in the layout {layout_dir}")
        size = path.stat().st_size
        if size != desc.size:
            raise PushError(f"blob {desc.digest} is {size} bytes, its descriptor says {desc.size}")
        head = self.request("HEAD", self.url(f"blobs/{desc.digest}"), ok=(200, 404))
        if head.status_code == 404:
            start = self.request("POST", self.url("blobs/uploads/"), ok=(202,))
            location = start.headers.get("location")
            if not location:
                raise PushError(f"POST {start.request.url} answered 202 without a Location")
            # Location may be relative ("/v2/...") or absolute, and may carry
            # a query (session state) that must be kept.
            upload = httpx.URL(str(start.request.url)).join(location)
            upload = upload.copy_merge_params({"digest": desc.digest})

            def chunks() -> Iterator[bytes]:
                with path.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        yield chunk

            self.request(
                "PUT",
                str(upload),
                ok=(201,),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=chunks,
            )
        self.pushed.add(desc.digest)

    def push_manifest(self, layout_dir: Path, desc: Descriptor, reference: str) -> str:
        """Push what ``desc`` needs, then ``desc`` itself under ``reference``."""
        doc = read_manifest(layout_dir, desc)
        if is_index(desc.media_type):
            for child in doc.get("manifests") or []:
                child_desc = Descriptor.from_json(child)
                self.push_manifest(layout_dir, child_desc, child_desc.digest)
        else:
            for blob in [doc.get("config"), *(doc.get("layers") or [])]:
                self.push_blob(layout_dir, Descriptor.from_json(blob))
        data = blob_path(layout_dir, desc.digest).read_bytes()
        resp = self.request(
            "PUT",
            self.url(f"manifests/{reference}"),
            ok=(201,),
            headers={"Content-Type": desc.media_type},
            body=lambda: data,
        )
        answered = resp.headers.get("docker-content-digest")
        if answered is not None and answered != desc.digest:
            raise PushError(
                f"PUT {resp.request.url}: registry says the manifest is {answered}, "
                f"but we sent {desc.digest}",
                method="PUT",
                url=str(resp.request.url),
                status=resp.status_code,
            )
        return desc.digest


def push_layout(
    layout_dir: Path,
    base_url: str,
    repository: str,
    reference: str,
    *,
    source: str | None = None,
    auth: Auth | None = None,
    client: httpx.Client | None = None,
    timeout: float = 60.0,
) -> str:
    """Push an image or index from the layout at ``layout_dir``; returns its digest.

    ``base_url`` is the registry (``http://127.0.0.1:5000``), ``repository``
    the name in it, ``reference`` a tag or the manifest's own digest.
    ``source`` picks the layout's index.json entry by ref name or digest; by
    default the only entry, else the one whose ref name is ``reference``.
    ``auth`` is a (user name, password) pair, used for Basic challenges and
    when fetching Bearer tokens. Raises PushError (AuthError for 401/403),
    naming the URL and status; a layout that is missing or broken raises the
    errors of ``layout.py`` (NotFound, InvalidArgument, DigestMismatch).
    """
    layout_dir = Path(layout_dir)
    if not _NAME_RE.match(repository) or len(repository) > 255:
        raise PushError(f"invalid repository name {repository!r}")
    is_digest = ":" in reference
    if is_digest:
        validate_digest(reference)
    elif not _TAG_RE.match(reference):
        raise PushError(f"invalid tag {reference!r}")
    if source is None:
        try:
            desc = find_in_layout(layout_dir)
        except InvalidArgument:  # several entries: the one named like the tag
            desc = find_in_layout(layout_dir, reference)
    else:
        desc = find_in_layout(layout_dir, source)
    if not (is_image_manifest(desc.media_type) or is_index(desc.media_type)):
        raise PushError(f"{desc.digest} is a {desc.media_type}: not an image or index")
    if is_digest and reference != desc.digest:
        raise PushError(
            f"reference {reference} is not the digest of what is pushed ({desc.digest})"
        )
    own_client = client is None
    http = client if client is not None else httpx.Client(timeout=timeout)
    try:
        return _Session(http, base_url, repository, auth).push_manifest(layout_dir, desc, reference)
    finally:
        if own_client:
            http.close()
