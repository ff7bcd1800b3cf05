"""Images made from the host's own binaries, for a machine that cannot pull.

``images build-local`` (the AdminService's ``BuildLocalImage``) and the
built-in infra image (``teaching-cri.local/pause``) are built here, offline,
from programs already on the host; so are the tests' and benchmarks' images.

* ``busybox_layers``: a small runnable root filesystem from the host's static
  busybox, one binary that is every command it is linked as;
* ``host_binaries_layers``: the fallback where busybox-static is missing, the
  host's own programs with the shared libraries ``ldd`` says they need;
* ``infra_layers``: one static program that holds a pod's namespaces
  (catatonit, or else busybox).

Which of them can work depends on how a binary is linked, so this module also
reads ELF headers (``inspect_elf``): a dynamically linked program runs in an
image only with its loader and libraries beside it.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teaching_cri.errors import FailedPrecondition, InvalidArgument

from .layer import LayerSpec, copy_entry, dir_entry, file_entry, symlink_entry
from .layout import ImageInfo, build_image
from .oci import Compression, Platform, host_platform


class BusyboxUnavailable(FailedPrecondition):
    """No usable static busybox to build the test image from."""


# --- ELF inspection ------------------------------------------------------------

_PT_INTERP = 3
_ELF_MACHINES = {
    3: "386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "amd64",
    183: "arm64",
    243: "riscv64",
    258: "loong64",
}


@dataclass(frozen=True)
class ElfInfo:
    """What the ELF header says about an executable."""

    static: bool  # no PT_INTERP: the kernel runs it without a dynamic loader
    architecture: str | None  # Go name, None if unknown
    bits: int
    little_endian: bool
    interpreter: str | None = None


def inspect_elf(path: Path) -> ElfInfo:
    """Read an ELF header and program headers (``man 5 elf``).

    A dynamically linked program names its loader (``/lib64/ld-linux-x86-64.so.2``)
    in a ``PT_INTERP`` program header; inside a minimal image that loader and
    the libraries it would load do not exist, so only a static binary runs.
    """
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 52 or header[:4] != b"\x7fELF":
            raise InvalidArgument(f"{path} is not an ELF executable")
        bits = {1: 32, 2: 64}.get(header[4])
        little = {1: True, 2: False}.get(header[5])
        if bits is None or little is None:
            raise InvalidArgument(f"{path}: unknown ELF class or byte order")
        end = "<" if little else ">"
        (machine,) = struct.unpack_from(end + "H", header, 18)
        if bits == 64:
            (phoff,) = struct.unpack_from(end + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 54)
        else:
            (phoff,) = struct.unpack_from(end + "I", header, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", header, 42)
        interpreter: str | None = None
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            if len(ph) < phentsize or len(ph) < (56 if bits == 64 else 32):
                raise InvalidArgument(f"{path}: truncated ELF program headers")
            (p_type,) = struct.unpack_from(end + "I", ph, 0)
            if p_type != _PT_INTERP:
                continue
            if bits == 64:
                (offset,) = struct.unpack_from(end + "Q", ph, 8)
                (filesz,) = struct.unpack_from(end + "Q", ph, 32)
            else:
                offset, filesz = struct.unpack_from(end + "I8xI", ph, 4)
            f.seek(offset)
            interpreter = f.read(min(filesz, 4096)).rstrip(b"\x00").decode(errors="replace")
    arch = _ELF_MACHINES.get(machine)
    if arch == "ppc64" and little:
        arch = "ppc64le"
    return ElfInfo(interpreter is None, arch, bits, little, interpreter)


# --- Images from the host's binaries -------------------------------------------

BUSYBOX_APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "ps",
    "top",
    "wc",
    "head",
    "mkdir",
    "rm",
    "hostname",
    # For the notebooks' terminal: an editor, the tty's size, following a log.
    "vi",
    "stty",
    "tail",
    "touch",
    "test",
)
BUSYBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_CONFIG: Mapping[str, Any] = {"Cmd": ["sh"], "Env": [f"PATH={BUSYBOX_PATH}"]}

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"


def check_busybox(busybox: Path = Path("/bin/busybox")) -> ElfInfo:
    """Raise BusyboxUnavailable unless ``busybox`` is a static ELF executable."""
    hint = "install Debian's busybox-static (apt-get install busybox-static)"
    if not busybox.is_file():
        raise BusyboxUnavailable(f"{busybox} not found: {hint}")
    try:
        elf = inspect_elf(busybox)
    except (InvalidArgument, OSError) as e:
        raise BusyboxUnavailable(f"{busybox} is not a usable executable ({e}): {hint}") from e
    if not elf.static:
        raise BusyboxUnavailable(
            f"{busybox} is dynamically linked (it needs {elf.interpreter}), so it cannot run "
            f"in an image without libraries: {hint}"
        )
    return elf


def busybox_layers(
    busybox: Path = Path("/bin/busybox"), *, compression: Compression = "gzip"
) -> list[LayerSpec]:
    """A minimal runnable root filesystem, as two layers.

    1. the base: ``/etc/passwd`` and ``/etc/group`` (root and nobody), empty
       ``/tmp`` (1777), ``/root``, and the mount points ``/proc``, ``/sys``,
       ``/dev`` that the runtime mounts over;
    2. ``/bin/busybox`` and a symlink per applet (``/bin/sh`` → ``busybox``):
       busybox looks at the name it was started as to know what to be.

    Raises BusyboxUnavailable if ``busybox`` is missing or not static.
    """
    check_busybox(busybox)
    base = [
        *(dir_entry(d) for d in ("bin", "dev", "etc", "proc", "sys", "usr/bin", "var")),
        dir_entry("root", mode=0o700),
        dir_entry("tmp", mode=0o1777),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    applets = [
        copy_entry("bin/busybox", busybox, mode=0o755),
        *(symlink_entry(f"bin/{name}", "busybox") for name in BUSYBOX_APPLETS),
        symlink_entry("usr/bin/env", "../../bin/busybox"),
    ]
    return [
        LayerSpec(base, compression, created_by="teaching-cri: base filesystem"),
        LayerSpec(applets, compression, created_by=f"teaching-cri: COPY {busybox} /bin/busybox"),
    ]


HOST_BINARIES = ("sh", "ls", "cat", "echo", "sleep", "env", "id", "true", "false", "mkdir", "rm")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the dynamic loader) ``binary`` needs, from
    ``ldd``: what must travel with a dynamically linked program into an image."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FailedPrecondition(f"ldd {binary}: {exc}") from None
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        raise FailedPrecondition(f"ldd {binary}: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        parts = line.split("=>")
        candidate = (parts[1] if len(parts) == 2 else parts[0]).strip().split(" (")[0].strip()
        if candidate.startswith("/"):
            libs.append(Path(candidate))
    return libs


def host_binaries_layers(
    names: Sequence[str] = HOST_BINARIES, *, compression: Compression = "gzip"
) -> list[LayerSpec]:
    """A runnable root filesystem from this host's own programs and the shared
    libraries they link, for a machine without a static busybox. Each program
    is copied to ``/bin``; each library to the path the dynamic loader
    expects, with symlinks resolved (the image holds real files)."""
    programs = {}
    for name in names:
        found = shutil.which(name, path="/usr/bin:/bin")
        if found:
            programs[name] = Path(found).resolve()
    if "sh" not in programs:
        raise FailedPrecondition("no /bin/sh on this host to build an image from")
    libraries: dict[str, Path] = {}
    for program in programs.values():
        for lib in shared_libraries(program):
            libraries.setdefault(str(lib).lstrip("/"), lib.resolve())
    base = [
        *(dir_entry(d) for d in ("bin", "dev", "etc", "proc", "sys", "var")),
        dir_entry("root", mode=0o700),
        dir_entry("tmp", mode=0o1777),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    files = [copy_entry(f"bin/{name}", path, mode=0o755) for name, path in programs.items()]
    files += [copy_entry(inside, host) for inside, host in sorted(libraries.items())]
    return [
        LayerSpec(base, compression, created_by="teaching-cri: base filesystem"),
        LayerSpec(files, compression, created_by="teaching-cri: host programs and libraries"),
    ]


def build_host_binaries_image(
    layout_dir: Path, *, ref_name: str | None = "latest", compression: Compression = "gzip"
) -> ImageInfo:
    """The fallback of ``images build-local`` where busybox-static is missing."""
    return build_image(
        layout_dir,
        host_binaries_layers(compression=compression),
        config=BUSYBOX_CONFIG,
        platform=host_platform(),
        ref_name=ref_name,
    )


def build_busybox_image(
    layout_dir: Path,
    *,
    ref_name: str | None = "latest",
    platform: Platform | None = None,
    busybox: Path = Path("/bin/busybox"),
    compression: Compression = "gzip",
) -> ImageInfo:
    """The busybox image in a layout; its platform is the binary's unless given."""
    layers = busybox_layers(busybox, compression=compression)
    if platform is None:
        arch = check_busybox(busybox).architecture
        host = host_platform()
        platform = host if arch in (None, host.architecture) else Platform("linux", arch)
    return build_image(
        layout_dir, layers, config=BUSYBOX_CONFIG, platform=platform, ref_name=ref_name
    )


# The pod's infra ("pause") process, when no pause image can be had.
CATATONIT = Path("/usr/bin/catatonit")


def infra_layers(compression: Compression = "gzip") -> list[LayerSpec]:
    """An image of one static program that holds a pod's namespaces and reaps
    its zombies: Debian's catatonit (podman's pause, ``-P``), or else the
    static busybox running a shell that waits forever (a shell as PID 1 reaps
    the orphans re-parented to it when it ``wait``s)."""
    base = [
        *(dir_entry(d) for d in ("dev", "etc", "proc", "sys")),
        file_entry("etc/passwd", _PASSWD.encode()),
        file_entry("etc/group", _GROUP.encode()),
    ]
    if CATATONIT.is_file():
        program = [copy_entry("pause", CATATONIT, mode=0o755)]
    else:
        check_busybox()
        program = [copy_entry("bin/busybox", Path("/bin/busybox"), mode=0o755)]
        program.append(symlink_entry("bin/sh", "busybox"))
        program.append(symlink_entry("bin/sleep", "busybox"))
    return [LayerSpec([*base, *program], compression, created_by="teaching-cri: infra")]


def infra_config() -> dict[str, Any]:
    if CATATONIT.is_file():
        return {"Entrypoint": ["/pause", "-P"], "StopSignal": "SIGTERM"}
    loop = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"
    return {"Entrypoint": ["/bin/sh", "-c", loop], "Env": ["PATH=/bin"], "StopSignal": "SIGTERM"}


def build_infra_image(layout_dir: Path, *, ref_name: str | None = None) -> ImageInfo:
    """The built-in infra image (``teaching-cri.local/pause``) for offline machines."""
    return build_image(
        layout_dir,
        infra_layers(),
        config=infra_config(),
        platform=host_platform(),
        ref_name=ref_name,
    )
