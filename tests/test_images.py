"""ImageService against the live server, pulling from a real local registry
(Debian's docker-registry, started here) images built here from busybox."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.errors import FailedPrecondition
from teaching_cri.image.hostimages import BusyboxUnavailable
from teaching_cri.image.layer import LayerSpec, file_entry
from teaching_cri.image.layout import build_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.image.oci import host_platform
from teaching_cri.image.push import push_layout
from teaching_cri.image.reference import parse_reference
from teaching_cri.image.registry import Credentials
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import EventKind

from conftest import IS_ROOT, Server, start_server
from registry import Registry, RegistryUnavailable, push_busybox, push_busybox_index, run_registry

BUSYBOX = Path("/bin/busybox")


def _registry(base: Path, **kw: object) -> Iterator[Registry]:
    try:
        with run_registry(base, **kw) as reg:  # type: ignore[arg-type]
            yield reg
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def registry(short_tmp: Path) -> Iterator[Registry]:
    yield from _registry(short_tmp / "registry")


@pytest.fixture
def busybox(registry: Registry) -> tuple[Registry, str, str]:
    """busybox pushed as <registry>/library/busybox:1.0: (registry, name, config digest)."""
    try:
        info = push_busybox(registry, "library/busybox", "1.0")
    except BusyboxUnavailable as exc:
        pytest.skip(f"{exc} (apt-get install busybox-static)")
    return registry, f"{registry.host}/library/busybox:1.0", info.config_digest


def pull(client: Client, name: str, **auth: str) -> str:
    request = api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=name), auth=api_pb2.AuthConfig(**auth)
    )
    return str(client.image.PullImage(request, timeout=120).image_ref)


def status(client: Client, name: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    return client.image.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name), verbose=verbose)
    )


def test_pull_list_status_remove_like_containerd(
    client: Client, busybox: tuple[Registry, str, str], charts: ChartSet
) -> None:
    registry, name, config_digest = busybox
    since = time.time_ns()
    image_ref = pull(client, name)
    assert image_ref == config_digest, "image_ref is the image id: the config digest"

    image = status(client, name).image
    assert image.id == image_ref
    assert list(image.repo_tags) == [name]
    assert len(image.repo_digests) == 1
    assert image.repo_digests[0].startswith(f"{registry.host}/library/busybox@sha256:")
    assert image.size > 0
    assert status(client, "sha256:" + "0" * 64).HasField("image") is False  # missing: empty
    assert status(client, image_ref).image.id == image_ref  # by id
    assert status(client, image_ref.removeprefix("sha256:")[:12]).image.id == image_ref

    info = json.loads(status(client, name, verbose=True).info["info"])
    assert info["configDigest"] == config_digest and len(info["layers"]) == 2

    listed = client.image.ListImages(api_pb2.ListImagesRequest()).images
    assert [i.id for i in listed] == [image_ref]
    filtered = client.image.ListImages(
        api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="nothing:here"))
        )
    ).images
    assert list(filtered) == []

    fs = client.image.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    used = fs.image_filesystems[0].used_bytes.value
    assert used > BUSYBOX.stat().st_size  # blobs and an unpacked snapshot at least
    assert fs.image_filesystems[0].inodes_used.value > 10
    assert fs.container_filesystems[0].fs_id.mountpoint

    events = client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    progress = [e for e in events if e.chart == "PullImage" and e.node == "fetch_layer"]
    assert progress and progress[-1].attributes["bytes"] == progress[-1].attributes["size"]

    client.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)))
    assert not status(client, name).HasField("image")
    assert list(client.image.ListImages(api_pb2.ListImagesRequest()).images) == []
    client.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)))
    after = client.image.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    assert after.image_filesystems[0].used_bytes.value < used


def test_pull_by_digest_and_restart_keeps_images(
    short_tmp: Path, busybox: tuple[Registry, str, str]
) -> None:
    _, name, config_digest = busybox
    srv = start_server(short_tmp / "srv")
    try:
        client = srv.client()
        digest_name = status_digest(client, name)
        assert pull(client, digest_name) == config_digest
        image = status(client, digest_name).image
        assert digest_name in image.repo_digests and image.repo_tags == [name]
    finally:
        assert srv.stop() == 0
    again = start_server(short_tmp / "srv")
    try:
        image = status(again.client(), name).image
        assert image.id == config_digest, "the image survived the restart"
    finally:
        again.stop()


def status_digest(client: Client, name: str) -> str:
    pull(client, name)
    return str(status(client, name).image.repo_digests[0])


def test_a_multi_arch_index_resolves_to_the_host_platform(
    client: Client, registry: Registry
) -> None:
    try:
        _, images = push_busybox_index(registry, "multi", "v1")
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))
    host = host_platform()
    mine = [
        i
        for i in images
        if (i.platform.architecture, i.platform.os) == (host.architecture, host.os)
    ]
    if not mine:
        pytest.skip(f"the test index has no image for {host}")
    assert pull(client, f"{registry.host}/multi:v1") == mine[0].config_digest


def test_basic_auth(short_tmp: Path, server: Server) -> None:
    for reg in _registry(short_tmp / "authreg", htpasswd=("learner", "s3cret")):
        try:
            push_busybox(reg, "private", "1")
        except BusyboxUnavailable as exc:
            pytest.skip(str(exc))
        client = server.client()
        with pytest.raises(grpc.RpcError) as err:
            pull(client, f"{reg.host}/private:1")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "username and password" in err.value.details()
        assert pull(client, f"{reg.host}/private:1", username="learner", password="s3cret")
        with pytest.raises(grpc.RpcError) as err:
            pull(client, f"{reg.host}/private:1", username="learner", password="wrong")
        assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


def test_a_corrupted_blob_is_refused_and_nothing_committed(
    client: Client, busybox: tuple[Registry, str, str]
) -> None:
    registry, name, _ = busybox
    blobs = list((registry.root).rglob("blobs/sha256/*/*/data"))
    layer = max(blobs, key=lambda p: p.stat().st_size)  # the busybox layer
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as err:
        pull(client, name)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "hashes to" in err.value.details()
    assert list(client.image.ListImages(api_pb2.ListImagesRequest()).images) == []
    assert not status(client, name).HasField("image")


def test_bad_names_and_missing_images(client: Client, registry: Registry) -> None:
    for bad in ("Busybox", "a:b:c", ""):
        with pytest.raises(grpc.RpcError) as err:
            pull(client, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        pull(client, f"{registry.host}/nothing:here")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "manifest unknown" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        status(client, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_mirror_serves_another_registrys_names(
    short_tmp: Path, busybox: tuple[Registry, str, str]
) -> None:
    registry, _, config_digest = busybox
    push_busybox(registry, "pause", "3.10")
    cfg = short_tmp / "mirror.toml"
    cfg.write_text(f'[registry.mirrors."registry.k8s.io"]\nendpoints = ["{registry.url}"]\n')
    srv = start_server(short_tmp / "m", "--config", str(cfg))
    try:
        assert pull(srv.client(), "registry.k8s.io/pause:3.10") == config_digest
        image = status(srv.client(), "registry.k8s.io/pause:3.10").image
        assert list(image.repo_tags) == ["registry.k8s.io/pause:3.10"]
    finally:
        srv.stop()


def test_concurrent_pulls_of_one_image_share_the_work(
    client: Client, registry: Registry, tmp_path: Path, charts: ChartSet
) -> None:
    # A big, incompressible layer so that the second pull arrives mid-download.
    layout = tmp_path / "big"
    payload = os.urandom(48 * 1024 * 1024)
    info = build_image(layout, [[file_entry("big.bin", payload)]], ref_name="big")
    push_layout(layout, registry.url, "big", "1", source="big")
    name = f"{registry.host}/big:1"
    since = time.time_ns()
    results: list[str] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        barrier.wait()
        results.append(pull(client, name))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [info.config_digest] * 2
    events = [e for e in client.recent(charts=["PullImage"], since_unix_nano=since)]
    assert_conforms(events, charts)
    waited = [e for e in events if e.node == "wait_for_the_other_pull"]
    fetched = [e for e in events if e.node == "resolve_manifest" and e.kind is EventKind.STEP]
    assert len(waited) == 1 and len(fetched) == 1, "one download, one waiter"


@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_the_snapshot_holds_the_images_files(
    mode: str, busybox: tuple[Registry, str, str], tmp_path: Path
) -> None:
    if mode == "overlay" and not IS_ROOT:
        pytest.skip("overlay snapshots need root")
    _, name, _ = busybox
    manager = ImageManager(tmp_path / "images", snapshot_mode=mode)
    record = asyncio.run(manager.pull(name, Credentials()))
    rootfs = manager.snapshots.mount_view([x.chain_id for x in record.layers], "c1")
    try:
        assert (rootfs / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
        assert (rootfs / "bin" / "sh").is_symlink()
        assert (rootfs / "etc" / "passwd").read_text().startswith("root:")
        (rootfs / "tmp" / "written").write_text("container data")
        if mode == "overlay":
            upper = tmp_path / "images" / "snapshots" / "active" / "c1" / "upper"
            assert (upper / "tmp" / "written").exists(), "writes land in the upper dir"
    finally:
        manager.snapshots.remove_view("c1")
    assert not (tmp_path / "images" / "snapshots" / "active" / "c1").exists()


def test_an_interrupted_pull_leaves_nothing_and_a_later_pull_completes(
    short_tmp: Path, registry: Registry, tmp_path: Path
) -> None:
    layout = tmp_path / "big"
    info = build_image(
        layout, [[file_entry("big.bin", os.urandom(64 * 1024 * 1024))]], ref_name="big"
    )
    push_layout(layout, registry.url, "big", "2", source="big")
    name = f"{registry.host}/big:2"
    srv = start_server(short_tmp / "k")
    client = srv.client()
    since = time.time_ns()
    outcome: list[str] = []

    def doomed_pull() -> None:
        try:
            pull(client, name)
            outcome.append("finished")
        except grpc.RpcError as exc:
            outcome.append(exc.code().name)

    puller = threading.Thread(target=doomed_pull)
    puller.start()
    # Kill the server (SIGKILL: no clean-up at all) once the layer is arriving.
    for event, _ in client.follow(charts=["PullImage"], since_unix_nano=since):
        if event.node == "fetch_layer" and 0 < int(event.attributes.get("bytes", "0")) < int(
            event.attributes["size"]
        ):
            break
    srv.stop(signal.SIGKILL)
    puller.join(30)
    assert outcome == ["UNAVAILABLE"], "the pull died with the server"
    ingest = srv.root / "images" / "content" / "ingest"
    assert any(ingest.iterdir()), "the kill left a partial download behind"
    again = start_server(short_tmp / "k")
    try:
        client = again.client()
        assert list(client.image.ListImages(api_pb2.ListImagesRequest()).images) == []
        assert not any(ingest.iterdir()), "a restart clears partial downloads"
        assert pull(client, name) == info.config_digest
    finally:
        again.stop()


def test_an_image_in_use_is_not_removed(busybox: tuple[Registry, str, str], tmp_path: Path) -> None:
    _, name, config_digest = busybox
    manager = ImageManager(tmp_path / "images")
    record = asyncio.run(manager.pull(name, Credentials()))
    manager.in_use = lambda image_id: image_id == config_digest
    with pytest.raises(FailedPrecondition, match="in use"):
        manager.remove(record)
    assert manager.resolve(name) is not None
    manager.in_use = lambda image_id: False
    manager.remove(record)
    assert manager.resolve(name) is None
    assert list(manager.content.digests()) == [], "its blobs went with it"


def test_a_moved_tag_leaves_the_old_image_untagged_and_short_names_find_nothing(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    first = build_image(tmp_path / "a", [[file_entry("v", b"1\n")]], ref_name="t")
    push_layout(tmp_path / "a", registry.url, "moving", "1", source="t")
    name = f"{registry.host}/moving:1"
    assert pull(client, name) == first.config_digest
    second = build_image(tmp_path / "b", [[file_entry("v", b"2\n")]], ref_name="t")
    push_layout(tmp_path / "b", registry.url, "moving", "1", source="t")
    assert pull(client, name) == second.config_digest
    images = {i.id: i for i in client.image.ListImages(api_pb2.ListImagesRequest()).images}
    assert list(images[second.config_digest].repo_tags) == [name]
    old = images[first.config_digest]  # kept: a container may still use it
    assert list(old.repo_tags) == [] and len(old.repo_digests) == 1
    assert not status(client, first.config_digest[7:11]).HasField("image"), (
        "four hex digits are a name, not an id prefix"
    )
    assert status(client, first.config_digest[7:19]).image.id == first.config_digest


def test_concurrent_pulls_of_images_sharing_a_layer(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    shared = [file_entry("shared.bin", os.urandom(24 * 1024 * 1024))]
    names, ids = [], []
    for i in range(2):
        info = build_image(
            tmp_path / f"s{i}", [shared, [file_entry("own", f"{i}\n".encode())]], ref_name="t"
        )
        push_layout(tmp_path / f"s{i}", registry.url, f"sharing{i}", "1", source="t")
        names.append(f"{registry.host}/sharing{i}:1")
        ids.append(info.config_digest)
    results: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = pull(client, names[i])
        except grpc.RpcError as exc:
            results[i] = f"{exc.code().name}: {exc.details()}"

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {0: ids[0], 1: ids[1]}


def test_orphans_of_failed_pulls_are_collected_at_start(tmp_path: Path) -> None:
    manager = ImageManager(tmp_path / "images")
    orphan = manager.content.put(b"a blob no image names")
    (manager.snapshots.layers / ("ab" * 32)).mkdir()
    assert manager.content.has(orphan)
    again = ImageManager(tmp_path / "images")
    assert not again.content.has(orphan)
    assert not (again.snapshots.layers / ("ab" * 32)).exists()


def test_a_caller_giving_up_does_not_cancel_the_pull_for_others(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    info = build_image(
        tmp_path / "g", [[file_entry("big", os.urandom(64 * 1024 * 1024))]], ref_name="t"
    )
    push_layout(tmp_path / "g", registry.url, "giveup", "1", source="t")
    name = f"{registry.host}/giveup:1"
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
    # A quiet machine fetches and unpacks 48 MB from loopback in under 0.3 s:
    # the deadline must fall well inside the pull (64 MB take about 0.6 s).
    impatient = client.image.PullImage.future(request, timeout=0.15)
    time.sleep(0.05)
    patient = client.image.PullImage.future(request, timeout=120)
    with pytest.raises(grpc.RpcError) as err:
        impatient.result()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert patient.result().image_ref == info.config_digest


def test_one_image_through_two_manifests_keeps_one_record_and_no_orphans(
    tmp_path: Path,
) -> None:
    """The same config (same layers, uncompressed) reached through a manifest with gzip
    layers and another with plain ones: one image, both names, and the blobs only the
    first manifest named are deleted once no record names them."""
    entries = [file_entry("v", b"same\n")]
    gz = build_image(tmp_path / "gz", [LayerSpec(entries, "gzip")], ref_name="t")
    plain = build_image(tmp_path / "plain", [LayerSpec(entries, "none")], ref_name="t")
    assert gz.config_digest == plain.config_digest and gz.manifest_digest != plain.manifest_digest
    manager = ImageManager(tmp_path / "images")
    first = asyncio.run(manager.import_layout(tmp_path / "gz", parse_reference("a.test/gz:1")))
    second = asyncio.run(
        manager.import_layout(tmp_path / "plain", parse_reference("b.test/plain:1"))
    )
    assert first.id == second.id == gz.config_digest
    [record] = manager.images.list()
    assert record.repo_tags == ["a.test/gz:1", "b.test/plain:1"]
    assert record.manifest_digest == plain.manifest_digest
    stored = set(manager.content.digests())
    assert gz.layers[0].digest not in stored, "the gzip layer only the old manifest named"
    assert plain.layers[0].digest in stored and gz.manifest_digest in stored, (
        "a.test/gz@<manifest> still names the first manifest"
    )
    manager.remove(record)
    assert list(manager.content.digests()) == []
    assert manager.resolve("a.test/gz:1") is None and manager.resolve("b.test/plain:1") is None
