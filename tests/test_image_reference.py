"""Image reference parsing and normalisation, checked against Docker's rules.

The expected values follow github.com/distribution/reference (normalize.go,
reference.go, and the cases in its normalize_test.go / reference_test.go).
"""

from __future__ import annotations

import dataclasses
import pickle

import grpc
import pytest

from teaching_cri.errors import CRIError, InvalidArgument
from teaching_cri.image.reference import (
    DEFAULT_DOMAIN,
    DEFAULT_TAG,
    MAX_PATH_LENGTH,
    Reference,
    ReferenceError,
    is_image_id,
    parse_reference,
)

HEX = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa"
DIGEST = f"sha256:{HEX}"
DIGEST512 = "sha512:" + "f" * 128
DIGEST384 = "sha384:" + "0" * 96

# (input, normalised name, familiar form)
VALID = [
    # Docker Hub official images: docker.io and library/ are added, then dropped again.
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base:latest", "ubuntu-12.04-base:latest"),
    # Docker Hub user images: no library/.
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("user/app:1", "docker.io/user/app:1", "user/app:1"),
    ("index.docker.io/user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("other/library", "docker.io/other/library:latest", "other/library:latest"),
    ("store/foo/bar", "docker.io/store/foo/bar:latest", "store/foo/bar:latest"),
    # library/ with a nested path is not an official image: it keeps its prefix.
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    # No "." or ":" and not localhost: a Docker Hub namespace, not a registry.
    ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest"),
    # Other registries: kept whole, no library/ added.
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    ("gcr.io/proj/img:v1", "gcr.io/proj/img:v1", "gcr.io/proj/img:v1"),
    ("example.com/privatebase", "example.com/privatebase:latest", "example.com/privatebase:latest"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080/foo:latest"),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux:latest", None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", None, None),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("localhost:5000/x:y", "localhost:5000/x:y", "localhost:5000/x:y"),
    ("example:5000/x", "example:5000/x:latest", "example:5000/x:latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
    ("192.168.1.1/repo", "192.168.1.1/repo:latest", "192.168.1.1/repo:latest"),
    ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
    ("[2001:db8::1]/repo:tag", "[2001:db8::1]/repo:tag", "[2001:db8::1]/repo:tag"),
    ("[2001:db8:1:2:3:4:5:6]/repo", "[2001:db8:1:2:3:4:5:6]/repo:latest", None),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker:latest", None),
    # An uppercase first component is taken as a domain (a path may not have one).
    ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),
    ("DOCKER/docker", "DOCKER/docker:latest", "DOCKER/docker:latest"),
    # Digests: no default tag; tag and digest together are both kept.
    (f"gcr.io/proj/img@{DIGEST}", f"gcr.io/proj/img@{DIGEST}", f"gcr.io/proj/img@{DIGEST}"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
    (f"name:tag@{DIGEST}", f"docker.io/library/name:tag@{DIGEST}", f"name:tag@{DIGEST}"),
    (f"[::1]:5000/repo:tag@{DIGEST}", f"[::1]:5000/repo:tag@{DIGEST}", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@{DIGEST512}", None, None),
    (f"quay.io/a/b@{DIGEST384}", f"quay.io/a/b@{DIGEST384}", f"quay.io/a/b@{DIGEST384}"),
    # Separators: one ".", one or two "_", any number of "-".
    ("my__app/a-b---c.d_e:v1.0-rc_1", "docker.io/my__app/a-b---c.d_e:v1.0-rc_1", None),
    ("docker---rules/docker", "docker.io/docker---rules/docker:latest", None),
    ("d/docker", "docker.io/d/docker:latest", "d/docker:latest"),
    ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080", "foo/foo_bar.com:8080"),
    # Tags may have uppercase letters and start with "_" or a digit.
    ("busybox:Latest", "docker.io/library/busybox:Latest", "busybox:Latest"),
    ("busybox:_x", "docker.io/library/busybox:_x", "busybox:_x"),
    # Docker's quirks, mirrored: with no "/", a ":" always starts a tag...
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
    ("192.168.0.1:80", "docker.io/library/192.168.0.1:80", "192.168.0.1:80"),
    # ...and a lone "localhost" or IP address is a Docker Hub name.
    ("localhost", "docker.io/library/localhost:latest", "localhost:latest"),
    ("192.168.0.1", "docker.io/library/192.168.0.1:latest", "192.168.0.1:latest"),
    # 64 hex digits are a fine name once a registry removes the ambiguity.
    (f"docker.io/{HEX}", f"docker.io/library/{HEX}:latest", f"{HEX}:latest"),
    # 63 hex digits are just a name.
    (HEX[:63], f"docker.io/library/{HEX[:63]}:latest", f"{HEX[:63]}:latest"),
    # Parsed as Docker parses it: image "sha256", tag "<hex>". Use is_image_id first.
    (DIGEST, f"docker.io/library/sha256:{HEX}", DIGEST),
    # Limits, at the edge: a 128-character tag, a 255-character path.
    ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128, None),
    ("a" * 247, "docker.io/library/" + "a" * 247 + ":latest", "a" * 247 + ":latest"),
    ("example.com/" + "a/" * 127 + "a", "example.com/" + "a/" * 127 + "a:latest", None),
]


def _id(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize(("text", "name", "familiar"), VALID, ids=[_id(v[0]) for v in VALID])
def test_valid_reference_normalises(text: str, name: str | None, familiar: str | None) -> None:
    ref = parse_reference(text)
    assert ref.name == (name if name is not None else text)
    assert str(ref) == ref.name
    if familiar is not None:
        assert ref.familiar == familiar


@pytest.mark.parametrize("text", [v[0] for v in VALID], ids=[_id(v[0]) for v in VALID])
def test_normalised_and_familiar_forms_parse_back_to_the_same_reference(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(ref.name) == ref
    assert parse_reference(ref.familiar) == ref


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", ""),
        ("user/app:1", "docker.io", "user/app", "1", ""),
        ("localhost:5000/x:y", "localhost:5000", "x", "y", ""),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", ""),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io", "pause", "3.10", ""),
        (f"gcr.io/proj/img@{DIGEST}", "gcr.io", "proj/img", "", DIGEST),
        (f"name:tag@{DIGEST}", "docker.io", "library/name", "tag", DIGEST),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", ""),
        ("Foo/bar", "Foo", "bar", "latest", ""),
    ],
)
def test_fields(text: str, domain: str, path: str, tag: str, digest: str) -> None:
    ref = parse_reference(text)
    assert ref == Reference(domain=domain, path=path, tag=tag, digest=digest)
    assert ref.repository == f"{domain}/{path}"


def test_defaults() -> None:
    assert DEFAULT_DOMAIN == "docker.io"
    assert DEFAULT_TAG == "latest"
    assert MAX_PATH_LENGTH == 255


# (input, words the message must contain)
INVALID = [
    ("", ["empty"]),
    ("Busybox", ["repository name must be lowercase"]),
    ("docker.io/Library/busybox", ["must be lowercase"]),
    ("test:5000/Uppercase/lowercase:tag", ["must be lowercase"]),
    ("Uppercase:tag", ["must be lowercase"]),
    ("docker/Docker", ["must be lowercase"]),
    ("busybox:", ["tag", "empty"]),
    (f"busybox:@{DIGEST}", ["tag", "empty"]),
    ("a:b:c", ['path component "a:b"', '":"']),
    ("busybox:tag!", ["tag", '"tag!"', "not valid"]),
    ("busybox:-x", ["tag", '"-x"', "not valid"]),
    ("busybox:.x", ["tag", "not valid"]),
    ("busybox:" + "t" * 129, ["tag", "129 characters", "128"]),
    ("x@sha256:abc", ['digest "sha256:abc"', "wrong length", "64"]),
    ("x@sha256:" + HEX + "0", ["wrong length", "got 65"]),
    ("x@sha512:" + HEX, ["wrong length", "sha512", "128"]),
    ("x@sha256:" + HEX.upper(), ["lowercase hex"]),
    ("x@sha256:" + "g" * 64, ["lowercase hex"]),
    ("x@md5:" + "a" * 32, ['algorithm "md5"', "not supported"]),
    ("x@invaliddigest:" + HEX, ["not supported"]),
    ("x@1sha:" + HEX, ["malformed algorithm"]),
    ("x@sha256", ["algorithm:hex"]),
    ("x@sha256:", ["algorithm:hex"]),
    ("x@", ["algorithm:hex"]),
    ("x@y@z", ["more than one '@'"]),
    (HEX, ["image id", "64"]),
    ("a" * 248, ["must not be more than 255 characters", "256"]),
    ("a/" * 128 + "a", ["255 characters"]),
    ("docker//busybox", ["'//'"]),
    ("docker.io/docker///docker", ["'//'"]),
    ("https://github.com/docker/docker", ["'//'"]),
    ("/busybox", ["starts with '/'"]),
    ("busybox/", ["ends with '/'"]),
    ("docker/", ["ends with '/'"]),
    (f"@{DIGEST}", ["no repository name"]),
    (":justtag", ["no repository name"]),
    ("-docker", ['"-docker"', "start and end with a letter or digit"]),
    ("-docker/docker", ["start and end"]),
    ("docker-/docker", ["start and end"]),
    ("_docker/_docker", ["start and end"]),
    ("____/____", ["start and end"]),
    ("docker/dock..er", ["separator", '".."']),
    ("docker/dock_.er", ["separator", '"_."']),
    ("docker/dock-.er", ["separator", '"-."']),
    ("docker/dock___er", ["separator", '"___"']),
    ("aa/asdf$$^/aa", ['"asdf$$^"', '"$"', '"^"']),
    (" busybox", ['" "']),
    ("büsybox", ['"ü"']),
    ("fc00::1:5000/debian", ["IPv6", "brackets"]),
    ("[fe80::1%eth0]:5000/debian", ["IPv6", "zone"]),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", ["IPv6"]),
    ("[::1/x", ["IPv6"]),
    ("[::1]x/y", ["']' must be followed by ':port'"]),
    ("[::1]:/x", ['port ""', "not a number"]),
    ("foo:bar/baz", ['port "bar"', "not a number"]),
    ("-docker.io/docker/docker", ['component "-docker"']),
    ("dock..er.com/x", ["empty component"]),
    # Docker would read this as a path with no domain at all; we refuse it.
    ("my_host.com/x", ['domain "my_host.com"', '"my_host"']),
    ("[fc00::1]", ["tag"]),
    ("[fc00::1]:5000", ['"[fc00::1]"']),
]


@pytest.mark.parametrize(("text", "words"), INVALID, ids=[_id(v[0]) for v in INVALID])
def test_invalid_reference_is_refused_saying_why(text: str, words: list[str]) -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_reference(text)
    message = str(caught.value)
    quoted = text.replace('"', '\\"')
    assert message.startswith(f'invalid image reference "{quoted}": '), message
    for word in words:
        assert word in message, message
    assert caught.value.reference == text
    assert message.endswith(caught.value.reason)


def test_message_examples() -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_reference("Busybox")
    assert str(caught.value) == (
        'invalid image reference "Busybox": repository name must be lowercase'
    )
    with pytest.raises(ReferenceError) as caught:
        parse_reference("")
    assert str(caught.value) == 'invalid image reference "": empty'
    with pytest.raises(ReferenceError) as caught:
        parse_reference("x@sha256:abc")
    assert str(caught.value) == (
        'invalid image reference "x@sha256:abc": digest "sha256:abc" has the wrong length: '
        "sha256 needs 64 hex digits, got 3"
    )


def test_reference_error_is_invalid_argument() -> None:
    assert issubclass(ReferenceError, InvalidArgument)
    assert issubclass(ReferenceError, CRIError)
    assert ReferenceError.code == grpc.StatusCode.INVALID_ARGUMENT
    error = ReferenceError("x", "why")
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == 'invalid image reference "x": why'


def test_reference_error_pickles() -> None:
    error = ReferenceError("Busybox", "repository name must be lowercase")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert (copy.reference, copy.reason) == (error.reference, error.reason)


def test_with_digest_drops_the_tag() -> None:
    ref = parse_reference("busybox:1.36")
    pinned = ref.with_digest(DIGEST)
    assert pinned == Reference("docker.io", "library/busybox", "", DIGEST)
    assert pinned.name == f"docker.io/library/busybox@{DIGEST}"
    assert pinned.familiar == f"busybox@{DIGEST}"
    assert ref.tag == "1.36"  # the original is unchanged
    both = parse_reference(f"localhost:5000/x:y@{DIGEST512}")
    assert both.with_digest(DIGEST).name == f"localhost:5000/x@{DIGEST}"


@pytest.mark.parametrize(
    ("digest", "words"),
    [
        ("sha256:abc", ["wrong length"]),
        ("abc", ["algorithm:hex"]),
        ("", ["algorithm:hex"]),
        ("md5:" + "a" * 32, ["not supported"]),
    ],
)
def test_with_digest_refuses_a_bad_digest(digest: str, words: list[str]) -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_reference("busybox").with_digest(digest)
    message = str(caught.value)
    assert message.startswith(f'invalid image reference "docker.io/library/busybox@{digest}": ')
    for word in words:
        assert word in message


def test_reference_is_frozen_and_hashable() -> None:
    ref = parse_reference("busybox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "x"  # type: ignore[misc]
    assert {ref, parse_reference("docker.io/library/busybox:latest")} == {ref}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEX, True),
        (DIGEST, True),
        (HEX.upper(), False),
        (f"sha256:{HEX.upper()}", False),
        (HEX[:63], False),
        (HEX + "0", False),
        (f"sha256:{HEX}0", False),
        (f"sha512:{HEX}", False),
        (DIGEST512, False),
        ("sha256:", False),
        ("busybox", False),
        (f"busybox@{DIGEST}", False),
        ("", False),
    ],
)
def test_is_image_id(text: str, expected: bool) -> None:
    assert is_image_id(text) is expected
