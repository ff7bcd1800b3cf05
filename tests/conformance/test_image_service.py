"""ImageService as critest and containerd see it (conformance items 3 and 11).

Item 3: a layer whose tar ends right after its last entry's data (no padding to
the 512-byte block, no end-of-archive blocks), as some image builders write
it. Go's archive/tar, and with it containerd, CRI-O and docker, reads it; so
must we, over the real path: a registry, PullImage, a container.

Item 11: one image (one config digest) known by several names, from several
repositories and registries, as critest pulls its pause image. It is ONE image:
PullImage answers the same ``image_ref`` for every name; ImageStatus by any
name, ListImages, ContainerStatus and ListContainers give that same id; its
``repo_tags`` hold every name and its ``repo_digests`` one digested name per
repository. RemoveImage by one name removes the image with all its names:
containerd's RemoveImage (internal/cri/server/image_remove.go) deletes "all
image references" of the image it resolves, and critest's
``listImage should get exactly 2 repoTags in the result image`` pulls two tags
of one image, then removes the image by the id ImageStatus gave for the first
and expects ImageStatus of the second to find nothing afterwards.

The file is not called test_images.py: tests/test_images.py has that module
name already, and pytest's default import mode needs unique basenames.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import Client
from teaching_cri.image.hostimages import BusyboxUnavailable, busybox_layers
from teaching_cri.image.layer import (
    BuiltLayer,
    Entry,
    LayerInfo,
    build_layer,
    compress,
    file_entry,
    make_tar,
)
from teaching_cri.image.layout import ImageInfo, build_image, build_index
from teaching_cri.image.oci import OCI_LAYER_MEDIA_TYPE, Compression, sha256_digest
from teaching_cri.image.push import push_layout

from conftest import Server
from cri_node import (
    Node,
    create_container,
    exec_sync,
    needs_root_node,
    pod_config,
    run_pod,
    start,
)
from registry import Registry, RegistryUnavailable, run_registry

GZIP_NOTE = b"written by a builder that pads nothing\n"
TAR_NOTE = b"odd-sized, unpadded, no end blocks\n"


# --- images --------------------------------------------------------------------------------


def unpadded_layer(entries: list[Entry], compression: Compression) -> BuiltLayer:
    """A layer whose tar stops right after the last entry's data: no padding of that data
    to the block, no end-of-archive blocks. Its diff id is the digest of exactly that tar."""
    tar = make_tar(entries)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        last = archive.getmembers()[-1]
    end = last.offset_data + last.size
    assert end % tarfile.BLOCKSIZE, "the last entry's data must need padding"
    tar = tar[:end]
    blob = compress(tar, compression)
    info = LayerInfo(
        OCI_LAYER_MEDIA_TYPE[compression], sha256_digest(blob), sha256_digest(tar), len(blob)
    )
    return BuiltLayer(info, blob, "a builder that writes no tar trailer")


def busybox_built() -> list[BuiltLayer]:
    try:
        return [build_layer(spec) for spec in busybox_layers()]
    except BusyboxUnavailable as exc:
        pytest.skip(f"{exc} (apt-get install busybox-static)")


def unpadded_image(layout: Path) -> ImageInfo:
    """busybox, then a gzip layer and a plain tar layer, both unpadded."""
    return build_image(
        layout,
        [
            *busybox_built(),
            unpadded_layer([file_entry("etc/unpadded-gzip", GZIP_NOTE)], "gzip"),
            unpadded_layer([file_entry("srv/unpadded-tar", TAR_NOTE)], "none"),
        ],
        config={"Cmd": ["/bin/sh"]},
        ref_name="unpadded",
    )


def push(layout: Path, registry: Registry, repository: str, tag: str, source: str) -> str:
    return push_layout(layout, registry.url, repository, tag, source=source)


@pytest.fixture
def registries(short_tmp: Path) -> Iterator[tuple[Registry, Registry]]:
    try:
        with (
            run_registry(short_tmp / "reg1") as one,
            run_registry(short_tmp / "reg2") as two,
        ):
            yield one, two
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def one_image_many_names(
    registries: tuple[Registry, Registry], tmp_path: Path
) -> tuple[ImageInfo, list[str]]:
    """busybox under four names: two tags of one repository and another repository, all
    three through a multi-platform index, and a repository of another registry that serves
    the platform's manifest itself (critest's ``testSameImageDifferentRegistries``; the
    kubelet's pause image comes from registry.k8s.io or a mirror)."""
    one, two = registries
    layout = tmp_path / "layout"
    info = build_image(layout, busybox_built(), config={"Cmd": ["/bin/sh"]}, ref_name="bb")
    build_index(layout, [info], ref_name="idx")
    push(layout, one, "library/busybox", "1", "idx")
    push(layout, one, "library/busybox", "1-uclibc", "idx")
    push(layout, one, "pause", "3.10", "idx")
    push(layout, two, "mirror/busybox", "1", "bb")
    names = [
        f"{one.host}/library/busybox:1",
        f"{one.host}/library/busybox:1-uclibc",
        f"{one.host}/pause:3.10",
        f"{two.host}/mirror/busybox:1",
    ]
    return info, names


def stored(server: Server) -> tuple[list[str], list[str]]:
    """The blobs and layer snapshots the server keeps."""
    images = server.root / "images"
    blobs = sorted(p.name for p in (images / "content" / "blobs" / "sha256").iterdir())
    layers = sorted(
        p.name
        for mode in ("overlay", "copy")
        if (images / "snapshots" / mode).is_dir()
        for p in (images / "snapshots" / mode).iterdir()
    )
    return blobs, [name for name in layers if not name.startswith(".")]


# --- requests, as critest's framework makes them --------------------------------------------


def pull(client: Client, name: str) -> str:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
    return str(client.image.PullImage(request, timeout=120).image_ref)


def image_status(client: Client, name: str) -> api_pb2.ImageStatusResponse:
    return client.image.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)))


def list_images(client: Client, name: str = "") -> list[api_pb2.Image]:
    request = api_pb2.ListImagesRequest()
    if name:
        request.filter.image.image = name
    return list(client.image.ListImages(request).images)


def remove_image(client: Client, name: str) -> None:
    client.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)))


# --- item 3: layers that end without padding ------------------------------------------------


def test_an_image_with_unpadded_layers_is_pulled_and_known(
    client: Client, registries: tuple[Registry, Registry], tmp_path: Path
) -> None:
    registry = registries[0]
    info = unpadded_image(tmp_path / "layout")
    push(tmp_path / "layout", registry, "unpadded", "1", "unpadded")
    name = f"{registry.host}/unpadded:1"
    assert pull(client, name) == info.config_digest
    image = image_status(client, name).image
    assert image.id == info.config_digest and list(image.repo_tags) == [name]
    assert [i.id for i in list_images(client)] == [info.config_digest]


@needs_root_node
def test_a_container_runs_from_an_image_with_unpadded_layers(
    node: Node, registries: tuple[Registry, Registry], tmp_path: Path
) -> None:
    registry = registries[0]
    info = unpadded_image(tmp_path / "layout")
    push(tmp_path / "layout", registry, "unpadded", "1", "unpadded")
    name = f"{registry.host}/unpadded:1"
    assert pull(node.client, name) == info.config_digest
    pod = pod_config("unpadded-layers")
    pod_id = run_pod(node.client, pod)
    cid = create_container(node.client, pod_id, pod, "reader", "sleep", "60", image=name)
    start(node.client, cid)
    out = exec_sync(node.client, cid, "cat", "/etc/unpadded-gzip", "/srv/unpadded-tar")
    assert out.exit_code == 0, out.stderr
    assert out.stdout == GZIP_NOTE + TAR_NOTE


# --- item 11: one image, many names ---------------------------------------------------------


def test_one_image_pulled_under_many_names_has_one_id(
    client: Client, one_image_many_names: tuple[ImageInfo, list[str]]
) -> None:
    info, names = one_image_many_names
    assert {pull(client, n) for n in names} == {info.config_digest}

    for name in [*names, info.config_digest]:
        image = image_status(client, name).image
        assert image.id == info.config_digest, name
        assert sorted(image.repo_tags) == sorted(names)
        repositories = sorted(d.split("@", 1)[0] for d in image.repo_digests)
        assert repositories == sorted({n.rsplit(":", 1)[0] for n in names}), (
            "one digested name per repository"
        )
        digests = {d.split("@", 1)[1] for d in image.repo_digests}
        assert len(digests) == 2 and info.manifest_digest in digests, (
            "the index's digest for the first registry, the manifest's for the second"
        )
        for digested in image.repo_digests:  # critest: "all kinds of references"
            assert image_status(client, digested).image == image

    listed = list_images(client)
    assert [i.id for i in listed] == [info.config_digest], "one image, not one per name"
    assert sorted(listed[0].repo_tags) == sorted(names)
    for name in names:
        assert [i.id for i in list_images(client, name)] == [info.config_digest]


def test_two_tags_then_removal_by_id_as_critest_does_it(
    client: Client, one_image_many_names: tuple[ImageInfo, list[str]]
) -> None:
    """critest: ``listImage should get exactly 2 repoTags in the result image``."""
    _info, names = one_image_many_names
    tags = names[:2]
    for name in tags:
        pull(client, name)
    [image] = list_images(client)
    assert sorted(image.repo_tags) == sorted(tags)
    for name in tags:  # critest's removeImageList: ImageStatus, then RemoveImage by its id
        found = image_status(client, name)
        if found.HasField("image"):
            remove_image(client, found.image.id)
    assert list_images(client) == []
    assert all(not image_status(client, n).HasField("image") for n in tags)


def test_removing_one_name_removes_the_image_and_all_its_names(
    server: Server, client: Client, one_image_many_names: tuple[ImageInfo, list[str]]
) -> None:
    """critest: ``removing image from one registry should remove all tags from other
    registries``; containerd deletes every reference of the image, then its content."""
    info, names = one_image_many_names
    for name in names:
        pull(client, name)
    remove_image(client, names[2])  # the pause repository's name
    for name in [*names, info.config_digest]:
        assert not image_status(client, name).HasField("image"), name
    assert list_images(client) == []
    assert stored(server) == ([], []), "no blob (index, manifest, config, layer) left behind"
    remove_image(client, names[0])  # idempotent: gone already is removed
    assert pull(client, names[3]) == info.config_digest, "pulled again from scratch"
    assert [list(i.repo_tags) for i in list_images(client)] == [[names[3]]]


def test_a_tag_moved_to_another_image_leaves_the_others_names(
    client: Client, one_image_many_names: tuple[ImageInfo, list[str]], tmp_path: Path
) -> None:
    """A name is the image's only while the registry says so: pulling it again when it
    names another image moves that one name, and the first image keeps the rest."""
    info, names = one_image_many_names
    for name in names:
        pull(client, name)
    registry_host, _, _repository_tag = names[2].partition("/")
    layout = tmp_path / "other"
    other = build_image(layout, [[file_entry("other", b"other\n")]], ref_name="o")
    push_layout(layout, f"http://{registry_host}", "pause", "3.10", source="o")
    assert pull(client, names[2]) == other.config_digest
    first = image_status(client, names[0]).image
    assert first.id == info.config_digest
    assert sorted(first.repo_tags) == sorted(n for n in names if n != names[2])
    assert list(image_status(client, names[2]).image.repo_tags) == [names[2]]
    assert len(list_images(client)) == 2


@needs_root_node
def test_containers_of_either_name_report_the_one_image_id(
    node: Node, one_image_many_names: tuple[ImageInfo, list[str]]
) -> None:
    info, names = one_image_many_names
    client = node.client
    for name in names:
        assert pull(client, name) == info.config_digest
    pod = pod_config("one-image-two-names")
    pod_id = run_pod(client, pod)
    ids = [
        create_container(client, pod_id, pod, f"c{i}", "sleep", "60", image=name)
        for i, name in enumerate((names[0], names[3]))
    ]
    for cid in ids:
        status = client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid)
        ).status
        assert status.image.image == status.image_ref == status.image_id == info.config_digest
    listed = client.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    by_id = {c.id: c for c in listed}
    for cid in ids:
        c = by_id[cid]
        assert c.image.image == c.image_ref == c.image_id == info.config_digest
    with pytest.raises(grpc.RpcError) as err:
        remove_image(client, names[3])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.config_digest in (err.value.details() or "")
    assert image_status(client, names[0]).image.id == info.config_digest, "nothing removed"


def test_names_of_one_image_pulled_at_once_make_one_image(
    client: Client, one_image_many_names: tuple[ImageInfo, list[str]]
) -> None:
    """The kubelet pulls in parallel (serializeImagePulls: false): two names of one image
    at the same moment still make one image with both names."""
    info, names = one_image_many_names
    with ThreadPoolExecutor(len(names)) as pool:
        refs = list(pool.map(lambda n: pull(client, n), names))
    assert refs == [info.config_digest] * len(names)
    [image] = list_images(client)
    assert sorted(image.repo_tags) == sorted(names)
