"""Where trace events go: a ring buffer, a rotating JSONL file, live subscribers.

Every sink's ``publish`` runs on the thread that emitted the event, inside an
RPC, so none of them may block: the file is written by a thread of its own
behind a bounded queue, and each live subscriber has a bounded asyncio queue.
When a queue is full the event is dropped and counted; the counts are served
by ``TraceService.Stats`` and in ``Status`` verbose info.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .events import TraceEvent, TraceFilter

log = logging.getLogger(__name__)


class RingBufferSink:
    """The last ``capacity`` events, for ``Recent`` and for ``Follow``'s replay."""

    name = "ring"

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[TraceEvent] = deque(maxlen=capacity)
        self.delivered = 0

    def publish(self, event: TraceEvent) -> None:
        self._events.append(event)  # deque.append is atomic under the GIL
        self.delivered += 1

    def snapshot(self, flt: TraceFilter | None = None) -> list[TraceEvent]:
        events = list(self._events)
        return events if flt is None else [e for e in events if flt.matches(e)]

    def counts(self) -> tuple[int, int]:
        return self.delivered, 0

    def close(self) -> None:
        pass


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """The standard library's rotation, but a failed write is raised to the
    sink (which counts the events as dropped) instead of printed and forgotten."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # called inside logging's ``except`` block: re-raise what it caught


class JsonlFileSink:
    """One JSON object per line, rotated by size with the standard library's
    RotatingFileHandler, written by a background thread."""

    name = "jsonl"

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        backups: int = 3,
        queue_size: int = 65_536,
        interval: float = 0.05,
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = _RotatingFile(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self.interval = interval
        self._stop = threading.Event()
        self._queue: queue.Queue[TraceEvent | None] = queue.Queue(maxsize=queue_size)
        # A chunk is written whole, so it must leave room under max_bytes.
        self._chunk_bytes = max(1, min(256 * 1024, max_bytes // 4))
        self.delivered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="trace-jsonl", daemon=True)
        self._thread.start()

    def publish(self, event: TraceEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        # Wake up on a timer, not per event: a thread woken for every event
        # would fight the RPCs' thread for the GIL on every step. Each wake-up
        # drains the queue and writes it as few records as the size limit allows.
        while True:
            stopping = self._stop.wait(self.interval)
            batch: list[TraceEvent | None] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = [event.to_json() for event in batch if event is not None]
            if lines:
                try:
                    self._write(lines)
                except Exception:  # a full disk must not kill the writer for good
                    log.exception("trace file %s: write failed", self.path)
                    self.dropped += len(lines)
                else:
                    self.delivered += len(lines)
            for _ in batch:
                self._queue.task_done()
            if stopping and self._queue.empty():
                break
        self._handler.close()

    def _write(self, lines: list[str]) -> None:
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) + 1 > self._chunk_bytes:
                self._emit("\n".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            self._emit("\n".join(chunk))

    def _emit(self, text: str) -> None:
        self._handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until everything queued so far is on disk."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def counts(self) -> tuple[int, int]:
        return self.delivered, self.dropped

    def close(self) -> None:
        self._stop.set()  # the thread writes what is queued, then ends
        self._thread.join(timeout=10)


def rotated_files(path: Path) -> list[Path]:
    """``path`` and the backups the rotation made of it, oldest first
    (``path.3``, ``path.2``, ``path.1``, ``path``): the order they were written in."""
    backups: list[tuple[int, Path]] = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            backups.append((int(suffix), candidate))
    files = [p for _, p in sorted(backups, reverse=True)]
    return [*files, path] if path.exists() else files


@dataclass
class JsonlTrace:
    """What a JSONL trace file (and its backups) holds."""

    events: list[TraceEvent] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    # A server killed in the middle of a write leaves its last line cut short;
    # that line is skipped, since the events before it are whole.
    torn_lines: int = 0
    # With ``backups`` backups present, the rotation may have deleted older
    # ones: the first spans can have lost their beginning.
    may_have_lost_oldest: bool = False


def read_jsonl(path: Path, backups: int = 3) -> JsonlTrace:
    """Every event of a :class:`JsonlFileSink`'s file and its backups, in
    emission order. ``backups`` is the count the sink kept (3 by default)."""
    trace = JsonlTrace(files=rotated_files(path))
    trace.may_have_lost_oldest = len(trace.files) > backups
    for file in trace.files:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                trace.events.append(TraceEvent.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                # Only the very last line can be torn by a kill; any other bad
                # line means the file is not what the sink writes.
                if file is trace.files[-1] and number == len(lines):
                    trace.torn_lines += 1
                    continue
                raise ValueError(f"{file}:{number}: not a trace event: {exc}") from None
    trace.events.sort(key=lambda e: e.sequence)
    return trace


class Subscription:
    """One live follower: a bounded queue of (event, events dropped before it)."""

    def __init__(self, flt: TraceFilter, maxsize: int) -> None:
        self.filter = flt
        self.queue: asyncio.Queue[tuple[TraceEvent, int] | None] = asyncio.Queue(maxsize)
        self.pending_drops = 0

    async def get(self) -> tuple[TraceEvent, int] | None:
        """The next event and the count dropped before it; None when closed."""
        return await self.queue.get()


class FanOutSink:
    """Live subscribers (``TraceService.Follow``). Events are handed over on the
    event loop's thread; a full subscriber queue drops the event and counts it,
    so a slow or vanished follower never slows an RPC down."""

    name = "follow"

    def __init__(self, queue_size: int = 4096) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.delivered = 0
        self.dropped = 0
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, flt: TraceFilter, replay: Sequence[TraceEvent] = ()) -> Subscription:
        """Register a follower; ``replay`` events are queued first. Called on the
        loop thread, so no event can fall between the replay and the live ones."""
        sub = Subscription(flt, max(self.queue_size, len(replay) + 1))
        if self.closed:  # a Follow that arrived while the server shuts down
            sub.queue.put_nowait(None)
            return sub
        for event in replay:
            sub.queue.put_nowait((event, 0))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: TraceEvent) -> None:
        if not self._subs:
            return
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._deliver(event)
        else:
            try:
                self._loop.call_soon_threadsafe(self._deliver, event)
            except RuntimeError:  # loop closed during shutdown
                self.dropped += 1

    def _deliver(self, event: TraceEvent) -> None:
        for sub in tuple(self._subs):
            if not sub.filter.matches(event):
                continue
            try:
                sub.queue.put_nowait((event, sub.pending_drops))
            except asyncio.QueueFull:
                sub.pending_drops += 1
                self.dropped += 1
            else:
                sub.pending_drops = 0
                self.delivered += 1

    def counts(self) -> tuple[int, int]:
        return self.delivered, self.dropped

    def close(self) -> None:
        """End every follower's stream (on the loop's thread; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        for sub in tuple(self._subs):
            while True:
                try:
                    sub.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    sub.queue.get_nowait()  # room for the end marker: one event lost
                    self.dropped += 1
        self._subs.clear()
