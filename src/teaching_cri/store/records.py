"""What both stores share: an index with prefix lookup, name reservation,
atomic persistence and containerd's load policy (``server/restart.go``: a
record that cannot be read is never a reason to kill or delete anything)."""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..errors import AlreadyExists, InvalidArgument
from ..fsutil import atomic_write_json, move_aside

log = logging.getLogger(__name__)


class Record(Protocol):
    """A dataclass with an id and a name, as both records are."""

    id: str
    name: str


R = TypeVar("R", bound=Record)


class Store(abc.ABC, Generic[R]):
    """Records of one kind, by id, in memory and in ``directory``.

    Every method is synchronous: between two awaits of a flow, a store is
    consistent, and a check followed by a reservation with no await between
    them is atomic with respect to every other call."""

    kind: str  # "container" or "pod sandbox", for messages

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._index: dict[str, R] = {}
        self._names: dict[str, str] = {}  # name → id, from reservation to deletion

    # -- the layout on disk, per kind ------------------------------------------------

    @abc.abstractmethod
    def path(self, record_id: str) -> Path:
        """Where the record of ``record_id`` is kept."""

    @abc.abstractmethod
    def paths(self) -> Iterator[tuple[str, Path]]:
        """Every record file on disk, with the id it is for."""

    @abc.abstractmethod
    def document(self, record: R) -> dict[str, Any]:
        """The record as its JSON holds it."""

    @abc.abstractmethod
    def parse(self, data: dict[str, Any]) -> R:
        """A record back from its JSON; ``TypeError`` or ``ValueError`` if it is not one."""

    def remove_files(self, record_id: str) -> None:
        self.path(record_id).unlink(missing_ok=True)

    # -- the load policy -----------------------------------------------------------

    def load(self, placeholder: Callable[[str, str], R]) -> list[R]:
        """Every record on disk into the index. One that cannot be read is moved
        aside (``<name>.unreadable-<ns>``) and logged with its path, and
        ``placeholder(id, why)`` stands for it, saved, so that its container or
        pod stays listed and removable."""
        loaded = []
        for record_id, path in sorted(self.paths()):
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                record = self.parse(data)
            except (OSError, ValueError, TypeError) as exc:
                aside = move_aside(path, "unreadable")
                log.error(
                    "%s record %s cannot be read (%s): moved to %s", self.kind, path, exc, aside
                )
                why = f"{path}: {exc}; the file is kept as {aside.name}"
                record = placeholder(record_id, why)
                self.save(record)
            self._index[record.id] = record
            self._names[record.name] = record.id
            loaded.append(record)
        return loaded

    # -- names ---------------------------------------------------------------------

    def holder(self, name: str) -> str | None:
        """The id that holds ``name``, reserved or saved."""
        return self._names.get(name)

    def reserve(self, name: str, record_id: str) -> None:
        """Hold ``name`` for ``record_id`` until it is deleted or released."""
        holder = self._names.get(name)
        if holder is not None and holder != record_id:
            raise AlreadyExists(
                f"{self.kind} name {name!r} is in use by {holder[:12]}: remove it first"
            )
        self._names[name] = record_id

    def release(self, name: str, record_id: str) -> None:
        """A reservation given back (the create failed)."""
        if self._names.get(name) == record_id:
            del self._names[name]

    # -- the index and the files ------------------------------------------------------

    def persist(self, record: R) -> None:
        """Written whole or not at all (``fsutil.atomic_write_json``), not yet
        indexed: an intent, for a restart to find, that no lookup shows."""
        atomic_write_json(self.path(record.id), self.document(record))

    def save(self, record: R) -> None:
        """Persisted and indexed: from here on lookups and lists see it."""
        self.persist(record)
        self._index[record.id] = record

    def delete(self, record: R) -> None:
        self.remove_files(record.id)
        self._index.pop(record.id, None)
        self.release(record.name, record.id)

    def get(self, record_id: str) -> R | None:
        return self._index.get(record_id)

    def list(self) -> list[R]:
        return [self._index[k] for k in sorted(self._index)]

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._index

    def resolve(self, given: str) -> str | None:
        """GetRealContainerOrSandboxID's lookup: a full id, or the one id that
        starts with ``given``; ``None`` when none does; ambiguous is an error."""
        if given in self._index:
            return given
        matches = [k for k in self._index if k.startswith(given)]
        if len(matches) > 1:
            raise InvalidArgument(
                f"{self.kind} id prefix {given!r} is ambiguous: {len(matches)} match"
            )
        return matches[0] if matches else None
