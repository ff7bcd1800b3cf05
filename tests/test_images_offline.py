"""Images without a registry: BuildLocalImage and ImportImage (teaching-cri's admin
service), through the live server and the CLI."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.image.hostimages import (
    BusyboxUnavailable,
    build_busybox_image,
    build_host_binaries_image,
    check_busybox,
)
from teaching_cri.image.layer import file_entry, opaque_entry, whiteout_entry
from teaching_cri.image.layout import build_image, read_blob
from teaching_cri.image.manager import ImageManager
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms

from conftest import IS_ROOT, Server

BUSYBOX = Path("/bin/busybox")


def needs_busybox() -> None:
    try:
        check_busybox(BUSYBOX)
    except BusyboxUnavailable as exc:
        pytest.skip(f"{exc} (apt-get install busybox-static)")


def status(client: Client, name: str) -> api_pb2.ImageStatusResponse:
    return client.image.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)))


def tar_dir(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return archive


def test_build_local_makes_a_runnable_image(client: Client, charts: ChartSet) -> None:
    needs_busybox()
    since = time.time_ns()
    name = "teaching-cri.local/busybox:latest"
    resp = client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=name))
    assert resp.image_ref.startswith("sha256:") and list(resp.repo_tags) == [name]
    image = status(client, name).image
    assert image.id == resp.image_ref and image.size > BUSYBOX.stat().st_size // 2
    assert status(client, "teaching-cri.local/busybox").image.id == resp.image_ref
    events = client.recent(charts=["BuildLocalImage"], since_unix_nano=since)
    assert_conforms(events, charts)
    assert [e.node for e in events][:3] == [
        "build_local_image",
        "build_busybox_layout",
        "read_index",
    ]


def test_import_an_oci_layout_archive(client: Client, tmp_path: Path, charts: ChartSet) -> None:
    layout = tmp_path / "layout"
    info = build_image(
        layout,
        [[file_entry("hello.txt", b"hello from an archive\n")]],
        config={"Cmd": ["/bin/cat", "/hello.txt"]},
        ref_name="v1",
    )
    archive = tar_dir(layout, tmp_path / "image.tar")
    since = time.time_ns()
    resp = client.admin.ImportImage(
        admin_pb2.ImportImageRequest(path=str(archive), name="example.com/hello:v1")
    )
    assert resp.image_ref == info.config_digest
    assert list(resp.repo_tags) == ["example.com/hello:v1"]
    assert status(client, "example.com/hello:v1").image.id == info.config_digest
    assert_conforms(client.recent(charts=["ImportImage"], since_unix_nano=since), charts)


def test_import_a_legacy_docker_save_archive(client: Client, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = build_image(
        layout, [[file_entry("a.txt", b"a\n")], [file_entry("b.txt", b"b\n")]], ref_name="x"
    )
    save = tmp_path / "save"
    save.mkdir()
    config_name = info.config_digest.removeprefix("sha256:") + ".json"
    (save / config_name).write_bytes(read_blob(layout, info.config_digest))
    layer_names = []
    for i, layer in enumerate(info.layers):
        (save / f"l{i}").mkdir()
        (save / f"l{i}" / "layer.tar").write_bytes(gzip.decompress(read_blob(layout, layer.digest)))
        layer_names.append(f"l{i}/layer.tar")
    (save / "manifest.json").write_text(
        json.dumps([{"Config": config_name, "RepoTags": ["legacy/app:2"], "Layers": layer_names}])
    )
    archive = tar_dir(save, tmp_path / "save.tar")
    resp = client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(archive)))
    assert resp.image_ref == info.config_digest, "same config, so the same image id"
    assert list(resp.repo_tags) == ["docker.io/legacy/app:2"]


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("relative.tar", grpc.StatusCode.INVALID_ARGUMENT, "must be absolute"),
        ("/nonexistent/x.tar", grpc.StatusCode.NOT_FOUND, "no such file"),
    ],
)
def test_bad_import_requests(client: Client, path: str, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.admin.ImportImage(admin_pb2.ImportImageRequest(path=path))
    assert err.value.code() == code and words in err.value.details()


def test_a_file_that_is_no_image_archive(client: Client, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(grpc.RpcError) as err:
        client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(junk)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    empty = tar_dir(_empty(tmp_path), tmp_path / "e.tar")
    with pytest.raises(grpc.RpcError) as err:
        client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(empty)))
    assert "neither an OCI image layout" in err.value.details()
    assert list(client.image.ListImages(api_pb2.ListImagesRequest()).images) == []


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "README").write_text("no image here\n")
    return d


def test_the_cli_imports_and_builds(server: Server, tmp_path: Path) -> None:
    needs_busybox()
    layout = tmp_path / "bb"
    build_busybox_image(layout, ref_name="latest")
    archive = tar_dir(layout, tmp_path / "bb.tar")
    cli = [sys.executable, "-m", "teaching_cri", "images"]
    out = subprocess.run(
        [*cli, "import", str(archive), "--name", "mine/busybox:1", "--socket", str(server.socket)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    image_ref, tag = out.stdout.split()
    assert image_ref.startswith("sha256:") and tag == "docker.io/mine/busybox:1"
    out = subprocess.run(
        [*cli, "build-local", "Bad Name", "--socket", str(server.socket)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr
    shutil.rmtree(layout)


@pytest.mark.skipif(not IS_ROOT, reason="chroot needs root")
@pytest.mark.parametrize("source", ["busybox", "host binaries"])
def test_a_local_image_runs(source: str, tmp_path: Path) -> None:
    """The point of build-local: an image whose programs really run, here in a
    chroot of its snapshot (the container runtime comes with the next issue)."""
    layout = tmp_path / "layout"
    if source == "busybox":
        needs_busybox()
        build_busybox_image(layout, ref_name=None)
    else:
        build_host_binaries_image(layout, ref_name=None)
    manager = ImageManager(tmp_path / "images", snapshot_mode="copy")
    record = asyncio.run(manager.import_layout(layout, None))
    rootfs = manager.snapshots.mount_view([x.chain_id for x in record.layers], "run")
    try:
        out = subprocess.run(
            [
                shutil.which("chroot") or "/usr/sbin/chroot",
                str(rootfs),
                "/bin/sh",
                "-c",
                "echo hello from $0; ls /bin",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/bin:/usr/bin"},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("hello from /bin/sh")
        assert "cat" in out.stdout.split()
    finally:
        manager.snapshots.remove_view("run")


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("../escape", tarfile.REGTYPE, ""),
        ("/abs", tarfile.REGTYPE, ""),
        ("blobs/up", tarfile.SYMTYPE, "../../outside"),
        ("dev", tarfile.CHRTYPE, ""),
    ],
)
def test_an_archive_cannot_write_outside(
    client: Client, tmp_path: Path, name: str, kind: bytes, link: str
) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with pytest.raises(grpc.RpcError) as err:
        client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(archive)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(name) in err.value.details()
    assert not (tmp_path.parent / "escape").exists()


USERNS_SCRIPT = """
import asyncio, sys
from pathlib import Path
from teaching_cri.image.manager import ImageManager
from teaching_cri.image.unpack import in_user_namespace
layout, root = Path(sys.argv[1]), Path(sys.argv[2])
manager = ImageManager(root)  # auto: overlay, since we are root in our namespace
assert in_user_namespace() and manager.snapshots.mode == "overlay", manager.snapshots.mode
record = asyncio.run(manager.import_layout(layout, None))
rootfs = manager.snapshots.mount_view([x.chain_id for x in record.layers], "c")
print(sorted(p.name for p in (rootfs / "data").iterdir()), (rootfs / "keep").exists(),
      (rootfs / "gone").exists())
manager.snapshots.remove_view("c")
"""


def test_overlay_snapshots_inside_a_user_namespace(tmp_path: Path) -> None:
    """Rootless: in its own user and mount namespaces, root-in-namespace gets
    overlay snapshots too (whiteouts as 0/0 devices, opaque dirs marked with
    user.overlay.opaque, the mount made with userxattr)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-Urm", "true"]).returncode != 0:
        pytest.skip("unprivileged user namespaces are not available here")
    layout = tmp_path / "layout"
    build_image(
        layout,
        [
            [
                file_entry("data/old.txt", b"lower\n"),
                file_entry("gone", b"x"),
                file_entry("keep", b"y"),
            ],
            [opaque_entry("data"), file_entry("data/new.txt", b"upper\n"), whiteout_entry("gone")],
        ],
        ref_name="x",
    )
    out = subprocess.run(
        [
            unshare,
            "-Urm",
            sys.executable,
            "-c",
            USERNS_SCRIPT,
            str(layout),
            str(tmp_path / "images"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['new.txt'] True False"


def test_a_docker_archive_cannot_name_files_outside_it(client: Client, tmp_path: Path) -> None:
    save = tmp_path / "save"
    save.mkdir()
    (save / "manifest.json").write_text(
        json.dumps([{"Config": "/etc/hostname", "RepoTags": ["x/y:1"], "Layers": []}])
    )
    archive = tar_dir(save, tmp_path / "save.tar")
    with pytest.raises(grpc.RpcError) as err:
        client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(archive)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'/etc/hostname' is not a path inside the archive" in err.value.details()


def test_removed_snapshots_are_deleted_after_the_call_and_at_the_next_start(
    tmp_path: Path,
) -> None:
    """RemoveImage renames an image's snapshots aside and a collector thread deletes
    them after the call; a tree a stopped server left aside goes at the next start."""
    layout = tmp_path / "layout"
    build_image(layout, [[file_entry("a", b"1\n")], [file_entry("b", b"2\n")]], ref_name=None)
    manager = ImageManager(tmp_path / "images", snapshot_mode="copy")
    record = asyncio.run(manager.import_layout(layout, None))
    snapshots = [manager.snapshots.path(x.chain_id) for x in record.layers]
    assert all(p.is_dir() for p in snapshots)
    manager.remove(record)
    assert not any(p.exists() for p in snapshots), "gone from their names in the call"
    manager.close()  # waits for the collector
    assert list(manager.snapshots.layers.iterdir()) == [], "and their files after it"
    assert list(manager.content.digests()) == []

    left = manager.snapshots.layers / ".removed-0123456789abcdef"  # a server killed meanwhile
    (left / "fs" / "etc").mkdir(parents=True)
    (left / "fs" / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    again = ImageManager(tmp_path / "images", snapshot_mode="copy")
    assert not left.exists()
    again.close()


def test_pulls_share_one_tls_context_that_still_verifies(tmp_path: Path) -> None:
    """Built once (loading the CA bundle costs ~20 ms a pull otherwise), with the
    checks a default httpx client makes: the certificate and the host name."""
    manager = ImageManager(tmp_path / "images")
    tls = manager.tls()
    assert manager.tls() is tls
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
    manager.close()
