"""The OCI runtime spec generated from a CRI container config, checked field by
field, and, as root, run by Debian's runc from a real image snapshot."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.errors import InvalidArgument
from teaching_cri.image.hostimages import BusyboxUnavailable, build_busybox_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.runtime import seccomp
from teaching_cri.runtime.spec import (
    DEFAULT_CAPABILITIES,
    ImageRunConfig,
    SandboxContext,
    capabilities,
    generate_spec,
    namespaces,
    process_args,
    process_env,
    recursive_read_only_supported,
    resolve_user,
)

from conftest import IS_ROOT

IMAGE = ImageRunConfig(
    entrypoint=("/entry",),
    cmd=("default", "cmd"),
    env=("PATH=/bin", "A=image"),
    working_dir="/work",
    user="",
)


def cfg(**kw: object) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ([], [], ["/entry", "default", "cmd"]),  # the image's ENTRYPOINT + CMD
        ([], ["x"], ["/entry", "x"]),  # args replace CMD only
        (["/bin/sh"], [], ["/bin/sh"]),  # command replaces ENTRYPOINT, CMD dropped
        (["/bin/sh"], ["-c", "true"], ["/bin/sh", "-c", "true"]),
    ],
)
def test_command_and_args_follow_cri(
    command: list[str], args: list[str], expected: list[str]
) -> None:
    assert process_args(cfg(command=command, args=args), IMAGE) == expected


def test_no_command_anywhere_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        process_args(cfg(), ImageRunConfig())


def test_env_image_first_then_config() -> None:
    env = process_env(
        cfg(envs=[api_pb2.KeyValue(key="A", value="config"), api_pb2.KeyValue(key="B", value="2")]),
        IMAGE,
    )
    assert env == ["PATH=/bin", "A=config", "B=2"]


def test_users_resolve_in_the_images_passwd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:100::/:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")

    def user(**sc: object) -> dict[str, object]:
        config = cfg(
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(**sc)
            )
        )  # type: ignore[arg-type]
        return resolve_user(config, IMAGE, tmp_path)

    assert user() == {"uid": 0, "gid": 0}
    assert user(run_as_username="app") == {"uid": 1000, "gid": 100}
    assert user(run_as_user=api_pb2.Int64Value(value=1000)) == {"uid": 1000, "gid": 100}
    assert user(run_as_user=api_pb2.Int64Value(value=4242)) == {"uid": 4242, "gid": 0}
    assert user(
        run_as_username="app",
        run_as_group=api_pb2.Int64Value(value=7),
        supplemental_groups=[7, 8, 9],
    ) == {"uid": 1000, "gid": 7, "additionalGids": [8, 9]}
    with pytest.raises(InvalidArgument, match="'ghost' is not in the image"):
        user(run_as_username="ghost")
    image_user = ImageRunConfig(cmd=("x",), user="app:staff")
    assert resolve_user(cfg(), image_user, tmp_path) == {"uid": 1000, "gid": 50}


def test_capabilities_add_drop_and_all() -> None:
    def caps(add: list[str], drop: list[str], privileged: bool = False) -> list[str]:
        sc = api_pb2.LinuxContainerSecurityContext(
            capabilities=api_pb2.Capability(add_capabilities=add, drop_capabilities=drop),
            privileged=privileged,
        )
        return capabilities(cfg(linux=api_pb2.LinuxContainerConfig(security_context=sc)))

    assert caps([], []) == sorted(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" in caps(["SYS_ADMIN"], ["NET_RAW"])
    assert "CAP_NET_RAW" not in caps(["SYS_ADMIN"], ["NET_RAW"])
    assert caps(["NET_BIND_SERVICE"], ["ALL"]) == ["CAP_NET_BIND_SERVICE"]
    assert "CAP_SYS_ADMIN" in caps([], [], privileged=True)


def test_resources_and_mounts_in_spec_form(tmp_path: Path) -> None:
    config = cfg(
        command=["/bin/true"],
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(
                cpu_period=100000,
                cpu_quota=50000,
                cpu_shares=512,
                memory_limit_in_bytes=64 << 20,
                cpuset_cpus="0",
                unified={"memory.high": "60M"},
                hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0)],
            )
        ),
        mounts=[
            api_pb2.Mount(
                container_path="/data",
                host_path="/srv/data",
                readonly=True,
                propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER,
            )
        ],
        annotations={"a": "b"},
    )
    spec, _ = generate_spec(config, IMAGE, tmp_path, hostname="pod")
    res = spec["linux"]["resources"]
    assert res["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}
    assert res["memory"] == {"limit": 64 << 20}
    assert res["unified"] == {"memory.high": "60M"}
    assert {
        "destination": "/data",
        "type": "bind",
        "source": "/srv/data",
        "options": ["rbind", "rslave", "rro" if recursive_read_only_supported() else "ro"],
    } in spec["mounts"], "read-only all the way down where the kernel can"
    assert spec["annotations"] == {"a": "b"} and spec["hostname"] == "pod"
    assert spec["process"]["cwd"] == "/work"
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    with pytest.raises(InvalidArgument, match="must be absolute"):
        generate_spec(
            cfg(command=["x"], mounts=[api_pb2.Mount(container_path="rel", host_path="/x")]),
            IMAGE,
            tmp_path,
        )


@pytest.mark.skipif(not IS_ROOT, reason="runc needs root")
def test_runc_runs_a_container_from_our_spec_and_snapshot(tmp_path: Path) -> None:
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    layout = tmp_path / "layout"
    try:
        build_busybox_image(layout, ref_name=None)
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))
    manager = ImageManager(tmp_path / "images", snapshot_mode="copy")
    record = asyncio.run(manager.import_layout(layout, None))
    rootfs = manager.snapshots.mount_view([x.chain_id for x in record.layers], "ctr")
    config = cfg(
        command=[
            "sh",
            "-c",
            "echo hello from $(hostname); id -u; grep CapEff /proc/self/status; exit 7",
        ],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(run_as_username="nobody")
        ),
    )
    spec, _ = generate_spec(
        config, ImageRunConfig.from_config(record.config), rootfs, hostname="teaching"
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp_path / "runc-state"
    name = f"tcri-spec-{os.getpid()}"
    try:
        out = subprocess.run(
            [runc, "--root", str(state), "run", "--bundle", str(bundle), name],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run([runc, "--root", str(state), "delete", "--force", name], capture_output=True)
        manager.snapshots.remove_view("ctr")
    assert out.returncode == 7, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "hello from teaching"
    assert lines[1] == "65534", "run_as_username=nobody resolved in the image's passwd"
    assert lines[2].split()[1] != "0000003fffffffff", "not every capability"


def test_namespace_modes_join_the_pods_create_new_or_use_the_hosts() -> None:
    join = {"network": "/proc/9/ns/net", "ipc": "/proc/9/ns/ipc", "uts": "/proc/9/ns/uts"}
    join["pid"] = "/proc/9/ns/pid"
    options = api_pb2.NamespaceOption(network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)
    config = cfg(
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(namespace_options=options)
        )
    )
    got = {n["type"]: n.get("path", "new") for n in namespaces(config, join)}
    assert got == {
        "pid": "new",  # CONTAINER: its own
        "ipc": "/proc/9/ns/ipc",  # POD: the sandbox's
        "uts": "/proc/9/ns/uts",
        "mount": "new",  # never shared
    }, "network NODE: no entry, the host's"
    shared = cfg()  # CRI's zero value is POD
    assert {n["type"]: n.get("path") for n in namespaces(shared, join)}["pid"] == join["pid"]
    target = cfg(
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.TARGET)
            )
        )
    )
    with pytest.raises(InvalidArgument, match="target_id"):
        namespaces(target, join)


def test_devices_become_nodes_and_cgroup_rules(tmp_path: Path) -> None:
    null = api_pb2.Device(host_path="/dev/null", container_path="/dev/xnull", permissions="rw")
    config = cfg(devices=[null])
    spec, _ = generate_spec(config, IMAGE, tmp_path)
    st = os.stat("/dev/null")
    node = spec["linux"]["devices"][0]
    assert (node["path"], node["type"]) == ("/dev/xnull", "c")
    assert (node["major"], node["minor"]) == (os.major(st.st_rdev), os.minor(st.st_rdev))
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": node["major"],
        "minor": node["minor"],
        "access": "rw",
    }
    (tmp_path / "plain").write_text("")
    for bad, message in (
        (api_pb2.Device(host_path=str(tmp_path / "plain"), container_path="/dev/x"), "not a"),
        (api_pb2.Device(host_path="/no/such", container_path="/dev/x"), "No such file"),
        (api_pb2.Device(host_path="/dev/null", container_path="/dev/x", permissions="rwx"), "rwm"),
        (api_pb2.Device(host_path="/dev/null"), "required"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            generate_spec(cfg(devices=[bad]), IMAGE, tmp_path)


def test_the_sandboxs_hosts_resolv_conf_and_shm_are_bound_in(tmp_path: Path) -> None:
    sandbox = SandboxContext(
        hostname="pod-a", hosts="/pod/hosts", resolv_conf="/pod/resolv.conf", shm="/pod/shm"
    )
    spec, _ = generate_spec(cfg(), IMAGE, tmp_path, sandbox=sandbox)
    assert spec["hostname"] == "pod-a"
    by_destination = {m["destination"]: m for m in spec["mounts"]}
    assert by_destination["/etc/hosts"]["source"] == "/pod/hosts"
    assert by_destination["/etc/resolv.conf"]["source"] == "/pod/resolv.conf"
    assert by_destination["/dev/shm"]["source"] == "/pod/shm", "the pod's shm, not a tmpfs"
    assert [m["destination"] for m in spec["mounts"]].count("/dev/shm") == 1
    alone, _ = generate_spec(cfg(), IMAGE, tmp_path)
    assert {m["destination"]: m["type"] for m in alone["mounts"]}["/dev/shm"] == "tmpfs"


def test_a_privileged_container_gets_the_hosts_devices(tmp_path: Path) -> None:
    privileged = cfg(
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(privileged=True)
        )
    )
    spec, _ = generate_spec(privileged, IMAGE, tmp_path)
    paths = {d["path"] for d in spec["linux"]["devices"]}
    assert "/dev/null" in paths
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    plain, _ = generate_spec(cfg(), IMAGE, tmp_path)
    assert plain["linux"]["devices"] == []
    assert plain["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def sec(**kw: object) -> api_pb2.ContainerConfig:
    """A config whose security context has ``kw``."""
    return cfg(
        command=["/bin/true"],
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(**kw)  # type: ignore[arg-type]
        ),
    )


Profile = api_pb2.SecurityProfile
DOCKER_FORM = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
        {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ],
}


def rule_names(profile: dict[str, object]) -> list[str]:
    return [n for rule in profile["syscalls"] for n in rule["names"]]  # type: ignore[attr-defined]


def test_a_docker_form_profile_resolves_for_the_machine_and_capabilities() -> None:
    """moby's rules: archMap picks this machine's architectures; includes need
    every condition, excludes drop a rule on any; comments are not OCI."""
    amd64 = seccomp.to_oci(DOCKER_FORM, [], arch=("amd64", "SCMP_ARCH_X86_64"), kernel=(6, 1))
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert amd64["defaultErrnoRet"] == 1
    assert rule_names(amd64) == ["read", "write", "arch_prctl", "ptrace", "clone"]
    assert "comment" not in amd64["syscalls"][0] and "includes" not in str(amd64)
    admin = seccomp.to_oci(
        DOCKER_FORM, ["CAP_SYS_ADMIN"], arch=("arm64", "SCMP_ARCH_AARCH64"), kernel=(4, 4)
    )
    assert admin["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert rule_names(admin) == ["read", "write", "mount"]


def test_the_default_profile_follows_the_containers_capabilities() -> None:
    plain = seccomp.to_oci(seccomp.default_profile(), DEFAULT_CAPABILITIES)
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = set(rule_names(plain))
    assert {"read", "execve", "chown", "chroot"} <= allowed  # CAP_SYS_CHROOT is a default
    assert not {"sethostname", "mount", "unshare", "reboot"} & allowed
    clone3 = next(r for r in plain["syscalls"] if r["names"] == ["clone3"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38  # ENOSYS
    admin = seccomp.to_oci(seccomp.default_profile(), [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert {"sethostname", "mount", "unshare", "clone3"} <= set(rule_names(admin))


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ([], "a JSON object"),
        ({"syscalls": []}, "defaultAction None"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}, "names"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "NO"}]},
            "syscalls[0].action 'NO'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["a"], "archMap": [{}]},
            "both",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"op": "?"}]}],
            },
            "args[0].op",
        ),
    ],
)
def test_what_is_not_a_seccomp_profile(document: object, words: str) -> None:
    with pytest.raises(seccomp.ProfileError, match=re.escape(words)):
        seccomp.check(document)


def test_the_seccomp_profile_in_the_spec(tmp_path: Path) -> None:
    root = tmp_path / "profiles"
    (root / "team").mkdir(parents=True)
    (root / "team" / "p.json").write_text(json.dumps(DOCKER_FORM))
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"defaultAction": "SCMP_ACT_LOG"}')

    def filter_of(config: api_pb2.ContainerConfig) -> object:
        spec, _ = generate_spec(config, IMAGE, tmp_path, seccomp_profile_root=root)
        return spec["linux"].get("seccomp")

    default = filter_of(sec(seccomp=Profile()))
    assert isinstance(default, dict) and default["defaultAction"] == "SCMP_ACT_ERRNO"
    assert filter_of(sec(seccomp_profile_path="docker/default")) == default
    assert filter_of(sec(seccomp_profile_path="runtime/default")) == default
    assert filter_of(sec()) is None  # no profile: unconfined, as containerd
    assert filter_of(sec(seccomp_profile_path="unconfined")) is None
    assert filter_of(sec(seccomp=Profile(profile_type=Profile.Unconfined))) is None
    assert filter_of(sec(privileged=True, seccomp=Profile())) is None
    local = Profile(profile_type=Profile.Localhost, localhost_ref="team/p.json")
    assert rule_names(filter_of(sec(seccomp=local)))[:2] == ["read", "write"]  # type: ignore[arg-type]
    assert filter_of(sec(seccomp_profile_path="localhost/team/p.json")) == filter_of(
        sec(seccomp=local)
    )
    absolute = Profile(profile_type=Profile.Localhost, localhost_ref=str(elsewhere))
    assert filter_of(sec(seccomp=absolute)) == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}
    for escape in ("../elsewhere.json", "team/../../elsewhere.json"):
        ref = Profile(profile_type=Profile.Localhost, localhost_ref=escape)
        with pytest.raises(InvalidArgument, match="outside the seccomp profile root"):
            filter_of(sec(seccomp=ref))


def test_the_processes_tier_says_seccomp_was_not_applied(tmp_path: Path) -> None:
    spec, notes = generate_spec(sec(seccomp=Profile()), IMAGE, tmp_path, seccomp_enforced=False)
    assert "seccomp" not in spec["linux"]
    assert (
        "RuntimeDefault" in notes.clamped["seccomp"] and "not applied" in notes.clamped["seccomp"]
    )
    _, unconfined = generate_spec(sec(), IMAGE, tmp_path, seccomp_enforced=False)
    assert "seccomp" not in unconfined.clamped


def test_masked_and_readonly_paths_come_from_the_request(tmp_path: Path) -> None:
    custom, _ = generate_spec(
        sec(masked_paths=["/secret"], readonly_paths=["/tmp"]), IMAGE, tmp_path
    )
    assert custom["linux"]["maskedPaths"] == ["/secret"]
    assert custom["linux"]["readonlyPaths"] == ["/tmp"]
    default, _ = generate_spec(sec(), IMAGE, tmp_path)
    assert "/proc/kcore" in default["linux"]["maskedPaths"]
    assert "/proc/sys" in default["linux"]["readonlyPaths"]
    privileged, _ = generate_spec(sec(privileged=True, masked_paths=["/x"]), IMAGE, tmp_path)
    assert privileged["linux"]["maskedPaths"] == privileged["linux"]["readonlyPaths"] == []
    with pytest.raises(InvalidArgument, match="masked_paths 'rel'"):
        generate_spec(sec(masked_paths=["rel"]), IMAGE, tmp_path)


@pytest.mark.parametrize("no_new_privs", [True, False])
def test_no_new_privs_reaches_the_spec(tmp_path: Path, no_new_privs: bool) -> None:
    spec, _ = generate_spec(sec(no_new_privs=no_new_privs), IMAGE, tmp_path)
    assert spec["process"]["noNewPrivileges"] is no_new_privs


def test_recursive_read_only_is_known_from_the_kernel_release() -> None:
    """mount_setattr(2) with AT_RECURSIVE, which runc's rro uses, came in 5.12."""
    assert recursive_read_only_supported("5.12.0")
    assert recursive_read_only_supported("6.18.44-fc-v1272")
    assert not recursive_read_only_supported("5.10.0-28-amd64")
    assert not recursive_read_only_supported("4.19.0")
