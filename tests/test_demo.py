"""The main job: ``teaching-cri demo`` walks the live server and draws each call."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from teaching_cri.config import default_socket

from conftest import Server


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teaching_cri", "demo", "--no-color", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_against_a_running_server_draws_every_call(server: Server, tmp_path: Path) -> None:
    proc = run_demo("--socket", str(server.socket), "--svg-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'runtime_name: "teaching-cri"' in out
    paths = [line for line in out.splitlines() if line.startswith("path: ")]
    assert paths[0] == (
        "path: Version → m_cb->container.version → VersionResponseToGRPC → VersionResponse"
    )
    assert any(p.startswith("path: Status → new RuntimeStatus") for p in paths)
    assert any("validate pod CIDR ✗ error" in p for p in paths), "the bad CIDR call fails"
    assert "INVALID_ARGUMENT" in out
    if os.geteuid() == 0:  # a pod's life, drawn (runc needs root; unprivileged tiers differ)
        assert any(p.startswith("path: RunPodSandbox → PrepareSandboxData") for p in paths)
        assert any(p.startswith("path: RemovePodSandbox") for p in paths)
    drawn = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert drawn[:5] == [
        "01-Version.svg",
        "02-Status.svg",
        "03-RuntimeConfig.svg",
        "04-UpdateRuntimeConfig.svg",
        "05-UpdateRuntimeConfig.svg",
    ]
    if Path("/bin/busybox").exists():  # the offline image, then the image RPCs on it
        assert drawn[5:9] == [
            "06-BuildLocalImage.svg",
            "07-ImageStatus.svg",
            "08-ListImages.svg",
            "09-ImageFsInfo.svg",
        ]
        pod_charts = [name.split("-", 1)[1] for name in drawn[9:]]
        pod_walk = ["RunPodSandbox", "PodSandboxStatus", "ListPodSandbox", "PodSandboxStats"]
        container_walk = [
            "CreateContainer",
            "StartContainer",
            "ExecSync",
            "Exec",
            "Attach",
            "ContainerStatus",
            "RemoveContainer",
        ]
        if os.geteuid() == 0:  # create → start → exec → attach, over the websocket
            assert pod_charts == [
                f"{c}.svg"
                for c in [*pod_walk, *container_walk, "StopPodSandbox", "RemovePodSandbox"]
            ]
            assert "you said: hello" in out and "stdin closed, bye" in out
        assert "2/2 [##############################]" in out, "a finished progress bar"
    for name in drawn:
        assert ET.parse(tmp_path / name).getroot().tag.endswith("svg")


def test_demo_starts_its_own_server_unless_given_a_socket() -> None:
    # No --socket: a private server, never one found on the default socket.
    proc = run_demo()
    assert proc.returncode == 0, proc.stderr
    assert "starting a server for the demo" in proc.stdout
    assert "path: Version →" in proc.stdout
    ending = last_section(proc.stdout)
    socket = default_socket()
    assert ending.startswith("=== What you can do next")
    assert "teaching-cri serve" in ending, "the demo's own server is gone: start one"
    assert f"crictl --runtime-endpoint unix://{socket} version" in ending


def last_section(out: str) -> str:
    return out[out.rindex("\n=== ") + 1 :]


# Sentences that were true once: what they announce has happened (or is only planned).
STALE = (
    "join this walk",
    "come next",
    "comes next",
    "not built yet",
    "notebook",
    "the book",
    "UNIMPLEMENTED",
)


def test_the_walk_ends_with_what_a_learner_can_do_now(server: Server) -> None:
    """The last section names commands that work today, with the exact socket,
    and nothing the walk already showed or the project has not built."""
    proc = run_demo("--socket", str(server.socket))
    assert proc.returncode == 0, proc.stderr
    ending = last_section(proc.stdout)
    assert ending.startswith("=== What you can do next")
    endpoint = f"unix://{server.socket}"
    for command in (
        f"crictl --runtime-endpoint {endpoint} version",
        f"teaching-cri trace follow --socket {server.socket}",
        f"teaching-cri trace show Version --socket {server.socket}",
        "teaching-cri charts",
    ):
        assert command in ending, command
    stale = [s for s in STALE if s.lower() in proc.stdout.lower()]
    assert not stale, f"stale sentences in the demo: {stale}"
