"""``teaching-cri serve`` options and bad input: one line, non-zero exit, nothing created."""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from teaching_cri.api import api_pb2
from teaching_cri.client import connect, wait_for_socket
from teaching_cri.config import ConfigError, resolve

from conftest import IS_ROOT, serve_command, start_server


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=60, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("teaching-cri: error: ")
    for word in words:
        assert word in lines[0]


def dirs(base: Path) -> list[str]:
    return ["--root", str(base / "root"), "--state", str(base / "state")]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("socket = [unclosed", ["not valid TOML"]),
        ('sockett = "/tmp/x.sock"', ["unknown option", "sockett"]),
        ("runtime = 5", ["runtime must be a string"]),
        ('runtime = "kata"', ["runtime 'kata'", "unknown backend"]),
        ('stream-address = "localhost"', ["stream-address", "HOST:PORT"]),
        ('stream-address = "127.0.0.1:99999"', ["port must be 0-65535"]),
        ('log-level = "loud"', ["log-level"]),
        ('trace = "maybe"', ["trace 'maybe'", "on or off"]),
    ],
)
def test_a_bad_config_file_is_one_line_and_creates_nothing(
    short_tmp: Path, content: str, words: list[str]
) -> None:
    cfg = short_tmp / "bad.toml"
    cfg.write_text(content + "\n")
    proc = run_serve("--config", str(cfg), "--socket", str(short_tmp / "s.sock"), *dirs(short_tmp))
    assert_one_line_error(proc, *words)
    assert sorted(p.name for p in short_tmp.iterdir()) == ["bad.toml"]


def test_a_missing_config_file(short_tmp: Path) -> None:
    proc = run_serve("--config", str(short_tmp / "nope.toml"))
    assert_one_line_error(proc, "nope.toml", "no such file")


def test_an_unknown_backend_flag(short_tmp: Path) -> None:
    proc = run_serve("--runtime", "docker", "--socket", str(short_tmp / "s.sock"), *dirs(short_tmp))
    assert_one_line_error(proc, "docker", "known: auto, runc, unprivileged")
    assert list(short_tmp.iterdir()) == []


def test_a_socket_in_a_missing_directory(short_tmp: Path) -> None:
    proc = run_serve("--socket", str(short_tmp / "missing" / "s.sock"), *dirs(short_tmp))
    assert_one_line_error(proc, "does not exist")
    assert list(short_tmp.iterdir()) == []


def test_a_socket_path_too_long_for_unix_sockets(short_tmp: Path) -> None:
    proc = run_serve("--socket", str(short_tmp / ("x" * 120)), *dirs(short_tmp))
    assert_one_line_error(proc, "at most 107")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to an unprivileged user")
def test_a_socket_in_an_unwritable_directory(short_tmp: Path) -> None:
    skip_unless_nobody_can_run_us()
    locked = short_tmp / "locked"
    locked.mkdir(mode=0o755)  # root's, so not writable for nobody
    os.chmod(short_tmp, 0o755)
    proc = subprocess.run(
        as_nobody(
            serve_command(
                "--socket",
                str(locked / "s.sock"),
                "--root",
                "/tmp/nobody-r",
                "--state",
                "/tmp/nobody-s",
            )
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert_one_line_error(proc, "not writable")
    assert list(locked.iterdir()) == []


def test_flags_override_the_config_file(short_tmp: Path) -> None:
    cfg = short_tmp / "c.toml"
    cfg.write_text(
        'runtime = "runc"\nlog-level = "debug"\nstream-address = "127.0.0.1:7000"\n'
        f'socket = "{short_tmp / "file.sock"}"\n'
    )
    config = resolve(
        {
            "runtime": "unprivileged",
            "socket": str(short_tmp / "flag.sock"),
            "log-level": None,
            "root": str(short_tmp / "r"),
        },
        cfg,
    )
    assert config.runtime == "unprivileged"
    assert config.socket == short_tmp / "flag.sock"
    assert config.log_level == "debug"
    assert config.stream_host_port == ("127.0.0.1", 7000)
    with pytest.raises(ConfigError, match=r"\[::1\]"):
        resolve({"stream-address": "[::1]", "socket": str(short_tmp / "s")})
    assert resolve(
        {"stream-address": "[::1]:10350", "socket": str(short_tmp / "s")}
    ).stream_host_port == ("::1", 10350)


def test_a_config_file_configures_the_server(short_tmp: Path) -> None:
    cfg = short_tmp / "c.toml"
    sock = short_tmp / "from-file.sock"
    cfg.write_text(
        f'socket = "{sock}"\nroot = "{short_tmp / "r"}"\nstate = "{short_tmp / "s"}"\n'
        f'runtime = "unprivileged"\ntrace-file = "{short_tmp / "t.jsonl"}"\n'
    )
    proc = subprocess.Popen(serve_command("--config", str(cfg)), stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, timeout=30)
        with connect(sock) as c:
            info = c.runtime.Status(api_pb2.StatusRequest(verbose=True)).info
            assert json.loads(info["backend"])["name"] == "unprivileged"
            assert json.loads(info["config"])["trace-file"] == str(short_tmp / "t.jsonl")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"chart":"Status"' in (short_tmp / "t.jsonl").read_text(), "events reach the file"


# --- as a non-root user ------------------------------------------------------------


def as_nobody(cmd: list[str]) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *cmd]


@functools.cache
def _nobody_probe() -> str:
    """Empty if user nobody can run this interpreter and import the package."""
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is needed to run the server as nobody"
    probe = subprocess.run(
        as_nobody([sys.executable, "-c", "import teaching_cri.daemon"]),
        capture_output=True,
        text=True,
        cwd="/",
    )
    if probe.returncode != 0:
        return (
            f"{sys.executable} or the package is not readable by user nobody (scripts/test "
            f"installs into a venv nobody can read): {probe.stderr.strip()[-160:]}"
        )
    return ""


def skip_unless_nobody_can_run_us() -> None:
    reason = _nobody_probe()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    if not IS_ROOT:
        with tempfile.TemporaryDirectory(prefix="tcri-u-") as d:
            yield Path(d)
        return
    skip_unless_nobody_can_run_us()
    d = Path(tempfile.mkdtemp(prefix="tcri-u-"))
    nobody = pwd.getpwnam("nobody")
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_serve_starts_as_a_non_root_user_with_per_user_defaults(nobody_home: Path) -> None:
    runtime_dir = nobody_home / "xdg-run"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(nobody_home),
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "XDG_DATA_HOME": str(nobody_home / "data"),
    }
    cmd = [sys.executable, "-m", "teaching_cri", "serve"]
    if IS_ROOT:
        cmd = as_nobody(cmd)
        runtime_dir.mkdir(mode=0o700)
        os.chown(runtime_dir, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        runtime_dir.mkdir(mode=0o700)
    # cwd "/": the checkout may be in a directory nobody cannot enter.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd="/")
    sock = runtime_dir / "teaching-cri" / "teaching-cri.sock"
    try:
        wait_for_socket(sock, timeout=30)
        with connect(sock) as c:
            resp = c.runtime.Version(api_pb2.VersionRequest())
            assert (resp.runtime_name, resp.runtime_api_version) == ("teaching-cri", "v1")
        assert sock.stat().st_uid != 0 or not IS_ROOT
        assert (nobody_home / "data" / "teaching-cri").is_dir()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "unprivileged" in err  # it says which backend it picked


@pytest.mark.skipif(not IS_ROOT, reason="the root defaults (/run/teaching-cri) need root")
def test_root_default_socket_path() -> None:
    config = resolve({})
    assert config.socket == Path("/run/teaching-cri/teaching-cri.sock")
    assert config.root == Path("/var/lib/teaching-cri")


def test_server_started_by_fixture_helper_works(short_tmp: Path) -> None:
    srv = start_server(short_tmp / "x", "--runtime", "unprivileged")
    try:
        assert srv.client().runtime.Version(api_pb2.VersionRequest()).runtime_name
    finally:
        assert srv.stop() == 0


def test_a_trace_file_that_is_a_directory(short_tmp: Path) -> None:
    proc = run_serve(
        "--trace-file", str(short_tmp), "--socket", str(short_tmp / "s.sock"), *dirs(short_tmp)
    )
    assert_one_line_error(proc, "is a directory")
    assert list(short_tmp.iterdir()) == []


def test_corrupt_persisted_state_refuses_to_start_and_creates_nothing(short_tmp: Path) -> None:
    (short_tmp / "root").mkdir()
    for content in ("{bad", "[1, 2]", '{"pod_cidrs": "10.0.0.0/8"}'):
        (short_tmp / "root" / "runtime-config.json").write_text(content)
        proc = run_serve("--socket", str(short_tmp / "s.sock"), *dirs(short_tmp))
        assert_one_line_error(proc, "runtime-config.json")
        assert sorted(p.name for p in short_tmp.iterdir()) == ["root"], "no state, no socket"


def test_trace_show_with_an_unknown_chart_is_one_line(short_tmp: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "teaching_cri",
            "trace",
            "show",
            "NoSuchChart",
            "--socket",
            str(short_tmp / "none.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        and "unknown chart 'NoSuchChart'" in proc.stderr
    )


def test_fidelity_reads_the_trace_dir_a_test_run_names(short_tmp: Path) -> None:
    """``teaching-cri fidelity`` with no file: the directory a test run left in
    $TEACHING_CRI_TRACE_DIR, or one line saying neither was given."""
    env = {k: v for k, v in os.environ.items() if k != "TEACHING_CRI_TRACE_DIR"}
    cmd = [sys.executable, "-m", "teaching_cri", "fidelity"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert_one_line_error(proc, "no --trace-file given", "TEACHING_CRI_TRACE_DIR")
    srv = start_server(short_tmp / "fid", "--runtime", "unprivileged")
    try:
        srv.client().runtime.Version(api_pb2.VersionRequest())
    finally:
        srv.stop()
    assert srv.trace_file is not None
    traces = short_tmp / "traces"
    traces.mkdir()
    shutil.copy(srv.trace_file, traces / "server.jsonl")
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "TEACHING_CRI_TRACE_DIR": str(traces)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "in 1 trace file(s)" in proc.stdout
    assert "Version (chart): 1 spans, 0 off-chart" in proc.stdout
