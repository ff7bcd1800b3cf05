"""Security context, as critest's ``security_context_linux.go`` checks it:
seccomp (RuntimeDefault, Localhost, Unconfined, the deprecated path forms,
privileged), masked and read-only paths from the request, RunAsGroup without
a user, and NoNewPrivs against a setuid-root program."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import grpc
import pytest

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.image.layer import copy_entry
from teaching_cri.image.layout import build_image
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms

from cri_node import (
    Node,
    create_container,
    exec_sync,
    logs_of,
    needs_root_node,
    pod_config,
    run_pod,
    start,
    wait_exit,
)
from cri_node import node as node  # the fixture, for the tests' parameter

pytestmark = needs_root_node

SecurityProfile = api_pb2.SecurityProfile
Security = api_pb2.LinuxContainerSecurityContext
BLOCK_HOSTNAME = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
}
BLOCK_CHMOD = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}],
}


def privileged_pod(name: str) -> api_pb2.PodSandboxConfig:
    return pod_config(
        name,
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(privileged=True)
        ),
    )


def running(
    client: Client, pod_id: str, pod: api_pb2.PodSandboxConfig, name: str, sc: Security
) -> str:
    container = create_container(client, pod_id, pod, name, "sleep", "60", security=sc)
    start(client, container)
    return container


def seccomp_mode(client: Client, container: str) -> str:
    """critest's check: the Seccomp line of /proc/self/status (0 none, 2 filter)."""
    out = exec_sync(client, container, "busybox", "grep", "Seccomp:", "/proc/self/status")
    assert out.exit_code == 0, out.stderr
    return out.stdout.decode().split()[1]


def profile_file(directory: Path, name: str, document: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_runtime_default_filters_unconfined_and_none_do_not(node: Node) -> None:
    c = node.client
    pod = pod_config("seccomp-modes")
    pod_id = run_pod(c, pod)
    cases = {
        "default": (Security(seccomp=SecurityProfile()), "2"),  # critest: SecurityProfile{}
        "unconfined": (
            Security(seccomp=SecurityProfile(profile_type=SecurityProfile.Unconfined)),
            "0",
        ),
        "none": (Security(), "0"),  # critest: "nil profile, which is unconfined"
    }
    for name, (sc, expected) in cases.items():
        assert seccomp_mode(c, running(c, pod_id, pod, name, sc)) == expected, name


def test_a_privileged_container_is_never_filtered(node: Node, tmp_path: Path) -> None:
    c = node.client
    pod = privileged_pod("seccomp-privileged")
    pod_id = run_pod(c, pod)
    blocked = profile_file(tmp_path / "profiles", "block-hostname.json", BLOCK_HOSTNAME)
    default = running(
        c, pod_id, pod, "default", Security(privileged=True, seccomp=SecurityProfile())
    )
    assert seccomp_mode(c, default) == "0"
    local = running(
        c,
        pod_id,
        pod,
        "local",
        Security(
            privileged=True,
            seccomp=SecurityProfile(
                profile_type=SecurityProfile.Localhost, localhost_ref=str(blocked)
            ),
        ),
    )
    assert exec_sync(c, local, "hostname", "ANewHostName").exit_code == 0


def test_a_localhost_profile_blocks_sethostname_even_with_sys_admin(
    node: Node, tmp_path: Path, charts: ChartSet
) -> None:
    """critest: with CAP_SYS_ADMIN, sethostname works unconfined and fails under
    a profile that blocks it (the profile lies in a temporary directory, as
    critest's does: an absolute path is taken as given)."""
    c = node.client
    pod = pod_config("seccomp-localhost")
    pod_id = run_pod(c, pod)
    blocked = profile_file(tmp_path / "profiles", "block-hostname.json", BLOCK_HOSTNAME)
    sys_admin = api_pb2.Capability(add_capabilities=["SYS_ADMIN"])
    free = running(
        c,
        pod_id,
        pod,
        "free",
        Security(
            capabilities=sys_admin,
            seccomp=SecurityProfile(profile_type=SecurityProfile.Unconfined),
        ),
    )
    assert exec_sync(c, free, "hostname", "ANewHostName").exit_code == 0
    since = time.time_ns()
    local = running(
        c,
        pod_id,
        pod,
        "blocked",
        Security(
            capabilities=sys_admin,
            seccomp=SecurityProfile(
                profile_type=SecurityProfile.Localhost, localhost_ref=str(blocked)
            ),
        ),
    )
    out = exec_sync(c, local, "hostname", "ANewHostName")
    assert out.exit_code != 0 and b"not permitted" in out.stderr, out
    assert seccomp_mode(c, local) == "2"
    events = c.recent(charts=["CreateContainer"], since_unix_nano=since)
    assert_conforms(events, charts)
    assert [(e.node, e.label) for e in events if e.node == "seccomp_profile"] == [
        ("seccomp_profile", "Localhost")
    ]


@pytest.mark.parametrize("flag", [False, True], ids=["default-root", "seccomp-profile-root"])
def test_a_relative_localhost_profile_is_under_the_profile_root(node: Node, flag: bool) -> None:
    profiles = node.server.root / "seccomp"
    if flag:
        profiles = node.base / "profiles"
        node.restart("--seccomp-profile-root", str(profiles))
    c = node.client
    pod = pod_config("seccomp-root")
    pod_id = run_pod(c, pod)
    profile_file(profiles / "team", "block-chmod.json", BLOCK_CHMOD)
    sc = Security(
        seccomp=SecurityProfile(
            profile_type=SecurityProfile.Localhost, localhost_ref="team/block-chmod.json"
        )
    )
    container = running(c, pod_id, pod, "chmod", sc)
    out = exec_sync(c, container, "busybox", "chmod", "400", "/")
    assert out.exit_code != 0 and b"Operation not permitted" in out.stderr, out


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("runtime/default", "2"),
        ("docker/default", "2"),
        ("unconfined", "0"),
        ("", "0"),
        ("localhost/", "block"),  # + the profile's absolute path
    ],
)
def test_the_deprecated_profile_path_forms(
    node: Node, tmp_path: Path, path: str, expected: str
) -> None:
    c = node.client
    pod = pod_config("seccomp-path")
    pod_id = run_pod(c, pod)
    if path == "localhost/":
        path += str(profile_file(tmp_path / "p", "block-chmod.json", BLOCK_CHMOD))
    container = running(c, pod_id, pod, "path", Security(seccomp_profile_path=path))
    if expected == "block":
        out = exec_sync(c, container, "busybox", "chmod", "400", "/")
        assert out.exit_code != 0 and b"Operation not permitted" in out.stderr, out
    else:
        assert seccomp_mode(c, container) == expected


def _snapshot_mounts() -> set[str]:
    return {
        line for line in Path("/proc/self/mounts").read_text().splitlines() if "/active/" in line
    }


def _refused(node: Node, pod_id: str, pod: api_pb2.PodSandboxConfig, sc: Security) -> str:
    """The CreateContainer error's text, after checking nothing was left behind:
    no container listed or recorded, no snapshot mounted."""
    c = node.client
    mounts = _snapshot_mounts()
    with pytest.raises(grpc.RpcError) as info:
        create_container(c, pod_id, pod, "refused", "sleep", "60", security=sc)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    listed = c.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    assert not [x for x in listed if x.pod_sandbox_id == pod_id]
    assert not list((node.server.root / "containers").glob("*.json"))
    assert _snapshot_mounts() == mounts
    return str(info.value.details())


def test_bad_seccomp_requests_are_invalid_and_create_nothing(
    node: Node, tmp_path: Path, charts: ChartSet
) -> None:
    pod = pod_config("seccomp-bad")
    pod_id = run_pod(node.client, pod)
    profiles = tmp_path / "bad"
    not_json = profile_file(profiles, "not-json.json", "{ this is not json")
    bad_action = profile_file(
        profiles, "bad-action.json", {"defaultAction": "SCMP_ACT_MAYBE", "syscalls": []}
    )
    local = SecurityProfile.Localhost
    cases = [
        (
            Security(seccomp=SecurityProfile(profile_type=local, localhost_ref="/no/such.json")),
            ["seccomp.localhost_ref", "/no/such.json"],
        ),
        (
            Security(seccomp=SecurityProfile(profile_type=local, localhost_ref=str(not_json))),
            ["seccomp.localhost_ref", str(not_json), "not a seccomp profile"],
        ),
        (
            Security(seccomp=SecurityProfile(profile_type=local, localhost_ref=str(bad_action))),
            ["SCMP_ACT_MAYBE"],
        ),
        (Security(seccomp=SecurityProfile(profile_type=local)), ["seccomp.localhost_ref", "''"]),
        (
            Security(seccomp=SecurityProfile(profile_type=local, localhost_ref="../../etc/x.json")),
            ["../../etc/x.json", "outside the seccomp profile root"],
        ),
        (Security(seccomp=SecurityProfile(profile_type=7)), ["seccomp.profile_type", "7"]),  # type: ignore[arg-type]
        (
            Security(seccomp=SecurityProfile(localhost_ref="/x.json")),
            ["seccomp.localhost_ref", "/x.json", "not Localhost"],
        ),
        (Security(seccomp_profile_path="bogus/profile"), ["seccomp_profile_path", "bogus/profile"]),
        (
            Security(seccomp_profile_path="localhost//no/such.json"),
            ["seccomp_profile_path", "/no/such.json"],
        ),
    ]
    for sc, words in cases:
        since = time.time_ns()
        message = _refused(node, pod_id, pod, sc)
        for word in words:
            assert word in message, (word, message)
        events = node.client.recent(charts=["CreateContainer"], since_unix_nano=since)
        assert_conforms(events, charts)
        assert ("seccomp_profile", "invalid") in [(e.node, e.label) for e in events]


def infra_seccomp_mode(node: Node, pod_id: str) -> str:
    """The Seccomp line of the pod's infra process, found by runc's own state."""
    out = subprocess.run(
        ["runc", "--root", str(node.server.state / "runc"), "state", pod_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = Path(f"/proc/{json.loads(out)['pid']}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:"))


def test_the_pods_seccomp_profile_filters_its_infra(node: Node, tmp_path: Path) -> None:
    """containerd filters the pause container with the profile the pod's security
    context names: a filter (2) for RuntimeDefault and Localhost, none (0) for
    Unconfined, for no profile at all, and for a privileged pod."""
    local = profile_file(tmp_path / "profiles", "block-hostname.json", BLOCK_HOSTNAME)
    cases = {
        "runtime-default": (
            SecurityProfile(profile_type=SecurityProfile.RuntimeDefault),
            False,
            "2",
        ),
        "localhost": (
            SecurityProfile(profile_type=SecurityProfile.Localhost, localhost_ref=str(local)),
            False,
            "2",
        ),
        "unconfined": (SecurityProfile(profile_type=SecurityProfile.Unconfined), False, "0"),
        "none": (None, False, "0"),
        "privileged": (SecurityProfile(profile_type=SecurityProfile.RuntimeDefault), True, "0"),
    }
    for name, (profile, privileged, expected) in cases.items():
        pod = pod_config(
            f"pod-seccomp-{name}",
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    seccomp=profile, privileged=privileged
                )
            ),
        )
        assert infra_seccomp_mode(node, run_pod(node.client, pod)) == expected, name


def test_a_bad_pod_seccomp_profile_is_invalid_and_makes_nothing(
    node: Node, charts: ChartSet
) -> None:
    since = time.time_ns()
    pod = pod_config(
        "pod-seccomp-bad",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                seccomp=SecurityProfile(
                    profile_type=SecurityProfile.Localhost, localhost_ref="/no/such.json"
                )
            )
        ),
    )
    with pytest.raises(grpc.RpcError) as info:
        run_pod(node.client, pod)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seccomp.localhost_ref" in (info.value.details() or "")
    assert "/no/such.json" in (info.value.details() or "")
    assert not node.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    events = node.client.recent(charts=["RunPodSandbox"], since_unix_nano=since)
    assert_conforms(events, charts)
    errors = [e.node for e in events if e.kind.name == "ERROR" and not e.parent_span_id]
    assert errors == ["prepare_sandbox_data"], errors


def test_masked_and_readonly_paths_from_the_request(node: Node) -> None:
    """critest's checks (a masked file reads empty, a read-only /tmp cannot be
    written); the request's lists replace the defaults, which apply when it
    sends none. (critest masks /bin/ls; here ls is a symlink to busybox, and
    masking it would mask the shell too.)"""
    c = node.client
    pod = pod_config("paths")
    pod_id = run_pod(c, pod)
    sc = Security(masked_paths=["/etc/passwd", "/etc/secret"], readonly_paths=["/tmp"])
    custom = running(c, pod_id, pod, "custom", sc)
    assert exec_sync(c, custom, "cat", "/etc/passwd").stdout == b""  # /dev/null over it
    out = exec_sync(c, custom, "busybox", "touch", "/tmp/test")
    assert out.exit_code != 0 and out.stderr == b"touch: /tmp/test: Read-only file system\n"
    assert exec_sync(c, custom, "cat", "/proc/timer_list").stdout != b""  # not a default now

    default = running(c, pod_id, pod, "default", Security())
    assert exec_sync(c, default, "busybox", "touch", "/tmp/test").exit_code == 0
    assert exec_sync(c, default, "cat", "/proc/timer_list").stdout == b""  # masked by default
    out = exec_sync(c, default, "/bin/sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid")
    assert out.exit_code != 0 and b"Read-only file system" in out.stderr, out


def test_run_as_group_without_a_user_is_invalid(node: Node) -> None:
    pod = pod_config("run-as-group")
    pod_id = run_pod(node.client, pod)
    sc = Security(run_as_group=api_pb2.Int64Value(value=1002))
    message = _refused(node, pod_id, pod, sc)
    assert "run_as_group 1002" in message and "run_as_user" in message, message


SETUID_PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
"""


def nonewprivs_image(node: Node, tmp_path: Path) -> str:
    """critest's nonewprivs image, made here: a static setuid-root program that
    prints its effective uid."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the setuid program")
    source = tmp_path / "euid.c"
    source.write_text(SETUID_PROGRAM)
    binary = tmp_path / "euid"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
    layout = tmp_path / "layout"
    build_image(
        layout,
        [[copy_entry("/usr/local/bin/euid", binary, mode=0o4755, uid=0, gid=0)]],
        config={"Cmd": ["/usr/local/bin/euid"]},
        ref_name="v1",
    )
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    name = "teaching-cri.local/nonewprivs:test"
    node.client.admin.ImportImage(admin_pb2.ImportImageRequest(path=str(archive), name=name))
    return name


@pytest.mark.parametrize(("no_new_privs", "expected"), [(True, 1000), (False, 0)])
def test_no_new_privs_stops_a_setuid_program(
    node: Node, tmp_path: Path, no_new_privs: bool, expected: int
) -> None:
    c = node.client
    image = nonewprivs_image(node, tmp_path)
    logs = node.base / "logs" / f"nnp-{no_new_privs}"
    pod = pod_config(f"nnp-{str(no_new_privs).lower()}", log_directory=str(logs))
    pod_id = run_pod(c, pod)
    sc = Security(no_new_privs=no_new_privs, run_as_user=api_pb2.Int64Value(value=1000))
    container = create_container(
        c, pod_id, pod, "nnp", image=image, security=sc, log_path="nnp.log"
    )
    start(c, container)
    status = wait_exit(c, container)
    assert status.state == api_pb2.CONTAINER_EXITED and status.exit_code == 0, status
    assert logs_of(logs / "nnp.log") == f"Effective uid: {expected}\n"
