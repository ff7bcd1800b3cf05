"""Every CRI method fuzzed against one live server (issue 17, item 5).

The requests are made from the proto's own descriptors (``api_pb2``): any
field of any message may be set, to values a kubelet would never send:
strings with NUL, ``..``, ``/``, newlines, unicode, a few kilobytes or a few
hundred; integers at their type's edges; enum numbers no enum names; nested
messages three deep; maps and repeated fields of several entries. Ids are
drawn from what exists (a pod and a running container the fixture made) as
often as from nowhere, so the requests get past "not found".

Each answer must be a proper gRPC status: OK, or a code the CRI documents
for a refusal, with a message; never UNKNOWN, never INTERNAL from an
exception (the RPC layer names those "internal error"). The server must stay
up. After each example, whatever the fuzzed calls created must be removable
by an ordinary Stop and Remove; at the end, with the server stopped, no
process of it and no mount under its directories may be left.

Destructive calls (Stop*, Remove*) never get the fixture's ids, or a prefix
of them: the other examples need those objects.

The budget: ``TEACHING_CRI_FUZZ_EXAMPLES`` requests (10,000 by default), in
batches of ``BATCH`` per hypothesis example; ``derandomize`` for CI, so a
failure there is the same failure here. ``scripts/fuzz`` runs more, with a
random seed (``TEACHING_CRI_FUZZ_RANDOM=1``) and a time limit
(``TEACHING_CRI_FUZZ_SECONDS``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teaching_cri.api import admin_pb2, api_pb2
from teaching_cri.client import Client
from teaching_cri.trace.charts import ChartSet
from teaching_cri.trace.conformance import assert_conforms
from teaching_cri.trace.events import EventKind

from conftest import Server, check_trace_file, start_server
from test_containers import IMAGE

IS_ROOT = os.geteuid() == 0
REQUESTS = int(os.environ.get("TEACHING_CRI_FUZZ_EXAMPLES", "10000"))
BATCH = 10
SECONDS = float(os.environ.get("TEACHING_CRI_FUZZ_SECONDS", "0"))  # 0: no time limit
RANDOM = os.environ.get("TEACHING_CRI_FUZZ_RANDOM", "") == "1"
# scripts/fuzz: every finding appended to this file, the run going on past it
COLLECT = os.environ.get("TEACHING_CRI_FUZZ_COLLECT", "")
CALL_TIMEOUT = 60.0  # a unary call that takes longer has hung
STREAM_TIMEOUT = (
    0.1  # a server stream is read this long, then cancelled (GetContainerEvents never ends)
)

# The codes a refusal may carry (the CRI's and gRPC's documented meanings).
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,  # a registry that cannot be reached (PullImage)
    grpc.StatusCode.INTERNAL,  # only the runtime's own failures: see proper()
}
DESTRUCTIVE = {
    "StopPodSandbox",
    "RemovePodSandbox",
    "StopContainer",
    "RemoveContainer",
    "RemoveImage",
}
NASTY = [
    "",
    ".",
    "..",
    "../../..",
    "/",
    "/etc/passwd",
    "a\x00b",
    "\x00",
    "name\n",
    "a/b",
    "é",
    "\u202e",
    "😀",
    "-1",
    "%s%n",
    "${HOME}",
    " ",
    "x" * 256,
    "0" * 64,
    "registry.invalid/x:y",
    "busybox",
    "unix:///",
    "::",
]


@dataclass(repr=False)
class World:
    """The live server and what the examples must not destroy."""

    server: Server
    client: Client
    protected: set[str] = field(default_factory=set)  # ids and names destructive calls never get
    ids: list[str] = field(default_factory=list)  # what requests may name
    calls: int = 0

    def __repr__(self) -> str:
        return f"World({self.server.base})"


def _tier() -> tuple[str, ...]:
    return () if IS_ROOT else ("--runtime", "unprivileged")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is needed for the local image")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tcri-fz-") as base:
        empty_cni = Path(base) / "net.d"
        empty_cni.mkdir()
        srv = start_server(Path(base) / "srv", "--cni-conf-dir", str(empty_cni), *_tier())
        try:
            client = srv.client()
            client.admin.BuildLocalImage(admin_pb2.BuildLocalImageRequest(name=IMAGE))
            sandbox_id, cid = _keep(client, Path(base))
            image_id = client.image.ImageStatus(
                api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=IMAGE))
            ).image.id
            w = World(srv, client)
            w.protected = {sandbox_id, cid, image_id, IMAGE, image_id.removeprefix("sha256:")}
            w.ids = [sandbox_id, cid, sandbox_id[:12], cid[:12], image_id, IMAGE]
            yield w
            _cleanup(client, keep=set())
        finally:
            srv.trace_checked = True  # checked here, the known findings set apart
            code = srv.stop()
            leftovers = _leftovers(srv)
        assert not leftovers, f"left behind by the server: {leftovers}"
        assert srv.trace_file is not None
        problems = check_trace_file(srv.trace_file, ChartSet.load(), complete=code == 0)
        unknown = [p for p in problems if not known(p)]
        if COLLECT and unknown:
            with open(COLLECT, "a") as out:
                out.write("".join(f"{p}\n" for p in unknown))
            return
        assert not unknown, "spans that leave their charts:\n" + "\n".join(unknown[:5])


def _keep(client: Client, base: Path) -> tuple[str, str]:
    """The pod and the running container every example may name: on the
    host's network as root (no CNI needed), with loopback only as a user
    (rootless runc cannot join the host's)."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="keep", namespace="fuzz", uid="keep"),
        log_directory=str(base / "logs"),
    )
    if IS_ROOT:
        config.linux.security_context.namespace_options.network = api_pb2.NODE
    sandbox_id = client.runtime.RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)
    ).pod_sandbox_id
    container = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="keep"),
        image=api_pb2.ImageSpec(image=IMAGE),
        command=["sleep", "100000"],
        log_path="keep.log",
    )
    cid = client.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container, sandbox_config=config
        )
    ).container_id
    client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return sandbox_id, cid


def _cleanup(client: Client, keep: set[str]) -> list[str]:
    """Stop and remove every container and pod not in ``keep``; what would
    not go, with why."""
    stuck = []
    rt = client.runtime
    for c in rt.ListContainers(api_pb2.ListContainersRequest()).containers:
        if c.id in keep:
            continue
        try:
            rt.StopContainer(api_pb2.StopContainerRequest(container_id=c.id, timeout=0))
            rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=c.id))
        except grpc.RpcError as exc:
            stuck.append(f"container {c.id[:12]}: {exc.code().name} {exc.details()}")
    for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        if p.id in keep:
            continue
        try:
            rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=p.id))
            rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p.id))
        except grpc.RpcError as exc:
            stuck.append(f"pod {p.id[:12]}: {exc.code().name} {exc.details()}")
    return stuck


def _leftovers(srv: Server) -> list[str]:
    """Mounts under the server's directories, processes that name them."""
    found = []
    base = str(srv.base)
    for line in Path("/proc/mounts").read_text().splitlines():
        if base in line.split()[1]:
            found.append(f"mount {line.split()[1]}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (
                (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if base in cmdline:
            found.append(f"process {proc.name}: {cmdline[:120]}")
    return found


# --- requests from the descriptors ---------------------------------------------------

_INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def strings(ids: list[str]) -> st.SearchStrategy[str]:
    big = st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(["a", "/", "../", "\x00", "é", "😀"]),
        st.integers(1_000, 70_000),
    )
    return st.one_of(
        st.sampled_from(NASTY + ids),
        _TEXT,
        st.builds(lambda i, s: i + s, st.sampled_from(ids), _TEXT),
        big,
    )


def integers(kind: int) -> st.SearchStrategy[int]:
    low, high = _INT_EDGES[kind]
    return st.one_of(
        st.sampled_from([0, 1, -1 if low < 0 else 2, low, high]), st.integers(low, high)
    )


def scalar(data: st.DataObject, fd: FieldDescriptor, ids: list[str]) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return data.draw(strings(ids))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return data.draw(st.binary(max_size=200))
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return data.draw(st.booleans())
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return data.draw(st.floats(width=32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64))
    if fd.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return data.draw(st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1)))
    return data.draw(integers(fd.type))


def fill(data: st.DataObject, message: Message, ids: list[str], depth: int = 0) -> None:
    """Set some of ``message``'s fields, recursively, three levels at most."""
    for fd in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans(), label=fd.name):
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                key_fd, value_fd = (
                    fd.message_type.fields_by_name["key"],
                    fd.message_type.fields_by_name["value"],
                )
                target = getattr(message, fd.name)
                for _ in range(data.draw(st.integers(0, 4))):
                    key = scalar(data, key_fd, ids)
                    if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                        if depth < 2:
                            fill(data, target[key], ids, depth + 1)
                    else:
                        target[key] = scalar(data, value_fd, ids)
                continue
            if depth >= 2:
                continue
            if fd.is_repeated:
                for _ in range(data.draw(st.integers(0, 3))):
                    fill(data, getattr(message, fd.name).add(), ids, depth + 1)
            else:
                getattr(message, fd.name).SetInParent()
                fill(data, getattr(message, fd.name), ids, depth + 1)
        elif fd.is_repeated:
            getattr(message, fd.name).extend(
                scalar(data, fd, ids) for _ in range(data.draw(st.integers(0, 4)))
            )
        else:
            setattr(message, fd.name, scalar(data, fd, ids))


def strip_protected(message: Message, protected: set[str]) -> None:
    """A destructive call must not name what the other examples need: any
    string that is one of those ids, or a prefix of one, is changed."""
    for fd, value in list(message.ListFields()):
        if fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated:
            if value and any(p.startswith(value) or value.startswith(p) for p in protected):
                setattr(message, fd.name, "fuzz-" + value)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            kept = [
                v if not any(p.startswith(v) for p in protected if v) else "fuzz-" + v
                for v in value
            ]
            del value[:]
            value.extend(kept)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            for sub in value if fd.is_repeated else [value]:
                strip_protected(sub, protected)


METHODS: dict[str, tuple[str, MethodDescriptor]] = {
    method.name: (service.name, method)
    for service in api_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}


def request_type(method: MethodDescriptor) -> type[Message]:
    descriptor: Descriptor = method.input_type
    cls: type[Message] = getattr(api_pb2, descriptor.name)
    return cls


# --- the call and its judgement ---------------------------------------------------------


def call(world: World, service: str, method: MethodDescriptor, request: Message) -> str:
    """Make the call; '' if the answer is proper, else what was wrong."""
    stub = world.client.runtime if service == "RuntimeService" else world.client.image
    fn = getattr(stub, method.name)
    world.calls += 1
    started = time.monotonic()
    try:
        return _call(fn, method, request)
    finally:
        TIMES[method.name] = TIMES.get(method.name, 0.0) + time.monotonic() - started


TIMES: dict[str, float] = {}  # seconds spent per method: what to look at when tuning BATCH


def _call(fn: Any, method: MethodDescriptor, request: Message) -> str:
    try:
        if method.server_streaming:
            stream = fn(request, timeout=STREAM_TIMEOUT)
            try:
                for _ in stream:
                    break
            finally:
                stream.cancel()
        else:
            fn(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        return proper(method, exc)
    return ""


def proper(method: MethodDescriptor, exc: grpc.RpcError) -> str:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.CANCELLED and method.server_streaming:
        return ""  # we cancelled it
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
        return ""  # a stream that had nothing to say within our second
    if code not in REFUSALS:
        return f"{method.name}: {code.name}: {details[:300]}"
    if code is grpc.StatusCode.INTERNAL and "internal error" in details:
        return f"{method.name}: INTERNAL from an exception: {details[:300]}"
    if not details.strip():
        return f"{method.name}: {code.name} without a message"
    return ""


def alive(world: World) -> bool:
    try:
        world.client.runtime.Version(api_pb2.VersionRequest(), timeout=10)
    except grpc.RpcError:
        return False
    return world.server.process.poll() is None


# --- known findings, each an explicit example below (strict xfail) ---------------------


def known(finding: str) -> bool:
    """What the fuzzer found that is other files' to fix: the run does not
    fail on these; each has a strict-xfail example at the end of this file,
    which fails the suite (XPASS) once it is fixed, so the entry goes too."""
    return any(pattern in finding for pattern in KNOWN)


KNOWN: list[str] = []  # none open: each finding became an example below


_started = time.monotonic()


def _settings() -> Any:
    return settings(
        max_examples=int(SECONDS * 30) if SECONDS else max(1, REQUESTS // BATCH),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@_settings()
@given(data=st.data())
def test_every_method_answers_a_proper_status(world: World, data: st.DataObject) -> None:
    if SECONDS and time.monotonic() - _started > SECONDS:
        return  # scripts/fuzz's time is up: the remaining examples are not run
    problems = []
    for _ in range(BATCH):
        service, method = METHODS[data.draw(st.sampled_from(sorted(METHODS)), label="method")]
        request = request_type(method)()
        fill(data, request, world.ids)
        if method.name in DESTRUCTIVE:
            strip_protected(request, world.protected)
        problem = call(world, service, method, request)
        if problem and not known(problem):
            problems.append(f"{problem}\n    request: {str(request)[:500]!r}")
    stuck = _cleanup(world.client, keep=world.protected)
    assert alive(world), f"the server is down:\n{world.server.output()[-3000:]}"
    if COLLECT and (problems or stuck):
        with open(COLLECT, "a") as out:
            out.write("".join(f"{p}\n" for p in [*problems, *stuck]))
        return
    assert not problems, "improper answers:\n" + "\n".join(problems)
    assert not stuck, f"what the fuzzed calls created cannot be removed: {stuck}"


def test_the_fixture_objects_survived_the_fuzzing(world: World) -> None:
    """Runs after the fuzzing (file order): the pod and container it must not
    destroy are still there, the container still running."""
    rt = world.client.runtime
    running = {
        c.id
        for c in rt.ListContainers(api_pb2.ListContainersRequest()).containers
        if c.state == api_pb2.CONTAINER_RUNNING
    }
    assert running & world.protected, "the fixture's container is gone or stopped"


# --- the findings, one request each (known ones: strict xfails) -----------------------

# Refused at GetRealContainerOrSandboxID, whose edge "empty or ambiguous id"
# these charts draw (the fuzzer's first finding, fixed).
EMPTY_IDS = [
    ("Attach", api_pb2.AttachRequest(container_id="", stdout=True)),
    ("Exec", api_pb2.ExecRequest(container_id="", cmd=["true"], stdout=True)),
    ("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id="")),
]

# Refused inside the pod lookup step, which their charts draw an error edge from.
EMPTY_SANDBOX_IDS = [
    ("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id="")),
    ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id="")),
]


BAD_REQUESTS = [
    (
        "ListContainers",
        api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=-1))  # type: ignore[arg-type]
        ),
    ),
]


@pytest.mark.parametrize(("method", "request_"), BAD_REQUESTS, ids=[m for m, _ in BAD_REQUESTS])
def test_a_bad_filter_is_invalid_argument_along_its_chart(
    world: World, charts: ChartSet, method: str, request_: Message
) -> None:
    """Found by the fuzzer (it was INTERNAL, at a node with no error edge)."""
    since = time.time_ns()
    with pytest.raises(grpc.RpcError) as refused:
        getattr(world.client.runtime, method)(request_)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "ContainerState" in (refused.value.details() or "")
    time.sleep(0.2)
    assert_conforms(world.client.recent(since_unix_nano=since), charts)


@pytest.mark.parametrize("field", ["registry_token", "identity_token"])
def test_a_token_that_cannot_go_in_a_header_is_invalid_argument(
    world: World, charts: ChartSet, field: str
) -> None:
    """Found by the fuzzer as a normal user: a registry token with a non-ASCII
    character failed inside the HTTP client (INTERNAL). A bearer token is an
    HTTP header value (RFC 6750's b64token), refused before any request."""
    since = time.time_ns()
    auth = api_pb2.AuthConfig(**{field: "\x80"})
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="a/b"), auth=auth)
    with pytest.raises(grpc.RpcError) as refused:
        world.client.image.PullImage(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert f"auth.{field}" in (refused.value.details() or "")
    time.sleep(0.2)
    events = world.client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    errors = [e.node for e in events if e.chart == "PullImage" and e.kind is EventKind.ERROR]
    assert errors == ["pull_image_request_from_grpc"], errors


@pytest.mark.parametrize(("method", "request_"), EMPTY_IDS, ids=[m for m, _ in EMPTY_IDS])
def test_an_empty_id_is_refused_along_its_chart(
    world: World, charts: ChartSet, method: str, request_: Message
) -> None:
    """Found by issue 17 item 5's fuzzer: INVALID_ARGUMENT from inside
    GetRealContainerOrSandboxID, which the charts now draw an error edge from."""
    since = time.time_ns()
    with pytest.raises(grpc.RpcError) as refused:
        getattr(world.client.runtime, method)(request_)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is empty" in (refused.value.details() or "")
    time.sleep(0.2)
    events = world.client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    errors = [e.node for e in events if e.chart == method and e.kind is EventKind.ERROR]
    assert errors == ["get_real_container_or_sandbox_id"], errors


@pytest.mark.parametrize(
    ("method", "request_"), EMPTY_SANDBOX_IDS, ids=[m for m, _ in EMPTY_SANDBOX_IDS]
)
def test_an_empty_sandbox_id_is_refused_along_its_chart(
    world: World, charts: ChartSet, method: str, request_: Message
) -> None:
    """Found by issue 17 item 5's fuzzer: an empty id is INVALID_ARGUMENT (not
    "removed already": only an unknown id is), leaving by the lookup's error edge."""
    since = time.time_ns()
    with pytest.raises(grpc.RpcError) as refused:
        getattr(world.client.runtime, method)(request_)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(0.2)
    events = world.client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    errors = [e.node for e in events if e.chart == method and e.kind is EventKind.ERROR]
    assert errors == ["sandbox_manager_get_sandbox"], errors


@pytest.mark.parametrize("name", ["a\x00b", "::", "UPPER/case:x:y", "with space"])
def test_a_list_images_filter_naming_no_valid_image_is_refused_along_its_chart(
    world: World, charts: ChartSet, name: str
) -> None:
    """Found by issue 17's fuzzer: a filter that names no valid reference and no
    id is INVALID_ARGUMENT naming what it got, and leaves ListImages by the
    error edge its chart draws from filter by image."""
    since = time.time_ns()
    with pytest.raises(grpc.RpcError) as refused:
        world.client.image.ListImages(
            api_pb2.ListImagesRequest(
                filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=name))
            )
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details()
    time.sleep(0.2)
    events = world.client.recent(since_unix_nano=since)
    assert_conforms(events, charts)
    errors = [e.node for e in events if e.chart == "ListImages" and e.kind is EventKind.ERROR]
    assert errors == ["filter_by_image"], errors
