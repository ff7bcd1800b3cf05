"""Pulling from a registry that wants Bearer tokens, and following blob redirects.

The registry is Debian's real ``docker-registry`` (distribution 2.8) with
``auth.token`` configured; the token server is ``token_registry.py``'s, which
signs JWTs the registry verifies. So every path of
``teaching_cri.image.registry.Repository._authorize`` meets the real thing:

* anonymous: a token without credentials, enough for ``public/*`` only;
* user name and password (or CRI's ``auth`` field, base64 of both), sent to
  the token server as ``Basic`` (distribution's "Token Authentication
  Specification");
* an identity token, exchanged in an OAuth2 refresh-token grant (``POST``,
  distribution's "OAuth2 Token Authentication");
* a registry token, already a Bearer token: sent as it is, no token server.

Then: registries often answer a blob ``GET`` with a redirect to storage
(S3, a CDN); a small proxy plays that part in front of a plain registry.

The functions are plain (not async): each pull is ``asyncio.run(...)``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest

from teaching_cri.errors import CRIError
from teaching_cri.image.hostimages import BusyboxUnavailable
from teaching_cri.image.manager import ImageManager
from teaching_cri.image.oci import MANIFEST_ACCEPT
from teaching_cri.image.registry import Credentials
from teaching_cri.image.store import ImageRecord

from registry import Registry, RegistryUnavailable, push_busybox, run_registry
from token_registry import (
    SigningKey,
    TokenRequest,
    TokenServer,
    decode_jwt,
    grant,
    make_jwt,
    run_token_registry,
)

PUBLIC = "public/busybox:1"
PRIVATE = "private/busybox:1"


@dataclass
class AuthRegistry:
    registry: Registry
    tokens: TokenServer

    def name(self, image: str) -> str:
        return f"{self.registry.host}/{image}"

    def pull(self, manager: ImageManager, image: str, credentials: Credentials) -> ImageRecord:
        return asyncio.run(manager.pull(self.name(image), credentials))

    def since(self, mark: int) -> list[TokenRequest]:
        return self.tokens.requests[mark:]


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """One token server and registry for the module, with both repositories pushed
    as ``learner`` (``push_layout`` asks the token server for pull,push)."""
    try:
        with run_token_registry(tmp_path_factory.mktemp("tokenreg")) as (reg, tokens):
            try:
                push_busybox(reg, "public/busybox", "1")
                push_busybox(reg, "private/busybox", "1")
            except BusyboxUnavailable as exc:
                pytest.skip(f"{exc} (apt-get install busybox-static)")
            yield AuthRegistry(reg, tokens)
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))


def scopes_of(request: TokenRequest) -> list[str]:
    return parse_qs(urlsplit(request.target).query).get("scope", [])


# --- the token server itself, as the spec describes it ---------------------------


def test_the_token_server_grants_the_intersection_and_the_registry_checks_it(
    auth: AuthRegistry,
) -> None:
    """Lacking rights is not the token server's error (the spec says so): an
    anonymous request for a private scope gets a token granting nothing, and
    the *registry* refuses it with ``error="insufficient_scope"``. A bad
    password is the token server's error: 401."""
    realm, service = auth.tokens.realm, auth.tokens.service
    scope = "repository:private/busybox:pull,push"
    with httpx.Client(trust_env=False, timeout=10) as http:
        anonymous = http.get(realm, params={"service": service, "scope": scope})
        assert anonymous.status_code == 200
        header, claims = decode_jwt(anonymous.json()["token"])
        assert header["alg"] == "ES256" and header["kid"] == auth.tokens.key.kid
        assert claims["aud"] == service and claims["iss"] == auth.tokens.issuer
        assert claims["sub"] == ""
        assert claims["access"] == [
            {"type": "repository", "name": "private/busybox", "actions": []}
        ]

        learner = http.get(
            realm, params={"service": service, "scope": scope}, auth=("learner", "s3cret")
        )
        _, claims = decode_jwt(learner.json()["access_token"])
        assert claims["sub"] == "learner"
        assert claims["access"][0]["actions"] == ["pull", "push"]

        wrong = http.get(
            realm, params={"service": service, "scope": scope}, auth=("learner", "nope")
        )
        assert wrong.status_code == 401

        manifest = f"{auth.registry.url}/v2/private/busybox/manifests/1"
        refused = http.get(
            manifest, headers={"Authorization": f"Bearer {anonymous.json()['token']}"}
        )
        assert refused.status_code == 401
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_the_registry_verifies_the_signature(auth: AuthRegistry) -> None:
    """A token with the right claims but signed by a key the registry does not
    trust (not in its ``rootcertbundle``) is refused as ``invalid_token``."""
    scopes = ["repository:private/busybox:pull"]
    good = auth.tokens.issue("learner", scopes)
    impostor = SigningKey("impostor")
    forged = make_jwt(
        impostor, auth.tokens.issuer, auth.tokens.service, "learner", grant("learner", scopes)
    )
    assert decode_jwt(forged)[1]["access"] == decode_jwt(good)[1]["access"]
    manifest = f"{auth.registry.url}/v2/private/busybox/manifests/1"
    with httpx.Client(trust_env=False, timeout=10, headers={"Accept": MANIFEST_ACCEPT}) as http:
        assert http.get(manifest, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        refused = http.get(manifest, headers={"Authorization": f"Bearer {forged}"})
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


# --- pulls through the runtime's registry client ---------------------------------


def test_a_public_repository_pulls_anonymously(auth: AuthRegistry, tmp_path: Path) -> None:
    mark = len(auth.tokens.requests)
    record = auth.pull(ImageManager(tmp_path / "images"), PUBLIC, Credentials())
    assert record.repo_tags == [auth.name(PUBLIC)]
    asked = auth.since(mark)
    assert [(r.method, r.basic) for r in asked] == [("GET", False)]
    assert scopes_of(asked[0]) == ["repository:public/busybox:pull"]


def test_a_private_repository_refuses_anonymous_pulls(auth: AuthRegistry, tmp_path: Path) -> None:
    """The token server hands out a token granting nothing; the registry then
    answers 401 again (``insufficient_scope``) and the client gives up."""
    mark = len(auth.tokens.requests)
    manager = ImageManager(tmp_path / "images")
    with pytest.raises(CRIError) as err:
        auth.pull(manager, PRIVATE, Credentials())
    assert err.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    message = str(err.value)
    # "<url>/v2/private/busybox/manifests/1: access denied (401, insufficient_scope):
    #  UNAUTHORIZED authentication required; no credentials were given"
    assert "/v2/private/busybox/manifests/1" in message
    assert "access denied (401, insufficient_scope)" in message
    assert "no credentials were given" in message
    assert [(r.method, r.basic) for r in auth.since(mark)] == [("GET", False)]
    assert manager.images.list() == []


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials.from_auth("learner", "s3cret", "", "", ""),
        Credentials.from_auth("", "", base64.b64encode(b"learner:s3cret").decode(), "", ""),
    ],
    ids=["username-password", "auth-field"],
)
def test_a_password_gets_a_token_with_basic_auth(
    auth: AuthRegistry, tmp_path: Path, credentials: Credentials
) -> None:
    mark = len(auth.tokens.requests)
    record = auth.pull(ImageManager(tmp_path / "images"), PRIVATE, credentials)
    assert record.repo_tags == [auth.name(PRIVATE)]
    asked = auth.since(mark)
    assert [(r.method, r.basic) for r in asked] == [("GET", True)]
    assert scopes_of(asked[0]) == ["repository:private/busybox:pull"]


def test_an_identity_token_is_exchanged_in_a_refresh_grant(
    auth: AuthRegistry, tmp_path: Path
) -> None:
    mark = len(auth.tokens.requests)
    credentials = Credentials.from_auth("", "", "", auth.tokens.refresh_token, "")
    record = auth.pull(ImageManager(tmp_path / "images"), PRIVATE, credentials)
    assert record.repo_tags == [auth.name(PRIVATE)]
    assert auth.since(mark) == [TokenRequest("POST", "/token", False)]


def test_a_wrong_password_is_refused_by_the_token_server(
    auth: AuthRegistry, tmp_path: Path
) -> None:
    with pytest.raises(CRIError) as err:
        auth.pull(
            ImageManager(tmp_path / "images"),
            PRIVATE,
            Credentials.from_auth("learner", "x", "", "", ""),
        )
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{auth.tokens.realm}: token refused (401)" in str(err.value)


def test_an_unknown_identity_token_fails(auth: AuthRegistry, tmp_path: Path) -> None:
    """RFC 6749 section 5.2: a bad refresh token is ``400 invalid_grant``. The
    client reports the identity token refused (FAILED_PRECONDITION), naming the realm."""
    with pytest.raises(CRIError) as err:
        auth.pull(
            ImageManager(tmp_path / "images"),
            PRIVATE,
            Credentials(identity_token="not-a-refresh-token"),
        )
    assert auth.tokens.realm in str(err.value)
    assert "identity token refused" in str(err.value)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_registry_token_is_sent_as_it_is(auth: AuthRegistry, tmp_path: Path) -> None:
    """CRI's ``registry_token`` is already a Bearer token for the registry:
    nobody asks the token server anything."""
    token = auth.tokens.issue("learner", ["repository:private/busybox:pull"])
    mark = len(auth.tokens.requests)
    record = auth.pull(
        ImageManager(tmp_path / "images"), PRIVATE, Credentials.from_auth("", "", "", "", token)
    )
    assert record.repo_tags == [auth.name(PRIVATE)]
    assert auth.since(mark) == []


# --- blob redirects -----------------------------------------------------------------

_BLOB = re.compile(r"/v2/.+/blobs/sha256:[0-9a-f]{64}")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class RedirectingProxy:
    """A registry front that sends blob GETs elsewhere, as Docker Hub sends them
    to its CDN: ``307 Location: <upstream>/v2/<name>/blobs/<digest>``. Everything
    else is forwarded to ``upstream`` and its answer passed back."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.redirects: list[str] = []  # the paths redirected
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._thread.join(10)
        self._httpd.server_close()

    def _forward(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        up = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                if method == "GET" and _BLOB.fullmatch(urlsplit(self.path).path):
                    proxy.redirects.append(self.path)
                    self.send_response(307)
                    self.send_header("Location", f"{proxy.upstream}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                keep = ("accept", "authorization")
                headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
                status, answer_headers, body = proxy._forward(method, self.path, headers)
                self.send_response(status)
                for key, value in answer_headers:
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def test_blob_redirects_are_followed(tmp_path: Path) -> None:
    try:
        with run_registry(tmp_path / "plain") as reg:
            try:
                info = push_busybox(reg, "library/busybox", "1")
            except BusyboxUnavailable as exc:
                pytest.skip(f"{exc} (apt-get install busybox-static)")
            proxy = RedirectingProxy(reg.url)
            try:
                manager = ImageManager(tmp_path / "images")
                name = f"{proxy.host}/library/busybox:1"
                record = asyncio.run(manager.pull(name, Credentials()))
            finally:
                proxy.stop()
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))
    assert record.repo_tags == [name]
    found = manager.resolve(name)
    assert found is not None and found.id == record.id
    assert record.config_digest == info.config_digest
    blobs = [record.config_digest, *(layer.digest for layer in record.layers)]
    redirected = {path.rsplit("/", 1)[1] for path in proxy.redirects}
    assert redirected == set(blobs), "every blob came through a redirect"
    for digest in blobs:  # stored, and stored right
        data = manager.content.read(digest)
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
