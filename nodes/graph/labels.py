"""RELION's pipeline vocabulary: STAR labels, node type labels, statuses, markers.

One place for every string RELION 5 (and CCP-EM's pipeliner) writes into
``default_pipeline.star``, ``job_pipeline.star``, ``job.star`` and the job directory
markers, plus the tables that turn labels of older files (RELION 3.1 integers, RELION 4
node type names) into RELION 5's. Labels are given without the leading underscore, as
:func:`emclass2d.nodes.io.star.read_star` returns them.

Example::

    from emclass2d.nodes.graph import labels as L
    L.NODE_CLASS2D_DATA                      # 'ParticleGroupMetadata.star.relion.class2d'
    L.STATUS_BY_INT[2]                       # 'Succeeded'
    L.convert_node_type_label("ParticlesData.star.relion")   # 'ParticleGroupMetadata.star.relion'

See also: :mod:`emclass2d.nodes.graph.pipeline`, :mod:`emclass2d.nodes.graph.jobstar`.
"""
from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------- booleans
#: RELION's job.star booleans.
YES, NO = "Yes", "No"


def parse_flag(value: Any) -> bool:
    """A boolean as RELION's files spell it: ``Yes``/``No``, ``true``/``false``, ``1``/``0`` (any case).

    Non-strings go through ``int`` (``True``, ``1``, ``0.0``); ``None`` and other words are False.
    """
    if value is None or isinstance(value, str):
        return str(value).strip().lower() in ("1", "true", "yes")
    return bool(int(value))


def format_flag(value: Any) -> str:
    """``True -> "Yes"``, ``False -> "No"``, as job.star stores booleans."""
    return YES if value else NO


# ----------------------------------------------------------------- pipeline STAR labels
PIPELINE_GENERAL_BLOCK = "pipeline_general"
PIPELINE_PROCESSES_BLOCK = "pipeline_processes"
PIPELINE_NODES_BLOCK = "pipeline_nodes"
PIPELINE_INPUT_EDGES_BLOCK = "pipeline_input_edges"
PIPELINE_OUTPUT_EDGES_BLOCK = "pipeline_output_edges"
OUTPUT_NODES_BLOCK = "output_nodes"  #: RELION_OUTPUT_NODES.star

JOB_COUNTER = "rlnPipeLineJobCounter"
PROCESS_NAME = "rlnPipeLineProcessName"
PROCESS_ALIAS = "rlnPipeLineProcessAlias"
PROCESS_TYPE_LABEL = "rlnPipeLineProcessTypeLabel"
PROCESS_STATUS_LABEL = "rlnPipeLineProcessStatusLabel"
PROCESS_TYPE_INT = "rlnPipeLineProcessType"  #: RELION <= 3.1
PROCESS_STATUS_INT = "rlnPipeLineProcessStatus"  #: RELION <= 3.1
NODE_NAME = "rlnPipeLineNodeName"
NODE_TYPE_LABEL = "rlnPipeLineNodeTypeLabel"
NODE_TYPE_LABEL_DEPTH = "rlnPipeLineNodeTypeLabelDepth"
NODE_TYPE_INT = "rlnPipeLineNodeType"  #: RELION <= 3.1
EDGE_FROM_NODE = "rlnPipeLineEdgeFromNode"
EDGE_PROCESS = "rlnPipeLineEdgeProcess"
EDGE_TO_NODE = "rlnPipeLineEdgeToNode"

#: Every ``_rlnPipeLine*`` label, for readers that check what they know.
PIPELINE_LABELS: tuple[str, ...] = (
    JOB_COUNTER, PROCESS_NAME, PROCESS_ALIAS, PROCESS_TYPE_LABEL, PROCESS_STATUS_LABEL,
    PROCESS_TYPE_INT, PROCESS_STATUS_INT, NODE_NAME, NODE_TYPE_LABEL, NODE_TYPE_LABEL_DEPTH,
    NODE_TYPE_INT, EDGE_FROM_NODE, EDGE_PROCESS, EDGE_TO_NODE,
)

#: Alias column value of a process without alias.
NO_ALIAS = "None"

# ----------------------------------------------------------------------- job.star labels
JOB_BLOCK = "job"
JOB_OPTIONS_BLOCK = "joboptions_values"
JOB_TYPE_LABEL = "rlnJobTypeLabel"
JOB_TYPE_INT = "rlnJobType"  #: RELION <= 3.1
JOB_IS_CONTINUE = "rlnJobIsContinue"
JOB_IS_TOMO = "rlnJobIsTomo"
JOB_OPTION_VARIABLE = "rlnJobOptionVariable"
JOB_OPTION_VALUE = "rlnJobOptionValue"

# ----------------------------------------------------------------------------- statuses
STATUS_RUNNING = "Running"
STATUS_SCHEDULED = "Scheduled"
STATUS_SUCCEEDED = "Succeeded"
STATUS_FAILED = "Failed"
STATUS_ABORTED = "Aborted"
#: ``src/pipeline_jobs.h`` integers, as RELION 3.1 wrote them.
STATUS_BY_INT: dict[int, str] = {0: STATUS_RUNNING, 1: STATUS_SCHEDULED, 2: STATUS_SUCCEEDED,
                                 3: STATUS_FAILED, 4: STATUS_ABORTED}
INT_BY_STATUS: dict[str, int] = {v: k for k, v in STATUS_BY_INT.items()}
STATUSES: tuple[str, ...] = tuple(STATUS_BY_INT.values())

# ------------------------------------------------------------------- job dir markers
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
#: Removed from a job directory before every launch (RELION ``PipeLine::runJob``).
LAUNCH_MARKERS: tuple[str, ...] = (ABORT_NOW, EXIT_ABORTED, EXIT_SUCCESS, EXIT_FAILURE)
#: Exit marker -> status the pipeliner sets when it sees it.
STATUS_BY_MARKER: dict[str, str] = {EXIT_SUCCESS: STATUS_SUCCEEDED, EXIT_FAILURE: STATUS_FAILED,
                                    EXIT_ABORTED: STATUS_ABORTED}
MARKER_BY_STATUS: dict[str, str] = {v: k for k, v in STATUS_BY_MARKER.items()}
OUTPUT_NODES_FILE = "RELION_OUTPUT_NODES.star"

# ---------------------------------------------------------------- project files
PIPELINE_FILE = "default_pipeline.star"
JOB_PIPELINE_FILE = "job_pipeline.star"
JOB_STAR_FILE = "job.star"
NOTE_FILE = "note.txt"
RUN_OUT = "run.out"
RUN_ERR = "run.err"
LOCK_DIR = ".relion_lock"
LOCK_FILE = "lock_default_pipeline.star"
CHANGED_FILE = ".pipeline_has_changed"
NODES_DIR = ".Nodes"

# ------------------------------------------------------------- node type labels (RELION 5)
NODE_MOVIES = "MicrographMovieGroupMetadata.star.relion"
NODE_MICS = "MicrographGroupMetadata.star.relion"
NODE_COORDS = "MicrographCoordsGroup.star.relion"
NODE_PARTICLES = "ParticleGroupMetadata.star.relion"  #: LABEL_PARTS_CPIPE, LABEL_SELECT_PARTS
NODE_CLASS2D_DATA = "ParticleGroupMetadata.star.relion.class2d"  #: LABEL_CLASS2D_PARTS
NODE_CLASS2D_HELICAL_DATA = "ParticleGroupMetadata.star.relion.class2d.helicalsegments"
NODE_OPTIMISER = "OptimiserData.star.relion"  #: LABEL_OPTIMISER_CPIPE (Select input)
NODE_CLASS2D_OPTIMISER = "OptimiserData.star.relion.class2d"  #: LABEL_CLASS2D_OPT
NODE_CLASS3D_OPTIMISER = "OptimiserData.star.relion.class3d"
NODE_REFINE3D_OPTIMISER = "OptimiserData.star.relion.refine3d"
NODE_SELECT_OPTIMISER = "OptimiserData.star.relion.select"  #: LABEL_SELECT_OPT
NODE_CLASS_AVERAGES = "Image2DGroupMetadata.star.relion.classaverages"  #: LABEL_SELECT_CLAVS
NODE_SELECT_LOG = "LogFile.pdf.relion.select"
NODE_LOGFILE = "LogFile.pdf.relion"
NODE_DENSITY_MAP = "DensityMap.mrc"
NODE_HALFMAP = "DensityMap.mrc.halfmap"
NODE_MASK3D = "Mask3D.mrc"
NODE_PROCESS_DATA = "ProcessData.star.relion"
NODE_POSTPROCESS = "ProcessData.star.relion.postprocess"
NODE_IMAGE2D_STACK = "Image2DStack.mrcs"
NODE_IMAGE2D_GROUP = "Image2DGroupMetadata.star.relion"
NODE_LOCALRES_MAP = "Image3D.mrc.relion.localresmap"
NODE_POLISH_PARAMS = "ProcessData.txt.relion.polish.params"

#: RELION 3.1 integer node types (``NODE_*`` in src/pipeline_jobs.h) -> RELION 5 labels.
NODE_LABEL_BY_INT: dict[int, str] = {
    0: NODE_MOVIES, 1: NODE_MICS, 2: NODE_COORDS, 3: NODE_PARTICLES, 4: NODE_PARTICLES,
    5: NODE_IMAGE2D_GROUP, 6: NODE_DENSITY_MAP, 7: NODE_MASK3D, 8: NODE_PROCESS_DATA,
    9: NODE_OPTIMISER, 10: NODE_HALFMAP, 11: NODE_DENSITY_MAP, 12: NODE_LOCALRES_MAP,
    13: NODE_LOGFILE, 14: NODE_POSTPROCESS, 15: NODE_POLISH_PARAMS,
}

#: Top-level node type names of RELION 4 files (version < 50001) -> RELION 5's
#: (``PipeLine::convertOldNodeTypeLabel``); the rest of the label (format, keywords) is kept.
OLD_NODE_TYPE_NAMES: dict[str, str] = {
    "MicrographMoviesData": "MicrographMovieGroupMetadata",
    "MicrographsData": "MicrographGroupMetadata",
    "MicrographsCoords": "MicrographCoordsGroup",
    "ParticlesData": "ParticleGroupMetadata",
    "MovieParticlesData": "ParticleGroupMetadata",
    "ImagesData": "Image2DGroupMetadata",
    "Images2DData": "Image2DGroupMetadata",
    "2DReferences": "Image2DGroupMetadata",
    "ImageStack2D": "Image2DStack",
    "Image3DStack": "Image3D",
    "Mask": "Mask3D",
    "Halfmap3D": "DensityMap",
    "LocalResolutionMap": "Image3D",
    "PostprocessData": "ProcessData",
}


def convert_node_type_label(label: str) -> str:
    """RELION 5 label for a possibly older one: ``'ParticlesData.star.relion'`` -> ``'ParticleGroupMetadata.star.relion'``."""
    head, dot, rest = label.partition(".")
    new = OLD_NODE_TYPE_NAMES.get(head)
    return f"{new}{dot}{rest}" if new else label


def node_type_top(label: str) -> str:
    """The part of a node type label before the first dot: the ``.Nodes/`` folder name."""
    return label.split(".", 1)[0]


# ------------------------------------------------------------------ process type labels
#: Our process types (``<package>.<job>``; never ``relion.*``).
PROCESS_CLASS2D = "emclass2d.class2d"
PROCESS_SELECT_AUTO = "emclass2d.select.class2dauto"

#: RELION 3.1 integer process types (``PROC_*`` in src/pipeline_jobs.h) -> RELION 5 labels.
PROCESS_LABEL_BY_INT: dict[int, str] = {
    0: "relion.import", 1: "relion.motioncorr", 2: "relion.ctffind", 3: "relion.manualpick",
    4: "relion.autopick", 5: "relion.extract", 7: "relion.select", 8: "relion.class2d",
    9: "relion.class3d", 10: "relion.refine3d", 12: "relion.maskcreate", 13: "relion.joinstar",
    14: "relion.subtract", 15: "relion.postprocess", 16: "relion.localres",
    18: "relion.initialmodel", 19: "relion.multibody", 20: "relion.polish",
    21: "relion.ctfrefine", 99: "relion.external",
}
