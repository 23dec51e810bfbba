"""The Class2D job type: reference-free 2D classification (EM or VDAM), ``emclass2d.class2d``.

Runs in ``Class2D/jobNNN/`` and writes what RELION's Class2D writes
(``run_itNNN_{classes.mrcs,model.star,data.star,optimiser.star,sampling.star}``), so a
RELION Select job, CCP-EM's pipeliner or users' scripts read it. Registered through the
``emclass2d`` entry-point group, like any plugin.

Example::

    emclass2d run emclass2d.class2d --fn_img Extract/job012/particles.star --nr_classes 50 \\
        --do_em Yes --do_grad No --particle_diameter 200

Modules: :mod:`.options` (the job.star options), :mod:`.run` (devices and dispatch),
:mod:`.start` (new or continued run), :mod:`.em` and :mod:`.vdam` (the two loops),
:mod:`.step` (what both loops share), :mod:`.particle_stream` (particles through the
E-step, batch by batch, over the devices).
"""
from __future__ import annotations

from emclass2d.jobtypes import hookimpl
from emclass2d.jobtypes.base import JobOptions, JobType, NodeSpec, RunContext
from emclass2d.jobtypes.class2d.options import Class2DOptions
from emclass2d.nodes.graph.labels import NODE_CLASS2D_DATA, NODE_CLASS2D_OPTIMISER, NODE_IMAGE2D_STACK, NODE_PARTICLES



class Class2DJob(JobType):
    """2D classification of particle images into class averages."""

    process_type = "emclass2d.class2d"
    directory = "Class2D"
    options_model = Class2DOptions
    summary = "Reference-free 2D class averaging (EM or VDAM), RELION-compatible outputs"
    can_continue = True
    continue_option = "fn_cont"

    def input_nodes(self, options: JobOptions) -> list[NodeSpec]:
        """The particles STAR file and the initial references, if given (new runs; a continue
        reads the optimiser.star instead)."""
        assert isinstance(options, Class2DOptions)
        nodes = [NodeSpec(options.fn_img, NODE_PARTICLES)] if options.fn_img else []
        if options.fn_ref and not options.fn_cont:
            nodes.append(NodeSpec(options.fn_ref, NODE_IMAGE2D_STACK))
        return nodes

    def output_nodes(self, options: JobOptions, job_dir: str) -> list[NodeSpec]:
        """data.star and optimiser.star of the last iteration of a new run (as RELION declares)."""
        assert isinstance(options, Class2DOptions)
        if options.fn_cont:  # continued runs declare their real files when they finish
            return []
        stem = f"{job_dir}run_it{options.nr_iter:03d}"
        return [NodeSpec(stem + "_data.star", NODE_CLASS2D_DATA),
                NodeSpec(stem + "_optimiser.star", NODE_CLASS2D_OPTIMISER)]

    def run(self, ctx: RunContext) -> None:
        from emclass2d.jobtypes.class2d.run import run_class2d  # noqa: PLC0415 (keeps discovery cheap)

        run_class2d(ctx)


@hookimpl
def emclass2d_register_job_types() -> list[type[JobType]]:
    return [Class2DJob]
