"""The runtime backend with real containers: runc as root, rootless runc otherwise.

As root these run Debian's runc with cgroups; as any other user the same
tests run the unprivileged tier. CI runs as root, so
``test_the_unprivileged_tier_passes_these_tests_too`` runs this very file
again as user nobody: both tiers are exercised on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from teaching_cri.image.hostimages import BusyboxUnavailable, build_busybox_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.image.store import ImageRecord
from teaching_cri.runtime import cgroups
from teaching_cri.runtime.backend import CreateRequest, RecordUnreadable
from teaching_cri.runtime.backends import user_namespaces_allowed
from teaching_cri.runtime.runc import RuncBackend
from teaching_cri.runtime.shim_client import ProcessStream, request
from teaching_cri.runtime.spec import ImageRunConfig, SandboxContext, generate_spec

from conftest import IS_ROOT

RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")
# The tier under test: "" is runc as root and rootless runc otherwise; the last
# test runs this file again as nobody for "rootless-runc" and "processes".
TIER = os.environ.get("TEACHING_CRI_TEST_TIER", "")
PLAIN = TIER == "processes"
isolating = pytest.mark.skipif(PLAIN, reason="plain processes have no namespaces to show")


def _tier_unavailable() -> str:
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    if not IS_ROOT and not user_namespaces_allowed():
        return "rootless runc needs unprivileged user namespaces, disabled here"
    return ""


pytestmark = pytest.mark.skipif(bool(_tier_unavailable()), reason=_tier_unavailable())


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageManager, ImageRecord]:
    base = tmp_path_factory.mktemp("image")
    try:
        build_busybox_image(base / "layout", ref_name=None)
    except BusyboxUnavailable as exc:
        pytest.skip(str(exc))
    manager = ImageManager(base / "images", snapshot_mode="copy")
    record = asyncio.run(manager.import_layout(base / "layout", None))
    return manager, record


@dataclass
class Env:
    """A backend plus the means to make busybox containers for it."""

    backend: RuncBackend
    manager: ImageManager
    image: ImageRecord
    logs: Path
    made: list[str] = field(default_factory=list)

    async def create(
        self,
        name: str,
        *command: str,
        stdin: bool = False,
        tty: bool = False,
        sandbox: SandboxContext | None = None,
        **kw: object,
    ) -> str:
        rootfs = self.manager.snapshots.mount_view([x.chain_id for x in self.image.layers], name)
        config = api_pb2.ContainerConfig(
            command=list(command),
            stdin=stdin,
            tty=tty,
            **kw,  # type: ignore[arg-type]
        )
        image = ImageRunConfig.from_config(self.image.config)
        spec, _notes = generate_spec(config, image, rootfs, sandbox=sandbox)
        self.made.append(name)
        await self.backend.create(
            CreateRequest(
                name,
                spec,
                log_path=str(self.log(name)),
                stdin=stdin,
                stdin_once=bool(kw.get("stdin_once")),
                tty=tty,
                pod_id="pod",
            )
        )
        return name

    async def run(self, name: str, *command: str, **kw: object) -> str:
        await self.create(name, *command, **kw)
        await self.backend.start(name)
        return name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def records(self, name: str) -> list[tuple[str, str, bytes]]:
        out = []
        for line in self.log(name).read_bytes().splitlines():
            m = RECORD.match(line)
            assert m, f"not a CRI log record: {line[:80]!r}"
            out.append((m[2].decode(), m[3].decode(), m[4]))
        return out


@pytest.fixture
async def env(image: tuple[ImageManager, ImageRecord]) -> AsyncIterator[Env]:
    manager, record = image
    with tempfile.TemporaryDirectory(prefix="tcri-rt-") as d:
        base = Path(d)
        e = Env(RuncBackend(base / "state", tier=TIER), manager, record, base / "logs")
        try:
            yield e
        finally:
            for name in e.made:
                if name in e.backend.list_ids():
                    await e.backend.stop(name, 0)
                    await e.backend.delete(name)
                manager.snapshots.remove_view(name)
            await e.backend.close()
            if IS_ROOT:
                cgroups.remove(cgroups.pod_parent("pod"))


async def output_of(stream: ProcessStream) -> bytes:
    return b"".join([data async for _name, data in stream.output()])


# -- logs ------------------------------------------------------------------------


async def test_a_container_logs_in_cri_format_and_long_lines_are_split(env: Env) -> None:
    await env.run(
        "logs",
        "sh",
        "-c",
        "echo hello; echo oops >&2; head -c 40960 /dev/zero | tr '\\0' x; echo; printf tail",
    )
    status = await env.backend.wait("logs")
    assert status.exit_code == 0 and status.reason == "Completed"
    records = env.records("logs")
    assert ("stdout", "F", b"hello") in records
    assert ("stderr", "F", b"oops") in records
    long = [r for r in records if r[2].startswith(b"x")]
    assert [(tag, len(content)) for _s, tag, content in long] == [
        ("P", 16384),
        ("P", 16384),
        ("F", 40960 - 2 * 16384),
    ]
    assert records[-1] == ("stdout", "P", b"tail"), "an unterminated last line is partial"
    stamp = env.log("logs").read_bytes().split(b" ", 1)[0].decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", stamp)


async def test_reopening_the_log_starts_a_fresh_file_and_loses_nothing(env: Env) -> None:
    await env.run(
        "rotate",
        "sh",
        "-c",
        "i=0; while [ $i -lt 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done",
    )
    await asyncio.sleep(0.6)
    rotated = env.log("rotate").with_suffix(".1")
    env.log("rotate").rename(rotated)  # what the kubelet's log rotation does
    await env.backend.reopen_log("rotate")
    await env.backend.wait("rotate")
    before = [c for _s, _t, c in env.records("rotate")]
    env.log("rotate").rename(env.log("rotate").with_suffix(".2"))
    env.log("rotate").symlink_to(rotated)
    after = [c for _s, _t, c in env.records("rotate")]
    assert after and before
    assert after + before == [f"line {i}".encode() for i in range(40)]


# -- exit codes, stop ---------------------------------------------------------------


@isolating
async def test_a_privileged_container_runs_and_sees_host_devices(env: Env) -> None:
    sc = api_pb2.LinuxContainerSecurityContext(privileged=True)
    await env.run(
        "priv", "sh", "-c", "ls /dev", linux=api_pb2.LinuxContainerConfig(security_context=sc)
    )
    status = await env.backend.wait("priv")
    assert status.exit_code == 0
    listed = {c for _s, _t, c in env.records("priv")}
    assert {b"null", b"zero", b"urandom"} <= listed


async def test_what_the_spec_had_to_change_is_kept_in_the_containers_notes(env: Env) -> None:
    rootfs = env.manager.snapshots.mount_view([x.chain_id for x in env.image.layers], "noted")
    env.made.append("noted")
    spec, _ = generate_spec(
        api_pb2.ContainerConfig(command=["true"]),
        ImageRunConfig.from_config(env.image.config),
        rootfs,
    )
    clamp = {"oom_score_adj": "-999 raised to 0, the server's own"}
    await env.backend.create(CreateRequest("noted", spec, notes=clamp))
    assert (await env.backend.state("noted")).notes["oom_score_adj"] == clamp["oom_score_adj"]


async def test_exit_code_and_finish_time_are_recorded(env: Env) -> None:
    started = time.time_ns()
    await env.run("seven", "sh", "-c", "exit 7")
    status = await env.backend.wait("seven")
    assert (status.exit_code, status.reason) == (7, "Error")
    assert started < status.finished_at <= time.time_ns()
    state = await env.backend.state("seven")
    assert state.status == "exited" and state.exit == status


async def test_stop_signal_is_honoured_by_a_process_that_handles_it(env: Env) -> None:
    await env.run("trap", "sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done")
    await asyncio.sleep(0.3)
    t = time.monotonic()
    status = await env.backend.stop("trap", 10)
    assert status.exit_code == 42
    assert time.monotonic() - t < 5


@isolating
async def test_an_init_that_ignores_sigterm_is_killed_after_the_grace_period(env: Env) -> None:
    await env.run("sleeper", "sleep", "1000")  # PID 1 without a handler ignores SIGTERM
    t = time.monotonic()
    status = await env.backend.stop("sleeper", 1)
    elapsed = time.monotonic() - t
    assert (status.exit_code, status.signal) == (128 + signal.SIGKILL, signal.SIGKILL)
    assert 1 <= elapsed < 5


# -- exec, attach ------------------------------------------------------------------


async def test_exec_sync_returns_output_and_exit_code(env: Env) -> None:
    await env.run("ex", "sleep", "1000")
    result = await env.backend.exec_sync("ex", ["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


async def test_a_timed_out_exec_sync_leaves_no_process_behind(env: Env) -> None:
    await env.run("timeout", "sleep", "1000")
    with pytest.raises(DeadlineExceeded, match="timed out"):
        await env.backend.exec_sync("timeout", ["sleep", "777"], 0.5)
    ps = await env.backend.exec_sync("timeout", ["ps", "-o", "args"], 10)
    assert b"sleep 1000" in ps.stdout
    assert b"sleep 777" not in ps.stdout


async def test_exec_sync_keeps_at_most_16_mib_of_output(env: Env) -> None:
    await env.run("big", "sleep", "1000")
    result = await env.backend.exec_sync("big", ["head", "-c", "20000000", "/dev/zero"], 60)
    assert result.exit_code == 0
    assert len(result.stdout) == 16 << 20


async def test_a_dead_shim_is_reported_as_a_lost_container_not_a_running_one(env: Env) -> None:
    await env.run("orphaned", "sleep", "1000")
    shim_pid = int((env.backend.dir("orphaned") / "shim.pid").read_text())
    os.kill(shim_pid, signal.SIGKILL)
    fresh = RuncBackend(env.backend.containers_dir.parent, tier=TIER)  # a restarted server
    try:
        states = {s.id: s for s in await fresh.recover()}
    finally:
        await fresh.close()
    lost = states["orphaned"]
    assert lost.status == "exited"
    assert lost.exit is not None and lost.exit.exit_code == 255
    assert "shim" in lost.exit.message
    pid = json.loads((env.backend.dir("orphaned") / "container.json").read_text())["pid"]
    for _ in range(50):  # the container itself was killed, not left unwatched
        if not Path(f"/proc/{pid}").exists() or b"Z" in _proc_state(pid):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the container of a lost shim is still running")


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


@pytest.mark.skipif(not IS_ROOT or PLAIN, reason="pod cgroups need root and runc")
async def test_the_pods_cgroup_is_ours_to_create_and_remove(env: Env) -> None:
    await env.run("podded", "sleep", "1000")
    pod_dirs = cgroups.directories(cgroups.pod_parent("pod"))
    assert pod_dirs and all(d.is_dir() for d in pod_dirs)
    assert (await env.backend.stats("podded")).pids == 1
    with pytest.raises(FailedPrecondition, match="still has containers"):
        await env.backend.release_pod("pod")
    await env.backend.stop("podded", 0)
    await env.backend.delete("podded")
    await env.backend.release_pod("pod")
    assert not any(d.exists() for d in pod_dirs)


async def test_recovery_deletes_what_only_runc_knows(env: Env) -> None:
    await env.create("known", "sleep", "1000")
    await env.backend.created("known")  # the shim's runc create, done
    shutil.rmtree(env.backend.dir("known"))  # as if the server died mid-create
    env.made.remove("known")
    env.manager.snapshots.remove_view("known")
    assert "known" in await env.backend.runtime_list()
    await env.backend.recover()
    assert "known" not in await env.backend.runtime_list()


async def test_tty_exec_sees_the_new_size_after_a_resize(env: Env) -> None:
    await env.run("tty", "sleep", "1000")
    stream = await env.backend.exec(
        "tty", ["sh", "-c", "stty size; sleep 1; stty size"], tty=True, width=80, height=24
    )
    await asyncio.sleep(0.5)
    await stream.resize(132, 43)
    out = await output_of(stream)
    await stream.close()
    assert stream.exit is not None and stream.exit["exit_code"] == 0
    assert out.split() == [b"24", b"80", b"43", b"132"]


async def test_exec_with_stdin(env: Env) -> None:
    await env.run("cat", "sleep", "1000")
    stream = await env.backend.exec("cat", ["sh", "-c", "tr a-z A-Z"], stdin=True)
    await stream.write_stdin(b"shout\n")
    await stream.close_stdin()
    out = await output_of(stream)
    await stream.close()
    assert out == b"SHOUT\n"
    assert stream.exit is not None and stream.exit["exit_code"] == 0


async def test_attach_reaches_the_init_and_its_output_is_logged_too(env: Env) -> None:
    await env.run("echo", "sh", "-c", "while read l; do echo got $l; done; echo bye", stdin=True)
    stream = await env.backend.attach("echo", stdin=True, stdout=True, stderr=True)
    await stream.write_stdin(b"one\n")
    await stream.close_stdin()
    out = await output_of(stream)
    await stream.close()
    assert out == b"got one\nbye\n"
    assert stream.exit is not None and stream.exit["exit_code"] == 0
    assert [c for _s, _t, c in env.records("echo")] == [b"got one", b"bye"]


async def test_a_megabyte_of_stdin_arrives_whole_before_its_eof(env: Env) -> None:
    await env.run("bigin", "sleep", "1000")
    stream = await env.backend.exec("bigin", ["sh", "-c", "sleep 1; wc -c"], stdin=True)
    await stream.write_stdin(b"x" * 1_000_000)
    await stream.close_stdin()
    out = await output_of(stream)
    await stream.close()
    assert out.strip() == b"1000000"


async def test_stdin_once_closes_stdin_when_the_attach_ends(env: Env) -> None:
    await env.run("once", "sh", "-c", "cat; echo stdin-closed", stdin=True, stdin_once=True)
    stream = await env.backend.attach("once", stdin=True, stdout=True, stderr=True)
    await stream.write_stdin(b"hello\n")
    await asyncio.sleep(0.3)
    await stream.close()  # no STDIN_CLOSE: the attach just ends
    status = await asyncio.wait_for(env.backend.wait("once"), 10)
    assert status.exit_code == 0
    assert [c for _s, _t, c in env.records("once")] == [b"hello", b"stdin-closed"]


async def test_a_timed_out_exec_takes_its_background_children_along(env: Env) -> None:
    await env.run("bg", "sleep", "1000")
    t = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await env.backend.exec_sync("bg", ["sh", "-c", "sleep 777 & sleep 778"], 0.5)
    assert time.monotonic() - t < 5
    ps = await env.backend.exec_sync("bg", ["ps", "-o", "args"], 10)
    assert b"sleep 777" not in ps.stdout and b"sleep 778" not in ps.stdout


async def test_bad_requests_to_the_shim_do_not_hurt_the_container(env: Env) -> None:
    await env.run("sturdy", "sleep", "1000", tty=True)
    with pytest.raises(InvalidArgument, match="terminal size"):
        await env.backend.resize("sturdy", 70000, 24)
    stream = await env.backend.exec("sturdy", ["sleep", "5"])
    await stream.signal(999)  # no such signal
    await stream.close()
    shutil.rmtree(env.logs)  # the log's directory is gone: reopening must fail cleanly
    with pytest.raises(FailedPrecondition, match="reopen log"):
        await env.backend.reopen_log("sturdy")
    await env.backend.resize("sturdy", 100, 30)
    assert (await env.backend.state("sturdy")).status == "running"
    result = await env.backend.exec_sync("sturdy", ["true"], 10)
    assert result.exit_code == 0


async def test_a_tty_container_logs_only_stdout(env: Env) -> None:
    await env.run("ttyinit", "sh", "-c", "echo to-out; echo to-err >&2", tty=True)
    await env.backend.wait("ttyinit")
    records = env.records("ttyinit")
    assert {s for s, _t, _c in records} == {"stdout"}
    assert [c.rstrip(b"\r") for _s, _t, c in records] == [b"to-out", b"to-err"]


@isolating
async def test_the_pods_files_and_a_device_are_there_inside(env: Env, tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    (pod / "shm").mkdir(parents=True)
    (pod / "hosts").write_text("127.0.0.1 localhost\n10.1.2.3 pod-a\n")
    (pod / "resolv.conf").write_text("nameserver 10.96.0.10\nsearch default.svc\n")
    (pod / "shm" / "from-the-pod").write_text("shared")
    for path in (tmp_path, pod, pod / "shm", pod / "hosts", pod / "resolv.conf"):
        path.chmod(0o777 if path.is_dir() else 0o644)
    sandbox = SandboxContext(
        hostname="pod-a",
        hosts=str(pod / "hosts"),
        resolv_conf=str(pod / "resolv.conf"),
        shm=str(pod / "shm"),
    )
    null = api_pb2.Device(host_path="/dev/null", container_path="/dev/xnull")
    await env.create("podfiles", "sleep", "1000", sandbox=sandbox, devices=[null])
    await env.backend.start("podfiles")
    script = (
        "hostname; cat /etc/hosts /etc/resolv.conf /dev/shm/from-the-pod; echo; echo x > /dev/xnull"
    )
    result = await env.backend.exec_sync("podfiles", ["sh", "-c", script], 10)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "pod-a"
    assert "10.1.2.3 pod-a" in lines and "nameserver 10.96.0.10" in lines
    assert "shared" in lines


# -- errors ------------------------------------------------------------------------


async def test_bad_requests_get_clear_errors_and_leave_nothing(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="container id"):
        await env.backend.create(CreateRequest("../escape", {}))
    with pytest.raises(NotFound, match="nope"):
        await env.backend.start("nope")
    await env.create("twice", "sleep", "1000")
    with pytest.raises(AlreadyExists):
        await env.backend.create(CreateRequest("twice", {}))
    with pytest.raises(FailedPrecondition, match="not running"):
        await env.backend.exec_sync("twice", ["true"], 5)
    await env.backend.start("twice")
    with pytest.raises(FailedPrecondition, match="started already"):
        await env.backend.start("twice")
    with pytest.raises(FailedPrecondition, match="stop it"):
        await env.backend.delete("twice")
    with pytest.raises(FailedPrecondition, match="exec failed"):
        await env.backend.exec_sync("twice", ["/no/such/program"], 5)


async def test_runc_forgets_an_exited_container_we_still_report(env: Env) -> None:
    """As containerd deletes a task when it exits: runc's state goes with the
    exit, ours stays (status, exit code, log) until RemoveContainer."""
    await env.run("done", "sh", "-c", "echo bye; exit 3")
    status = await env.backend.wait("done")
    assert "done" not in await env.backend.runtime_list()
    state = await env.backend.state("done")
    assert (state.status, state.exit) == ("exited", status)
    assert (await env.backend.stats("done")).pids == 0
    assert [r[2] for r in env.records("done")] == [b"bye"]
    await env.backend.delete("done")
    assert "done" not in env.backend.list_ids()


async def test_an_exit_no_server_watched_keeps_runcs_state_until_the_remove(env: Env) -> None:
    """The server gone when the container exits: nobody deleted runc's state,
    and the restarted server's remove does; it was never taken for an orphan."""
    await env.run("unwatched", "sh", "-c", "read line; exit 4", stdin=True)
    await env.backend.close()  # the server is gone; the shim and container live on
    shim_dir = env.backend.dir("unwatched")
    await request(shim_dir, "close_stdin")  # the read ends: it exits
    for _ in range(100):
        if (shim_dir / "exit.json").exists():
            break
        await asyncio.sleep(0.05)
    fresh = RuncBackend(env.backend.containers_dir.parent, tier=TIER)
    env.backend = fresh
    states = {s.id: s for s in await fresh.recover()}
    assert states["unwatched"].exit is not None and states["unwatched"].exit.exit_code == 4
    assert "unwatched" in await fresh.runtime_list()
    await fresh.delete("unwatched")
    assert "unwatched" not in await fresh.runtime_list()
    assert not shim_dir.exists()


async def test_a_failing_runc_create_fails_the_start_and_the_remove_leaves_nothing(
    env: Env,
) -> None:
    """As containerd, whose CreateContainer runs no runc: the create returns,
    the start fails with runc's words, the container is EXITED (128,
    StartError, the same words), and the remove cleans up everything."""
    await env.create("broken", "/no/such/program")
    with pytest.raises(FailedPrecondition, match=r"runtime create failed.*no/such/program"):
        await env.backend.start("broken")
    state = await env.backend.state("broken")
    assert state.status == "exited" and state.exit is not None
    assert (state.exit.exit_code, state.exit.reason) == (128, "StartError")
    assert "no/such/program" in state.exit.message
    await env.backend.stop("broken", 0)  # a stop has nothing to do
    await env.backend.delete("broken")
    assert "broken" not in env.backend.list_ids()
    assert not env.backend.dir("broken").exists()
    assert "broken" not in await env.backend.runtime_list()


async def test_create_then_remove_without_a_start_leaves_nothing(env: Env) -> None:
    """The remove may come while the shim's runc create still runs: it waits
    for it, kills the waiting init, and nothing is left, in runc or on disk."""
    await env.create("never", "sleep", "1000")
    await env.backend.stop("never", 0)
    await env.backend.delete("never")
    assert "never" not in await env.backend.runtime_list()
    assert not env.backend.dir("never").exists()
    await env.create("never2", "sleep", "1000")
    await env.backend.delete("never2")  # no stop first: the remove kills it
    assert "never2" not in await env.backend.runtime_list()
    assert not env.backend.dir("never2").exists()


async def test_a_start_after_a_restart_finds_the_pid_the_shim_left(env: Env) -> None:
    """The server gone between the create and the start: no report pipe is
    held any more; the start reads what the shim left (init.pid)."""
    await env.create("later", "sleep", "1000")
    await env.backend.close()  # waits for the create under way, as a server's stop does
    fresh = RuncBackend(env.backend.containers_dir.parent, tier=TIER)
    env.backend = fresh
    record = json.loads((fresh.dir("later") / "container.json").read_text())
    del record["pid"]  # as if it had died before the shim's report
    (fresh.dir("later") / "container.json").write_text(json.dumps(record))
    await fresh.recover()
    state = await fresh.start("later")
    assert state.status == "running" and state.pid > 0
    assert fresh.pid_of("later") == state.pid


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


async def test_a_record_damaged_under_a_running_server_changes_nothing_until_a_restart(
    env: Env,
) -> None:
    """Only the server writes ``container.json``, and it reports what it wrote:
    a file damaged under it (a full disk, a stray editor) changes nothing while
    it runs. The next start finds the damage and applies the load policy of the
    README's "Crash safety": the file moved aside, the container left running
    and reported unreadable (UNKNOWN), RemoveContainer cleaning up."""
    await env.run("damaged", "sleep", "1000")
    before = await env.backend.state("damaged")
    assert before.status == "running" and alive(before.pid)
    path = env.backend.dir("damaged") / "container.json"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert await env.backend.state("damaged") == before
    assert env.backend.pod_of("damaged") == "pod" and env.backend.pid_of("damaged") == before.pid
    assert (await env.backend.stats("damaged")).pids >= 1
    with pytest.raises(TypeError):  # a caller cannot change the record by accident
        env.backend.record("damaged")["started_at"] = 0  # type: ignore[index]
    await env.backend.update("damaged", {"pids": {"limit": 100}})  # a write: the whole record
    assert json.loads(path.read_text())["resources"]["pids"] == {"limit": 100}
    path.write_text("not json")

    await env.backend.close()  # the server stops; a new one starts
    fresh = RuncBackend(env.backend.containers_dir.parent, tier=TIER)
    env.backend = fresh
    assert "damaged" not in [s.id for s in await fresh.recover()]
    with pytest.raises(RecordUnreadable, match="cannot be read"):
        await fresh.state("damaged")
    assert [p.name.split("-")[0] for p in path.parent.glob("container.json.*")] == [
        "container.json.unreadable"
    ], "the bad file is kept aside"
    assert alive(before.pid), "the container is left alone"
    await fresh.recover()  # a second restart changes nothing
    with pytest.raises(RecordUnreadable):
        await fresh.state("damaged")
    await fresh.delete("damaged")
    assert "damaged" not in fresh.list_ids() and not fresh.dir("damaged").exists()
    assert "damaged" not in await fresh.runtime_list()


async def test_an_exit_once_read_is_kept(env: Env) -> None:
    """``exit.json`` is looked for until it is there (the shim writes it before
    it tells the exit watcher), then kept: an exit never changes."""
    await env.run("quick", "sh", "-c", "exit 3")
    status = await asyncio.wait_for(env.backend.wait("quick"), 30)
    assert status.exit_code == 3
    (env.backend.dir("quick") / "exit.json").write_text("{")
    state = await env.backend.state("quick")
    assert state.status == "exited" and state.exit == status
    await env.backend.delete("quick")
    assert env.backend.exit_status("quick") is None, "forgotten with the container"


# -- stats and resources ---------------------------------------------------------------


async def test_stats_count_cpu_and_memory(env: Env) -> None:
    spin = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"
    await env.run("busy", "sh", "-c", spin)
    await asyncio.sleep(1.0)
    stats = await env.backend.stats("busy")
    assert stats.cpu_usage_ns > 0
    assert stats.memory_working_set > 0
    assert stats.pids >= 1


@pytest.mark.skipif(not IS_ROOT or PLAIN, reason="memory limits need cgroups (and root here)")
async def test_a_memory_update_is_visible_and_enforced_oom_is_137(env: Env) -> None:
    await env.run(
        "oom",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; x=$(head -c 200000000 /dev/zero | tr '\\0' a)",
    )
    limit = 32 << 20
    await env.backend.update("oom", {"memory": {"limit": limit, "swap": limit}})
    assert (await env.backend.stats("oom")).memory_limit == limit
    await env.backend.exec_sync("oom", ["sh", "-c", ": > /tmp/go"], 10)
    status = await asyncio.wait_for(env.backend.wait("oom"), 60)
    assert status.exit_code == 137
    assert status.oom_killed and status.reason == "OOMKilled"


@pytest.mark.skipif(IS_ROOT and not PLAIN, reason="the unprivileged tiers' behaviour")
async def test_without_cgroups_an_update_is_recorded_and_said_to_be_unenforced(env: Env) -> None:
    await env.run("noenforce", "sleep", "1000")
    notes = await env.backend.update("noenforce", {"memory": {"limit": 32 << 20}})
    assert "not enforced" in notes["resources"]
    state = await env.backend.state("noenforce")
    assert "not enforced" in state.notes["resources"]


# -- the server goes away ----------------------------------------------------------------

DRIVER = """
import asyncio, json, sys
from pathlib import Path
from teaching_cri.runtime.backend import CreateRequest
from teaching_cri.runtime.runc import RuncBackend

async def main():
    backend = RuncBackend(Path(sys.argv[1]), tier=sys.argv[4])
    request = CreateRequest("survivor", json.loads(sys.argv[2]), log_path=sys.argv[3])
    await backend.create(request)
    await backend.start("survivor")
    print("started", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_container_outlives_a_sigkilled_server_and_its_exit_is_recorded(
    env: Env, image: tuple[ImageManager, ImageRecord]
) -> None:
    manager, record = image
    rootfs = manager.snapshots.mount_view([x.chain_id for x in record.layers], "survivor")
    env.made.append("survivor")
    script = "i=0; while [ $i -lt 30 ]; do echo line $i; i=$((i+1)); sleep 0.1; done; exit 3"
    spec, _ = generate_spec(
        api_pb2.ContainerConfig(command=["sh", "-c", script]),
        ImageRunConfig.from_config(record.config),
        rootfs,
    )
    state_dir = env.backend.containers_dir.parent
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(state_dir),
            json.dumps(spec),
            str(env.log("survivor")),
            TIER,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "started"
    await asyncio.sleep(0.5)
    server.send_signal(signal.SIGKILL)  # the server dies mid-run
    server.wait()
    pid = json.loads((env.backend.dir("survivor") / "container.json").read_text())["pid"]
    os.kill(pid, 0)  # still running
    recovered = {s.id: s for s in await env.backend.recover()}  # a new server's view
    assert recovered["survivor"].status == "running"
    status = await asyncio.wait_for(env.backend.wait("survivor"), 30)
    assert status.exit_code == 3
    assert status.finished_at > 0
    assert [c for _s, _t, c in env.records("survivor")] == [
        f"line {i}".encode() for i in range(30)
    ], "no gap in the log"


# -- the other tier ------------------------------------------------------------------------


def _nobody_can_run_this_file() -> str:
    from test_cli import _nobody_probe

    reason = _nobody_probe()
    if reason:
        return reason
    if not user_namespaces_allowed():
        return "unprivileged user namespaces are disabled"
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "cat", __file__],
        capture_output=True,
    )
    if probe.returncode != 0:
        return f"user nobody cannot read {__file__}"
    return ""


@pytest.fixture
def nobody_tmp() -> Iterator[Path]:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(prefix="tcri-nobody-") as d:
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
        yield Path(d)


@pytest.mark.skipif(not IS_ROOT, reason="runs this file as user nobody, which needs root")
@pytest.mark.parametrize("tier", ["rootless-runc", "processes"])
def test_the_unprivileged_tier_passes_these_tests_too(nobody_tmp: Path, tier: str) -> None:
    reason = _nobody_can_run_this_file()
    if reason:
        pytest.skip(reason)
    tests = Path(__file__).parent
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "env",
            f"HOME={nobody_tmp}",
            f"TMPDIR={nobody_tmp}",
            f"TEACHING_CRI_TEST_TIER={tier}",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tests.parent),
            "--basetemp",
            str(nobody_tmp / "pytest"),
            str(Path(__file__)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=nobody_tmp,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary)[1])  # type: ignore[index]
    assert passed >= 14, summary
