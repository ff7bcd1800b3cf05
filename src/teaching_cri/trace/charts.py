"""Flow charts: loading and validating ``diagrams/*.toml``.

The charts are the single source of truth for node ids. Code names its steps
after them, traces carry them, tests check traces against them and the renderer
draws them. A chart is a TOML file::

    name = "Version"                       # must equal the file's stem
    title = "Version: ..."
    source = "where the chart comes from (an iSulad chart, or iSulad's code)"
    summary = "what the call does, in a few sentences"
    edges = ["version -> m_cb_container_version", "ready -> set_reason : N"]

    [[nodes]]
    label = "Version"                      # the text in the original chart
    kind = "start"                         # start | action | decision | end | note

    [[nodes]]
    label = "m_cb->container.version"      # id: derived from the label
    kind = "action"
    ours = false                           # true: not drawn in the original chart
    absent = ""                            # why the original step has no counterpart

    [[nodes]]
    label = "close with error"
    kind = "end"
    error = true                           # an error end: the call fails here

    [[nodes]]
    id = "why_no_lock"                     # notes have free ids and hang off nodes
    kind = "note"
    label = "..."
    about = ["m_cb_container_version"]

(``edges`` comes before the first ``[[nodes]]``: TOML would put it inside the
last node's table otherwise.)

An *error end* (``error = true``, end nodes only; an end labelled "return
error", as iSulad's charts name it, is one without saying so) is where a
failing call leaves the chart; an edge into one (directly or through absent nodes) is an
*error edge*. A traced call that fails ends with an ERROR event at the node
where it failed, and that node must have an error edge (after a decision: the
edge of the branch it took). A call that succeeds never ends at an error end.

A node's id is its label in snake_case (:func:`node_id`), so the name of the
step function in the code, the id in a trace and the words in iSulad's chart
are visibly the same thing.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

ENV_DIAGRAMS = "TEACHING_CRI_DIAGRAMS"


ERROR_END_LABEL = "return error"


class ChartError(ValueError):
    """A chart file that does not describe a valid flow chart."""


class NodeKind(StrEnum):
    START = "start"
    ACTION = "action"
    DECISION = "decision"
    END = "end"
    NOTE = "note"


_CAMEL_1 = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_2 = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_EDGE = re.compile(r"^\s*([a-z0-9_]+)\s*->\s*([a-z0-9_]+)\s*(?::\s*(.+?))?\s*$")


def node_id(label: str) -> str:
    """The snake_case id of a chart label: ``GetRealContainerOrSandboxID`` →
    ``get_real_container_or_sandbox_id``, ``m_cb->container.stop`` → ``m_cb_container_stop``.
    """
    text = _CAMEL_2.sub("_", _CAMEL_1.sub("_", label)).lower()
    return _NON_WORD.sub("_", text).strip("_")


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    kind: NodeKind
    ours: bool = False
    absent: str = ""
    about: tuple[str, ...] = ()
    error: bool = False

    @property
    def flows(self) -> bool:
        """Notes hang beside the chart; every other node is part of the flow."""
        return self.kind is not NodeKind.NOTE


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str = ""


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    source: str
    summary: str
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    start: str
    ends: frozenset[str]
    # From each present node: the edges a trace may take, where an edge into an
    # absent node continues through it. (label of the first edge, target)
    effective: Mapping[str, tuple[tuple[str, str], ...]] = field(repr=False)

    def outgoing(self, node: str) -> list[Edge]:
        return [e for e in self.edges if e.source == node]

    def flow_nodes(self) -> Iterator[Node]:
        return (n for n in self.nodes.values() if n.flows)

    def notes(self) -> Iterator[Node]:
        return (n for n in self.nodes.values() if not n.flows)

    @property
    def error_ends(self) -> frozenset[str]:
        return frozenset(e for e in self.ends if self.nodes[e].error)

    def end_after(self, node: str, label: str = "") -> str | None:
        """The end node a span at ``node`` (having taken the branch ``label``, if
        ``node`` is a decision) closes at when it succeeds, if that is
        unambiguous. Error ends are left out: a span finishing is no failure."""
        normal = self.ends - self.error_ends
        ends = {
            t
            for lab, t in self.effective.get(node, ())
            if t in normal and (not label or lab == label)
        }
        if len(ends) == 1:
            return ends.pop()
        if len(normal) == 1:
            return next(iter(normal))
        return None

    def error_exits(self, node: str, label: str = "") -> list[str]:
        """The error ends an error at ``node`` may leave by: those its edges
        (only the edge labelled ``label``, when given) lead to."""
        return [
            t
            for lab, t in self.effective.get(node, ())
            if t in self.error_ends and (not label or lab == label)
        ]

    def path_between(self, source: str, target: str, label: str = "") -> list[Edge] | None:
        """The edges from ``source`` to ``target`` through absent nodes only
        (first edge labelled ``label`` when given), or None if there is none."""

        def walk(at: str, seen: frozenset[str], first: bool) -> list[Edge] | None:
            for edge in self.outgoing(at):
                if first and label and edge.label != label:
                    continue
                if edge.target == target:
                    return [edge]
                nxt = self.nodes[edge.target]
                if nxt.absent and edge.target not in seen:
                    rest = walk(edge.target, seen | {edge.target}, False)
                    if rest is not None:
                        return [edge, *rest]
            return None

        return walk(source, frozenset({source}), True)


def _as_str(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ChartError(f"{where}: {what} must be a string, not {type(value).__name__}")
    return value


def parse_chart(data: Mapping[str, Any], origin: str = "<chart>") -> Chart:
    """Build and validate a chart from parsed TOML; raise ChartError naming the problem."""
    known = {"name", "title", "source", "summary", "nodes", "edges"}
    unknown = set(data) - known
    if unknown:
        raise ChartError(f"{origin}: unknown keys {sorted(unknown)}")
    name = _as_str(data.get("name", ""), "name", origin)
    if not name:
        raise ChartError(f"{origin}: missing name")
    nodes: dict[str, Node] = {}
    for i, raw in enumerate(data.get("nodes", [])):
        where = f"{origin}: node {i + 1}"
        if not isinstance(raw, dict):
            raise ChartError(f"{where}: must be a table")
        extra = set(raw) - {"id", "label", "kind", "ours", "absent", "about", "error"}
        if extra:
            raise ChartError(f"{where}: unknown keys {sorted(extra)}")
        label = _as_str(raw.get("label", ""), "label", where)
        try:
            kind = NodeKind(raw.get("kind", "action"))
        except ValueError:
            raise ChartError(f"{where} ({label!r}): unknown kind {raw.get('kind')!r}") from None
        derived = node_id(label)
        nid = _as_str(raw.get("id", derived), "id", where)
        if kind is not NodeKind.NOTE and nid != derived:
            raise ChartError(f"{where}: id {nid!r} must be the label in snake_case, {derived!r}")
        if not nid or not re.fullmatch(r"[a-z0-9_]+", nid):
            raise ChartError(f"{where}: id {nid!r} must be non-empty snake_case")
        if nid in nodes:
            raise ChartError(f"{where}: duplicate node id {nid!r}")
        ours = raw.get("ours", False)
        absent = _as_str(raw.get("absent", ""), "absent", where)
        if not isinstance(ours, bool):
            raise ChartError(f"{where}: ours must be true or false")
        if ours and absent:
            raise ChartError(f"{where}: a node we added cannot also be absent")
        about_raw = raw.get("about", [])
        if not isinstance(about_raw, list) or not all(isinstance(a, str) for a in about_raw):
            raise ChartError(f"{where}: about must be a list of node ids")
        about = tuple(about_raw)
        if kind is NodeKind.NOTE and not about:
            raise ChartError(f"{where}: a note must name the nodes it is about")
        if kind is not NodeKind.NOTE and about:
            raise ChartError(f"{where}: only notes have 'about'")
        error = raw.get("error", kind is NodeKind.END and label == ERROR_END_LABEL)
        if not isinstance(error, bool):
            raise ChartError(f"{where}: error must be true or false")
        if error and kind is not NodeKind.END:
            raise ChartError(f"{where}: only an end node can be an error end")
        nodes[nid] = Node(nid, label, kind, ours, absent, about, error)

    edges: list[Edge] = []
    for raw_edge in data.get("edges", []):
        m = _EDGE.match(_as_str(raw_edge, "an edge", origin))
        if not m:
            raise ChartError(f"{origin}: edge {raw_edge!r} is not 'a -> b' or 'a -> b : label'")
        src, dst, label = m.group(1), m.group(2), m.group(3) or ""
        for end in (src, dst):
            if end not in nodes:
                raise ChartError(f"{origin}: edge {raw_edge!r} names unknown node {end!r}")
            if not nodes[end].flows:
                raise ChartError(f"{origin}: edge {raw_edge!r} touches note {end!r}")
        edges.append(Edge(src, dst, label))
    return _validate(name, data, nodes, tuple(edges), origin)


def _validate(
    name: str, data: Mapping[str, Any], nodes: dict[str, Node], edges: tuple[Edge, ...], origin: str
) -> Chart:
    starts = [n.id for n in nodes.values() if n.kind is NodeKind.START]
    ends = frozenset(n.id for n in nodes.values() if n.kind is NodeKind.END)
    if len(starts) != 1:
        raise ChartError(f"{origin}: needs exactly one start node, has {len(starts)}")
    if not ends or all(nodes[e].error for e in ends):
        raise ChartError(f"{origin}: needs at least one end node that is not an error end")
    for note in (n for n in nodes.values() if not n.flows):
        for target in note.about:
            if target not in nodes:
                raise ChartError(f"{origin}: note {note.id!r} is about unknown node {target!r}")
    out: dict[str, list[Edge]] = {n: [] for n in nodes}
    inc: dict[str, int] = dict.fromkeys(nodes, 0)
    for e in edges:
        out[e.source].append(e)
        inc[e.target] += 1
    for n in nodes.values():
        if not n.flows:
            continue
        if n.kind is NodeKind.START and inc[n.id]:
            raise ChartError(f"{origin}: start node {n.id!r} has incoming edges")
        if n.kind is NodeKind.END and out[n.id]:
            raise ChartError(f"{origin}: end node {n.id!r} has outgoing edges")
        if n.kind is not NodeKind.END and not out[n.id]:
            raise ChartError(f"{origin}: node {n.id!r} leads nowhere")
        if n.kind is NodeKind.DECISION:
            labels = [e.label for e in out[n.id]]
            if len(labels) < 2 or "" in labels or len(set(labels)) != len(labels):
                raise ChartError(
                    f"{origin}: decision {n.id!r} needs two or more edges with distinct labels"
                )
        if n.kind in (NodeKind.START, NodeKind.END) and n.absent:
            raise ChartError(f"{origin}: start and end nodes cannot be absent")
    seen = {starts[0]}
    todo = [starts[0]]
    while todo:
        for e in out[todo.pop()]:
            if e.target not in seen:
                seen.add(e.target)
                todo.append(e.target)
    unreachable = [n.id for n in nodes.values() if n.flows and n.id not in seen]
    if unreachable:
        raise ChartError(f"{origin}: nodes not reachable from the start: {unreachable}")
    reaches_end = set(ends)
    changed = True
    while changed:
        changed = False
        for e in edges:
            if e.target in reaches_end and e.source not in reaches_end:
                reaches_end.add(e.source)
                changed = True
    stuck = [n.id for n in nodes.values() if n.flows and n.id not in reaches_end]
    if stuck:
        raise ChartError(f"{origin}: nodes from which no end node can be reached: {stuck}")

    effective: dict[str, tuple[tuple[str, str], ...]] = {}
    for n in nodes.values():
        if not n.flows or n.absent:
            continue
        found: list[tuple[str, str]] = []
        for first in out[n.id]:
            stack, visited = [first.target], set()
            while stack:
                t = stack.pop()
                if t in visited:
                    continue
                visited.add(t)
                if nodes[t].absent:
                    stack.extend(e.target for e in out[t])
                else:
                    found.append((first.label, t))
        effective[n.id] = tuple(found)

    expected = Path(origin).stem
    if origin.endswith(".toml") and expected != name:
        raise ChartError(f"{origin}: name {name!r} must equal the file name {expected!r}")
    return Chart(
        name=name,
        title=str(data.get("title", name)),
        source=str(data.get("source", "")),
        summary=str(data.get("summary", "")),
        nodes=nodes,
        edges=edges,
        start=starts[0],
        ends=ends,
        effective=effective,
    )


def load_chart(path: Path) -> Chart:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ChartError(f"{path}: not valid TOML: {exc}") from None
    return parse_chart(data, str(path))


def find_diagrams_dir() -> Path:
    """Where the charts are: ``$TEACHING_CRI_DIAGRAMS``, the copy inside an
    installed wheel, or the repository's ``diagrams/`` for a source checkout."""
    env = os.environ.get(ENV_DIAGRAMS)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "diagrams", here.parent.parent / "diagrams"):
        if candidate.is_dir():
            return candidate
    raise ChartError("cannot find the diagrams directory; set TEACHING_CRI_DIAGRAMS")


class ChartSet(Mapping[str, Chart]):
    """All charts by name."""

    def __init__(self, charts: Iterable[Chart]) -> None:
        self._charts = {c.name: c for c in charts}

    @classmethod
    def load(cls, directory: Path | None = None) -> ChartSet:
        directory = directory or find_diagrams_dir()
        return cls(load_chart(p) for p in sorted(directory.glob("*.toml")))

    def __getitem__(self, name: str) -> Chart:
        return self._charts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._charts)

    def __len__(self) -> int:
        return len(self._charts)
