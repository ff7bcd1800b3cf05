"""The Python side of the notebook widgets, and the server a notebook starts.

Everything runs against a real server started by ``teaching_cri.notebook.start``
(runc as root, the unprivileged tier otherwise): the widgets follow its real
TraceService.Follow, the terminal dials its real streaming server. No front
end runs here; what a page would receive is the widget's synced state, which
the tests read, and what a page without widgets shows is ``_repr_mimebundle_``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("anywidget", reason="the notebooks extra is not installed")

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.image.hostimages import BusyboxUnavailable
from teaching_cri.notebook import (
    ChartView,
    Lab,
    PullProgress,
    ServerGone,
    Terminal,
    Timeline,
    start,
)
from teaching_cri.notebook import (
    lab as lab_module,
)
from teaching_cri.notebook.chart import chart_set
from teaching_cri.notebook.terminal import plain
from teaching_cri.trace.events import EventKind, TraceEvent

from registry import RegistryUnavailable, push_busybox, run_registry

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = start(quiet=True)
    yield lab
    lab.stop()


def bundle(widget: object) -> dict[str, str]:
    data, _meta = widget._repr_mimebundle_()  # type: ignore[attr-defined]
    return data  # type: ignore[no-any-return]


# -- ChartView --------------------------------------------------------------------


def test_a_call_lights_its_chart_and_falls_back_to_svg_and_text(lab: Lab) -> None:
    view = ChartView(lab.client, charts=["Version"], since_unix_nano=time.time_ns())
    lab.runtime.Version(api_pb2.VersionRequest())
    deadline = time.monotonic() + 10
    while not view.state.get("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    view.stop()
    chart = chart_set()["Version"]
    assert view.chart == "Version"
    assert view.state["done"]
    assert chart.start in view.state["nodes"]
    assert view.state["nodes"][chart.start]["steps"] == ["#1"]
    assert view.state["edges"], "the edges taken are lit too"
    assert 'class="node"' in view.svg  # the page colours graphviz's own node groups
    data = bundle(view)
    assert WIDGET_MIME in data
    assert data["image/svg+xml"].lstrip().startswith(("<?xml", "<svg"))
    assert "path: Version" in data["text/plain"]


def test_the_error_node_is_red(lab: Lab) -> None:
    bad = api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(
            network_config=api_pb2.NetworkConfig(pod_cidr="10.88.0.0/99")
        )
    )
    before = time.time_ns()
    assert lab.call(lab.runtime.UpdateRuntimeConfig, bad, check=False, show=False) is None
    # Subscribed after the call: the server replays what it still holds since then.
    view = ChartView(lab.client, charts=["UpdateRuntimeConfig"], since_unix_nano=before)
    deadline = time.monotonic() + 10
    while not view.state.get("done") and time.monotonic() < deadline:
        time.sleep(0.05)
    view.stop()
    failed = [n for n, v in view.state["nodes"].items() if v["error"]]
    assert len(failed) == 1, view.state
    assert "99" in view.state["nodes"][failed[0]]["error"]
    assert "#f8b4b4" in bundle(view)["image/svg+xml"]  # the renderer's error fill


def test_a_burst_of_events_is_sent_as_at_most_ten_updates_a_second() -> None:
    """20,000 events in about a second: the page gets a handful of updates,
    each the whole current state, and the last one has every event in it."""
    chart = chart_set()["Version"]
    sent: list[dict[str, object]] = []
    view = ChartView()
    view.observe(lambda change: sent.append(change["new"]), names="state")
    started = time.monotonic()
    for batch in range(100):
        span = f"s{batch:04d}"
        events = [
            TraceEvent("t" * 32, span, "", i, time.time_ns(), "Version", chart.start, kind)
            for i, kind in enumerate([EventKind.BEGIN] + [EventKind.STEP] * 199)
        ]
        view.feed(events)
        time.sleep(0.01)
    view.stop()
    elapsed = time.monotonic() - started
    assert view._coalescer.received == 20_000
    assert len(sent) == view.updates
    assert 1 <= view.updates <= 10 * elapsed + 2, (view.updates, elapsed)
    assert view.state["spans"] == 100
    assert view.state["nodes"][chart.start]["steps"][-1] == "#200"


def test_a_running_filter_counts_every_call(lab: Lab) -> None:
    view = lab.watch("Version")
    for _ in range(30):
        lab.runtime.Version(api_pb2.VersionRequest())
    deadline = time.monotonic() + 10
    while view.state.get("spans", 0) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert view.state["spans"] == 30
    assert view.state["hits"][chart_set()["Version"].start] == 30


# -- Timeline and PullProgress ---------------------------------------------------------


def test_timeline_draws_a_bar_per_span(lab: Lab) -> None:
    timeline = Timeline(lab.client, charts=["Version", "Status"], since_unix_nano=time.time_ns())
    for _ in range(3):
        lab.runtime.Version(api_pb2.VersionRequest())
        lab.runtime.Status(api_pb2.StatusRequest())
    deadline = time.monotonic() + 10
    while sum(s.done for s in timeline.spans.values()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    timeline.stop()
    data = bundle(timeline)
    assert data["image/svg+xml"].count('class="span"') == 6
    assert "Version: 3" in data["text/plain"] and "Status: 3" in data["text/plain"]
    assert timeline.svg == data["image/svg+xml"]  # the page draws what the fallback shows


def test_progress_has_a_bar_per_layer_of_a_local_build(lab: Lab) -> None:
    progress = PullProgress(lab.client, since_unix_nano=time.time_ns())
    lab.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name="teaching-cri.local/p:1"))
    deadline = time.monotonic() + 10
    while progress.outcome != "done" and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.stop()
    assert progress.outcome == "done"
    assert progress.layers and all(layer["bytes"] == layer["size"] for layer in progress.layers)
    assert bundle(progress)["text/plain"].count("layer ") == len(progress.layers)


def test_progress_follows_a_real_pull_from_a_registry(lab: Lab, short_tmp: Path) -> None:
    """Notebook 01's bars against what a learner pulls: docker-registry serves
    busybox, PullImage fetches its layers; each bar is one layer of the
    manifest, each full at the end (a layer the server had already, from a
    local build of the same busybox, is full and marked cached), the pull done."""
    try:
        with run_registry(short_tmp / "registry") as registry:
            info = push_busybox(registry, "library/busybox", "1.0")
            progress = PullProgress(lab.client, since_unix_nano=time.time_ns())
            lab.client.image.PullImage(
                api_pb2.PullImageRequest(
                    image=api_pb2.ImageSpec(image=f"{registry.host}/library/busybox:1.0")
                ),
                timeout=120,
            )
            deadline = time.monotonic() + 10
            while progress.outcome != "done" and time.monotonic() < deadline:
                time.sleep(0.05)
            progress.stop()
    except (RegistryUnavailable, BusyboxUnavailable) as exc:
        pytest.skip(str(exc))
    assert progress.outcome == "done"
    by_digest = {layer["digest"]: layer for layer in progress.layers}
    assert sorted(by_digest) == sorted(info.layer_digests)
    for layer in info.layers:
        bar = by_digest[layer.digest]
        assert bar["size"] == layer.size and bar["bytes"] == layer.size


# -- Terminal ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def container(lab: Lab) -> str:
    config = lab.pod_config("widgets")
    sandbox = lab.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    cid: str = lab.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox.pod_sandbox_id,
            sandbox_config=config,
            config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="c"),
                image=api_pb2.ImageSpec(image=lab.local_image()),
                command=["sleep", "3600"],
            ),
        )
    ).container_id
    lab.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return cid


def test_terminal_relays_keystrokes_output_colours_and_size(lab: Lab, container: str) -> None:
    got: list[bytes] = []
    term = lab.terminal(container, ["sh"], show_chart=False)
    # What the page would receive: custom messages with the raw bytes as buffers.
    term.send = lambda content, buffers=None: got.extend(buffers or [])  # type: ignore[method-assign]
    term.send_input("echo $((2 + 3))x\n")
    assert term.wait_for("5x"), term.text()
    term.send_input("printf '\\033[31m%sred\\033[0m\\n' $((6 * 7))\n")
    assert term.wait_for("42red"), term.text()
    assert b"\x1b[31m42red\x1b[0m" in b"".join(got)  # the page gets the escapes to draw
    assert "\x1b" not in term.text()  # the fallback has them out
    term._from_page(term, {"type": "resize", "cols": 50, "rows": 20}, [])
    term.send_input("busybox stty size\n")
    assert term.wait_for("20 50"), term.text()
    term._from_page(term, {"type": "in", "data": "exit 7\r"}, [])
    assert term.wait_closed(10)
    assert term.status == "closed: exited 7"
    assert "exited 7" in bundle(term)["text/plain"]


def test_closing_a_terminal_mid_session_kills_its_process(lab: Lab, container: str) -> None:
    term = lab.terminal(container, ["sh", "-c", "echo ready; exec sleep 4321"], show_chart=False)
    assert term.wait_for("ready")

    def sleeping() -> bool:
        ps = lab.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=container, cmd=["ps"], timeout=10)
        )
        return b"sleep 4321" in ps.stdout

    assert sleeping()
    term.disconnect()
    assert term.status.startswith("closed")
    deadline = time.monotonic() + 15
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sleeping(), "the exec's process outlived its terminal"
    with pytest.raises(ConnectionError, match="closed"):
        term.send_input("echo too late\n")


def test_a_used_token_is_a_clear_error(lab: Lab, container: str) -> None:
    url = lab.runtime.Exec(
        api_pb2.ExecRequest(container_id=container, cmd=["true"], tty=True, stdin=True, stdout=True)
    ).url
    Terminal(url).wait_closed(10)
    with pytest.raises(ConnectionError, match="HTTP 404"):
        Terminal(url)


def test_plain_strips_escapes_and_carriage_returns() -> None:
    assert plain("\x1b[1;32mok\x1b[0m\r\nab\rcd\x1b]0;title\x07") == "ok\ncd"


# -- the server a notebook starts ----------------------------------------------------------


def test_a_second_start_returns_the_running_server(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert start() is lab
    assert "already has a server" in capsys.readouterr().out


def test_a_server_that_dies_is_a_clear_message_and_start_replaces_it(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # A server of its own to kill, so the module's shared one lives on.
    lab_module._running = None
    try:
        doomed = start(quiet=True)
        assert doomed.base is not None
        second_base = doomed.base
        os.kill(doomed.server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not (second_base / "server.exit").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ServerGone, match="has exited"):
            doomed.call(doomed.runtime.Version, api_pb2.VersionRequest(), show=False)
        fresh = start(quiet=True)
        assert "the previous server is gone" in capsys.readouterr().out
        assert fresh is not doomed and fresh.runtime.Version(api_pb2.VersionRequest()).version
        fresh.stop()
    finally:
        lab_module._running = lab
    assert not second_base.exists()


KERNEL = textwrap.dedent(
    """
    import os, signal, sys
    from teaching_cri.api import api_pb2
    from teaching_cri.notebook import start
    lab = start(quiet=True)
    config = lab.pod_config("doomed")
    sid = lab.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
    cid = lab.runtime.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=sid, sandbox_config=config,
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            image=api_pb2.ImageSpec(image=lab.local_image()),
            command=["sleep", "3600"],
            envs=[api_pb2.KeyValue(key="MARKER", value=sys.argv[1])],
        ))).container_id
    lab.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    print(lab.base, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # a kernel killed: no atexit, no finally
    """
)


def marked(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"MARKER={marker}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(proc.name)
        except OSError:
            continue
    return found


def test_a_killed_kernel_leaves_nothing_behind(short_tmp: Path) -> None:
    marker = f"killed-kernel-{os.getpid()}-{threading.get_ident()}"
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL, marker], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    base = Path(proc.stdout.strip())
    deadline = time.monotonic() + 60
    while (base.exists() or marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked(marker), "the container outlived the kernel"
    assert not base.exists(), f"{base} is left: {sorted(base.rglob('*'))[:10]}"
    assert str(base) not in Path("/proc/self/mountinfo").read_text()


# -- packaging --------------------------------------------------------------------------


def test_the_wheel_carries_the_widgets_javascript_and_xterm(tmp_path: Path) -> None:
    """Nothing is fetched at run time: every file a page needs is in the wheel."""
    pytest.importorskip("hatchling", reason="hatchling is not installed (it is in the test extra)")
    repo = Path(__file__).resolve().parents[1]
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(repo)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("teaching_cri-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = "teaching_cri/notebook/static/"
    for name in ["chart.js", "chart.css", "timeline.js", "progress.js", "terminal.js"]:
        assert static + name in names
    for name in ["xterm.mjs", "xterm.css", "addon-fit.mjs", "LICENSE-xterm", "LICENSE-addon-fit"]:
        assert static + "xterm/" + name in names
