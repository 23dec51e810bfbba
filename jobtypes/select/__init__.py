"""Automatic 2D class selection (RELION Select, "Automatically select 2D classes?").

Scores every class of a Class2D iteration with a calibrated model on RELION's
class-ranker features, selects by score and/or class values, and writes RELION's
Select outputs. Registered through the same hook as any plugin.

Modules: :mod:`.options`, :mod:`.inputs` (the Class2D iteration as selection sees it),
:mod:`.scoring` (features, scores, cache), :mod:`.model` (the class-score network and its
weights), :mod:`.run` (selection and outputs). The training of the weights is a developer
tool, ``tools/train_ranker.py``, not installed.

Example::

    emclass2d run emclass2d.select.class2dauto --fn_model Class2D/job013/run_it100_optimiser.star \\
        --rank_threshold 0.4
"""
from __future__ import annotations

from emclass2d.jobtypes import hookimpl
from emclass2d.jobtypes.base import JobOptions, JobType, NodeSpec, RunContext
from emclass2d.jobtypes.select.options import SelectOptions
from emclass2d.nodes.graph.labels import NODE_CLASS_AVERAGES, NODE_PARTICLES, NODE_SELECT_OPTIMISER, PROCESS_SELECT_AUTO


class SelectClass2DAuto(JobType):
    """Select 2D classes by predicted score (and/or class values)."""

    process_type = PROCESS_SELECT_AUTO
    directory = "Select"
    options_model = SelectOptions
    summary = "Select good 2D classes automatically (class scores, RELION Select outputs)."

    def output_nodes(self, options: JobOptions, job_dir: str) -> list[NodeSpec]:
        return [NodeSpec(job_dir + "particles.star", NODE_PARTICLES),
                NodeSpec(job_dir + "class_averages.star", NODE_CLASS_AVERAGES),
                NodeSpec(job_dir + "rank_optimiser.star", NODE_SELECT_OPTIMISER)]

    def run(self, ctx: RunContext) -> None:
        from emclass2d.jobtypes.select.run import run_select

        run_select(ctx)


@hookimpl
def emclass2d_register_job_types() -> list[type[JobType]]:
    return [SelectClass2DAuto]
