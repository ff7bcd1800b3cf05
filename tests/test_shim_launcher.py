"""The pre-forked shim server (``runtime/zygote.py``), driven through the
server's own launcher, as any user: no runc, a shell script in its place that
does what the shim asks of ``runc create`` (start the init, write its pid).

What a launch must give, whatever the zygote does inside: a shim detached
from the server (a session of its own that it does not lead, not the zygote's
child), that reports its pid at once and the init's after, and lives on when
the server's zygote is gone; and when the zygote is gone, nothing else of it
is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from teaching_cri.errors import FailedPrecondition
from teaching_cri.runtime import shim
from teaching_cri.runtime.shim_client import ShimLauncher

MARK = "TEACHING_CRI_TEST_SHIM_LAUNCHER"

# What the shim runs as its "runc": ``create`` starts a sleeping init and
# writes its pid where asked; anything else fails, as runc does, in its log.
FAKE_RUNC = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --pid-file) pid_file=$2; shift ;;
    create) create=1 ;;
  esac
  shift
done
[ -n "$create" ] || exit 1
sleep 300 </dev/null >/dev/null 2>&1 &
echo $! > "$pid_file"
"""


def stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def ppid_of(pid: int) -> int:
    return int(stat_fields(pid)[1])


def session_of(pid: int) -> int:
    return int(stat_fields(pid)[3])


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if ppid_of(int(entry)) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def processes_of_the_zygote(exclude: set[int]) -> list[int]:
    """Live processes of this test's zygote (it, its spare, the shims it
    forked: they carry the test's environment marker, which other servers'
    do not), but those in ``exclude``."""
    mark = f"{MARK}={os.environ[MARK]}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"teaching_cri.runtime.zygote" in cmdline and mark in environ and alive(int(entry)):
            found.append(int(entry))
    return found


def kinds_of_fds(pid: int) -> dict[int, str]:
    """Each open fd of ``pid`` and what it is: "pipe", "socket", a path."""
    fd_dir = Path(f"/proc/{pid}/fd")
    return {int(fd): os.readlink(fd_dir / fd).split(":")[0] for fd in os.listdir(fd_dir)}


def wait_until(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def runc(tmp_path: Path) -> Path:
    script = tmp_path / "fake-runc"
    script.write_text(FAKE_RUNC)
    script.chmod(0o755)
    return script


@pytest.fixture(autouse=True)
def before(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """A marker in the environment the zygote and all it forks inherit, so
    that other servers' processes (tests run side by side) are not this
    test's; and this test's processes before it began (none)."""
    monkeypatch.setenv(MARK, uuid.uuid4().hex)
    yield set(processes_of_the_zygote(set()))


def config(container_id: str, runc: Path) -> dict[str, object]:
    return {"id": container_id, "bundle": "/nonexistent", "runtime": [str(runc)]}


def kill_shim_and_init(state_dir: Path) -> None:
    for name in (shim.INIT_PID, shim.SHIM_PID):
        try:
            os.kill(int((state_dir / name).read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_a_launched_shim_is_detached_reports_twice_and_outlives_the_zygote(
    tmp_path: Path, runc: Path, before: set[int]
) -> None:
    async def scenario() -> tuple[int, int, int]:
        launcher = ShimLauncher()
        state = tmp_path / "c1"
        state.mkdir()
        try:
            spawned = await launcher.launch(state, config("c1", runc))
            init = await spawned.report.init_pid()
            assert launcher._proc is not None
            zygote = launcher._proc.pid
            assert session_of(spawned.shim_pid) != session_of(zygote)
        finally:
            await launcher.close()
        return spawned.shim_pid, init, zygote

    state = tmp_path / "c1"
    try:
        shim_pid, init, zygote = asyncio.run(scenario())
        assert int((state / shim.SHIM_PID).read_text()) == shim_pid
        assert int((state / shim.INIT_PID).read_text()) == init
        assert session_of(shim_pid) != session_of(os.getpid()), "the server's signals miss it"
        assert session_of(shim_pid) != shim_pid, "no session leader: it gets no terminal"
        assert ppid_of(shim_pid) != zygote, "double-forked: not the zygote's child"
        assert ppid_of(init) == shim_pid, "the shim is the init's subreaper"
        assert wait_until(lambda: not alive(zygote)), "the zygote exits when the server leaves"
        assert alive(shim_pid) and alive(init), "the shim and its container live on"
        left = [p for p in processes_of_the_zygote(before) if p != shim_pid]
        assert left == [], f"left behind by the zygote: {left}"
    finally:
        kill_shim_and_init(state)


def test_shims_come_one_after_another_and_in_a_burst(
    tmp_path: Path, runc: Path, before: set[int]
) -> None:
    """Launches in a row and ten at once each get a shim of their own (the
    zygote forks its spare after each; a burst waits its turn in the socket)."""

    async def scenario() -> list[int]:
        launcher = ShimLauncher()
        pids = []
        try:
            for i in range(3):
                state = tmp_path / f"row{i}"
                state.mkdir()
                spawned = await launcher.launch(state, config(f"row{i}", runc))
                await spawned.report.init_pid()
                pids.append(spawned.shim_pid)
            states = [tmp_path / f"burst{i}" for i in range(10)]
            for state in states:
                state.mkdir()
            burst = await asyncio.gather(
                *(launcher.launch(s, config(s.name, runc)) for s in states)
            )
            for spawned in burst:
                await spawned.report.init_pid()
            pids += [s.shim_pid for s in burst]
        finally:
            await launcher.close()
        return pids

    try:
        pids = asyncio.run(scenario())
        assert len(set(pids)) == 13
        assert all(alive(p) for p in pids)
        for state in tmp_path.iterdir():
            if state.is_dir():
                assert int((state / shim.SHIM_PID).read_text()) in pids
    finally:
        for state in tmp_path.iterdir():
            kill_shim_and_init(state)
    assert wait_until(lambda: not [p for p in processes_of_the_zygote(before) if alive(p)])


def test_a_spare_killed_before_its_turn_is_replaced(
    tmp_path: Path, runc: Path, before: set[int]
) -> None:
    """Whatever the zygote keeps ready for the next launch may be killed (an
    OOM kill, an administrator's kill -9): the next launch still gets a shim."""

    async def scenario() -> int:
        launcher = ShimLauncher()
        try:
            first = tmp_path / "first"
            first.mkdir()
            spawned = await launcher.launch(first, config("first", runc))
            await spawned.report.init_pid()
            assert launcher._proc is not None
            zygote = launcher._proc.pid
            ours = {zygote, spawned.shim_pid}

            def the_spare_waits() -> bool:
                others = processes_of_the_zygote(before | ours)
                return len(others) == 1 and ppid_of(others[0]) != zygote

            assert wait_until(the_spare_waits), "the zygote keeps one shim ready"
            ready = processes_of_the_zygote(before | ours)
            for pid in ready:
                os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: not any(alive(p) for p in ready))
            second = tmp_path / "second"
            second.mkdir()
            again = await launcher.launch(second, config("second", runc))
            assert await again.report.init_pid() > 0
            assert again.shim_pid not in ready
            return again.shim_pid
        finally:
            await launcher.close()

    try:
        assert alive(asyncio.run(scenario()))
    finally:
        for state in tmp_path.iterdir():
            kill_shim_and_init(state)


def test_a_failed_create_is_the_second_report(tmp_path: Path, runc: Path, before: set[int]) -> None:
    """The shim is there (its pid), then its create fails: the error comes on
    the second line, recorded as the exit, and the shim leaves."""

    async def scenario() -> int:
        launcher = ShimLauncher()
        state = tmp_path / "bad"
        state.mkdir()
        try:
            spawned = await launcher.launch(state, config("bad", Path("/bin/false")))
            with pytest.raises(FailedPrecondition, match="runtime create failed"):
                await spawned.report.init_pid()
            return spawned.shim_pid
        finally:
            await launcher.close()

    shim_pid = asyncio.run(scenario())
    assert wait_until(lambda: not alive(shim_pid))
    assert (tmp_path / "bad" / shim.EXIT).exists()


def test_a_shim_that_cannot_start_says_why_and_the_zygote_serves_on(
    tmp_path: Path, runc: Path, before: set[int]
) -> None:
    """A config the shim cannot use (no container id): the server reads why on
    the report pipe, not "died before reporting"; no process of the zygote's
    goes on as a second zygote, and the next launch is served."""

    async def scenario() -> tuple[int, int]:
        launcher = ShimLauncher()
        bad, good = tmp_path / "bad", tmp_path / "good"
        bad.mkdir()
        good.mkdir()
        try:
            with pytest.raises(FailedPrecondition, match="runtime create failed: 'id'"):
                await launcher.launch(bad, {"bundle": "/nonexistent", "runtime": [str(runc)]})
            spawned = await launcher.launch(good, config("good", runc))
            await spawned.report.init_pid()
            assert launcher._proc is not None
            return launcher._proc.pid, spawned.shim_pid
        finally:
            await launcher.close()

    try:
        zygote, served = asyncio.run(scenario())
        assert wait_until(lambda: processes_of_the_zygote(before) == [served]), (
            f"only the shim it served is left: {processes_of_the_zygote(before)}"
        )
        assert not alive(zygote)
    finally:
        for state in tmp_path.iterdir():
            kill_shim_and_init(state)


def test_a_spare_holds_nothing_of_the_zygote_but_its_stdio(
    tmp_path: Path, runc: Path, before: set[int]
) -> None:
    """A spare forked while the zygote held the server's socket, the last
    spare's socket and a request's report pipe keeps none of them (a report
    pipe kept open elsewhere would hide a shim's death from the server): the
    shims of a burst hold one socket, their listener; the spare waiting at
    the end, its stdio, its own socket and its wake-up pipe."""

    async def scenario() -> list[str]:
        launcher = ShimLauncher()
        states = [tmp_path / f"s{i}" for i in range(4)]
        try:
            for state in states:
                state.mkdir()
            burst = await asyncio.gather(
                *(launcher.launch(s, config(s.name, runc)) for s in states)
            )
            for spawned in burst:
                await spawned.report.init_pid()
            assert launcher._proc is not None
            zygote = launcher._proc.pid
            ours = {zygote, *(s.shim_pid for s in burst)}

            def the_spare() -> list[int]:
                return [p for p in processes_of_the_zygote(before | ours) if ppid_of(p) != zygote]

            for spawned in burst:  # spares forked while a request was being handed on
                sockets = [k for k in kinds_of_fds(spawned.shim_pid).values() if k == "socket"]
                assert len(sockets) == 1, "its shim.sock listener, and no other socket"
            assert wait_until(lambda: len(the_spare()) == 1)
            return kinds_of_fds(the_spare()[0])
        finally:
            await launcher.close()

    try:
        fds = asyncio.run(scenario())
        above_stdio = sorted(kind for fd, kind in fds.items() if fd > 2)
        assert above_stdio == ["pipe", "pipe", "socket"], fds
    finally:
        for state in tmp_path.iterdir():
            kill_shim_and_init(state)
