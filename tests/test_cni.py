"""CNI driven directly: configs, the chain, results and errors; as root, real
plugins (Debian's containernetworking-plugins) on real network namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from teaching_cri.errors import FailedPrecondition
from teaching_cri.manager import netns
from teaching_cri.manager.cni import (
    CNI,
    LOOPBACK,
    Attachment,
    CNIError,
    NetworkConfig,
    default_conflist,
    ips_of,
    plugin_failure,
)
from teaching_cri.manager.network import DEFAULT_CNI_BIN_DIRS

from conftest import IS_ROOT


def test_a_single_conf_becomes_a_list_of_one() -> None:
    net = NetworkConfig.from_document(
        {"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "b0"}
    )
    assert net.plugins == ({"type": "bridge", "bridge": "b0"},)
    with pytest.raises(FailedPrecondition, match="name and a cniVersion"):
        NetworkConfig.from_document({"type": "bridge"})
    with pytest.raises(FailedPrecondition, match="type"):
        NetworkConfig.from_document({"cniVersion": "1.0.0", "name": "n", "plugins": [{}]})


def test_each_plugin_gets_the_name_version_prev_result_and_its_capabilities() -> None:
    net = NetworkConfig.from_document(
        {
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [
                {"type": "bridge"},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
    )
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    first = net.plugin_config(net.plugins[0], None, runtime)
    assert first == {"type": "bridge", "name": "pods", "cniVersion": "1.0.0"}
    prev = {"ips": [{"address": "10.0.0.2/24"}]}
    second = net.plugin_config(net.plugins[1], prev, runtime)
    assert second["prevResult"] == prev
    assert second["runtimeConfig"] == runtime, "only to plugins that declare the capability"


def test_the_default_network_publishes_host_ports_through_portmap() -> None:
    """containerd's conflist shape: the bridge, then portmap asking for the mappings;
    only portmap is told them (the bridge declares no capability)."""
    net = NetworkConfig.from_document(default_conflist("10.9.0.0/24", "b0"))
    assert [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    runtime = {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}]}
    assert "runtimeConfig" not in net.plugin_config(net.plugins[0], None, runtime)
    portmap = net.plugin_config(net.plugins[1], {"ips": []}, runtime)
    assert portmap["runtimeConfig"] == runtime and portmap["snat"] is True
    assert "runtimeConfig" not in net.plugin_config(net.plugins[1], {"ips": []}, {}), "no ports"
    unasked = net.plugin_config(net.plugins[1], None, {"bandwidth": {"ingressRate": 1}})
    assert "runtimeConfig" not in unasked, "a capability the plugin does not declare"
    for declared in ({"portMappings": False}, ["portMappings"], "portMappings"):
        odd = {"type": "portmap", "capabilities": declared}
        assert "runtimeConfig" not in net.plugin_config(odd, None, runtime), declared


async def test_every_verb_hands_the_mappings_on_del_too(tmp_path: Path) -> None:
    """portmap's DEL finds the rules to remove from the mappings it is given again
    (and does nothing without them), so DEL must carry the same runtimeConfig."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("first", "second"):
        plugin = bin_dir / name
        plugin.write_text(
            "#!/bin/sh\n"
            f'cat > "{tmp_path}/$CNI_COMMAND-{name}.json"\n'
            'echo \'{"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24"}]}\'\n'
        )
        plugin.chmod(0o755)
    net = NetworkConfig.from_document(
        {
            "cniVersion": "1.0.0",
            "name": "n",
            "plugins": [
                {"type": "first"},
                {"type": "second", "capabilities": {"portMappings": True}},
            ],
        }
    )
    mappings = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    cni = CNI(tmp_path / "net.d", (bin_dir,))
    attachment = Attachment("pod", "/proc/self/ns/net", runtime_config=mappings)
    result = await cni.add(net, attachment)
    await cni.delete(net, attachment, result)

    def seen(verb: str, name: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads((tmp_path / f"{verb}-{name}.json").read_text())
        return doc

    assert "runtimeConfig" not in seen("ADD", "first") and "prevResult" not in seen("ADD", "first")
    assert seen("ADD", "second")["runtimeConfig"] == mappings
    assert seen("ADD", "second")["prevResult"] == result
    assert seen("DEL", "second")["runtimeConfig"] == mappings
    assert seen("DEL", "second")["prevResult"] == result


def test_results_and_errors_are_read_as_the_spec_writes_them() -> None:
    result = {
        "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1"}, {"address": "fd00::5/64"}]
    }
    assert ips_of(result) == ["10.88.0.5", "fd00::5"]
    error = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "x"})
    message = plugin_failure("bridge", "ADD", error.encode(), b"", 1)
    assert message == "CNI plugin bridge ADD failed: bad config: x (code 7)"
    assert "exit 2" in plugin_failure("bridge", "DEL", b"", b"boom\n", 2)


def _plugins_present() -> str:
    if not IS_ROOT:
        return "network namespaces and bridges need root"
    missing = [
        t
        for t in ("bridge", "host-local", "loopback")
        if not any((d / t).is_file() for d in DEFAULT_CNI_BIN_DIRS)
    ]
    if missing:
        needed = "apt-get install containernetworking-plugins"
        return f"CNI plugins missing: {', '.join(missing)} ({needed})"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare and nsenter (util-linux) are needed"
    return ""


needs_plugins = pytest.mark.skipif(bool(_plugins_present()), reason=_plugins_present())


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[tuple[CNI, NetworkConfig, Path, str]]:
    bridge = f"tcri-t{os.getpid() % 10000}"
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    doc = default_conflist("10.231.7.0/24", bridge, str(tmp_path / "ipam"))
    (conf_dir / "10-test.conflist").write_text(json.dumps(doc))
    cni = CNI(conf_dir)
    try:
        yield cni, cni.network(), tmp_path, bridge
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def _in(ns: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={ns}", *argv], capture_output=True, text=True, timeout=30
    )


def _veths(bridge: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


@needs_plugins
async def test_two_namespaces_on_one_bridge_reach_each_other(
    lab: tuple[CNI, NetworkConfig, Path, str],
) -> None:
    cni, network, tmp, bridge = lab
    loopback = NetworkConfig.from_document(LOOPBACK)
    spaces = [tmp / "ns-a", tmp / "ns-b"]
    try:
        ips = []
        for i, ns in enumerate(spaces):
            await netns.create(ns)
            assert netns.is_pinned(ns)
            await cni.add(loopback, Attachment(f"pod{i}", str(ns), "lo"))
            result = await cni.add(network, Attachment(f"pod{i}", str(ns)))
            ips.append(ips_of(result)[0])
            await cni.check(network, Attachment(f"pod{i}", str(ns)), result)
        assert len(set(ips)) == 2 and all(ip.startswith("10.231.7.") for ip in ips)
        assert len(_veths(bridge)) == 2
        busybox = shutil.which("busybox")
        if busybox:
            ping = _in(spaces[0], busybox, "ping", "-c", "1", "-W", "2", ips[1])
            assert ping.returncode == 0, ping.stdout + ping.stderr
        lo = _in(spaces[1], "ip", "-o", "addr", "show", "lo")
        assert "127.0.0.1" in lo.stdout, "the loopback plugin brought lo up"
        for i, ns in enumerate(spaces):
            await cni.delete(network, Attachment(f"pod{i}", str(ns)), None)
            await cni.delete(network, Attachment(f"pod{i}", str(ns)), None)  # again: no error
        assert _veths(bridge) == []
    finally:
        for ns in spaces:
            await netns.remove(ns)
            await netns.remove(ns)  # idempotent
            assert not ns.exists()


@needs_plugins
async def test_a_plugins_own_error_reaches_the_caller(
    lab: tuple[CNI, NetworkConfig, Path, str],
) -> None:
    cni, _network, tmp, _bridge = lab
    broken = NetworkConfig.from_document(
        {
            "cniVersion": "1.0.0",
            "name": "broken",
            "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "ranges": "nope"}}],
        }
    )
    ns = await netns.create(tmp / "ns-c")
    try:
        with pytest.raises(CNIError, match="CNI plugin bridge ADD failed"):
            await cni.add(broken, Attachment("podc", str(ns)))
        with pytest.raises(CNIError, match="not found"):
            await cni.add(
                NetworkConfig.from_document({"cniVersion": "1.0.0", "name": "x", "type": "nope"}),
                Attachment("podc", str(ns)),
            )
    finally:
        await netns.remove(ns)


def test_no_usable_config_is_a_clear_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="network not ready"):
        CNI(tmp_path / "missing").network()


def test_cni_install_writes_a_usable_default_and_keeps_what_is_there(tmp_path: Path) -> None:
    import sys

    from teaching_cri.manager.network import cni_status

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "teaching_cri",
                "cni",
                "install",
                "--conf-dir",
                str(tmp_path),
                *args,
            ],
            capture_output=True,
            text=True,
        )

    done = install("--subnet", "10.77.0.0/16")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "10-teaching-cri.conflist").read_text())
    assert [p["type"] for p in doc["plugins"]] == ["bridge", "portmap"]
    assert doc["plugins"][1]["capabilities"] == {"portMappings": True}
    assert doc["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.77.0.0/16"}]]
    present = all(
        any((d / t).is_file() for d in DEFAULT_CNI_BIN_DIRS)
        for t in ("bridge", "host-local", "portmap")
    )
    assert cni_status(tmp_path).ready == present, "usable exactly when the plugins are here"
    again = install()
    assert again.returncode == 1 and "--force" in again.stderr
    assert install("--force").returncode == 0
    bad = install("--force", "--subnet", "10.1.1.1/8")
    assert bad.returncode == 2 and "host bits" in bad.stderr
