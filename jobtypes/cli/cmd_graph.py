"""Show the project graph: each job with its input and output files (--dot: Graphviz DOT).

Example:
  emclass2d graph
  emclass2d graph --dot | dot -Tpng > pipeline.png
"""
from __future__ import annotations

import argparse

from emclass2d.jobtypes.cli.cmd_status import refresh
from emclass2d.nodes.graph.pipeline import Pipeline
from emclass2d.nodes.graph.project import Project


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dot", action="store_true", help="write Graphviz DOT instead of text")


def as_text(pipe: Pipeline) -> str:
    """Jobs in order; ``<-`` inputs (with their producer), ``->`` outputs (with their users)."""
    lines = []
    for proc in pipe.processes:
        alias = f" alias {proc.alias}" if proc.alias else ""
        lines.append(f"{proc.name}{alias}  [{proc.type_label}, {proc.status}]")
        for node in pipe.inputs_of(proc.name):
            producer = pipe.producer_of(node.name)
            lines.append(f"  <- {node.name}  ({node.type_label}" + (f", from {producer})" if producer else ")"))
        for node in pipe.outputs_of(proc.name):
            users = [p for n, p in pipe.input_edges if n == node.name]
            lines.append(f"  -> {node.name}  ({node.type_label}" + (f", used by {', '.join(users)})" if users else ")"))
    orphans = [n for n in pipe.nodes if pipe.producer_of(n.name) is None
               and not any(a == n.name for a, _ in pipe.input_edges)]
    for node in orphans:
        lines.append(f"(unconnected) {node.name}  ({node.type_label})")
    return "\n".join(lines)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def as_dot(pipe: Pipeline) -> str:
    """Graphviz DOT: jobs as boxes (label: name, type, status), files as ellipses."""
    lines = ["digraph pipeline {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for proc in pipe.processes:
        label = f"{proc.name}\\n{proc.type_label}\\n{proc.status}"
        lines.append(f'  {_q(proc.name)} [shape=box, label="{label}"];')
    for node in pipe.nodes:
        lines.append(f"  {_q(node.name)} [shape=ellipse, tooltip={_q(node.type_label)}];")
    lines += [f"  {_q(a)} -> {_q(b)};" for a, b in pipe.input_edges]
    lines += [f"  {_q(a)} -> {_q(b)};" for a, b in pipe.output_edges]
    lines.append("}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    pipe = refresh(Project.open(args.project))
    print(as_dot(pipe) if args.dot else (as_text(pipe) or "no jobs yet"))
    return 0
