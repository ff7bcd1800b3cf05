"""A token server, and a real registry that trusts it: Bearer token authentication.

Why tokens? With ``Basic`` authentication (``registry.py``'s htpasswd) the
registry itself checks every user's password on every request. Big registries
(Docker Hub, GHCR, Harbor, GitLab) separate the two jobs instead:

* an **authorization server** (the *token server*) knows the users and their
  rights: who may pull or push which repository;
* the **registry** only checks a signed, short-lived *token* that the
  authorization server issued. It never sees a password and never calls the
  authorization server back: it just verifies a signature with a public key
  it was configured with.

The dance, from distribution's "Token Authentication Specification"
(https://distribution.github.io/distribution/spec/auth/token/):

1. the client asks the registry for something, e.g.
   ``GET /v2/private/busybox/manifests/1``, without credentials;
2. the registry answers ``401`` with
   ``WWW-Authenticate: Bearer realm="http://AUTH/token",service="teaching-cri-test",
   scope="repository:private/busybox:pull"``: "fetch a token there, for that";
3. the client asks the realm: ``GET /token?service=...&scope=...``, with
   ``Authorization: Basic ...`` if it has a user name and password (or
   ``POST /token`` with an OAuth2 refresh token, distribution's "OAuth2 Token
   Authentication", https://distribution.github.io/distribution/spec/auth/oauth/);
4. the token server decides what this client may do. Wrong credentials are a
   ``401``; but *lacking rights is not an error here*: the token simply grants
   the intersection of what was asked and what is allowed, possibly nothing.
   Only the registry refuses access, when the token does not cover a request;
5. the client repeats its request with ``Authorization: Bearer <token>``.

The token is a JSON Web Token (RFC 7519), as distribution's "Token
Authentication Implementation" describes
(https://distribution.github.io/distribution/spec/auth/jwt/): three base64url
parts joined by dots, ``header.claims.signature``:

* header: ``{"typ": "JWT", "alg": "ES256", "kid": "<key id>"}``. ``kid`` names
  the signing key the way Docker's *libtrust* does: the SHA-256 of the public
  key's DER ``SubjectPublicKeyInfo``, first 240 bits, base32, in twelve groups
  of four characters joined by ``:``. The registry computes the same id for
  each certificate in its ``rootcertbundle`` and looks the key up by it;
* claims: ``iss`` (who issued it: must be the registry's configured issuer),
  ``sub`` (the user, empty if anonymous), ``aud`` (the registry's ``service``
  name), ``exp``/``nbf``/``iat`` (validity window, in Unix seconds), ``jti``
  (a unique id) and ``access``, a list of
  ``{"type": "repository", "name": "...", "actions": ["pull", "push"]}``;
* signature: ECDSA P-256 with SHA-256 over ``header.claims`` (the ASCII of the
  two encoded parts), in JWS form: ``r`` and ``s`` as 32 bytes each.

The registry's side is a few lines of its configuration (distribution's
configuration reference, ``auth.token``)::

    auth:
      token:
        realm: http://127.0.0.1:PORT/token   # sent to clients in the challenge
        service: teaching-cri-test           # sent too; must be the token's aud
        issuer: teaching-cri-test-issuer     # must be the token's iss
        rootcertbundle: token-ca.pem         # certificates of the signing keys

The policy of this server, enough to test every path of a client:

* anonymous clients may pull repositories named ``public/...`` and nothing else;
* ``learner`` / ``s3cret`` may pull and push everything;
* the refresh token :attr:`TokenServer.refresh_token` (what ``docker login``
  stores as an "identity token") acts as ``learner``.

Keys and certificates come from the ``cryptography`` package.

Usage::

    with run_token_registry(tmp_path) as (reg, tokens):
        push_busybox(reg, "private/busybox", "1")   # as learner: reg.auth is set
        # pull f"{reg.host}/private/busybox:1"; look at tokens.requests
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from registry import REGISTRY_BINARY, Registry, RegistryUnavailable, _config, _free_port, launch

SERVICE = "teaching-cri-test"
ISSUER = "teaching-cri-test-issuer"
USERS = {"learner": "s3cret"}
TOKEN_SECONDS = 300  # the spec: never less than 60
PUBLIC_PREFIX = "public/"  # anonymous clients may pull these


# --- the signing key and the JWT ---------------------------------------------------


def b64url(data: bytes) -> str:
    """base64url without ``=`` padding, as JWS/JWT use it (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def libtrust_key_id(spki_der: bytes) -> str:
    """The key id Docker's libtrust gives a public key (and distribution expects in ``kid``).

    ``spki_der`` is the DER ``SubjectPublicKeyInfo`` (what Go's
    ``x509.MarshalPKIXPublicKey`` writes). 30 bytes of SHA-256 are 240 bits,
    exactly 48 base32 characters, so there is never any ``=`` padding.
    """
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class SigningKey:
    """An ECDSA P-256 key, its libtrust key id, and a self-signed certificate for it.

    The registry reads *certificates* (``rootcertbundle``), not bare public
    keys; a self-signed one is enough, since tokens name the key by ``kid``
    and the registry only takes the public key out of the certificate.
    """

    def __init__(self, common_name: str) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        public = self.private_key.public_key()
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = libtrust_key_id(spki)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.private_key, hashes.SHA256())
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, data: bytes) -> bytes:
        """ES256 as JWS wants it: ``r || s``, 32 big-endian bytes each (RFC 7518
        section 3.4); ``cryptography`` returns a DER ``SEQUENCE { r, s }``."""
        r, s = decode_dss_signature(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def make_jwt(
    key: SigningKey, issuer: str, audience: str, subject: str, access: list[dict[str, Any]]
) -> str:
    """Header and claims as compact JSON, base64url each, joined by ``.``, signed."""
    now = int(time.time())
    header = {"typ": "JWT", "alg": "ES256", "kid": key.kid}
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": now + TOKEN_SECONDS,
        "nbf": now - 1,  # a second's grace; distribution allows 60 s of clock skew anyway
        "iat": now,
        "jti": secrets.token_hex(16),  # unique: lets a registry refuse replays
        "access": access,
    }
    signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(claims))}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, *not verified*: for looking, in tests."""
    header, claims, _signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


# --- scopes and the access policy --------------------------------------------------


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:public/busybox:pull,push`` → ``("repository", "public/busybox",
    ["pull", "push"])``; None if malformed. Distribution's "Token Scope
    Documentation": ``type:name:actions``. The name may itself contain a
    ``:`` (a registry host with a port), so the actions are after the *last* one.
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (kind and sep and name and sep2):
        return None
    return kind, name, [a for a in actions.split(",") if a]


def allowed_actions(subject: str, kind: str, name: str) -> set[str]:
    """What ``subject`` ("" for anonymous) may do to a resource."""
    if kind != "repository":
        return set()
    if subject in USERS:
        return {"pull", "push"}
    return {"pull"} if name.startswith(PUBLIC_PREFIX) else set()


def grant(subject: str, scopes: Iterable[str]) -> list[dict[str, Any]]:
    """The ``access`` claim: per resource, the requested actions that are allowed.

    Scopes may repeat a resource (``push_layout`` asks for ``...:pull`` and
    ``...:pull,push``); they are merged. A resource with nothing allowed is
    listed with no actions (the spec's "intersected set would be empty, []"):
    the token is valid, it just does not open that repository.
    """
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None:
            continue
        kind, name, actions = parsed
        ok = allowed_actions(subject, kind, name)
        have = merged.setdefault((kind, name), [])
        have.extend(a for a in actions if a in ok and a not in have)
    return [{"type": k, "name": n, "actions": a} for (k, n), a in merged.items()]


# --- the token server --------------------------------------------------------------


class TokenRequest(NamedTuple):
    """One request the token server saw: for tests to assert on."""

    method: str
    target: str  # path and query, percent-decoded: "/token?service=...&scope=..."
    basic: bool  # whether it carried Authorization: Basic


class TokenServer:
    """The authorization server: ``GET``/``POST /token`` on 127.0.0.1, in a thread."""

    def __init__(self, service: str = SERVICE, issuer: str = ISSUER) -> None:
        self.service = service
        self.issuer = issuer
        self.key = SigningKey(issuer)
        self.refresh_token = secrets.token_urlsafe(32)
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.realm = f"{self.url}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(10)
        self._httpd.server_close()

    def issue(self, subject: str, scopes: Iterable[str]) -> str:
        """A signed JWT granting ``subject`` what the policy allows of ``scopes``."""
        return make_jwt(self.key, self.issuer, self.service, subject, grant(subject, scopes))

    # -- the HTTP side ----------------------------------------------------------------

    def answer(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for one request to the token endpoint;
        ``headers`` have lower-case names."""
        url = urlsplit(target)
        authorization = headers.get("authorization", "")
        basic = authorization[:6].lower() == "basic "
        with self._lock:
            self.requests.append(TokenRequest(method, unquote(target), basic))
        if url.path != "/token":
            return 404, {"error": "not_found", "details": f"no {url.path} here"}, {}
        if method == "GET":
            params = parse_qs(url.query)
        else:
            content_type = headers.get("content-type", "").split(";")[0].strip()
            if content_type != "application/x-www-form-urlencoded":
                return 400, {"error": "invalid_request", "details": "expected a form"}, {}
            params = parse_qs(body.decode())

        def one(key: str) -> str:
            return params.get(key, [""])[0]

        if one("service") != self.service:
            # A client must echo the challenge's service; not doing so is a bug worth seeing.
            return (
                400,
                {"error": "invalid_request", "details": f"unknown service {one('service')!r}"},
                {},
            )
        # GET repeats scope=...; the OAuth2 form puts several in one, space-separated.
        scopes = [s for value in params.get("scope", []) for s in value.split()]

        subject = ""
        if basic:
            user, password = _basic_credentials(authorization)
            if USERS.get(user) != password:
                challenge = {"WWW-Authenticate": f'Basic realm="{self.issuer}"'}
                return 401, {"details": "incorrect username or password"}, challenge
            subject = user
        elif method == "POST":
            grant_type = one("grant_type")
            if not one("client_id"):
                return 400, {"error": "invalid_request", "details": "client_id is required"}, {}
            if grant_type == "refresh_token":
                if one("refresh_token") != self.refresh_token:
                    # RFC 6749 section 5.2: a bad grant is a 400 with invalid_grant.
                    return 400, {"error": "invalid_grant", "details": "unknown refresh token"}, {}
                subject = "learner"
            elif grant_type == "password":
                if USERS.get(one("username")) != one("password"):
                    return 401, {"details": "incorrect username or password"}, {}
                subject = one("username")
            else:
                return 400, {"error": "unsupported_grant_type", "details": grant_type}, {}

        token = self.issue(subject, scopes)
        answer: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_SECONDS,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if method == "POST":
            answer["scope"] = " ".join(scopes)  # the OAuth2 form requires it
        offline = one("offline_token") == "true" or one("access_type") == "offline"
        if subject and offline:
            answer["refresh_token"] = self.refresh_token
        return 200, answer, {}


def _basic_credentials(authorization: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return "", ""
    user, _, password = raw.partition(":")
    return user, password


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, doc, extra = server.answer(method, self.path, headers, body)
            data = _compact_json(doc)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests look at server.requests instead

    return Handler


# --- a registry that trusts the token server ------------------------------------


def _start(
    root: Path, tokens: TokenServer, cert: Path, timeout: float
) -> tuple[int, Path, Path, subprocess.Popen[bytes]]:
    """Like ``registry._start``, with ``auth.token``; ready when ``/v2/`` says 401."""
    port = _free_port()
    config = _config(root, port, None)
    config["auth"] = {
        "token": {
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(cert),
        }
    }
    return launch(root, port, config, (401,), timeout)


@contextmanager
def run_token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def run_token_registry(
    tmp_dir: Path, *, timeout: float = 30
) -> Iterator[tuple[Registry, TokenServer]]:
    """A token server and a registry that trusts it, for the ``with`` block.

    The registry's ``auth`` is ``learner``'s user name and password, so
    ``registry.push_busybox`` pushes as ``learner`` (``push_layout`` fetches
    a push token with them).
    """
    if not REGISTRY_BINARY.exists():
        raise RegistryUnavailable(
            f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)"
        )
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    with run_token_server() as tokens:
        cert = root / "token-ca.pem"
        cert.write_bytes(tokens.key.certificate_pem())
        for attempt in range(3):
            try:
                port, config, log, proc = _start(root, tokens, cert, timeout)
                break
            except OSError:
                if attempt == 2:
                    raise
        host = f"127.0.0.1:{port}"
        user = next(iter(USERS.items()))
        registry = Registry(f"http://{host}", host, log, root, config, proc, user)
        try:
            yield registry, tokens
        finally:
            registry.stop()
