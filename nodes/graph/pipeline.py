"""The project graph as plain data, and ``default_pipeline.star`` in RELION 5's layout.

A :class:`Pipeline` holds processes (jobs), nodes (files) and two edge lists: input edges
node -> process and output edges process -> node. It does no I/O; :func:`read_pipeline`
and :func:`write_pipeline` convert it from and to the STAR file. The reader accepts files
written by RELION 3.1 (integer type/status columns), RELION 4 (old node type names),
RELION 5 and CCP-EM's pipeliner; the writer always writes RELION 5's layout, and
write -> read -> write gives the same bytes.

Example::

    pipe = read_pipeline("default_pipeline.star")
    name = pipe.next_job_name("Class2D")                 # 'Class2D/job013/'
    pipe.add_process(Process(name, "emclass2d.class2d", "Running"))
    pipe.add_input(Node("Extract/job012/particles.star", L.NODE_PARTICLES), name)
    write_pipeline("default_pipeline.star", pipe)

See also: :mod:`emclass2d.nodes.graph.project` (locking, job directories), :mod:`emclass2d.nodes.graph.labels`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.io.star import StarFileError, read_star, write_star


@dataclass
class Process:
    """A job: its directory name (``Class2D/job013/``), type label, status and optional alias."""

    name: str
    type_label: str
    status: str = L.STATUS_RUNNING
    alias: str | None = None


@dataclass
class Node:
    """A file in the graph: path relative to the project, RELION 5 type label, label depth."""

    name: str
    type_label: str
    depth: int = 1


@dataclass
class Pipeline:
    """Processes, nodes and edges of one project, in file order."""

    job_counter: int = 1
    processes: list[Process] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    input_edges: list[tuple[str, str]] = field(default_factory=list)  #: (node name, process name)
    output_edges: list[tuple[str, str]] = field(default_factory=list)  #: (process name, node name)

    # ------------------------------------------------------------------ lookup
    def process(self, name: str) -> Process | None:
        """The process with this job name (``Class2D/job013/``), or None."""
        return next((p for p in self.processes if p.name == name), None)

    def node(self, name: str) -> Node | None:
        """The node with this file name, or None."""
        return next((n for n in self.nodes if n.name == name), None)

    def inputs_of(self, process_name: str) -> list[Node]:
        """Input nodes of a process, in edge order."""
        return [n for n in (self.node(a) for a, b in self.input_edges if b == process_name) if n]

    def outputs_of(self, process_name: str) -> list[Node]:
        """Output nodes of a process, in edge order."""
        return [n for n in (self.node(b) for a, b in self.output_edges if a == process_name) if n]

    def producer_of(self, node_name: str) -> str | None:
        """Name of the process that writes this node, if any."""
        return next((p for p, n in self.output_edges if n == node_name), None)

    def consumers_of(self, process_name: str) -> list[str]:
        """Other processes that read any output node of this process."""
        outs = {n.name for n in self.outputs_of(process_name)}
        found = [p for n, p in self.input_edges if n in outs and p != process_name]
        return list(dict.fromkeys(found))

    # ------------------------------------------------------------------ editing
    def next_job_name(self, directory: str) -> str:
        """Job name the counter hands out next: ``Class2D/job013/`` (no padding from 1000)."""
        return f"{directory}/job{self.job_counter:03d}/"

    def add_process(self, process: Process) -> Process:
        """Add a process; a new name advances the job counter past its number (RELION ``addNewProcess``)."""
        existing = self.process(process.name)
        if existing is not None:
            existing.type_label, existing.status, existing.alias = process.type_label, process.status, process.alias
            return existing
        self.processes.append(process)
        self.job_counter += 1
        return process

    def add_node(self, node: Node) -> Node:
        """Add a node unless one of that name exists (the existing node keeps its type)."""
        existing = self.node(node.name)
        if existing is not None:
            return existing
        self.nodes.append(node)
        return node

    def add_input(self, node: Node, process_name: str) -> None:
        """Add ``node`` (if new) and the edge node -> process."""
        self.add_node(node)
        edge = (node.name, process_name)
        if edge not in self.input_edges:
            self.input_edges.append(edge)

    def add_output(self, node: Node, process_name: str) -> None:
        """Add ``node`` (if new) and the edge process -> node."""
        self.add_node(node)
        edge = (process_name, node.name)
        if edge not in self.output_edges:
            self.output_edges.append(edge)

    def remove_output(self, process_name: str, node_name: str) -> None:
        """Drop an output edge and the node itself unless another process still uses it."""
        self.output_edges = [e for e in self.output_edges if e != (process_name, node_name)]
        self._drop_node_if_unused(node_name)

    def clear_edges_of(self, process_name: str) -> None:
        """Remove all edges of a process (and nodes left unused), keeping the process itself."""
        touched = [n for n, p in self.input_edges if p == process_name] + \
                  [n for p, n in self.output_edges if p == process_name]
        self.input_edges = [e for e in self.input_edges if e[1] != process_name]
        self.output_edges = [e for e in self.output_edges if e[0] != process_name]
        for name in touched:
            self._drop_node_if_unused(name)

    def _drop_node_if_unused(self, node_name: str) -> None:
        used = any(n == node_name for n, _ in self.input_edges) or any(n == node_name for _, n in self.output_edges)
        if not used:
            self.nodes = [n for n in self.nodes if n.name != node_name]

    def subgraph(self, process_name: str) -> "Pipeline":
        """The per-job mini pipeline (``job_pipeline.star``): one process, its nodes and edges."""
        proc = self.process(process_name)
        sub = Pipeline(job_counter=self.job_counter, processes=[proc] if proc else [])
        sub.input_edges = [e for e in self.input_edges if e[1] == process_name]
        sub.output_edges = [e for e in self.output_edges if e[0] == process_name]
        names = {n for n, _ in sub.input_edges} | {n for _, n in sub.output_edges}
        sub.nodes = [n for n in self.nodes if n.name in names]
        return sub


# ---------------------------------------------------------------------------- writing

def pipeline_blocks(pipe: Pipeline) -> dict[str, object]:
    """STAR blocks in RELION 5's order; empty tables come out empty (and are not written)."""
    procs = pd.DataFrame({
        L.PROCESS_NAME: [p.name for p in pipe.processes],
        L.PROCESS_ALIAS: [p.alias or L.NO_ALIAS for p in pipe.processes],
        L.PROCESS_TYPE_LABEL: [p.type_label for p in pipe.processes],
        L.PROCESS_STATUS_LABEL: [p.status for p in pipe.processes],
    }, dtype=object)
    nodes = pd.DataFrame({
        L.NODE_NAME: pd.Series([n.name for n in pipe.nodes], dtype=object),
        L.NODE_TYPE_LABEL: pd.Series([n.type_label for n in pipe.nodes], dtype=object),
        L.NODE_TYPE_LABEL_DEPTH: pd.Series([int(n.depth) for n in pipe.nodes], dtype="int64"),
    })
    inputs = pd.DataFrame({L.EDGE_FROM_NODE: [a for a, _ in pipe.input_edges],
                           L.EDGE_PROCESS: [b for _, b in pipe.input_edges]}, dtype=object)
    outputs = pd.DataFrame({L.EDGE_PROCESS: [a for a, _ in pipe.output_edges],
                            L.EDGE_TO_NODE: [b for _, b in pipe.output_edges]}, dtype=object)
    return {
        L.PIPELINE_GENERAL_BLOCK: {L.JOB_COUNTER: int(pipe.job_counter)},
        L.PIPELINE_PROCESSES_BLOCK: procs,
        L.PIPELINE_NODES_BLOCK: nodes,
        L.PIPELINE_INPUT_EDGES_BLOCK: inputs,
        L.PIPELINE_OUTPUT_EDGES_BLOCK: outputs,
    }


def write_pipeline(path: str | os.PathLike[str], pipe: Pipeline) -> None:
    """Write ``pipe`` atomically in RELION 5's ``default_pipeline.star`` layout."""
    write_star(path, pipeline_blocks(pipe))


# ---------------------------------------------------------------------------- reading

_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)", re.MULTILINE)


def _file_version(path: Path) -> int | None:
    with open(path, errors="replace") as fh:
        match = _VERSION_RE.search(fh.read(4096))
    return int(match.group(1)) if match else None


def _column(table: pd.DataFrame, label: str) -> list:
    return list(table[label]) if label in table.columns else [None] * len(table)


def _str(value: object) -> str:
    return "" if value is None else str(value).strip().strip('"')


def read_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read a ``*_pipeline.star`` written by RELION 3.1/4/5 or CCP-EM's pipeliner.

    Integer type/status columns and RELION 4 node type names are converted to RELION 5
    labels. Raises :class:`~emclass2d.nodes.io.star.StarFileError` naming the file, block and
    label for a missing file, an unparsable file or a table without the labels it needs.
    """
    path = Path(path)
    blocks = read_star(path)
    general = blocks.get(L.PIPELINE_GENERAL_BLOCK)
    if not isinstance(general, dict) or L.JOB_COUNTER not in general:
        raise StarFileError(f"{path}: data_{L.PIPELINE_GENERAL_BLOCK} with _{L.JOB_COUNTER} not found; "
                            "not a pipeline file")
    try:
        pipe = Pipeline(job_counter=int(general[L.JOB_COUNTER]))
    except (TypeError, ValueError) as exc:
        raise StarFileError(f"{path}: _{L.JOB_COUNTER} should be an integer, got {general[L.JOB_COUNTER]!r}") from exc
    version = _file_version(path)
    convert_labels = version is None or version < 50001

    procs = _table(blocks, L.PIPELINE_PROCESSES_BLOCK, path, [L.PROCESS_NAME])
    for row, (name, alias, tlabel, tint, slabel, sint) in enumerate(zip(
            _column(procs, L.PROCESS_NAME), _column(procs, L.PROCESS_ALIAS),
            _column(procs, L.PROCESS_TYPE_LABEL), _column(procs, L.PROCESS_TYPE_INT),
            _column(procs, L.PROCESS_STATUS_LABEL), _column(procs, L.PROCESS_STATUS_INT)), start=1):
        type_label = _str(tlabel) if tlabel is not None else L.PROCESS_LABEL_BY_INT.get(_int(tint, path, row, L.PROCESS_TYPE_INT), "")
        if not type_label:
            raise StarFileError(f"{path}: data_{L.PIPELINE_PROCESSES_BLOCK} row {row}: no process type "
                                f"(_{L.PROCESS_TYPE_LABEL} or a known _{L.PROCESS_TYPE_INT})")
        status = _str(slabel) if slabel is not None else L.STATUS_BY_INT.get(_int(sint, path, row, L.PROCESS_STATUS_INT), "")
        if status not in L.STATUSES:
            raise StarFileError(f"{path}: data_{L.PIPELINE_PROCESSES_BLOCK} row {row}: status {status!r} "
                                f"is not one of {', '.join(L.STATUSES)}")
        alias_s = _str(alias)
        pipe.processes.append(Process(_str(name), type_label, status, None if alias_s in ("", L.NO_ALIAS) else alias_s))

    nodes = _table(blocks, L.PIPELINE_NODES_BLOCK, path, [L.NODE_NAME])
    for row, (name, tlabel, tint, depth) in enumerate(zip(
            _column(nodes, L.NODE_NAME), _column(nodes, L.NODE_TYPE_LABEL),
            _column(nodes, L.NODE_TYPE_INT), _column(nodes, L.NODE_TYPE_LABEL_DEPTH)), start=1):
        if tlabel is not None:
            type_label = _str(tlabel)
            if convert_labels:
                type_label = L.convert_node_type_label(type_label)
        else:
            type_label = L.NODE_LABEL_BY_INT.get(_int(tint, path, row, L.NODE_TYPE_INT), "")
        if not type_label:
            raise StarFileError(f"{path}: data_{L.PIPELINE_NODES_BLOCK} row {row}: no node type "
                                f"(_{L.NODE_TYPE_LABEL} or a known _{L.NODE_TYPE_INT})")
        pipe.nodes.append(Node(_str(name), type_label, 1 if depth is None else _int(depth, path, row, L.NODE_TYPE_LABEL_DEPTH)))

    inputs = _table(blocks, L.PIPELINE_INPUT_EDGES_BLOCK, path, [L.EDGE_FROM_NODE, L.EDGE_PROCESS])
    pipe.input_edges = [(_str(a), _str(b)) for a, b in zip(inputs[L.EDGE_FROM_NODE], inputs[L.EDGE_PROCESS])] if len(inputs) else []
    outputs = _table(blocks, L.PIPELINE_OUTPUT_EDGES_BLOCK, path, [L.EDGE_PROCESS, L.EDGE_TO_NODE])
    pipe.output_edges = [(_str(a), _str(b)) for a, b in zip(outputs[L.EDGE_PROCESS], outputs[L.EDGE_TO_NODE])] if len(outputs) else []
    return pipe


def _table(blocks: dict, name: str, path: Path, required: list[str]) -> pd.DataFrame:
    table = blocks.get(name)
    if table is None:
        return pd.DataFrame()
    if not isinstance(table, pd.DataFrame):
        # A one-row loop can come back as a list table from a non-RELION writer.
        table = pd.DataFrame([table])
    missing = [lab for lab in required if lab not in table.columns]
    if missing:
        raise StarFileError(f"{path}: data_{name} lacks required label(s) " + ", ".join(f"_{m}" for m in missing))
    return table


def _int(value: object, path: Path, row: int, label: str) -> int:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        raise StarFileError(f"{path}: row {row}: _{label} should be an integer, got {value!r}") from None
