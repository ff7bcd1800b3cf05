"""How fast is the image path? Prints figures; asserts nothing.

The image is made here, the same on every run (``--seed``), from three layers:

* **small files**: ``--small-files`` text files of 1 to ``--small-max-kib`` KiB in
  nested directories. It compresses well, and what it costs is per file (open,
  write, chmod, utime, close).
* **big files**: ``--big-mib`` MiB of random bytes, in files of 8 to 32 MiB. It
  does not compress, and what it costs is per byte (decompress, hash, copy).
* **busybox**: the host's static ``/bin/busybox`` and its applet symlinks (left
  out, with a message, if there is none).

1. Pull: the image is pushed to Debian's ``docker-registry`` on 127.0.0.1 (the
   registry the tests use, ``tests/registry.py``), then ``ImageManager.pull`` is
   timed end to end, every round into a fresh store, for each snapshot mode
   (``copy``; ``overlay`` too when root). A ``PullImage`` span with a ring-buffer
   sink around the call splits the time, by the step events' timestamps, into
   *resolve* (the manifest), *fetch* (config and layers streamed into the
   content store, each checked against its digest), *unpack* (the snapshots)
   and *commit*. Pull and fetch throughput are compressed (blob) bytes per
   second, unpack throughput uncompressed (tar) bytes per second.
2. Unpack: every layer blob, in every ``--compressions``, applied with
   ``apply_layer`` into a fresh directory, against GNU ``tar -x`` (``-z`` for
   gzip, ``--zstd`` for zstd) of the same blob into another fresh directory;
   median of ``--rounds`` rounds, ours and tar's alternating so that drift in
   the machine's load hits both alike; MB/s of uncompressed (tar) bytes. The
   target is ours ≤ 1.5 × tar's time. Two differences are inherent and worth
   knowing when reading the ratio: ``apply_layer`` reads and decompresses the
   blob twice (it validates the whole layer before it writes anything), and
   ``tar -z``/``--zstd`` runs the decompressor as a second process, so on two
   cores decompression overlaps extraction.

All figures are warm-cache: the page cache is not dropped (that needs root and
a machine of one's own), so each measurement follows one unmeasured warm-up,
blobs are read from memory, and extracted files go to the page cache without
fsync, for tar and for us alike. MB is 10^6 bytes.

The file system under ``--dir`` matters as much as the code: on a tmpfs
(``--dir /dev/shm``) creating a file costs microseconds, so the layer of small
files measures what our Python costs per entry; on a disk (or a virtual one)
it may cost near a millisecond in the kernel, for tar as for us, and the
ratios shrink towards 1. The header line says which file system it was.
``--profile`` adds a cProfile of one ``apply_layer`` (``--profile-layer``
picks which; the biggest by default).

    python benchmarks/image_pull.py [--rounds 5] [--pull-rounds 3] [--dir /dev/shm]
                                    [--compressions gzip,zstd] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import pstats
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from teaching_cri.image.hostimages import BusyboxUnavailable, busybox_layers
from teaching_cri.image.layer import BuiltLayer, Entry, LayerSpec, build_layer, file_entry
from teaching_cri.image.layout import build_image
from teaching_cri.image.manager import ImageManager
from teaching_cri.image.push import push_layout
from teaching_cri.image.registry import Credentials, RegistryConfig
from teaching_cri.image.unpack import apply_layer
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.sinks import RingBufferSink
from teaching_cri.trace.tracer import Tracer

# The test registry helper lives in tests/, which is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from registry import RegistryUnavailable, run_registry

Compression = Literal["gzip", "zstd", "none"]
COMPRESSIONS: dict[str, Compression] = {"gzip": "gzip", "zstd": "zstd", "none": "none"}
TAR_FLAGS: dict[Compression, list[str]] = {"gzip": ["-z"], "zstd": ["--zstd"], "none": []}
MB = 1_000_000
MIB = 1 << 20
TARGET = 1.5  # ours / tar, at most


# --- The image -------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """One layer's entries, before compression."""

    name: str
    entries: list[Entry]


@dataclass(frozen=True)
class Blob:
    """One layer, compressed one way, written to a file."""

    name: str
    compression: Compression
    path: Path
    media_type: str
    size: int  # of the blob
    tar_size: int  # of the uncompressed tar
    files: int
    built: BuiltLayer


def small_files(count: int, max_kib: int, rng: random.Random) -> Content:
    """Text made of a small vocabulary, as in documentation or source trees."""
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(2000)
    ]
    lines = [" ".join(rng.choices(words, k=rng.randint(4, 14))) + "\n" for _ in range(4000)]
    entries: list[Entry] = []
    for i in range(count):
        size = rng.randint(1024, max_kib * 1024)
        parts: list[str] = []
        total = 0
        while total < size:
            line = rng.choice(lines)
            parts.append(line)
            total += len(line)
        path = f"usr/share/bench/d{i % 16:02}/s{i % 7}/t{i % 3}/file{i:05}.txt"
        entries.append(file_entry(path, "".join(parts).encode()[:size]))
    return Content("small files", entries)


def big_files(total_mib: int, rng: random.Random) -> Content:
    entries: list[Entry] = []
    remaining = total_mib * MIB
    while remaining > 0:
        size = min(remaining, rng.randint(8, 32) * MIB)
        entries.append(file_entry(f"opt/bench/blob{len(entries)}.bin", rng.randbytes(size)))
        remaining -= size
    return Content("big files", entries)


def busybox() -> Content | None:
    try:
        applets = busybox_layers()[1]  # /bin/busybox and its symlinks
    except BusyboxUnavailable as e:
        print(f"busybox layer skipped: {e}")
        return None
    return Content("busybox", list(applets.entries))


def write_blobs(
    contents: Sequence[Content], compressions: Sequence[Compression], where: Path
) -> list[Blob]:
    where.mkdir(parents=True, exist_ok=True)
    blobs: list[Blob] = []
    tar_sizes = {c.name: len(build_layer(LayerSpec(c.entries, "none")).blob) for c in contents}
    for c in compressions:
        for content in contents:
            built = build_layer(LayerSpec(content.entries, c))
            path = where / f"{content.name.replace(' ', '-')}.tar.{c}"
            path.write_bytes(built.blob)
            files = sum(e.kind == "file" for e in content.entries)
            info = built.info
            blobs.append(
                Blob(
                    content.name,
                    c,
                    path,
                    info.media_type,
                    info.size,
                    tar_sizes[content.name],
                    files,
                    built,
                )
            )
    return blobs


# --- Pull ------------------------------------------------------------------------

PHASES = ("resolve", "fetch", "unpack", "commit")
# The step each phase begins with; the next phase's first step (or the span's end) ends it.
PHASE_STARTS = ("resolve_manifest", "fetch_config", "unpack_layers", "commit_image_record")


async def _pull_once(manager: ImageManager, name: str) -> dict[str, float]:
    """Seconds per phase, from the step events of one traced pull, and in total."""
    ring = RingBufferSink()
    tracer = Tracer(ChartSet.load(), [ring])
    start = time.monotonic_ns()
    with tracer.span("PullImage", image=name) as span:
        await manager.pull(name, Credentials())
    end = time.monotonic_ns()
    first: dict[str, int] = {}
    for event in ring.snapshot():
        if event.span_id == span.span_id:
            first.setdefault(event.node, event.monotonic_ns)
    times = {"total": (end - start) / 1e9}
    if all(node in first for node in PHASE_STARTS):  # else the chart changed: total only
        marks = [first[node] for node in PHASE_STARTS] + [end]
        times.update((phase, (marks[i + 1] - marks[i]) / 1e9) for i, phase in enumerate(PHASES))
    return times


def pull(blobs: Sequence[Blob], rounds: int, tmp: Path) -> None:
    print("\n== Pull from a local registry (ImageManager.pull, end to end) ==")
    layers = [b.built for b in blobs]
    compressed = sum(b.size for b in blobs)
    uncompressed = sum(b.tar_size for b in blobs)
    try:
        with run_registry(tmp / "registry") as reg:
            layout = tmp / "layout"
            info = build_image(layout, layers, ref_name="latest")
            with httpx.Client(trust_env=False, timeout=120) as client:
                push_layout(
                    layout, reg.url, "bench/image", "latest", source="latest", client=client
                )
            name = f"{reg.host}/bench/image:latest"
            print(
                f"image {info.manifest_digest[:19]}…: {len(layers)} {blobs[0].compression} "
                f"layers, {compressed / MB:.1f} MB compressed, {uncompressed / MB:.1f} MB of tar"
            )
            modes = ["copy"] + (["overlay"] if os.geteuid() == 0 else [])
            if len(modes) == 1:
                print("overlay snapshots skipped: they need root")
            print(
                f"{'snapshots':<10} {'phase':<8} {'median':>9} {'MB/s':>8}  "
                f"(median of {rounds} rounds, fresh store each)"
            )
            for mode in modes:
                samples: dict[str, list[float]] = {}
                for i in range(rounds + 1):  # the first is the warm-up
                    root = tmp / f"store-{mode}-{i}"
                    manager = ImageManager(root, RegistryConfig(), snapshot_mode=mode)
                    times = asyncio.run(_pull_once(manager, name))
                    shutil.rmtree(root)
                    if i:
                        for phase, t in times.items():
                            samples.setdefault(phase, []).append(t)
                per_byte = {"total": compressed, "fetch": compressed, "unpack": uncompressed}
                for phase in ("total", *PHASES):
                    if phase not in samples:
                        print(f"{'':<10} {phase:<8} n/a: the trace did not show this phase")
                        continue
                    t = statistics.median(samples[phase])
                    rate = f"{per_byte[phase] / MB / t:8.1f}" if phase in per_byte else " " * 8
                    note = {
                        "total": "compressed bytes / whole pull",
                        "fetch": "download + sha256 into the content store",
                        "unpack": "tar bytes / unpack"
                        + (" (copies each parent snapshot first)" if mode == "copy" else ""),
                    }.get(phase, "")
                    label = mode if phase == "total" else ""
                    print(f"{label:<10} {phase:<8} {t * 1000:7.0f} ms {rate}  {note}")
    except RegistryUnavailable as e:
        print(f"pull skipped: {e}")


# --- Unpack ----------------------------------------------------------------------


def _fresh(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


def _ours(blob: Blob, mode: str, base: Path) -> Callable[[], float]:
    def run() -> float:
        scratch = _fresh(base)
        target = scratch / "fs"
        if mode == "merge":
            target.mkdir()
        start = time.perf_counter()
        apply_layer(blob.path, target, media_type=blob.media_type, mode=mode)
        elapsed = time.perf_counter() - start
        shutil.rmtree(scratch)
        return elapsed

    return run


def _tar(blob: Blob, base: Path) -> Callable[[], float]:
    cmd = ["tar", "-x", *TAR_FLAGS[blob.compression], "-f", str(blob.path), "-C"]

    def run() -> float:
        scratch = _fresh(base)
        start = time.perf_counter()
        subprocess.run([*cmd, str(scratch)], check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        shutil.rmtree(scratch)
        return elapsed

    return run


def _tar_works(blob: Blob, base: Path) -> str | None:
    """None if tar can extract this blob; else why not."""
    try:
        _tar(blob, base)()
    except FileNotFoundError:
        return "no tar on PATH"
    except subprocess.CalledProcessError as e:
        return f"tar {' '.join(TAR_FLAGS[blob.compression])} failed: {e.stderr.decode().strip()}"
    return None


def _rate(size: int, seconds: float | None) -> str:
    return f"{size / MB / seconds:8.1f}" if seconds else f"{'n/a':>8}"


def unpack(blobs: Sequence[Blob], rounds: int, tmp: Path) -> None:
    print("\n== Unpack: apply_layer against tar -x of the same blob ==")
    modes = ["merge"] + (["overlay"] if os.geteuid() == 0 else [])
    if len(modes) == 1:
        print("overlay mode skipped: it needs root")
    base = tmp / "unpack"
    base.mkdir()
    print(
        f"{'layer':<12} {'comp':<5} {'mode':<8} {'files':>6} {'tar MB':>7} {'blob MB':>8} "
        f"{'ours MB/s':>10} {'tar MB/s':>9} {'ours/tar':>9}"
    )
    totals: dict[tuple[str, str], list[float]] = {}  # (comp, mode) -> [bytes, ours s, tar s]
    for blob in blobs:
        why = _tar_works(blob, base)
        if why is not None:
            print(f"{blob.name:<12} {blob.compression:<5} tar row skipped: {why}")
        tar = None if why else _tar(blob, base)
        for mode in modes:
            ours = _ours(blob, mode, base)
            ours()  # warm up (tar was warmed by _tar_works)
            ours_s: list[float] = []
            tar_s: list[float] = []
            for i in range(rounds):
                pair = [(ours, ours_s), (tar, tar_s)]
                for fn, out in pair if i % 2 == 0 else reversed(pair):
                    if fn is not None:
                        out.append(fn())
            t_ours = statistics.median(ours_s)
            t_tar = statistics.median(tar_s) if tar_s else None
            ratio = f"{t_ours / t_tar:8.2f}×" if t_tar else f"{'n/a':>9}"
            print(
                f"{blob.name:<12} {blob.compression:<5} {mode:<8} {blob.files:>6} "
                f"{blob.tar_size / MB:7.1f} {blob.size / MB:8.1f} "
                f"{_rate(blob.tar_size, t_ours):>10} {_rate(blob.tar_size, t_tar):>9} {ratio}"
            )
            if t_tar is not None:
                total = totals.setdefault((blob.compression, mode), [0.0, 0.0, 0.0])
                total[0] += blob.tar_size
                total[1] += t_ours
                total[2] += t_tar
    for (comp, mode), (size, t_ours, t_tar) in totals.items():
        print(
            f"{'all layers':<12} {comp:<5} {mode:<8} {'':>6} {size / MB:7.1f} {'':>8} "
            f"{_rate(int(size), t_ours):>10} {_rate(int(size), t_tar):>9} {t_ours / t_tar:8.2f}×"
        )
    print(
        f"(median of {rounds} rounds, warm cache; ours/tar is time, lower is better; "
        f"target: ≤ {TARGET} × tar)"
    )


def profile(blobs: Sequence[Blob], name: str | None, tmp: Path, top: int) -> None:
    """cProfile of one apply_layer (merge) of a layer (the biggest by default)."""
    chosen = [b for b in blobs if b.name == name] if name else blobs
    if not chosen:
        print(f"\nprofile skipped: no layer named {name!r}")
        return
    blob = max(chosen, key=lambda b: b.tar_size)
    print(f"\n== cProfile: apply_layer(mode='merge') of {blob.name} ({blob.compression}) ==")
    scratch = _fresh(tmp)
    profiler = cProfile.Profile()
    profiler.enable()
    apply_layer(blob.path, scratch, media_type=blob.media_type, mode="merge")
    profiler.disable()
    shutil.rmtree(scratch)
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    print("-- by own time, everything:")
    stats.sort_stats("tottime").print_stats(top)
    print("-- unpack.py only, by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"unpack\.py", top)


def fs_type(path: Path) -> str:
    """The file system ``path`` is on (from /proc/mounts): results depend on it a lot."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-files", type=int, default=2000, help="files in layer 1")
    parser.add_argument("--small-max-kib", type=int, default=16, help="largest small file")
    parser.add_argument("--big-mib", type=int, default=80, help="MiB of random bytes in layer 2")
    parser.add_argument(
        "--compressions",
        default="gzip,zstd",
        help="comma-separated, of gzip, zstd, none; the first is the pushed image's",
    )
    parser.add_argument("--rounds", type=int, default=5, help="unpack rounds per row")
    parser.add_argument("--pull-rounds", type=int, default=3, help="pulls per snapshot mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-pull", action="store_true", help="only the unpack table")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to work (default: the system's temp dir)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one apply_layer")
    parser.add_argument(
        "--profile-layer", default=None, help="which layer to profile (default: the biggest)"
    )
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short round of a small image, for CI (the figures mean nothing)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.small_files, args.big_mib, args.rounds, args.pull_rounds = 20, 1, 1, 1
    compressions: list[Compression] = []
    for name in args.compressions.split(","):
        if name not in COMPRESSIONS:
            parser.error(f"unknown compression {name!r} (choose from {', '.join(COMPRESSIONS)})")
        compressions.append(COMPRESSIONS[name])

    tar = shutil.which("tar")
    version = "no tar on PATH"
    if tar is not None:
        out = subprocess.run([tar, "--version"], capture_output=True, text=True, check=False)
        version = (out.stdout.splitlines() or ["tar (unknown version)"])[0]
    print(
        f"Python {platform.python_version()}, {version}, "
        f"{os.cpu_count()} CPUs, {'root' if os.geteuid() == 0 else 'not root'}"
    )
    rng = random.Random(args.seed)
    start = time.perf_counter()
    contents = [
        small_files(args.small_files, args.small_max_kib, rng),
        big_files(args.big_mib, rng),
    ]
    if (bb := busybox()) is not None:
        contents.append(bb)
    with tempfile.TemporaryDirectory(prefix="tcri-bench-", dir=args.dir) as d:
        tmp = Path(d)
        blobs = write_blobs(contents, compressions, tmp / "blobs")
        print(
            f"built {len(blobs)} layer blobs in {time.perf_counter() - start:.1f} s; "
            f"working in {tmp} ({fs_type(tmp)})"
        )
        if not args.no_pull:
            pull([b for b in blobs if b.compression == compressions[0]], args.pull_rounds, tmp)
        unpack(blobs, args.rounds, tmp)
        if args.profile:
            first = [b for b in blobs if b.compression == compressions[0]]
            profile(first, args.profile_layer, tmp, args.profile_top)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
