"""``RELION_OUTPUT_NODES.star``: how a job run by CCP-EM's pipeliner hands over output nodes
found at run time; RELION reads the same file when a job succeeds and adds its nodes to the pipeline.

Example::

    write_output_nodes_file(Path("Class2D/job003/RELION_OUTPUT_NODES.star"),
                            [Node("Class2D/job003/run_ct2_it003_data.star", L.NODE_CLASS2D_DATA)])
    read_output_nodes_file(Path("Class2D/job003/RELION_OUTPUT_NODES.star"))
    # [Node('Class2D/job003/run_ct2_it003_data.star', 'ParticleGroupMetadata.star.relion.class2d', 1)]
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from emclass2d.nodes.graph import labels as L
from emclass2d.nodes.graph.pipeline import Node
from emclass2d.nodes.io.star import StarFileError, read_star, write_star

log = logging.getLogger(__name__)


def write_output_nodes_file(path: Path, nodes: list[Node]) -> None:
    """Write (or remove, when ``nodes`` is empty) the file listing ``nodes``."""
    if not nodes:
        path.unlink(missing_ok=True)
        return
    table = pd.DataFrame({L.NODE_NAME: [n.name for n in nodes],
                          L.NODE_TYPE_LABEL: [n.type_label for n in nodes]}, dtype=object)
    write_star(path, {L.OUTPUT_NODES_BLOCK: table})


def read_output_nodes_file(path: Path) -> list[Node]:
    """The nodes listed (depth from rlnPipeLineNodeTypeLabelDepth, else 1); empty if the file is
    absent or unreadable (logged)."""
    if not path.exists():
        return []
    try:
        table = read_star(path).get(L.OUTPUT_NODES_BLOCK)
    except StarFileError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return []
    if table is None or isinstance(table, dict) and not table:
        return []
    rows = [table] if isinstance(table, dict) else table.to_dict("records")
    return [Node(str(r[L.NODE_NAME]), str(r[L.NODE_TYPE_LABEL]), int(r.get(L.NODE_TYPE_LABEL_DEPTH, 1) or 1))
            for r in rows if L.NODE_NAME in r and L.NODE_TYPE_LABEL in r]
