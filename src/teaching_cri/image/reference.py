"""Image references: parse what the kubelet sends, and spell it the one true way.

A CRI runtime is handed image names by the kubelet (``PullImage``,
``ImageStatus``, ``RemoveImage``, the ``image`` of ``CreateContainer``) and
hands names back (``Image.repo_tags``, ``Image.repo_digests``,
``ContainerStatus.image_ref``). The kubelet compares those strings: it decides
whether an image is already present, and which image a container runs, by
looking names up. ``busybox``, ``library/busybox``, ``docker.io/busybox`` and
``index.docker.io/library/busybox:latest`` all mean the same image, so the
runtime must turn each of them into one *normalised* name,
``docker.io/library/busybox:latest``, before it stores or compares anything.
Get that wrong and the kubelet pulls an image it already has, or cannot find
the image it just pulled.

The rules are Docker's, and containerd and CRI-O use the same Go package for
them: ``github.com/distribution/reference`` (``reference.go`` holds the grammar,
``regexp.go`` the regular expressions, ``normalize.go`` the Docker Hub
defaults). This module is a fresh Python rendering of those rules that checks
one piece at a time, so that an error can say *which* piece is wrong.

The grammar (from the comment at the top of ``reference.go``)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain "/"] path
    domain           := host [":" port]
    host             := domain-name | "[" IPv6 address "]"
    domain-name      := domain-component ["." domain-component]*
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    port             := [0-9]+
    path             := path-component ["/" path-component]*
    path-component   := alpha-numeric [separator alpha-numeric]*
    alpha-numeric    := [a-z0-9]+
    separator        := "." | "_" | "__" | "-"+
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" hex

Normalisation (``ParseNormalizedNamed`` and ``splitDockerDomain`` in
``normalize.go``):

* The text before the first ``/`` is a domain only if it contains ``.`` or
  ``:``, is exactly ``localhost``, or has an uppercase letter (path components
  may not, so Docker reads ``Foo/bar`` as registry ``Foo``). Otherwise the
  whole name is a path on Docker Hub: ``user/app`` is ``docker.io/user/app``.
* ``index.docker.io``, Docker Hub's old name, becomes ``docker.io``.
* A one-component path on Docker Hub gets the ``library/`` namespace of the
  official images: ``docker.io/busybox`` is ``docker.io/library/busybox``.
  Other registries are left alone: ``localhost/x`` stays ``localhost/x``.
* A first component taken for a domain must be a valid one. (Docker, given
  ``my_host.com/x``, falls back to reading the whole name as a path with *no*
  domain at all; a runtime cannot pull that, so this module refuses it.)
* With neither tag nor digest, the tag is ``latest``. A reference given with
  both keeps both, as ``ParseNormalizedNamed`` does.
* A bare 64-hex-digit string is refused: it looks like an image id, and
  reading it as ``docker.io/library/<hex>`` would surprise everybody.
* The path (after normalisation, so ``library/`` counts) may be at most 255
  characters (``RepositoryNameTotalLengthMax``; older versions of the package
  counted the domain too).

Digests are checked as ``github.com/opencontainers/go-digest`` checks them
after the grammar: the algorithm must be one the runtime knows (sha256, sha384,
sha512) and the hex must be lowercase and exactly as long as that hash.

The *familiar* form is what ``docker images`` and ``crictl images`` show:
``docker.io/`` and a lone ``library/`` are dropped again (``familiarizeName``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from teaching_cri.errors import InvalidArgument

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "MAX_PATH_LENGTH",
    "Reference",
    "ReferenceError",
    "is_image_id",
    "parse_reference",
]

DEFAULT_DOMAIN = "docker.io"
"""Docker Hub, where names without a registry live."""

_LEGACY_DOMAIN = "index.docker.io"  # Docker Hub's old name ("the Docker Index")
_OFFICIAL_NAMESPACE = "library/"  # Docker Hub's namespace for official images
_LOCALHOST = "localhost"  # a domain even though it has no "." or ":"

DEFAULT_TAG = "latest"
"""The tag a reference gets when it names neither a tag nor a digest."""

MAX_PATH_LENGTH = 255
"""The longest path (the name without its domain) a reference may have."""

_MAX_TAG_LENGTH = 128

# Hex digits per algorithm: the hash size in bytes, times two.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

# Every class is spelled out in ASCII: Python's "\w" would also accept
# letters such as "é", which Go's "\w" (and so Docker) does not.
_ALNUM = re.compile(r"[a-z0-9]+")
_SEPARATOR = re.compile(r"[._]|__|-+")
_SEPARATOR_RUN = re.compile(r"[._-]+")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_DOMAIN_COMPONENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV6_HOST = re.compile(r"\[[A-Fa-f0-9:]+\]")
_PORT = re.compile(r"[0-9]+")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_LOWER_HEX = re.compile(r"[a-f0-9]+")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


def _quote(text: str) -> str:
    """Quote like Go's %q: double quotes, with anything unprintable escaped."""
    return json.dumps(text, ensure_ascii=False)


class ReferenceError(InvalidArgument):
    """An image reference that is not valid; the message quotes it and names what is wrong.

    ``reference`` is the text that was refused and ``reason`` what is wrong
    with it; ``str()`` joins them: ``invalid image reference "Busybox":
    repository name must be lowercase``.
    """

    def __init__(self, reference: str, reason: str) -> None:
        # Both go to args (not a pre-joined message) so the error pickles.
        super().__init__(reference, reason)
        self.reference = reference
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid image reference {_quote(self.reference)}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference; make one with :func:`parse_reference`.

    ``docker.io/library/busybox:1.36`` is ``domain="docker.io"``,
    ``path="library/busybox"``, ``tag="1.36"``, ``digest=""``.
    """

    domain: str
    """The registry: ``docker.io``, ``registry.k8s.io``, ``localhost:5000``, ``[::1]:5000``."""
    path: str
    """The repository within the registry: ``library/busybox``."""
    tag: str
    """The tag, or ``""`` when the reference has only a digest."""
    digest: str
    """``sha256:<64 hex>`` (or sha384/sha512), or ``""``."""

    @property
    def repository(self) -> str:
        """Domain and path, without tag or digest: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full normalised reference: ``repository[:tag][@digest]``."""
        return self.repository + self._suffix()

    def __str__(self) -> str:
        return self.name

    @property
    def familiar(self) -> str:
        """Docker's short form: ``busybox:latest``, ``user/app:1``, ``localhost:5000/x:y``."""
        if self.domain != DEFAULT_DOMAIN:
            short = self.repository
        else:
            short = self.path
            rest = self.path.removeprefix(_OFFICIAL_NAMESPACE)
            # Only a lone official name loses "library/": "library/a/b" keeps it.
            if rest != self.path and "/" not in rest:
                short = rest
        return short + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest``, tag dropped: ``repo@digest``.

        This is the form of a ``repo_digests`` entry in the CRI ``Image`` message.
        """
        problem = _digest_problem(digest)
        if problem is not None:
            raise ReferenceError(f"{self.repository}@{digest}", problem)
        return Reference(domain=self.domain, path=self.path, tag="", digest=digest)

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return tag + digest


def is_image_id(text: str) -> bool:
    """Whether ``text`` is an image id as CRI clients pass one.

    That is ``sha256:<64 lowercase hex>`` or the 64 hex digits alone (what
    ``crictl rmi 3f57d9401f8d...`` sends). Check this *before*
    :func:`parse_reference`: a bare id is refused there, and ``sha256:<hex>``
    would parse, as Docker parses it, into the image ``docker.io/library/sha256``
    with the hex as its tag.
    """
    return _IMAGE_ID.fullmatch(text.removeprefix("sha256:")) is not None


def parse_reference(text: str) -> Reference:
    """Parse and normalise: ``busybox`` -> ``docker.io/library/busybox:latest``.

    A reference given with both a tag and a digest keeps both.
    Raises :class:`ReferenceError` (an ``InvalidArgument``) naming what is wrong.
    """
    if text == "":
        raise ReferenceError(text, "empty")
    if _IMAGE_ID.fullmatch(text):
        raise ReferenceError(
            text,
            "a 64-hex-digit string is an image id, not a name (ambiguous: "
            "check is_image_id first, or give a registry, like docker.io/<hex>)",
        )

    # 1. Split off "@digest", then ":tag". Neither may contain "/", so a ":"
    #    with a "/" after it belongs to a registry port ("localhost:5000/x").
    name, at, digest = text.partition("@")
    if at and "@" in digest:
        raise ReferenceError(text, "more than one '@'")
    tag = ""
    before, colon, after = name.rpartition(":")
    if colon and "/" not in after:
        name, tag = before, after
        _check_tag(text, tag)
    if at:
        problem = _digest_problem(digest)
        if problem is not None:
            raise ReferenceError(text, problem)
    if name == "":
        raise ReferenceError(text, "no repository name before the tag or digest")
    _check_slashes(text, name)

    # 2. Find the domain, defaulting to Docker Hub (normalize.go's splitDockerDomain).
    first, slash, rest = name.partition("/")
    if slash and _looks_like_domain(first):
        domain, path = first, rest
        if domain == _LEGACY_DOMAIN:
            domain = DEFAULT_DOMAIN
        else:
            _check_domain(text, domain)
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_NAMESPACE + path

    # 3. Check the path, now that we know which part of the name it is.
    _check_path(text, path)

    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _looks_like_domain(first: str) -> bool:
    """Docker's rule for whether the first component names a registry."""
    return first == _LOCALHOST or "." in first or ":" in first or first.lower() != first


def _check_slashes(text: str, name: str) -> None:
    if name.startswith("/"):
        raise ReferenceError(text, "the name starts with '/'")
    if name.endswith("/"):
        raise ReferenceError(text, "the name ends with '/'")
    if "//" in name:
        raise ReferenceError(text, "the name has '//' (an empty path component)")


def _check_domain(text: str, domain: str) -> None:
    port: str | None = None
    if domain.startswith("["):
        host, bracket, rest = domain.partition("]")
        host += bracket
        if not bracket or not _IPV6_HOST.fullmatch(host):
            raise ReferenceError(
                text,
                f"domain {_quote(domain)}: {_quote(host)} is not a bracketed IPv6 address "
                "(hex digits and ':' only; no zone ids or embedded IPv4)",
            )
        if rest:
            if not rest.startswith(":"):
                raise ReferenceError(
                    text, f"domain {_quote(domain)}: ']' must be followed by ':port'"
                )
            port = rest[1:]
    else:
        host = domain
        if ":" in domain:
            host, _, port = domain.rpartition(":")
            if ":" in host:
                raise ReferenceError(
                    text,
                    f"domain {_quote(domain)}: put an IPv6 address in brackets, like [::1]:5000",
                )
        for component in host.split("."):
            if component == "":
                raise ReferenceError(
                    text, f"domain {_quote(domain)} has an empty component (a stray '.')"
                )
            if not _DOMAIN_COMPONENT.fullmatch(component):
                raise ReferenceError(
                    text,
                    f"domain {_quote(domain)} has the invalid component {_quote(component)} "
                    "(letters, digits and inner '-' only)",
                )
    if port is not None and not _PORT.fullmatch(port):
        raise ReferenceError(text, f"domain {_quote(domain)}: port {_quote(port)} is not a number")


def _check_path(text: str, path: str) -> None:
    if any("A" <= ch <= "Z" for ch in path):
        raise ReferenceError(text, "repository name must be lowercase")
    for component in path.split("/"):
        _check_path_component(text, component)
    if len(path) > MAX_PATH_LENGTH:
        raise ReferenceError(
            text,
            f"repository name must not be more than {MAX_PATH_LENGTH} characters "
            f"(the path {_quote(path[:20] + '...')} has {len(path)})",
        )


def _check_path_component(text: str, component: str) -> None:
    bad = sorted({ch for ch in component if ch not in _PATH_CHARS})
    if bad:
        shown = ", ".join(_quote(ch) for ch in bad)
        raise ReferenceError(
            text,
            f"path component {_quote(component)} has {shown}: only a-z, 0-9 and the "
            "separators '.', '_', '__', '-' are allowed",
        )
    if not (_ALNUM.fullmatch(component[0]) and _ALNUM.fullmatch(component[-1])):
        raise ReferenceError(
            text,
            f"path component {_quote(component)} must start and end with a letter or digit",
        )
    for run in _SEPARATOR_RUN.findall(component):
        if not _SEPARATOR.fullmatch(run):
            raise ReferenceError(
                text,
                f"path component {_quote(component)} has the separator {_quote(run)}: "
                "use one '.', one or two '_', or any number of '-'",
            )


def _check_tag(text: str, tag: str) -> None:
    if tag == "":
        raise ReferenceError(text, "the tag after ':' is empty")
    if len(tag) > _MAX_TAG_LENGTH:
        raise ReferenceError(
            text, f"tag is {len(tag)} characters long; the most is {_MAX_TAG_LENGTH}"
        )
    if not _TAG.fullmatch(tag):
        raise ReferenceError(
            text,
            f"tag {_quote(tag)} is not valid: use letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-'",
        )


def _digest_problem(digest: str) -> str | None:
    """What is wrong with ``digest``, or None when it is a digest we can use."""
    quoted = _quote(digest)
    algorithm, colon, hex_part = digest.partition(":")
    if not colon or not algorithm or not hex_part:
        return f"digest {quoted} is not algorithm:hex (like sha256:<64 hex digits>)"
    if not _ALGORITHM.fullmatch(algorithm):
        return f"digest {quoted} has a malformed algorithm {_quote(algorithm)}"
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        known = ", ".join(_DIGEST_HEX_LENGTHS)
        return f"digest algorithm {_quote(algorithm)} is not supported ({known})"
    if not _LOWER_HEX.fullmatch(hex_part):
        return f"digest {quoted} is not lowercase hex after {algorithm}:"
    if len(hex_part) != expected:
        return (
            f"digest {quoted} has the wrong length: {algorithm} needs {expected} hex digits, "
            f"got {len(hex_part)}"
        )
    return None
