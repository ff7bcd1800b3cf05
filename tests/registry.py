"""A real OCI registry for tests: Debian's ``docker-registry`` on a loopback port.

``docker-registry`` is the reference registry (CNCF distribution 2.8). Tests
start one per use, with storage in a temporary directory, push images built
by ``teaching_cri.image.layout`` into it, and point the runtime at it: real
HTTP, real manifests and blobs, and no network beyond 127.0.0.1.

Its configuration is YAML; since JSON is a subset of YAML, it is written here
with ``json.dumps``. The interesting keys:

* ``storage.filesystem.rootdirectory``: where blobs and manifests go;
* ``storage.delete.enabled``: allow ``DELETE`` of manifests and blobs;
* ``http.addr``: the listening address (loopback only);
* ``auth.htpasswd``: Basic authentication against an Apache htpasswd file,
  which distribution only accepts with bcrypt hashes (``htpasswd -B``).

Usage::

    with run_registry(tmp_path) as reg:
        info = push_busybox(reg, "library/busybox", "latest")
        # pull f"{reg.host}/library/busybox:latest"
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from teaching_cri.image.hostimages import build_busybox_image
from teaching_cri.image.layout import ImageInfo, build_index
from teaching_cri.image.oci import Platform
from teaching_cri.image.push import push_layout

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = "htpasswd"


class RegistryUnavailable(RuntimeError):
    """The registry cannot be run here; tests turn this into a skip."""


@dataclass
class Registry:
    """A running registry."""

    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT, as it appears in image names
    log: Path
    root: Path  # the temporary directory it owns
    config: Path
    process: subprocess.Popen[bytes]
    auth: tuple[str, str] | None = None  # the htpasswd user, if any

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    """A port free now; another process may still take it first (we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_htpasswd(path: Path, user: str, password: str) -> None:
    exe = shutil.which(HTPASSWD_BINARY)
    if exe is None:
        raise RegistryUnavailable(
            "htpasswd is not installed (apt-get install apache2-utils); "
            "it makes the bcrypt password file the registry needs"
        )
    proc = subprocess.run(
        [exe, "-Bbn", user, password], capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"htpasswd failed: {proc.stderr.strip()}")
    path.write_text(proc.stdout.strip() + "\n")


def _config(root: Path, port: int, htpasswd_file: Path | None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if htpasswd_file is not None:
        config["auth"] = {"htpasswd": {"realm": "teaching-cri", "path": str(htpasswd_file)}}
    return config


def _start(
    root: Path, htpasswd_file: Path | None, timeout: float
) -> tuple[int, Path, Path, subprocess.Popen[bytes]]:
    """Start once on a fresh port; raise OSError if the port was taken meanwhile."""
    port = _free_port()
    want = (401,) if htpasswd_file is not None else (200,)
    return launch(root, port, _config(root, port, htpasswd_file), want, timeout)


def launch(
    root: Path, port: int, config: dict[str, object], want: tuple[int, ...], timeout: float
) -> tuple[int, Path, Path, subprocess.Popen[bytes]]:
    """Run the registry with ``config`` until ``GET /v2/`` answers one of ``want``."""
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log = root / "registry.log"
    # REGISTRY_* variables override the file; do not inherit any.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(REGISTRY_BINARY), "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v2/"
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "address already in use" in text:
                raise OSError(f"port {port} was taken")
            raise RuntimeError(f"docker-registry exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code in want:
                return port, config_path, log, proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            text = log.read_text(errors="replace")
            raise RuntimeError(
                f"docker-registry did not answer {url} in {timeout}s:\n{text[-3000:]}"
            )
        time.sleep(0.05)


@contextmanager
def run_registry(
    tmp_dir: Path, *, htpasswd: tuple[str, str] | None = None, timeout: float = 30
) -> Iterator[Registry]:
    """Run a registry for the ``with`` block; ``htpasswd=(user, password)`` turns on auth."""
    if not REGISTRY_BINARY.exists():
        raise RegistryUnavailable(
            f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)"
        )
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    htpasswd_file: Path | None = None
    if htpasswd is not None:
        htpasswd_file = root / "htpasswd"
        _write_htpasswd(htpasswd_file, *htpasswd)
    for attempt in range(3):
        try:
            port, config, log, proc = _start(root, htpasswd_file, timeout)
            break
        except OSError:
            if attempt == 2:
                raise
    host = f"127.0.0.1:{port}"
    registry = Registry(f"http://{host}", host, log, root, config, proc, htpasswd)
    try:
        yield registry
    finally:
        registry.stop()


def _push(registry: Registry, layout: Path, repository: str, tag: str) -> str:
    # trust_env=False: a proxy from the environment must not see loopback traffic.
    with httpx.Client(trust_env=False, timeout=60) as client:
        return push_layout(
            layout, registry.url, repository, tag, source=tag, auth=registry.auth, client=client
        )


def push_busybox(
    registry: Registry,
    repository: str = "busybox",
    tag: str = "latest",
    *,
    platform: Platform | None = None,
) -> ImageInfo:
    """Build the busybox image and push it as ``repository:tag``; returns what was built."""
    layout = registry.root / "layouts" / f"{repository.replace('/', '_')}-{tag}"
    info = build_busybox_image(layout, ref_name=tag, platform=platform)
    digest = _push(registry, layout, repository, tag)
    assert digest == info.manifest_digest, (digest, info.manifest_digest)
    return info


def push_busybox_index(
    registry: Registry,
    repository: str = "busybox",
    tag: str = "latest",
    platforms: tuple[Platform, ...] = (
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
    ),
) -> tuple[str, list[ImageInfo]]:
    """Push a multi-platform busybox index (the same binary under every platform!).

    Returns the index digest and the per-platform images. Only the image for
    the host's platform actually runs; the others are there to be chosen
    between.
    """
    layout = registry.root / "layouts" / f"{repository.replace('/', '_')}-{tag}-index"
    images = [build_busybox_image(layout, ref_name=None, platform=p) for p in platforms]
    digest = build_index(layout, images, ref_name=tag)
    pushed = _push(registry, layout, repository, tag)
    assert pushed == digest, (pushed, digest)
    return digest, images
