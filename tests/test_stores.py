"""The stores on their own (``store/``): no server, no root.

The index and its prefix lookup, the name reservation, persistence written
whole, and the load policy: a record that cannot be read is moved aside and
stands as a placeholder, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.errors import AlreadyExists, InvalidArgument
from teaching_cri.store.container import (
    RECORD_UNREADABLE,
    UNKNOWN,
    Container,
    ContainerStore,
    unreadable,
)
from teaching_cri.store.sandbox import NOTREADY, READY, Sandbox, SandboxStore
from teaching_cri.store.sandbox import unreadable as unreadable_pod


def container(cid: str, name: str = "") -> Container:
    return Container(cid, name or f"k8s_c_{cid}", "pod", "", "busybox", "sha256:x", 1, "")


def test_a_saved_container_is_found_by_id_and_unique_prefix(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.save(container("abc123"))
    store.save(container("abd456"))
    assert store.resolve("abc123") == "abc123"
    assert store.resolve("abc") == "abc123"
    assert store.resolve("zz") is None
    with pytest.raises(InvalidArgument, match="ambiguous: 2 match"):
        store.resolve("ab")
    assert [c.id for c in store.list()] == ["abc123", "abd456"]
    assert json.loads((tmp_path / "abc123.json").read_text())["name"] == "k8s_c_abc123"


def test_a_name_is_held_from_reservation_to_deletion(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.reserve("k8s_web", "a1")
    with pytest.raises(AlreadyExists, match="in use by a1"):
        store.reserve("k8s_web", "b2")
    store.release("k8s_web", "b2")  # not its holder: changes nothing
    assert store.holder("k8s_web") == "a1"
    store.release("k8s_web", "a1")
    store.reserve("k8s_web", "b2")
    record = container("b2", "k8s_web")
    store.save(record)
    store.delete(record)
    assert store.holder("k8s_web") is None
    assert "b2" not in store and not (tmp_path / "b2.json").exists()


def test_a_persisted_intent_is_on_disk_but_not_listed(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.persist(container("c3"))
    assert (tmp_path / "c3.json").exists() and store.list() == []
    reloaded = ContainerStore(tmp_path)
    assert [c.id for c in reloaded.load(lambda cid, why: unreadable(cid, "", why))] == ["c3"]


def test_an_unreadable_container_record_is_moved_aside_and_stands_unknown(
    tmp_path: Path,
) -> None:
    ContainerStore(tmp_path).save(container("d4", "k8s_db"))
    (tmp_path / "d4.json").write_text('{"id": "d4", "na')
    (tmp_path / "e5.json").write_text('{"id": "e5", "unexpected": 1}')
    store = ContainerStore(tmp_path)
    loaded = {c.id: c for c in store.load(lambda cid, why: unreadable(cid, "pod", why))}
    assert set(loaded) == {"d4", "e5"}
    for cid in ("d4", "e5"):
        c = loaded[cid]
        assert (c.state, c.reason, c.sandbox_id) == (UNKNOWN, RECORD_UNREADABLE, "pod")
        assert str(tmp_path / f"{cid}.json") in c.message
        assert len(list(tmp_path.glob(f"{cid}.json.unreadable-*"))) == 1
    assert ContainerStore(tmp_path).load(lambda cid, why: unreadable(cid, "", why))[0].state == (
        UNKNOWN
    ), "the placeholder is saved: a second start finds the same"


def test_an_unreadable_pod_record_stands_notready_and_delete_removes_its_dir(
    tmp_path: Path,
) -> None:
    SandboxStore(tmp_path).save(Sandbox("p1", "k8s_POD_a", "", 1))
    (tmp_path / "p1" / "sandbox.json").write_text("[]")
    store = SandboxStore(tmp_path)
    (pod,) = store.load(lambda sid, why: unreadable_pod(sid, "", why))
    assert pod.state == NOTREADY and "not a JSON object" in pod.unreadable
    store.delete(pod)
    assert not (tmp_path / "p1").exists() and store.resolve("p") is None


def test_a_state_is_the_cri_enum_in_memory_and_its_name_on_disk(tmp_path: Path) -> None:
    """A reader of the record sees CONTAINER_EXITED; a state CRI has no name
    for makes the record unreadable (UNKNOWN, moved aside), never a crash."""
    store = ContainerStore(tmp_path)
    record = container("f6")
    record.state = api_pb2.CONTAINER_EXITED
    store.save(record)
    assert json.loads((tmp_path / "f6.json").read_text())["state"] == "CONTAINER_EXITED"
    (tmp_path / "g7.json").write_text(
        (tmp_path / "f6.json").read_text().replace('"f6"', '"g7"').replace("EXITED", "DANCING")
    )
    loaded = {c.id: c for c in ContainerStore(tmp_path).load(lambda i, w: unreadable(i, "", w))}
    assert loaded["f6"].state == api_pb2.CONTAINER_EXITED
    assert (loaded["g7"].state, loaded["g7"].reason) == (UNKNOWN, RECORD_UNREADABLE)
    SandboxStore(tmp_path / "pods").save(Sandbox("p2", "k8s_POD_b", "", 1, state=READY))
    assert '"state": "SANDBOX_READY"' in (tmp_path / "pods" / "p2" / "sandbox.json").read_text()
    (pod,) = SandboxStore(tmp_path / "pods").load(lambda i, w: unreadable_pod(i, "", w))
    assert pod.state == api_pb2.SANDBOX_READY
