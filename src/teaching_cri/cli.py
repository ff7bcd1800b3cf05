"""The ``teaching-cri`` command: serve, demo, trace follow/show, charts, fidelity."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__
from .config import KEYS, LOG_LEVELS, ConfigError, resolve
from .runtime.backends import BACKEND_NAMES

if TYPE_CHECKING:
    from .client import Client
    from .trace.events import TraceEvent

T = TypeVar("T")

PROG = "teaching-cri"


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the CRI server on a unix socket")
    p.add_argument("--config", type=Path, help="TOML file with any of: " + ", ".join(KEYS))
    p.add_argument("--socket", help="unix socket to listen on")
    p.add_argument("--root", help="persistent state directory")
    p.add_argument("--state", help="runtime state directory (sockets, shim files)")
    p.add_argument("--stream-address", help="HOST:PORT of the streaming server (127.0.0.1:10350)")
    p.add_argument("--runtime", help=f"backend: {', '.join(BACKEND_NAMES)} (auto)")
    p.add_argument("--runc", help="the OCI runtime binary, runc or crun (runc, from PATH)")
    p.add_argument("--pause-image", help="the pods' infra image (registry.k8s.io/pause:3.10)")
    p.add_argument("--cni-conf-dir", help="where the CNI network configs are (/etc/cni/net.d)")
    p.add_argument(
        "--seccomp-profile-root",
        help="where relative Localhost seccomp profiles are (<root>/seccomp)",
    )
    p.add_argument("--stream-tls-cert", help="PEM certificate: the streaming server speaks TLS")
    p.add_argument("--stream-tls-key", help="PEM key of --stream-tls-cert")
    p.add_argument("--stream-max-sessions", help="streaming sessions at a time (128)")
    p.add_argument("--log-level", help=f"{', '.join(LOG_LEVELS)} (info)")
    p.add_argument("--trace-file", help="also write every trace event to this JSONL file")
    p.add_argument("--trace", choices=("on", "off"), help="emit trace events (on)")


def _socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", type=Path, help="the server's socket (default: the standard one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    demo = sub.add_parser("demo", help="walk through the RPCs that exist, showing each chart")
    _socket_arg(demo)
    demo.add_argument("--svg-dir", type=Path, help="also write each call's chart as SVG here")
    demo.add_argument("--color", action=argparse.BooleanOptionalAction, default=None)

    trace = sub.add_parser("trace", help="watch or draw a live server's traces")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    follow = tsub.add_parser("follow", help="print events as they happen, one per line")
    _socket_arg(follow)
    follow.add_argument("--chart", action="append", default=[], help="only this chart (repeatable)")
    follow.add_argument("--container", default="", help="only events about this container id")
    follow.add_argument("--sandbox", default="", help="only events about this sandbox id")
    follow.add_argument(
        "--since", type=float, default=0.0, help="first replay the last SECONDS of buffered events"
    )
    show = tsub.add_parser("show", help="draw the latest trace of a chart")
    _socket_arg(show)
    show.add_argument("chart")
    show.add_argument("--format", choices=("text", "svg", "png"), default="text")
    show.add_argument("-o", "--output", type=Path, help="file to write (svg/png)")

    images = sub.add_parser("images", help="load images without a registry")
    isub = images.add_subparsers(dest="images_command", required=True)
    imp = isub.add_parser("import", help="load an OCI layout archive or a docker save archive")
    _socket_arg(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", default="", help="tag the image with this reference")
    build = isub.add_parser("build-local", help="build a small image from the host's busybox")
    _socket_arg(build)
    build.add_argument("name", help='for example "teaching-cri.local/busybox:latest"')

    cni = sub.add_parser("cni", help="pod networking")
    csub = cni.add_subparsers(dest="cni_command", required=True)
    install = csub.add_parser(
        "install",
        help="write a default network config for pods: bridge + host-local, portmap for hostPorts",
    )
    install.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    install.add_argument("--subnet", default="10.88.0.0/16")
    install.add_argument("--bridge", default="tcri0")
    install.add_argument("--force", action="store_true", help="replace a config of ours")

    charts = sub.add_parser("charts", help="list the flow charts, or draw one")
    charts.add_argument("name", nargs="?")
    charts.add_argument("--format", choices=("text", "svg", "png"), default="text")
    charts.add_argument("-o", "--output", type=Path)

    fidelity = sub.add_parser(
        "fidelity",
        help="which chart nodes the traces of a run visited, which are absent, which never ran",
    )
    fidelity.add_argument(
        "--trace-file",
        type=Path,
        action="append",
        default=[],
        help="a JSONL trace file or a directory of them (repeatable; "
        "default: $TEACHING_CRI_TRACE_DIR, where the test suite leaves its traces)",
    )
    fidelity.add_argument("--format", choices=("text", "svg"), default="text")
    fidelity.add_argument(
        "-o", "--output", type=Path, default=Path("."), help="directory for the SVGs (.)"
    )
    fidelity.add_argument(
        "--fail-under",
        type=float,
        default=0.0,
        metavar="PERCENT",
        help="exit 1 if the seed charts' honest-visit figure is under PERCENT",
    )
    return parser


def _fidelity(args: argparse.Namespace) -> int:
    from .trace.charts import ChartSet
    from .trace.fidelity import (
        ENV_TRACE_DIR,
        default_trace_paths,
        format_text,
        heat_svg,
        report_from_files,
        trace_files,
    )

    named = args.trace_file or default_trace_paths()
    if not named:
        print(f"{PROG}: error: no --trace-file given and {ENV_TRACE_DIR} not set", file=sys.stderr)
        return 2
    files = trace_files(named)
    missing = [str(f) for f in files if not f.exists()]
    if missing or not files:
        what = ", ".join(missing) if missing else "no *.jsonl in " + ", ".join(map(str, named))
        print(f"{PROG}: error: {what}", file=sys.stderr)
        return 2
    try:
        report = report_from_files(files, ChartSet.load())
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(format_text(report))
    if args.format == "svg":
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            for fid in report.charts:
                (args.output / f"{fid.chart.name}.svg").write_text(heat_svg(fid))
        except OSError as exc:
            print(f"{PROG}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"{len(report.charts)} heat maps in {args.output}")
    return 1 if report.percent() < args.fail_under else 0


def _cni_install(args: argparse.Namespace) -> int:
    """Write ``10-teaching-cri.conflist``; the server and the kubelet pick the
    first config in the directory, so an existing one of another name wins."""
    import ipaddress
    import json

    from .manager.cni import default_conflist

    try:
        subnet = ipaddress.ip_network(args.subnet, strict=True)
    except ValueError as exc:
        print(f"{PROG}: error: --subnet {args.subnet!r}: {exc}", file=sys.stderr)
        return 2
    if not 0 < len(args.bridge) <= 15:
        print(f"{PROG}: error: --bridge: a Linux interface name has 1-15 bytes", file=sys.stderr)
        return 2
    path = args.conf_dir / "10-teaching-cri.conflist"
    if path.exists() and not args.force:
        print(f"{PROG}: error: {path} exists (--force replaces it)", file=sys.stderr)
        return 1
    try:
        args.conf_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(default_conflist(str(subnet), args.bridge), indent=2) + "\n")
    except OSError as exc:
        print(f"{PROG}: error: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    others = sorted(
        p.name
        for p in args.conf_dir.iterdir()
        if p != path and p.suffix in (".conf", ".conflist", ".json")
    )
    print(f"wrote {path}")
    if others and others[0] < path.name:
        print(f"note: {others[0]} sorts first and will be used instead")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .daemon import StartupError, run
    from .manager.runtime_manager import StateError
    from .trace.charts import ChartError

    values = {k: getattr(args, k.replace("-", "_")) for k in KEYS}
    try:
        config = resolve(values, args.config)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # grpc's own debug messages (one per callback) would drown ours.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    # The websockets library logs request paths, and a path holds a token.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        asyncio.run(run(config))
    except (StartupError, StateError, ChartError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def format_event_line(event: TraceEvent, dropped: int = 0) -> str:
    when = datetime.fromtimestamp(event.unix_nano / 1e9).strftime("%H:%M:%S.%f")
    ids = [f"trace={event.trace_id[:8]}", f"span={event.span_id[:8]}"]
    ids += [
        f"{k}={v}"
        for k, v in sorted(event.attributes.items())
        if k in ("container_id", "sandbox_id", "code", "error")
    ]
    label = f" [{event.label}]" if event.label else ""
    line = f"{when}  {event.chart:<22} {event.kind.value:<6} {event.node}{label}  {' '.join(ids)}"
    return (f"({dropped} events dropped)\n" if dropped else "") + line


def _follow(args: argparse.Namespace) -> int:
    import time

    import grpc

    from .client import connect

    try:
        client = connect(args.socket)
    except ConnectionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    since = time.time_ns() - int(args.since * 1e9) if args.since > 0 else 0
    try:
        for event, dropped in client.follow(
            charts=args.chart,
            container_id=args.container,
            sandbox_id=args.sandbox,
            since_unix_nano=since,
        ):
            print(format_event_line(event, dropped), flush=True)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED:
            return 0
        print(f"{PROG}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    return 0


def _write_rendering(
    chart_name: str, fmt: str, output: Path | None, events: list[TraceEvent]
) -> int:
    from .trace.charts import ChartSet
    from .trace.render import render_png, render_svg, render_text

    charts = ChartSet.load()
    if chart_name not in charts:
        print(
            f"{PROG}: error: unknown chart {chart_name!r}; known: {', '.join(sorted(charts))}",
            file=sys.stderr,
        )
        return 2
    chart = charts[chart_name]
    if fmt == "text":
        print(render_text(chart, events, color=sys.stdout.isatty()))
        return 0
    data = render_svg(chart, events).encode() if fmt == "svg" else render_png(chart, events)
    if output is None:
        sys.stdout.buffer.write(data)
        return 0
    try:
        output.write_bytes(data)
    except OSError as exc:
        print(f"{PROG}: error: {output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(output)
    return 0


def _show(args: argparse.Namespace) -> int:
    from .trace.charts import ChartSet

    known = ChartSet.load()
    if args.chart not in known:
        print(
            f"{PROG}: error: unknown chart {args.chart!r}; known: {', '.join(sorted(known))}",
            file=sys.stderr,
        )
        return 2
    events = _ask_server(args.socket, lambda client: client.recent(charts=[args.chart]))
    if events is None:
        return 1
    return _write_rendering(args.chart, args.format, args.output, list(events))


def _charts(args: argparse.Namespace) -> int:
    from .trace.charts import ChartSet

    if not args.name:
        for name, chart in sorted(ChartSet.load().items()):
            print(f"{name:<24} {chart.title}")
        return 0
    return _write_rendering(args.name, args.format, args.output, [])


def _images(args: argparse.Namespace) -> int:
    from .api import admin_pb2

    def call(client: Client) -> Any:
        if args.images_command == "import":
            request = admin_pb2.ImportImageRequest(path=str(args.file.absolute()), name=args.name)
            return client.admin.ImportImage(request, timeout=600)
        build = admin_pb2.BuildLocalImageRequest(name=args.name)
        return client.admin.BuildLocalImage(build, timeout=600)

    resp = _ask_server(args.socket, call)
    if resp is None:
        return 1
    print(resp.image_ref, *resp.repo_tags)
    return 0


def _ask_server(socket: Path | None, call: Callable[[Client], T]) -> T | None:
    """Run ``call`` against the server; on failure print one line and return None."""
    import grpc

    from .client import connect

    try:
        with connect(socket) as client:
            return call(client)
    except ConnectionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"{PROG}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.socket, args.svg_dir, args.color)
    if args.command == "images":
        return _images(args)
    if args.command == "trace":
        return _follow(args) if args.trace_command == "follow" else _show(args)
    if args.command == "cni":
        return _cni_install(args)
    if args.command == "fidelity":
        return _fidelity(args)
    return _charts(args)


if __name__ == "__main__":
    sys.exit(main())
