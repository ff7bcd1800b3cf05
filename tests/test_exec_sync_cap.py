"""ExecSync's reply is one gRPC message, at most 16 MiB (the kubelet's client
limit, ``MAX_MESSAGE_BYTES``): whatever a command prints, the answer is its
exit code with as much output as fits, and a note at the end of stderr saying
what was cut, never RESOURCE_EXHAUSTED with nothing (issue 17, item 2).

On the runc tier as root (a CNI pod), and on the unprivileged tier
(``--runtime unprivileged``: rootless runc, no CNI) as whichever user runs
the tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.config import MAX_MESSAGE_BYTES
from teaching_cri.manager.cni import default_conflist
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS
from teaching_cri.runtime.backends import user_namespaces_allowed

from conftest import IS_ROOT, start_server

IMAGE = "teaching-cri.local/busybox:latest"
MIB = 1 << 20
NOTE = re.compile(
    rb"\n\[teaching-cri: ExecSync output cut to fit one 16 MiB reply: "
    rb"stdout (\d+) of (\d+) bytes, stderr (\d+) of (\d+)\]\n$"
)


def _unavailable(tier: str) -> str:
    if tier == "runc" and not IS_ROOT:
        return "the runc tier with a CNI pod needs root"
    if shutil.which("runc") is None or not Path("/bin/busybox").exists():
        return "runc and busybox-static are needed"
    if tier == "runc" and not any((d / "bridge").is_file() for d in DEFAULT_CNI_BIN_DIRS):
        return "CNI plugins missing (apt-get install containernetworking-plugins)"
    if tier == "unprivileged" and not user_namespaces_allowed():
        return "rootless runc needs unprivileged user namespaces"
    return ""


@pytest.fixture(params=["runc", "unprivileged"])
def running(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[tuple[Client, str]]:
    """A busybox container sleeping in a pod, on the tier asked for."""
    tier = str(request.param)
    if _unavailable(tier):
        pytest.skip(_unavailable(tier))
    bridge = f"tcri-x{os.getpid() % 10000}"
    if tier == "runc":
        conf = short_tmp / "net.d"
        conf.mkdir()
        doc = default_conflist(f"10.237.{os.getpid() % 200}.0/24", bridge, str(short_tmp / "ipam"))
        (conf / "10-test.conflist").write_text(json.dumps(doc))
        srv = start_server(short_tmp / "srv", "--cni-conf-dir", str(conf))
    else:
        srv = start_server(short_tmp / "srv", "--runtime", "unprivileged")
    client = srv.client()
    pod_id = ""
    try:
        client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
        pod = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="cap", namespace="default", uid="uid-cap")
        )
        pod_id = client.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod)
        ).pod_sandbox_id
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="talker"),
            image=api_pb2.ImageSpec(image=IMAGE),
            command=["sleep", "3600"],
        )
        cid = client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
        ).container_id
        client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        yield client, cid
    finally:
        if pod_id:
            client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        srv.stop()
        if tier == "runc":
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def exec_sync(client: Client, cid: str, script: str) -> api_pb2.ExecSyncResponse:
    return client.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=120)
    )


def test_20_mib_of_stdout_and_of_stderr_answer_the_exit_code_and_cut_output(
    running: tuple[Client, str],
) -> None:
    client, cid = running
    reply = exec_sync(
        client,
        cid,
        "head -c 20971520 /dev/zero | tr '\\0' o; head -c 20971520 /dev/zero | tr '\\0' e >&2;"
        " exit 7",
    )
    assert reply.exit_code == 7
    assert reply.ByteSize() <= MAX_MESSAGE_BYTES
    note = NOTE.search(reply.stderr)
    assert note is not None, reply.stderr[-300:]
    out_kept, out_written, err_kept, err_written = (int(g) for g in note.groups())
    assert (out_written, err_written) >= (16 * MIB, 16 * MIB), "at least what was read is told"
    assert out_kept == len(reply.stdout) and reply.stdout == b"o" * out_kept
    assert reply.stderr[:err_kept] == b"e" * err_kept
    assert len(reply.stderr) == err_kept + len(note.group(0))
    assert out_kept == err_kept, "both streams ran over: each keeps half the room"
    assert out_kept + err_kept > 15 * MIB, "cut to fit, not to nothing"


def test_16_mib_less_4_bytes_of_stdout_alone_is_cut_to_fit_with_the_note(
    running: tuple[Client, str],
) -> None:
    client, cid = running
    reply = exec_sync(client, cid, "head -c 16777212 /dev/zero | tr '\\0' o; echo oops >&2")
    assert reply.exit_code == 0
    assert reply.ByteSize() <= MAX_MESSAGE_BYTES
    note = NOTE.search(reply.stderr)
    assert note is not None, reply.stderr[-300:]
    out_kept, out_written, err_kept, err_written = (int(g) for g in note.groups())
    assert (out_written, err_kept, err_written) == (16 * MIB - 4, 5, 5)
    assert reply.stderr.startswith(b"oops\n"), "the short stream is kept whole"
    assert reply.stdout == b"o" * out_kept and 16 * MIB - 4096 - 5 <= out_kept < 16 * MIB - 4


def test_output_that_fits_has_no_note(running: tuple[Client, str]) -> None:
    client, cid = running
    reply = exec_sync(client, cid, "head -c 1048576 /dev/zero | tr '\\0' o; echo done >&2")
    assert (reply.exit_code, len(reply.stdout), reply.stderr) == (0, MIB, b"done\n")
