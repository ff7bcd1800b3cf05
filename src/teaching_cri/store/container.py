"""The container store: containerd's ``internal/cri/store/container``.

Each container's record is ``<root>/containers/<id>.json``: the config as
sent, the name, the image, the log path, and what the runtime last said of it
(``container.json`` in the backend's state dir holds the runtime's own side:
pid, start, exit)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, cast

from ..api import api_pb2
from ..runtime.backend import ExitStatus
from .records import Store

# The states are CRI's own enum (api_pb2.ContainerState), in memory and on the
# wire; the record on disk names them ("CONTAINER_RUNNING"), for a reader.
State: TypeAlias = api_pb2.ContainerState
CREATED: State = api_pb2.CONTAINER_CREATED
RUNNING: State = api_pb2.CONTAINER_RUNNING
EXITED: State = api_pb2.CONTAINER_EXITED
UNKNOWN: State = api_pb2.CONTAINER_UNKNOWN
RECORD_UNREADABLE = "RecordUnreadable"  # the reason of a container loaded from a bad record
PENDING_CREATE = "create"  # the record's intent while CreateContainer runs


def state_name(state: State) -> str:
    """``exited`` for CONTAINER_EXITED: a state as a message says it."""
    return api_pb2.ContainerState.Name(state).removeprefix("CONTAINER_").lower()


@dataclass
class Container:
    """One container's record; the runtime fields follow the backend."""

    id: str
    name: str
    sandbox_id: str
    config_b64: str
    image: str  # as the config named it
    image_id: str
    created_at: int
    log_path: str
    internal_labels: dict[str, str] = field(default_factory=dict)
    state: State = CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    resources: dict[str, Any] = field(default_factory=dict)  # as last updated
    notes: dict[str, str] = field(default_factory=dict)
    # Written before anything outside the record exists (the rootfs mount, the
    # runtime container) and cleared once the client has its id: a record
    # found at start-up still saying "create" is a create cut short, undone whole.
    pending: str = ""

    @functools.cached_property
    def config(self) -> api_pb2.ContainerConfig:
        """Parsed once (ListContainers converts every container every second);
        never changed, so callers must not modify it."""
        config = api_pb2.ContainerConfig()
        config.ParseFromString(base64.b64decode(self.config_b64))
        return config

    @functools.cached_property
    def listing(self) -> api_pb2.Container:
        """This container as ListContainers shows it, but for its state."""
        config = self.config
        return api_pb2.Container(
            id=self.id,
            pod_sandbox_id=self.sandbox_id,
            metadata=config.metadata,
            image=api_pb2.ImageSpec(image=self.image_id),
            image_ref=self.image_id,
            image_id=self.image_id,
            created_at=self.created_at,
            labels=dict(config.labels),
            annotations=dict(config.annotations),
        )

    def exited(self, status: ExitStatus) -> None:
        self.state = EXITED
        self.finished_at = status.finished_at
        self.exit_code = status.exit_code
        self.reason = status.reason
        self.message = status.message


def unreadable(container_id: str, sandbox_id: str, why: str) -> Container:
    """What stands for a container whose record could not be read: UNKNOWN,
    the reason and the path in its status, a name no client can ask for."""
    return Container(
        container_id,
        f"k8s_unreadable-{container_id}_unknown_unknown_unknown_0",
        sandbox_id,
        "",
        "",
        "",
        0,
        "",
        state=UNKNOWN,
        reason=RECORD_UNREADABLE,
        message=why,
    )


class ContainerStore(Store[Container]):
    kind = "container"

    def path(self, record_id: str) -> Path:
        return self.directory / f"{record_id}.json"

    def paths(self) -> Iterator[tuple[str, Path]]:
        for path in self.directory.glob("*.json"):
            yield path.stem, path

    def document(self, record: Container) -> dict[str, Any]:
        return asdict(record) | {"state": api_pb2.ContainerState.Name(record.state)}

    def parse(self, data: dict[str, Any]) -> Container:
        """``ValueError`` for a state CRI has no name for."""
        state = cast(State, api_pb2.ContainerState.Value(data.pop("state", "CONTAINER_CREATED")))
        return Container(**data, state=state)

    def in_sandbox(self, sandbox_id: str) -> list[Container]:
        return [c for c in self._index.values() if c.sandbox_id == sandbox_id]
