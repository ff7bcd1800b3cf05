"""Images built offline are valid OCI images, and push into a real registry.

The layout is checked by reading it back the way a consumer would (index.json
→ manifest → config → layers), verifying every digest on the way; the pushed
image is checked by fetching it back over the distribution API.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teaching_cri.errors import InvalidArgument, NotFound
from teaching_cri.image import oci
from teaching_cri.image.hostimages import (
    BUSYBOX_APPLETS,
    BusyboxUnavailable,
    build_busybox_image,
    check_busybox,
    inspect_elf,
)
from teaching_cri.image.layer import (
    LayerSpec,
    build_layer,
    copy_entry,
    decompress,
    dir_entry,
    file_entry,
    hardlink_entry,
    make_tar,
    opaque_entry,
    symlink_entry,
    whiteout_entry,
)
from teaching_cri.image.layout import build_image, build_index, find_in_layout, read_blob
from teaching_cri.image.oci import (
    MANIFEST_ACCEPT,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    Platform,
)
from teaching_cri.image.push import AuthError, PushError, parse_www_authenticate, push_layout

from registry import Registry, RegistryUnavailable, push_busybox, push_busybox_index, run_registry

BUSYBOX = Path("/bin/busybox")
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
CREDS = ("tester", "s3cret")


@pytest.fixture
def busybox() -> Path:
    try:
        check_busybox(BUSYBOX)
    except BusyboxUnavailable as e:
        pytest.skip(str(e))
    return BUSYBOX


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    try:
        with run_registry(tmp_path / "registry") as reg:
            yield reg
    except RegistryUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    try:
        with run_registry(tmp_path / "registry", htpasswd=CREDS) as reg:
            yield reg
    except RegistryUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30, follow_redirects=True) as client:
        yield client


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(blob: bytes, media_type: str) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(decompress(blob, oci.layer_compression(media_type))))


def walk_layout(layout: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check a layout as a consumer would, verifying every digest and size on the way.

    Returns index.json and, for each image manifest it lists, the manifest, its
    config and its layers opened as tars.
    """
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    # Every blob is named by the digest of its exact bytes.
    for path in (layout / "blobs" / "sha256").iterdir():
        assert sha256(path.read_bytes()) == f"sha256:{path.name}", path
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_TYPE_OCI_INDEX
    images = []
    for entry in index["manifests"]:
        desc = Descriptor.from_json(entry)
        raw = read_blob(layout, desc.digest)
        assert len(raw) == desc.size
        manifest = json.loads(raw)
        if desc.media_type == MEDIA_TYPE_OCI_INDEX:
            continue
        assert desc.media_type == manifest["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
        assert manifest["schemaVersion"] == 2
        assert manifest["config"]["mediaType"] == MEDIA_TYPE_OCI_CONFIG
        config_raw = read_blob(layout, manifest["config"]["digest"])
        assert len(config_raw) == manifest["config"]["size"]
        config = json.loads(config_raw)
        assert config["rootfs"]["type"] == "layers"
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
        assert len(config["history"]) == len(manifest["layers"])
        tars = []
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            blob = read_blob(layout, layer["digest"])
            assert len(blob) == layer["size"]
            assert layer["mediaType"] == MEDIA_TYPE_OCI_LAYER_GZIP
            # diff_id: the digest of the *uncompressed* tar.
            assert sha256(gzip.decompress(blob)) == diff_id
            tars.append(layer_tar(blob, layer["mediaType"]))
        images.append({"entry": entry, "manifest": manifest, "config": config, "tars": tars})
    return index, images


# --- building --------------------------------------------------------------------


def test_busybox_layout_follows_the_image_spec(tmp_path: Path, busybox: Path) -> None:
    layout = tmp_path / "layout"
    info = build_busybox_image(layout, ref_name="latest", busybox=busybox)
    index, images = walk_layout(layout)

    assert len(images) == 1
    image = images[0]
    entry = index["manifests"][0]
    assert entry["digest"] == info.manifest_digest
    assert entry["size"] == info.manifest_size
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    assert Platform.from_json(entry["platform"]).matches(oci.host_platform())

    manifest, config = image["manifest"], image["config"]
    assert manifest["config"]["digest"] == info.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == info.layer_digests
    assert config["rootfs"]["diff_ids"] == info.diff_ids
    assert config["os"] == "linux"
    assert config["architecture"] == info.platform.architecture
    assert config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])

    members = {m.name: m for tar in image["tars"] for m in tar.getmembers()}
    bb = members["bin/busybox"]
    assert bb.isreg() and bb.size == busybox.stat().st_size and bb.mode == 0o755
    for applet in BUSYBOX_APPLETS:
        link = members[f"bin/{applet}"]
        assert link.issym() and link.linkname == "busybox", applet
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    for d in ("proc", "sys", "dev"):
        assert members[d].isdir()
    passwd = image["tars"][0].extractfile("etc/passwd")
    assert passwd is not None
    users = [line.split(":")[0] for line in passwd.read().decode().splitlines()]
    assert users == ["root", "nobody"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values())


def test_build_is_reproducible(tmp_path: Path, busybox: Path) -> None:
    a = build_busybox_image(tmp_path / "a", busybox=busybox)
    b = build_busybox_image(tmp_path / "b", busybox=busybox)
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a" / "blobs" / "sha256").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "blobs" / "sha256").iterdir())
    # Building again into the same layout moves the name, adds nothing.
    build_busybox_image(tmp_path / "a", busybox=busybox)
    assert len(json.loads((tmp_path / "a" / "index.json").read_text())["manifests"]) == 1


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_entry_kind(tmp_path: Path, compression: oci.Compression) -> None:
    host_file = tmp_path / "script.sh"
    host_file.write_bytes(b"#!/bin/sh\necho hi\n")
    host_file.chmod(0o750)
    spec = LayerSpec(
        [
            hardlink_entry("/a/link", "z/file"),  # listed first, must be written last
            file_entry("/z/file", b"data", mode=0o600, uid=1000, gid=1001),
            copy_entry("/usr/local/bin/script.sh", host_file),
            symlink_entry("/a/abs", "/z/file"),
            dir_entry("/srv", mode=0o1777),
            whiteout_entry("/etc/gone"),
            opaque_entry("/var/cache"),
        ],
        compression=compression,
    )
    built = build_layer(spec)
    assert built.info.digest == sha256(built.blob)
    assert built.info.media_type == oci.OCI_LAYER_MEDIA_TYPE[compression]
    tar_bytes = decompress(built.blob, compression)
    assert sha256(tar_bytes) == built.info.diff_id
    assert tar_bytes == make_tar(spec.entries)

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [
        "a",
        "a/abs",
        "etc",
        "etc/.wh.gone",
        "srv",
        "usr",
        "usr/local",
        "usr/local/bin",
        "usr/local/bin/script.sh",
        "var",
        "var/cache",
        "var/cache/.wh..wh..opq",
        "z",
        "z/file",
        "a/link",
    ]
    by_name = {m.name: m for m in members}
    assert by_name["a/link"].islnk() and by_name["a/link"].linkname == "z/file"
    assert by_name["a/abs"].issym() and by_name["a/abs"].linkname == "/z/file"
    f = by_name["z/file"]
    assert (f.mode, f.uid, f.gid, f.size) == (0o600, 1000, 1001, 4)
    assert by_name["usr/local/bin/script.sh"].mode == 0o750
    assert by_name["srv"].mode == 0o1777
    assert by_name["usr"].isdir() and by_name["usr"].mode == 0o755  # added parent
    assert by_name["etc/.wh.gone"].size == 0


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        make_tar([file_entry("../escape")])
    with pytest.raises(InvalidArgument, match="twice"):
        make_tar([file_entry("/x"), file_entry("x")])
    with pytest.raises(InvalidArgument, match="reserved"):
        make_tar([file_entry("/x/.wh.y")])
    with pytest.raises(InvalidArgument, match="needs a target"):
        make_tar([symlink_entry("/x", "")])
    with pytest.raises(InvalidArgument, match="below it"):
        make_tar([file_entry("/x"), file_entry("/x/y")])
    with pytest.raises(InvalidArgument, match="unknown image config key 'cmd'"):
        build_image(tmp_path / "l", [[file_entry("/x")]], config={"cmd": ["sh"]})
    with pytest.raises(InvalidArgument, match="NAME=VALUE"):
        build_image(tmp_path / "l", [[file_entry("/x")]], config={"Env": ["PATH"]})
    with pytest.raises(InvalidArgument, match="ref name"):
        build_image(tmp_path / "l", [[file_entry("/x")]], ref_name="bad name")


def test_busybox_must_exist_and_be_static(tmp_path: Path) -> None:
    with pytest.raises(BusyboxUnavailable, match=r"not found.*busybox-static"):
        check_busybox(tmp_path / "nope")
    (tmp_path / "text").write_text("#!/bin/sh\n")
    with pytest.raises(BusyboxUnavailable, match="not an ELF"):
        check_busybox(tmp_path / "text")
    dynamic = next(
        (
            p
            for p in (shutil.which("ls"), shutil.which("cat"))
            if p and not inspect_elf(Path(p)).static
        ),
        None,
    )
    if dynamic is None:
        pytest.skip("no dynamically linked ls or cat here to check the refusal with")
    elf = inspect_elf(Path(dynamic))
    assert elf.interpreter and "ld" in elf.interpreter
    with pytest.raises(BusyboxUnavailable, match="dynamically linked"):
        check_busybox(Path(dynamic))


def test_two_platform_index(tmp_path: Path, busybox: Path) -> None:
    layout = tmp_path / "layout"
    images = [
        build_busybox_image(layout, ref_name=None, platform=p, busybox=busybox)
        for p in (AMD64, ARM64)
    ]
    assert images[0].manifest_digest != images[1].manifest_digest  # configs differ
    assert images[0].layer_digests == images[1].layer_digests  # layers are shared
    digest = build_index(layout, images, ref_name="multi")

    # index.json now names only the index; the children hang below it.
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [(e["digest"], e["mediaType"]) for e in entries] == [(digest, MEDIA_TYPE_OCI_INDEX)]
    assert find_in_layout(layout, "multi").digest == digest

    index = json.loads(read_blob(layout, digest))
    assert index["schemaVersion"] == 2 and index["mediaType"] == MEDIA_TYPE_OCI_INDEX
    platforms = [Platform.from_json(m["platform"]) for m in index["manifests"]]
    assert platforms == [AMD64, ARM64]
    for child, want in zip(index["manifests"], platforms, strict=True):
        manifest = json.loads(read_blob(layout, child["digest"]))
        config = json.loads(read_blob(layout, manifest["config"]["digest"]))
        assert (config["os"], config["architecture"]) == (want.os, want.architecture)
        assert config.get("variant", "") == want.variant

    with pytest.raises(InvalidArgument, match="platform"):
        build_index(layout, [images[0].descriptor(with_platform=False)])
    with pytest.raises(NotFound):
        build_index(tmp_path / "other", images)


def test_oci_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    good = oci.sha256_digest(b"")
    assert good == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert oci.validate_digest(good) == good
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nocolon", good + " "):
        with pytest.raises(InvalidArgument):
            oci.validate_digest(bad)
    oci.verify_digest(b"", good)
    with pytest.raises(DigestMismatch):
        oci.verify_digest(b"x", good)
    assert oci.canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()

    assert Platform("linux", "arm64").matches(ARM64)
    assert Platform("linux", "aarch64").matches(ARM64)
    assert not Platform("linux", "arm", "v6").matches(Platform("linux", "arm", "v7"))
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "7"))
    assert not AMD64.matches(ARM64)
    assert str(ARM64) == "linux/arm64/v8" and Platform.parse("linux/arm64/v8") == ARM64
    for machine, expected in [
        ("x86_64", AMD64),
        ("aarch64", ARM64),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("i686", Platform("linux", "386")),
    ]:
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        assert oci.host_platform() == expected


def test_www_authenticate_parsing() -> None:
    header = 'Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull,push"'
    assert parse_www_authenticate(header) == {
        "bearer": {
            "realm": "https://auth.test/token",
            "service": "reg",
            "scope": "repository:a/b:pull,push",
        }
    }
    assert parse_www_authenticate(['Basic realm="x \\"y\\""']) == {"basic": {"realm": 'x "y"'}}


# --- pushing to a real registry ------------------------------------------------


def fetch_manifest(
    http: httpx.Client, reg: Registry, repo: str, ref: str, **kw: Any
) -> httpx.Response:
    resp = http.get(
        f"{reg.url}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}, **kw
    )
    assert resp.status_code == 200, resp.text
    return resp


def test_push_busybox_and_fetch_it_back(
    busybox: Path, registry: Registry, http: httpx.Client
) -> None:
    info = push_busybox(registry, "library/busybox", "latest")

    resp = fetch_manifest(http, registry, "library/busybox", "latest")
    assert resp.headers["content-type"] == MEDIA_TYPE_OCI_MANIFEST
    assert resp.headers["docker-content-digest"] == info.manifest_digest
    assert sha256(resp.content) == info.manifest_digest  # the very bytes we built
    manifest = resp.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = http.get(f"{registry.url}/v2/library/busybox/blobs/{desc['digest']}")
        assert blob.status_code == 200
        assert sha256(blob.content) == desc["digest"] and len(blob.content) == desc["size"]
    # By digest too.
    fetch_manifest(http, registry, "library/busybox", info.manifest_digest)

    # A second push finds every blob with HEAD and uploads nothing.
    uploads = registry.output().count("POST /v2/library/busybox/blobs/uploads/")
    assert uploads == 3  # config + 2 layers
    again = push_layout(
        registry.root / "layouts" / "library_busybox-latest",
        registry.url,
        "library/busybox",
        "v2",
        client=http,
    )
    assert again == info.manifest_digest
    assert registry.output().count("POST /v2/library/busybox/blobs/uploads/") == uploads
    assert http.get(f"{registry.url}/v2/library/busybox/tags/list").json()["tags"] == [
        "latest",
        "v2",
    ]


def test_push_with_htpasswd_basic_auth(
    tmp_path: Path, busybox: Path, auth_registry: Registry, http: httpx.Client
) -> None:
    resp = http.get(f"{auth_registry.url}/v2/")
    assert resp.status_code == 401
    assert parse_www_authenticate(resp.headers["www-authenticate"]) == {
        "basic": {"realm": "teaching-cri"}
    }
    url = auth_registry.url
    layout = tmp_path / "layout"
    info = build_busybox_image(layout, busybox=busybox)
    with pytest.raises(AuthError, match=r"needs a user name and password") as no_creds:
        push_layout(layout, url, "secure/busybox", "latest", client=http)
    assert no_creds.value.status == 401
    with pytest.raises(AuthError, match=r"401") as wrong:
        push_layout(layout, url, "secure/busybox", "latest", auth=("tester", "x"), client=http)
    assert wrong.value.url and url in wrong.value.url

    digest = push_layout(layout, url, "secure/busybox", "latest", auth=CREDS, client=http)
    assert digest == info.manifest_digest
    resp = fetch_manifest(http, auth_registry, "secure/busybox", "latest", auth=CREDS)
    assert resp.headers["docker-content-digest"] == digest
    assert http.get(f"{url}/v2/secure/busybox/manifests/latest").status_code == 401


def test_push_index_and_read_it_back(busybox: Path, registry: Registry, http: httpx.Client) -> None:
    digest, images = push_busybox_index(registry, "multi/busybox", "1.0", (AMD64, ARM64))

    resp = fetch_manifest(http, registry, "multi/busybox", "1.0")
    assert resp.headers["content-type"] == MEDIA_TYPE_OCI_INDEX
    assert resp.headers["docker-content-digest"] == digest == sha256(resp.content)
    index = resp.json()
    assert [Platform.from_json(m["platform"]) for m in index["manifests"]] == [AMD64, ARM64]
    for child, image in zip(index["manifests"], images, strict=True):
        assert child["digest"] == image.manifest_digest
        child_resp = fetch_manifest(http, registry, "multi/busybox", child["digest"])
        assert sha256(child_resp.content) == child["digest"]
        config_digest = child_resp.json()["config"]["digest"]
        config = http.get(f"{registry.url}/v2/multi/busybox/blobs/{config_digest}").json()
        assert config["architecture"] == image.platform.architecture


# --- the protocol corners, against an in-process fake registry --------------------


class FakeRegistry:
    """Just enough of a registry with Bearer auth, for httpx.MockTransport."""

    def __init__(self, *, absolute_location: bool) -> None:
        self.absolute_location = absolute_location
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.token_requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.host == "auth.test":
            self.token_requests.append(request)
            if request.headers.get("authorization") != httpx.BasicAuth("u", "p")._auth_header:
                return httpx.Response(401)
            return httpx.Response(200, json={"access_token": "tok"})
        if request.headers.get("authorization") != "Bearer tok":
            challenge = (
                'Bearer realm="http://auth.test/token",service="fake",'
                'scope="repository:team/app:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        path = url.path
        if m := re.fullmatch(r"/v2/team/app/blobs/(sha256:[0-9a-f]{64})", path):
            return httpx.Response(200 if m[1] in self.blobs else 404)
        if path == "/v2/team/app/blobs/uploads/" and request.method == "POST":
            loc = "/uploads/abc?_state=xyz"
            return httpx.Response(
                202,
                headers={"Location": f"http://reg.test{loc}" if self.absolute_location else loc},
            )
        if path == "/uploads/abc" and request.method == "PUT":
            assert url.params["_state"] == "xyz"
            body = request.read()
            if sha256(body) != url.params["digest"]:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs[url.params["digest"]] = body
            return httpx.Response(201)
        if m := re.fullmatch(r"/v2/team/app/manifests/(.+)", path):
            body = request.read()
            self.manifests[m[1]] = (request.headers["content-type"], body)
            return httpx.Response(201, headers={"Docker-Content-Digest": sha256(body)})
        return httpx.Response(404)


@pytest.mark.parametrize("absolute_location", [True, False])
def test_bearer_token_push(tmp_path: Path, absolute_location: bool) -> None:
    layout = tmp_path / "layout"
    info = build_image(
        layout, [[file_entry("/hello", b"hi")]], config={"Cmd": ["/hello"]}, ref_name="v1"
    )
    fake = FakeRegistry(absolute_location=absolute_location)
    with httpx.Client(transport=httpx.MockTransport(fake)) as client:
        digest = push_layout(
            layout, "http://reg.test", "team/app", "v1", auth=("u", "p"), client=client
        )
    assert digest == info.manifest_digest
    assert fake.manifests["v1"] == (MEDIA_TYPE_OCI_MANIFEST, read_blob(layout, digest))
    assert set(fake.blobs) == {info.config_digest, *info.layer_digests}
    # One token, asked for with the challenge's service and scope, and the push scope.
    assert len(fake.token_requests) == 1
    params = fake.token_requests[0].url.params
    assert params["service"] == "fake"
    assert params.get_list("scope") == ["repository:team/app:pull", "repository:team/app:pull,push"]


def test_push_errors_name_the_url_and_status(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    build_image(layout, [[file_entry("/x")]])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                500, json={"errors": [{"code": "UNKNOWN", "message": "disk on fire"}]}
            )
        return httpx.Response(404)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(PushError) as err,
    ):
        push_layout(layout, "http://reg.test", "app", "latest", client=client)
    assert err.value.status == 500
    assert "POST http://reg.test/v2/app/blobs/uploads/ answered 500" in str(err.value)
    assert "disk on fire" in str(err.value)

    with pytest.raises(PushError, match="invalid repository name"):
        push_layout(layout, "http://reg.test", "App", "latest")
    with pytest.raises(PushError, match="not the digest"):
        push_layout(layout, "http://reg.test", "app", oci.sha256_digest(b"other"))
