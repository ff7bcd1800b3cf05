"""The backends' own records, kept in memory and written through.

A backend keeps one JSON record per container (the runc backend's
``<state>/containers/<id>/container.json``, the fake backend's
``<state>/fake/<id>.json``): what a restarted server needs to find the
container again. Only this server process writes a record (the shim writes
``exit.json``, ``init.pid`` and ``shim.pid`` beside it, never the record), so
the file never changes behind our back and there is no reason to read it
again: every write goes to the file first and then to the copy in memory,
and every read is served from memory. The status calls the kubelet makes
every second (ContainerStatus, PodSandboxStatus, the relist's
ListContainerStats) read a record each; a JSON file read and parsed per call
was most of their time in the server.

The file is read once, at the first use of a record this process did not
write (``recover()`` after a restart reads them all). A file that cannot be
read is not kept: it raises :class:`RecordUnreadable` each time, until the
backend's load policy replaces it (the runc backend moves it aside and saves
a placeholder, which then is kept and raises the same way from memory). A
file damaged on disk later, while the server runs, changes nothing it
reports: it reports what it wrote; the next start finds the damage and
applies the policy.

This is the store's pattern (``store/records.py``: an index in memory,
persisted atomically) for records that stay plain dicts, because each
backend keeps different fields in them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import NotFound
from ..fsutil import atomic_write
from .backend import RecordUnreadable

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
UNREADABLE = "unreadable"  # the key of the placeholder for a record that cannot be read

Record = Mapping[str, Any]


class RecordCache:
    """The records of one backend, by container id.

    :meth:`get` returns a read-only view (a ``MappingProxyType``): a caller
    that assigns to it gets a ``TypeError``, not a change the file never
    sees. A change goes through :meth:`update` (or a whole new record through
    :meth:`save`), which writes the file and then replaces the memory copy.
    Replaced, never changed in place: a view taken earlier keeps showing the
    record as it was then, as a file read earlier would. (The values inside,
    ``notes`` or ``resources``, are plain dicts: copy one before changing it;
    the backends build new ones.)

    Every method is synchronous, so an :meth:`update` merges its fields into
    the record as it is at that moment, even if the caller read it before an
    ``await`` during which another task changed other fields."""

    def __init__(self, path_of: Callable[[str], Path], what: str = "record") -> None:
        """``path_of``: where a container's record file is; ``what``: how a
        message names such a file ("a record of the fake backend")."""
        self.path_of = path_of
        self.what = what
        self._memory: dict[str, dict[str, Any]] = {}

    def known(self, container_id: str) -> bool:
        """Is there a record for ``container_id`` (in memory, or a file)?"""
        if container_id in self._memory:
            return True
        return bool(ID_PATTERN.match(container_id)) and self.path_of(container_id).exists()

    def get(self, container_id: str) -> Record:
        """The record, read-only. ``NotFound`` without one; ``RecordUnreadable``
        for a file that cannot be read, or for the placeholder saved in its place."""
        data = self._memory.get(container_id)
        if data is None:
            data = self._load(container_id)
        if UNREADABLE in data:  # the placeholder the load policy left for a bad file
            raise RecordUnreadable(str(data[UNREADABLE]))
        return MappingProxyType(data)

    def _load(self, container_id: str) -> dict[str, Any]:
        """The file, read once: a readable record (or a placeholder) is kept."""
        path = self.path_of(container_id)
        if not ID_PATTERN.match(container_id) or not path.exists():
            raise NotFound(f"container {container_id!r} not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RecordUnreadable(f"{path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or not ("id" in data or UNREADABLE in data):
            raise RecordUnreadable(f"{path} is not {self.what}")
        self._memory[container_id] = data
        return data

    def save(self, container_id: str, record: Record) -> None:
        """Write the whole record, then keep it. The memory copy is parsed
        back from the very text written (a copy sharing nothing with the
        caller's dict), so that what the server reports now is what a
        restarted server would read. No fsync: runtime state describes
        processes, and after a power loss there are none left to describe
        (``fsutil.atomic_write``)."""
        text = json.dumps(dict(record), indent=2, sort_keys=True)
        atomic_write(self.path_of(container_id), text.encode(), durable=False)
        self._memory[container_id] = json.loads(text)

    def update(self, container_id: str, changes: Mapping[str, Any]) -> Record:
        """The record with ``changes`` merged in, written and kept; the new
        record. ``NotFound`` if it is gone (removed meanwhile), and nothing is
        written then: a late update must not bring a removed container back."""
        self.save(container_id, {**self.get(container_id), **changes})
        return MappingProxyType(self._memory[container_id])

    def forget(self, container_id: str) -> None:
        """Drop the memory copy (the caller removes the file)."""
        self._memory.pop(container_id, None)
